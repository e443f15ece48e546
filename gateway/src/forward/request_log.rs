//! What a finished request leaves behind: the request metrics and its one access-log
//! line, for proxied requests and for answers the listener gave before pingora saw them.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::header::USER_AGENT;
use pingora::http::RequestHeader;

use crate::admit::client_ip::Resolution;
use crate::admit::identity::Identity;
use crate::admit::limits::Verdict;
use crate::admit::{Admission, RefusalKind};
use crate::forward::errors::{EdgeError, RefusalCount};
use crate::observe::access_log::{clip, AccessRecord, MAX_PATH, MAX_USER_AGENT};
use crate::observe::metrics::{method_label, status_label, Metrics};

/// Counts what the admission pipeline decided: forwarded-header rejections, limit
/// decisions, block-list hits and auth failures.
pub fn admission(m: &Metrics, found: &Admission, refusal: Option<RefusalKind>) {
    if let Some(r) = found.resolution.rejection {
        m.forwarded_rejections
            .with_label_values(&[r.as_str()])
            .inc();
    }
    for outcome in found.verdict.iter().flat_map(|v| &v.outcomes) {
        m.rate_limit_decisions
            .with_label_values(&[&outcome.policy, outcome.decision.as_str()])
            .inc();
    }
    match refusal.and_then(|kind| kind.refused().count) {
        Some(RefusalCount::Blocked(reason)) => {
            m.blocked.with_label_values(&[reason.as_str()]).inc()
        }
        Some(RefusalCount::InFlight) => m.inflight_rejections.inc(),
        Some(RefusalCount::AuthFailure(reason)) => {
            m.auth_failures.with_label_values(&[reason.as_str()]).inc()
        }
        None => {}
    }
}

/// A request pingora handled, as the proxy saw it at the end.
pub struct Finished<'a> {
    pub req: &'a RequestHeader,
    pub request_id: String,
    pub status: u16,
    /// The matched route prefix, or `"unmatched"`.
    pub route: &'a str,
    pub started: Instant,
    pub upstream_elapsed: Option<Duration>,
    /// See `bytes_in`.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The connection: its peer (access log `peer`) and TLS version.
    pub digest: Option<&'a pingora::protocols::Digest>,
    /// The balancer a PROXY protocol connection came through (access log `balancer_ip`).
    pub balancer: Option<IpAddr>,
    pub resolution: Option<&'a Resolution>,
    pub identity: &'a Identity,
    pub verdict: Option<&'a Verdict>,
    pub error: Option<&'static str>,
}

/// The access log's `tls_version` from the connection digest (None = cleartext).
pub fn tls_version(digest: Option<&pingora::protocols::Digest>) -> Option<&'static str> {
    digest?.ssl_digest.as_deref().map(tls_name)
}

/// A TLS digest's version as one of a bounded set.
pub fn tls_name(d: &pingora::protocols::tls::SslDigest) -> &'static str {
    match d.version.as_ref() {
        "TLSv1.3" => "TLSv1.3",
        "TLSv1.2" => "TLSv1.2",
        _ => "other",
    }
}

/// The connection an edge answer went out on.
#[derive(Debug, Clone, Copy)]
pub struct EdgeConn {
    pub peer: SocketAddr,
    /// See `Finished::balancer`.
    pub balancer: Option<IpAddr>,
    /// Empty when no request was parsed (HTTP/1.1 head refusals).
    pub protocol: &'static str,
    pub tls_version: Option<&'static str>,
}

impl EdgeConn {
    /// Cleartext, before any request.
    pub fn plain(peer: SocketAddr) -> EdgeConn {
        EdgeConn {
            peer,
            balancer: None,
            protocol: "",
            tls_version: None,
        }
    }
}

/// The socket peer, IPv4-mapped addresses canonicalised.
fn peer_ip(digest: Option<&pingora::protocols::Digest>) -> Option<IpAddr> {
    let addr = digest?.socket_digest.as_ref()?.peer_addr()?.as_inet()?;
    Some(addr.ip().to_canonical())
}

/// The access log's `protocol`.
pub fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "other",
    }
}

/// The access log's `bytes_in`: request body bytes read; for a request the gateway refused
/// before reading its body (401, 403, 404, 413 by Content-Length, 429…) the declared
/// Content-Length, so a refused upload still shows its size (0 without one).
pub fn bytes_in(read: u64, refused_by_gateway: bool, declared: Option<u64>) -> u64 {
    if refused_by_gateway && read == 0 {
        declared.unwrap_or(0)
    } else {
        read
    }
}

