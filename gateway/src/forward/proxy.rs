//! The pingora `ProxyHttp` impl: wires the stages into pingora's request phases.
//! Decisions live in `admit`, response shapes in `respond`, failure classes in
//! `errors`; this file calls them and records metrics and the access log.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::admit::client_ip::Resolution;
use crate::admit::identity::Identity;
use crate::admit::limits::Verdict;
use crate::admit::{self, Admission, Now, RefusalKind};
use crate::forward::body_relay::BodyRelay;
use crate::forward::conn;
use crate::forward::errors::{self, EdgeError, ProxyError, UpstreamFailure};
use crate::forward::headers;
use crate::forward::request_log::{self, Finished};
use crate::forward::respond;
use crate::state::{Live, Process};

pub struct Gateway {
    pub shared: Arc<Process>,
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
    body: BodyRelay,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    /// Set when the gateway itself answered (edge error).
    answered: Option<EdgeError>,
    proxy_error: Option<ProxyError>,
    /// This request's slot under `limits.max_in_flight_per_client`. Dropped before the
    /// client can see the end of its answer (`response_body_filter` at the last piece,
    /// `fail_to_proxy` before its error answer), else by `logging`, else with the ctx.
    inflight: Option<pingora_limits::inflight::Guard>,
}

impl RequestCtx {
    fn live(&self) -> &Live {
        self.live
            .as_deref()
            .expect("live config is loaded in early_request_filter")
    }

