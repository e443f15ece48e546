//! The access-log record: filled along the request's way, written once as one
//! escaped JSON line through the log writer (target `access_log`). It has no field
//! that could hold a credential: no headers, no query by default, no token.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::observe::labels::TrustDecision;
use crate::observe::logging;
use crate::observe::textfmt::{push_f64, push_ip, push_json_str, push_rfc3339_micros, push_u64};

/// Longest User-Agent kept, so one client cannot bloat every log line.
pub const MAX_USER_AGENT: usize = 256;
/// Longest path kept.
pub const MAX_PATH: usize = 1024;

/// Borrows from the request it describes: building one allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub route: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub peer: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    /// The L4 balancer a PROXY protocol connection came through (then `peer` is the
    /// source its header named); absent otherwise.
    pub balancer_ip: Option<IpAddr>,
    pub trust: Option<TrustDecision>,
    pub forwarded_rejection: Option<&'static str>,
    pub user_id: Option<&'a str>,
    pub auth: &'static str,
    pub policy: Option<&'a str>,
    pub policy_decision: Option<&'static str>,
    pub shadow_rejected_by: Option<Cow<'a, str>>,
    /// Present exactly when the request reached the rate-limit stage: when the limiter
    /// decided, in unix ns (`gateway replay`'s clock).
    pub limit_at_ns: Option<u64>,
    pub user_agent: Option<Cow<'a, str>>,
    /// "HTTP/1.1", "HTTP/2", "HTTP/1.0"; empty for answers before a request was parsed.
    pub protocol: &'static str,
    /// "TLSv1.3" / "TLSv1.2" when the client spoke TLS to us; absent when cleartext.
    pub tls_version: Option<&'static str>,
    /// Short error kind when the request failed inside the gateway.
    pub error: Option<&'static str>,
}

/// Truncates to at most `max` bytes on a char boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `,"name":` as one literal, so each field costs one copy for its key.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// The rest of a JSON object after its first field: each field is `,"key":value` (`key`
/// is `key!`'s literal). Keys are ours (plain ASCII); every string value is escaped.
struct Obj<'o>(&'o mut Vec<u8>);

impl Obj<'_> {
    fn str(&mut self, key: &str, v: &str) {
        self.0.extend_from_slice(key.as_bytes());
        push_json_str(self.0, v);
    }
    fn opt_str(&mut self, key: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(key, v);
        }
    }
    fn u64(&mut self, key: &str, v: u64) {
        self.0.extend_from_slice(key.as_bytes());
        push_u64(self.0, v);
    }
    fn f64(&mut self, key: &str, v: f64) {
        self.0.extend_from_slice(key.as_bytes());
        push_f64(self.0, v);
    }
    fn opt_ip(&mut self, key: &str, v: Option<IpAddr>) {
        if let Some(ip) = v {
            self.0.extend_from_slice(key.as_bytes());
            self.0.push(b'"');
            push_ip(self.0, ip);
            self.0.push(b'"');
        }
    }
}

