//! The pingora `ProxyHttp` impl: wires the stages (client IP, identity, limits,
//! routing, forwarding headers, access log) into pingora's request phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING, USER_AGENT};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::access_log::{clip, AccessRecord, MAX_PATH, MAX_USER_AGENT};
use crate::blocklist::BlockReason;
use crate::client_ip::{self, Resolution, TrustDecision};
use crate::errors::{self, EdgeError};
use crate::forwarding;
use crate::identity::{self, Identity};
use crate::limits::{Decision, RequestFacts, Verdict};
use crate::metrics::{method_label, status_label};
use crate::state::{Live, Shared};

pub struct Gateway {
    pub shared: Arc<Shared>,
}

/// Per-request state, filled phase by phase and read once in `logging`.
pub struct RequestCtx {
    live: Option<Arc<Live>>,
    started: Instant,
    request_id: String,
    route: Option<usize>,
    resolution: Option<Resolution>,
    identity: Identity,
    verdict: Option<Verdict>,
    body_bytes: u64,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    /// Set when the gateway itself answered (edge error).
    answered: Option<EdgeError>,
    proxy_error: Option<&'static str>,
}

/// Monotonic nanoseconds for the limiter (time is injected into its pure core).
fn now_ns() -> u64 {
    // One clock with the shared-limits sync loop, which corrects the same TATs.
    crate::limits::shared::monotonic_ns()
}

/// Paths with dot segments, encoded slashes/dots or backslashes could be
/// normalised by someone downstream into a route we did not allow.
fn is_ambiguous_path(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.contains(&b'\\') || path.contains("//") {
        return true;
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00")
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

fn has_request_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Headers every response carries, proxied or not.
fn common_headers(resp: &mut ResponseHeader, live: &Live, request_id: &str) -> Result<()> {
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.insert_header("x-frame-options", "DENY")?;
    resp.insert_header("referrer-policy", "no-referrer")?;
    resp.insert_header("content-security-policy", live.csp.clone())?;
    if let Some(hsts) = &live.hsts {
        resp.insert_header("strict-transport-security", hsts.clone())?;
    }
    resp.insert_header("x-request-id", request_id)?;
    Ok(())
}

/// The head of every JSON error the gateway answers itself.
fn error_header(
    err: EdgeError,
    body_len: usize,
    live: &Live,
    request_id: &str,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(err.status, Some(12))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    common_headers(&mut resp, live, request_id)?;
    Ok(resp)
}

/// Upstream failures worth telling apart in logs and metrics.
fn upstream_failure_kind(e: &Error) -> Option<&'static str> {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Some("timeout")
        }
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
            Some("connect")
        }
        _ => None,
    }
}

impl Gateway {
    fn live(ctx: &RequestCtx) -> &Live {
        ctx.live
            .as_deref()
            .expect("live config is loaded in early_request_filter")
    }

    fn rate_limit_headers(resp: &mut ResponseHeader, verdict: &Verdict) -> Result<()> {
        if let Some(report) = verdict.reported() {
            resp.insert_header("ratelimit-policy", report.policy_header())?;
            resp.insert_header("ratelimit", report.ratelimit_header())?;
        }
        Ok(())
    }