/// Milliseconds rounded to the microsecond (`32.225`, not `32.225173000000005`).
pub fn millis(d: Duration) -> f64 {
    ((d.as_nanos() + 500) / 1_000) as f64 / 1e3
}

/// Request count and durations, then the access line.
pub fn proxied(m: &Metrics, include_query: bool, f: Finished<'_>) {
    let req = f.req;
    let elapsed = f.started.elapsed();
    m.requests_total
        .with_label_values(&[method_label(&req.method), status_label(f.status), f.route])
        .inc();
    m.request_duration
        .with_label_values(&[f.route])
        .observe(elapsed.as_secs_f64());
    if let Some(up) = f.upstream_elapsed {
        m.upstream_duration
            .with_label_values(&[f.route])
            .observe(up.as_secs_f64());
    }
    let verdict = f.verdict;
    AccessRecord {
        request_id: &f.request_id,
        method: req.method.as_str(),
        path: clip(req.uri.path(), MAX_PATH),
        query: if include_query {
            req.uri.query().map(|q| clip(q, MAX_PATH))
        } else {
            None
        },
        route: f.route,
        status: f.status,
        bytes_in: f.bytes_in,
        bytes_out: f.bytes_out,
        duration_ms: millis(elapsed),
        upstream_ms: f.upstream_elapsed.map(millis),
        peer: peer_ip(f.digest),
        client_ip: f.resolution.map(|r| r.client),
        balancer_ip: f.balancer,
        trust: f.resolution.map(|r| r.decision),
        forwarded_rejection: f.resolution.and_then(|r| r.rejection).map(|r| r.as_str()),
        user_id: f.identity.user_id(),
        auth: f.identity.auth_label(),
        policy: verdict
            .and_then(|v| v.rejection().or(v.reported()))
            .map(|o| &*o.policy),
        policy_decision: verdict.and_then(Verdict::overall).map(|d| d.as_str()),
        shadow_rejected_by: verdict.and_then(|v| {
            let names: Vec<&str> = v.would_reject().collect();
            (!names.is_empty()).then(|| Cow::Owned(names.join(",")))
        }),
        limit_at_ns: verdict.map(|v| crate::admit::Now::unix_ns_of(v.at_ns)),
        user_agent: req
            .headers
            .get(USER_AGENT)
            .map(|v| user_agent(v.as_bytes())),
        protocol: protocol(req.version),
        tls_version: tls_version(f.digest),
        error: f.error,
    }
    .emit();
}

/// The User-Agent as logged: clipped, invalid UTF-8 replaced; borrowed when it is valid.
fn user_agent(raw: &[u8]) -> Cow<'_, str> {
    match String::from_utf8_lossy(raw) {
        Cow::Borrowed(s) => Cow::Borrowed(clip(s, MAX_USER_AGENT)),
        Cow::Owned(s) => Cow::Owned(clip(&s, MAX_USER_AGENT).to_owned()),
    }
}

/// Longest method kept (a method is any token; the ones we know are under 10 bytes).
const MAX_METHOD: usize = 32;

/// What the listener had read of a request it answered itself: raw bytes, logged clipped
/// and escaped like a proxied request's. Empty when nothing was read (connection cap).
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    pub method: &'a [u8],
    /// The request target; its query is not logged.
    pub target: &'a [u8],
    pub user_agent: Option<&'a [u8]>,
}