thread_local! {
    /// The line being written, reused: one buffer per thread instead of one per request.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl AccessRecord<'_> {
    /// The line as the tracing JSON formatter lays out operational logs (flattened event,
    /// target last), so one log pipeline reads both; absent fields are omitted. Written
    /// field by field rather than through that formatter or serde, which cost several
    /// times as much per request (perf/RESULTS.md). Appends the line and its newline.
    fn write_json_line(&self, now: SystemTime, out: &mut Vec<u8>) {
        out.reserve(512);
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_rfc3339_micros(out, now);
        out.extend_from_slice(
            concat!(
                "\"",
                key!("level"),
                "\"INFO\"",
                key!("message"),
                "\"access\""
            )
            .as_bytes(),
        );
        let mut o = Obj(out);
        o.str(key!("request_id"), self.request_id);
        o.str(key!("method"), self.method);
        o.str(key!("path"), self.path);
        o.opt_str(key!("query"), self.query);
        o.str(key!("route"), self.route);
        o.u64(key!("status"), u64::from(self.status));
        o.u64(key!("bytes_in"), self.bytes_in);
        o.u64(key!("bytes_out"), self.bytes_out);
        o.f64(key!("duration_ms"), self.duration_ms);
        if let Some(up) = self.upstream_ms {
            o.f64(key!("upstream_ms"), up);
        }
        o.opt_ip(key!("peer"), self.peer);
        o.opt_ip(key!("client_ip"), self.client_ip);
        o.opt_ip(key!("balancer_ip"), self.balancer_ip);
        o.opt_str(key!("trust"), self.trust.map(|t| t.as_str()));
        o.opt_str(key!("forwarded_rejection"), self.forwarded_rejection);
        o.opt_str(key!("user_id"), self.user_id);
        o.str(key!("auth"), self.auth);
        o.opt_str(key!("policy"), self.policy);
        o.opt_str(key!("policy_decision"), self.policy_decision);
        o.opt_str(
            key!("shadow_rejected_by"),
            self.shadow_rejected_by.as_deref(),
        );
        if let Some(at) = self.limit_at_ns {
            o.u64(key!("limit_at_ns"), at);
        }
        o.opt_str(key!("user_agent"), self.user_agent.as_deref());
        if !self.protocol.is_empty() {
            o.str(key!("protocol"), self.protocol);
        }
        o.opt_str(key!("tls_version"), self.tls_version);
        o.opt_str(key!("error"), self.error);
        out.extend_from_slice(concat!(key!("target"), "\"access_log\"}\n").as_bytes());
    }

    #[cfg(test)]
    fn to_json_line(&self, now: SystemTime) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json_line(now, &mut out);
        out
    }

    /// Writes the line through the log writer when the log filter lets `access_log` info
    /// through.
    pub fn emit(&self) {
        if tracing::enabled!(target: "access_log", tracing::Level::INFO) {
            LINE.with(|line| {
                let mut line = line.borrow_mut();
                line.clear();
                self.write_json_line(SystemTime::now(), &mut line);
                logging::write_line(&line);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::logging::tests::Sink;

    /// The line `emit` writes.
    fn emit_to_string(rec: &AccessRecord) -> String {
        String::from_utf8(rec.to_json_line(SystemTime::now())).unwrap()
    }

    /// The same record as an operational log event through the tracing JSON formatter:
    /// the shape the access line must keep.
    fn via_tracing_formatter(rec: &AccessRecord) -> String {
        let buf = Sink::default();
        let writer = buf.clone();
        let subscriber = crate::observe::logging::json_subscriber(move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "access_log",
                request_id = %rec.request_id,
                method = %rec.method,
                path = %rec.path,
                query = rec.query,
                route = rec.route,
                status = rec.status,
                bytes_in = rec.bytes_in,
                bytes_out = rec.bytes_out,
                duration_ms = rec.duration_ms,
                upstream_ms = rec.upstream_ms,
                peer = rec.peer.map(tracing::field::display),
                client_ip = rec.client_ip.map(tracing::field::display),
                balancer_ip = rec.balancer_ip.map(tracing::field::display),
                trust = rec.trust.map(|t| t.as_str()),
                forwarded_rejection = rec.forwarded_rejection,
                user_id = rec.user_id,
                auth = rec.auth,
                policy = rec.policy,
                policy_decision = rec.policy_decision,
                shadow_rejected_by = rec.shadow_rejected_by.as_deref(),
                limit_at_ns = rec.limit_at_ns,
                user_agent = rec.user_agent.as_deref(),
                protocol = (!rec.protocol.is_empty()).then_some(rec.protocol),
                tls_version = rec.tls_version,
                error = rec.error,
                "access"
            )
        });
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hostile_values_stay_one_escaped_line() {
        let hostile = [
            "/v1/\"quoted\"",
            "/v1/line\nbreak",
            "/v1/cr\r\n{\"fake\":1}",
            "/v1/ünïcödé",
            "/v1/\u{0}nul",
            "/v1/\\backslash",
            "/v1/\u{2028}sep",
        ];
        for path in hostile {
            let rec = AccessRecord {
                request_id: "r1",
                method: "GET",
                path,
                user_agent: Some("curl\"/8\n".into()),
                status: 200,
                client_ip: Some("2001:db8::1".parse().unwrap()),
                trust: Some(TrustDecision::UntrustedPeerSpoof),
                auth: "anonymous",
                ..Default::default()
            };
            let line = emit_to_string(&rec);
            assert_eq!(line.matches('\n').count(), 1, "{path:?}: {line}");
            let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(v["path"], path);
            assert_eq!(v["target"], "access_log");
            assert_eq!(v["trust"], "untrusted_peer_spoof");
            assert_eq!(v["client_ip"], "2001:db8::1");
            assert!(v.get("user_id").is_none(), "absent fields are omitted");
        }
    }

    #[test]
    fn line_matches_the_tracing_formatter_shape() {
        let full = AccessRecord {
            request_id: "r1",
            method: "POST",
            path: "/v1/\"odd\"\npath",
            query: Some("a=1"),
            route: "/v1/",
            status: 429,
            bytes_in: 12,
            bytes_out: 99,
            duration_ms: 1.25,
            upstream_ms: Some(0.5),
            peer: Some("127.0.0.1".parse().unwrap()),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            balancer_ip: Some("10.0.0.2".parse().unwrap()),
            trust: Some(TrustDecision::Trusted),
            forwarded_rejection: Some("malformed"),
            user_id: Some("u-alice"),
            auth: "user",
            policy: Some("per-ip"),
            policy_decision: Some("rejected"),
            shadow_rejected_by: Some("a,b".into()),
            limit_at_ns: Some(1_700_000_000_123_456_789),
            user_agent: Some("curl\u{0}/8".into()),
            protocol: "HTTP/2",
            tls_version: Some("TLSv1.3"),
            error: Some("limit"),
        };
        let sparse = AccessRecord {
            auth: "anonymous",
            ..Default::default()
        };
        for rec in [full, sparse] {
            let via_tracing: serde_json::Value =
                serde_json::from_str(via_tracing_formatter(&rec).trim_end()).unwrap();
            let line = rec.to_json_line(SystemTime::now());
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let direct: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let keys = |v: &serde_json::Value| -> Vec<String> {
                v.as_object().unwrap().keys().cloned().collect()
            };
            assert_eq!(keys(&direct), keys(&via_tracing), "same fields");
            for (k, v) in via_tracing.as_object().unwrap() {
                if k != "timestamp" {
                    assert_eq!(&direct[k], v, "{k}");
                }
            }
            let ts = direct["timestamp"].as_str().unwrap();
            assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        }
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}