    /// Answers at the edge with a JSON error; `Ok(true)` tells pingora the response is sent.
    /// 403 for a block-list match; the access log's `error` says which list.
    async fn block(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: BlockReason,
    ) -> Result<bool> {
        self.shared
            .metrics
            .blocked
            .with_label_values(&[reason.as_str()])
            .inc();
        ctx.proxy_error = Some(match reason {
            BlockReason::Client => "blocked_client",
            BlockReason::User => "blocked_user",
        });
        self.reject(session, ctx, errors::FORBIDDEN).await
    }

    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: EdgeError,
    ) -> Result<bool> {
        let live = ctx.live.clone().expect("live loaded");
        let policy = match (&ctx.verdict, err.status) {
            (Some(v), 429) => v.rejection().map(|o| &*o.policy),
            _ => None,
        };
        let body = Bytes::from(err.body(policy));
        let mut resp = error_header(err, body.len(), &live, &ctx.request_id)?;
        if err.status == 401 {
            resp.insert_header("www-authenticate", "Bearer")?;
        }
        if let Some(v) = &ctx.verdict {
            Self::rate_limit_headers(&mut resp, v)?;
            if let (429, Some(o)) = (err.status, v.rejection()) {
                // Jitter from the clock's low bits: enough to spread retries, no RNG call.
                let retry = crate::limits::headers::retry_after_secs(o.retry_after, now_ns() >> 10);
                resp.insert_header("retry-after", retry.to_string())?;
            }
        }
        // An unread request body would be parsed as the next request: close instead.
        if has_request_body(session.req_header()) || self.shared.is_draining() {
            session.set_keepalive(None);
        }
        ctx.answered = Some(err);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    fn record_limits(&self, verdict: &Verdict) {
        let m = &self.shared.metrics;
        for outcome in &verdict.outcomes {
            m.rate_limit_decisions
                .with_label_values(&[&outcome.policy, decision_label(outcome.decision)])
                .inc();
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.shared.metrics.inflight.inc();
        RequestCtx {
            live: None,
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            resolution: None,
            identity: Identity::Anonymous,
            verdict: None,
            body_bytes: 0,
            upstream_started: None,
            upstream_elapsed: None,
            answered: None,
            proxy_error: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = self.shared.live.load_full();
        let t = &live.config.timeouts;
        // Pingora keeps a connection only when keepalive is set; our listener enforces the idle time.
        if self.shared.is_draining() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(t.keepalive_idle.as_secs().max(1)));
        }
        session.set_read_timeout(Some(t.downstream_read));
        session.set_write_timeout(Some(t.downstream_write));
        ctx.live = Some(live);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let live = ctx.live.clone().expect("live loaded");
        let metrics = &self.shared.metrics;
        let req = session.req_header();

        // 1. Client IP: believe forwarded headers only from trusted peers.
        let peer = peer_ip(session).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let resolution = client_ip::resolve(peer, &req.headers, &live.client_ip);
        if let Some(r) = resolution.rejection {
            metrics
                .forwarded_rejections
                .with_label_values(&[r.as_str()])
                .inc();
        }

        // 2. Request id: keep a trusted peer's well-formed one, else mint one.
        ctx.request_id = match req.headers.get("x-request-id") {
            Some(v)
                if resolution.decision != TrustDecision::Direct
                    && resolution.decision != TrustDecision::UntrustedPeerSpoof
                    && forwarding::is_valid_request_id(v.as_bytes()) =>
            {
                // Valid ids are ASCII by construction.
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => forwarding::new_request_id(),
        };
        let client = resolution.client;
        ctx.resolution = Some(resolution);
        if let Some(reason) = live.blocklist.client(client) {
            return self.block(session, ctx, reason).await;
        }

        // 3. Route allowlist: only configured prefixes reach the app.
        let path = req.uri.path();
        if is_ambiguous_path(path) {
            return self.reject(session, ctx, errors::BAD_REQUEST).await;
        }
        ctx.route = live.config.routes.iter().position(|r| r.matches(path));
        if ctx.route.is_none() {
            return self.reject(session, ctx, errors::NOT_FOUND).await;
        }

        // 4. Body size: refuse a declared oversize body before reading it.
        let max_body = live.config.limits.max_request_body_bytes;
        let declared = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return self.reject(session, ctx, errors::PAYLOAD_TOO_LARGE).await;
        }

        // 5. Identity: a presented token must verify; no token = anonymous.
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ctx.identity = identity::identify_cached(&req.headers, &live.keys, &live.tokens, now_secs);
        if let Some(reason) = live.blocklist.user(ctx.identity.user_id()) {
            return self.block(session, ctx, reason).await;
        }

        // 6. Rate limits. A refused token still counts against per-IP and global
        // policies (as anonymous), so guessing tokens is throttled like anything else.
        let facts = RequestFacts {
            method: req.method.as_str(),
            path,
            client_ip: client,
            user: ctx.identity.user_id(),
        };
        let mut verdict = live.limiter.check(&facts, now_ns());
        if !verdict.confirm.is_empty() {
            // `shared: exact`: the one Redis round trip, bounded at 20 ms.
            crate::limits::shared::exact::confirm(&mut verdict).await;
        }
        self.record_limits(&verdict);
        let rejected = verdict.is_rejected();
        ctx.verdict = Some(verdict);
        if rejected {
            return self.reject(session, ctx, errors::RATE_LIMITED).await;
        }
        if let Identity::Rejected(reason) = ctx.identity {
            metrics.auth_failures.with_label_values(&[reason]).inc();
            return self.reject(session, ctx, errors::UNAUTHORIZED).await;
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > Self::live(ctx).config.limits.max_request_body_bytes {
                ctx.answered = Some(errors::PAYLOAD_TOO_LARGE);
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(addr) = self.shared.upstream.pick() else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "upstream not resolved yet");
        };
        let t = &Self::live(ctx).config.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(t.upstream_connect);
        peer.options.total_connection_timeout = Some(t.upstream_connect);
        peer.options.read_timeout = Some(t.upstream_read);
        peer.options.write_timeout = Some(t.upstream_write);
        peer.options.idle_timeout = Some(t.upstream_idle);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Drop every client-supplied forwarding and hop-by-hop header, then write our own.
        for name in forwarding::headers_to_strip(&upstream.headers) {
            upstream.remove_header(&name);
        }
        let resolution = ctx.resolution.as_ref().expect("resolved in request_filter");
        let xff = resolution.x_forwarded_for();
        upstream.insert_header("x-forwarded-for", xff)?;
        upstream.insert_header("x-real-ip", resolution.client.to_string())?;
        // No TLS on this listener; a trusted TLS terminator in front is reported as such
        // only through the validated chain, so say what we saw.
        upstream.insert_header("x-forwarded-proto", "http")?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_elapsed = ctx.upstream_started.map(|s| s.elapsed());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = ctx.live.clone().expect("live loaded");
        common_headers(resp, &live, &ctx.request_id)?;
        if let Some(v) = &ctx.verdict {
            Self::rate_limit_headers(resp, v)?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&["connect"])
            .inc();
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let edge = ctx.answered.or_else(|| errors::for_proxy_failure(e));
        let kind = upstream_failure_kind(e);
        ctx.proxy_error = Some(match e.etype() {
            ErrorType::HTTPStatus(_) => "limit",
            _ => kind.unwrap_or("proxy"),
        });
        if matches!(e.esource(), pingora::ErrorSource::Upstream) {
            let kind = kind.unwrap_or("other");
            // Connect failures are already counted in fail_to_connect.
            if kind != "connect" {
                self.shared
                    .metrics
                    .upstream_errors
                    .with_label_values(&[kind])
                    .inc();
            }
        }
        let Some(edge) = edge else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.answered = Some(edge);
        if let Some(live) = ctx.live.clone() {
            let body = Bytes::from(edge.body(None));
            if let Ok(resp) = error_header(edge, body.len(), &live, &ctx.request_id) {
                // write_error_response skips writing if a response already started.
                let _ = session
                    .as_downstream_mut()
                    .write_error_response(resp, body)
                    .await;
            }
        }
        FailToProxy {
            error_code: edge.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let m = &self.shared.metrics;
        m.inflight.dec();
        let Some(live) = ctx.live.clone() else { return };
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.answered.map(|e| e.status))
            .unwrap_or(0);
        let route = ctx
            .route
            .and_then(|i| live.config.routes.get(i))
            .map_or("unmatched", |r| r.0.as_str());
        let elapsed = ctx.started.elapsed();
        m.requests_total
            .with_label_values(&[method_label(&req.method), status_label(status), route])
            .inc();
        m.request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if let Some(up) = ctx.upstream_elapsed {
            m.upstream_duration
                .with_label_values(&[route])
                .observe(up.as_secs_f64());
        }

        let resolution = ctx.resolution.as_ref();
        let verdict = ctx.verdict.as_ref();
        let record = AccessRecord {
            request_id: std::mem::take(&mut ctx.request_id),
            method: req.method.as_str().to_owned(),
            path: clip(req.uri.path(), MAX_PATH).to_owned(),
            query: if live.config.access_log.include_query {
                req.uri.query().map(|q| clip(q, MAX_PATH).to_owned())
            } else {
                None
            },
            route: route.to_owned(),
            status,
            bytes_in: ctx.body_bytes,
            bytes_out: session.body_bytes_sent() as u64,
            duration_ms: elapsed.as_secs_f64() * 1e3,
            upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1e3),
            peer: peer_ip(session),
            client_ip: resolution.map(|r| r.client),
            trust: resolution.map(|r| r.decision),
            forwarded_rejection: resolution.and_then(|r| r.rejection).map(|r| r.as_str()),
            user_id: ctx.identity.user_id().map(str::to_owned),
            auth: ctx.identity.auth_label(),
            policy: verdict
                .and_then(|v| v.rejection().or(v.reported()))
                .map(|o| o.policy.to_string()),
            policy_decision: verdict.and_then(overall_decision),
            shadow_rejected_by: verdict.and_then(|v| {
                let names: Vec<&str> = v.would_reject().collect();
                (!names.is_empty()).then(|| names.join(","))
            }),
            user_agent: req
                .headers
                .get(USER_AGENT)
                .map(|v| clip(&String::from_utf8_lossy(v.as_bytes()), MAX_USER_AGENT).to_owned()),
            error: ctx.proxy_error.or(e.map(|e| e.etype().as_str())),
        };
        record.emit();
    }
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::Allowed => "allowed",
        Decision::Rejected => "rejected",
        Decision::ShadowRejected => "shadow_rejected",
    }
}