impl<'a> Seen<'a> {
    /// The fields of a parsed request (h2 streams refused before the pipeline).
    pub fn request(req: &'a RequestHeader) -> Seen<'a> {
        Seen {
            method: req.method.as_str().as_bytes(),
            target: req.uri.path().as_bytes(),
            user_agent: req.headers.get(USER_AGENT).map(|v| v.as_bytes()),
        }
    }
}

/// An answer the listener wrote itself (408/431/400 from the head reader, 503 over the
/// connection cap): no identity is known; method, path and User-Agent as far as read.
pub fn edge_answer(
    m: &Metrics,
    conn: EdgeConn,
    seen: Seen<'_>,
    request_id: String,
    err: EdgeError,
    reason: &'static str,
    started: Instant,
) {
    m.head_rejections.with_label_values(&[reason]).inc();
    m.requests_total
        .with_label_values(&["OTHER", status_label(err.status), "unmatched"])
        .inc();
    let method = String::from_utf8_lossy(seen.method);
    let path = seen.target.split(|b| *b == b'?').next().unwrap_or_default();
    let path = String::from_utf8_lossy(path);
    AccessRecord {
        request_id: &request_id,
        method: clip(&method, MAX_METHOD),
        path: clip(&path, MAX_PATH),
        user_agent: seen.user_agent.map(user_agent),
        route: "unmatched",
        status: err.status,
        duration_ms: millis(started.elapsed()),
        peer: Some(conn.peer.ip().to_canonical()),
        client_ip: Some(conn.peer.ip().to_canonical()),
        balancer_ip: conn.balancer,
        auth: "none",
        protocol: conn.protocol,
        tls_version: conn.tls_version,
        error: Some(reason),
        ..Default::default()
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_and_tls_version_names() {
        use pingora::protocols::tls::SslDigest;
        use pingora::protocols::Digest;
        let cases = [
            (http::Version::HTTP_2, "HTTP/2"),
            (http::Version::HTTP_11, "HTTP/1.1"),
            (http::Version::HTTP_10, "HTTP/1.0"),
            (http::Version::HTTP_09, "other"),
        ];
        for (v, want) in cases {
            assert_eq!(protocol(v), want);
        }
        let with = |version: &'static str| Digest {
            ssl_digest: Some(std::sync::Arc::new(SslDigest::new(
                "",
                version,
                None,
                None,
                vec![],
            ))),
            ..Default::default()
        };
        assert_eq!(tls_version(None), None);
        assert_eq!(tls_version(Some(&Digest::default())), None, "cleartext");
        assert_eq!(tls_version(Some(&with("TLSv1.3"))), Some("TLSv1.3"));
        assert_eq!(tls_version(Some(&with("TLSv1.2"))), Some("TLSv1.2"));
        assert_eq!(
            tls_version(Some(&with("SSLv3\n"))),
            Some("other"),
            "bounded"
        );
    }

    #[test]
    fn millis_rounds_to_the_microsecond() {
        let cases = [
            (Duration::from_nanos(32_225_173), 32.225, "32.225"),
            (Duration::from_nanos(32_225_500), 32.226, "32.226"),
            (Duration::from_nanos(499), 0.0, "0.0"),
            (Duration::from_micros(1), 0.001, "0.001"),
            (Duration::from_secs(3), 3000.0, "3000.0"),
        ];
        for (d, want, json) in cases {
            assert_eq!(millis(d), want, "{d:?}");
            assert_eq!(serde_json::to_string(&millis(d)).unwrap(), json, "{d:?}");
        }
    }

    #[test]
    fn user_agent_is_clipped_and_made_valid_utf8() {
        let long = "a".repeat(MAX_USER_AGENT + 10);
        let multibyte = format!("{}é", "a".repeat(MAX_USER_AGENT - 1));
        let cases: &[(&[u8], &str, bool)] = &[
            (b"curl/8", "curl/8", true),
            (long.as_bytes(), &long[..MAX_USER_AGENT], true),
            (multibyte.as_bytes(), &multibyte[..MAX_USER_AGENT - 1], true),
            (b"bad\xff\xfeua", "bad\u{fffd}\u{fffd}ua", false),
            (b"", "", true),
        ];
        for (raw, want, borrowed) in cases {
            let got = user_agent(raw);
            assert_eq!(got, *want, "{raw:?}");
            assert_eq!(matches!(got, Cow::Borrowed(_)), *borrowed, "{raw:?}");
        }
    }

    #[test]
    fn bytes_in_is_read_bytes_or_the_declared_length_of_a_refused_request() {
        let cases = [
            ((512, false, Some(512)), 512), // proxied: what was read
            ((0, false, None), 0),          // proxied GET
            ((0, true, Some(4096)), 4096),  // 429/401 before the body: declared length
            ((0, true, None), 0),           // refused, chunked or no body
            ((70_000, true, None), 70_000), // 413 while streaming: what was read
        ];
        for ((read, refused, declared), want) in cases {
            assert_eq!(
                bytes_in(read, refused, declared),
                want,
                "{read} {refused} {declared:?}"
            );
        }
    }
}