    fn record(&mut self, found: Admission) {
        self.request_id = found.request_id;
        self.route = found.route;
        self.resolution = Some(found.resolution);
        self.identity = found.identity;
        self.verdict = found.verdict;
        self.inflight = found.inflight;
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

impl Gateway {
    /// Answers at the edge with a JSON error; `Ok(true)` tells pingora the response is sent.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        kind: RefusalKind,
    ) -> Result<bool> {
        let refused = kind.refused();
        let err = refused.answer;
        ctx.proxy_error = refused.log_error;
        // Jitter from the clock's low bits: enough to spread retries, no RNG call.
        let (resp, body) = respond::refusal(
            err,
            ctx.live(),
            &ctx.request_id,
            ctx.verdict.as_ref(),
            Now::mono_ns() >> 10,
        )?;
        let unread_body = admit::has_request_body(session.req_header());
        let t = &ctx.live().config.timeouts;
        session.set_keepalive(conn::keepalive(t, self.shared.is_draining(), unread_body));
        ctx.answered = Some(err);
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
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
            body: BodyRelay::default(),
            upstream_started: None,
            upstream_elapsed: None,
            answered: None,
            proxy_error: None,
            inflight: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let live = self.shared.live.load_full();
        let t = &live.config.timeouts;
        session.set_keepalive(conn::keepalive(t, self.shared.is_draining(), false));
        conn::client_timeouts(session, t);
        ctx.live = Some(live);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let live = ctx.live.clone().expect("live loaded");
        let peer = peer_ip(session).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let admitted = admit::admit(&live, peer, session.req_header(), Now::read());
        // `shared: exact` policies: the one Redis round trip (bounded), else a no-op.
        match admit::exact::confirm(admitted).await {
            Ok(found) => {
                request_log::admission(&self.shared.metrics, &found, None);
                ctx.record(found);
                // `content-length: 0` makes the request complete upstream at its head: an h2
                // stream waits for its END_STREAM first, so one refused later (a trailer
                // section) never reaches the app. Not gated on `is_body_done()`: pingora
                // reads `content-length: 0` as done while the stream is still open. On a
                // stream that already ended, the read returns at once.
                let req = session.req_header();
                if req.version == http::Version::HTTP_2 && admit::declared_body_len(req) == Some(0)
                {
                    let deadline = live.config.timeouts.downstream_read;
                    let end = async {
                        while session.read_request_body().await?.is_some() {}
                        Ok::<(), Box<Error>>(())
                    };
                    match tokio::time::timeout(deadline, end).await {
                        Ok(read) => read?,
                        Err(_) => {
                            return Error::e_explain(
                                ErrorType::HTTPStatus(408),
                                "h2 stream with content-length 0 not ended",
                            )
                        }
                    }
                }
                Ok(false)
            }
            Err(refusal) => {
                request_log::admission(&self.shared.metrics, &refusal.so_far, Some(refusal.kind));
                ctx.record(refusal.so_far);
                self.refuse(session, ctx, refusal.kind).await
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.live().config.limits.max_request_body_bytes {
                ctx.answered = Some(errors::PAYLOAD_TOO_LARGE);
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limit");
            }
        }
        let req = session.req_header();
        *body = ctx
            .body
            .pass(body.take(), end_of_stream, || admit::declared_body_len(req));
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
        let t = &ctx.live().config.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        conn::upstream_timeouts(&mut peer, t);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let trusted = peer_ip(session).is_some_and(|ip| ctx.live().client_ip.is_trusted(ip));
        let proto =
            crate::admit::client_ip::forwarded::forwarded_proto(&upstream.headers, trusted, tls);
        // Drop every client-supplied forwarding and hop-by-hop header, then write our own
        // (the ones we write replace the client's copy as they are inserted).
        let strip = headers::headers_to_strip(&upstream.headers);
        for name in strip.iter().filter(|n| !headers::is_rewritten(n)) {
            upstream.remove_header(name);
        }
        let resolution = ctx.resolution.as_ref().expect("resolved in request_filter");
        let (xff, real_ip) = resolution.upstream_values();
        upstream.insert_header("x-forwarded-for", xff)?;
        upstream.insert_header("x-real-ip", real_ip)?;
        upstream.insert_header("x-forwarded-proto", http::HeaderValue::from_static(proto))?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if session.req_header().version == http::Version::HTTP_2 {
            if let Some(cookie) = headers::joined_cookie(&upstream.headers) {
                upstream.insert_header(http::header::COOKIE, cookie)?;
            }
        }
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
        respond::common_headers(resp, ctx.live(), &ctx.request_id)?;
        if let Some(v) = &ctx.verdict {
            respond::rate_limit_headers(resp, v)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // The in-flight slot frees before the client can see the end of its answer: a client
        // that sends its next request on the last byte is not refused for this one.
        if end_of_stream {
            ctx.inflight.take();
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let m = &self.shared.metrics;
        let kind = UpstreamFailure::Connect.as_str();
        m.upstream_errors.with_label_values(&[kind]).inc();
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = errors::classify(e);
        ctx.proxy_error = Some(failure.log);
        // Connect failures are already counted in fail_to_connect.
        if let Some(kind) = failure.upstream.filter(|k| *k != UpstreamFailure::Connect) {
            let m = &self.shared.metrics;
            m.upstream_errors.with_label_values(&[kind.as_str()]).inc();
        }
        let Some(edge) = ctx.answered.or(failure.answer) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.answered = Some(edge);
        // As in `response_body_filter`: free the slot before the answer can reach the client.
        ctx.inflight.take();
        if let Some(live) = ctx.live.clone() {
            let body = edge.body(None);
            if let Ok(resp) = respond::error_header(edge, body.len(), &live, &ctx.request_id) {
                // write_error_response skips writing if a response already started.
                let _ = session
                    .as_downstream_mut()
                    .write_error_response(resp, Bytes::from(body))
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
        // Answers that took neither path above (refusals, no body pass): the slot frees
        // before the log line is written.
        ctx.inflight.take();
        let Some(live) = ctx.live.clone() else { return };
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.answered.map(|e| e.status))
            .unwrap_or(0);
        let route = ctx
            .route
            .and_then(|i| live.config.routes.get(i))
            .map_or("unmatched", |r| r.0.as_str());
        let finished = Finished {
            req: session.req_header(),
            request_id: std::mem::take(&mut ctx.request_id),
            status,
            route,
            started: ctx.started,
            upstream_elapsed: ctx.upstream_elapsed,
            bytes_in: request_log::bytes_in(
                ctx.body_bytes,
                ctx.answered.is_some(),
                crate::admit::declared_body_len(session.req_header()),
            ),
            bytes_out: session.body_bytes_sent() as u64,
            digest: session.digest(),
            balancer: super::conn::balancer(),
            resolution: ctx.resolution.as_ref(),
            identity: &ctx.identity,
            verdict: ctx.verdict.as_ref(),
            error: (ctx.proxy_error.map(ProxyError::as_str)).or(e.map(|e| e.etype().as_str())),
        };
        request_log::proxied(m, live.config.access_log.include_query, finished);
    }
}