/// The request's overall limit decision for the access log; None when no policy matched.
fn overall_decision(v: &Verdict) -> Option<&'static str> {
    if v.is_rejected() {
        Some("rejected")
    } else if v.would_reject().next().is_some() {
        Some("would_reject")
    } else if v.outcomes.is_empty() {
        None
    } else {
        Some("allowed")
    }
}

/// Raw HTTP/1.1 error response for answers given before pingora has a session
/// (408, 431, 400 from the head reader; 503 when over the connection cap).
pub fn raw_error_response(err: EdgeError, live: &Live, request_id: &str) -> Vec<u8> {
    let body = err.body(None);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\n",
        err.status,
        err.reason_phrase()
    )
    .into_bytes();
    // Same header set as every other error the gateway gives.
    if let Ok(head) = error_header(err, body.len(), live, request_id) {
        for (name, value) in head.headers.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/v1/documents", false),
            ("/v1/documents/abc", false),
            ("/v1/a.b/c..d", false),
            ("/v1/../metrics", true),
            ("/v1/./documents", true),
            ("/v1/..", true),
            ("/v1//documents", true),
            ("/v1/%2e%2e/metrics", true),
            ("/v1/%2E./x", true),
            ("/v1/a%2fb", true),
            ("/v1/a\\b", true),
            ("/v1/a%00", true),
            ("v1/x", true),
            ("", true),
        ];
        for (path, want) in cases {
            assert_eq!(is_ambiguous_path(path), want, "{path}");
        }
    }
}
