//! HTTP/2 over TLS: pingora's h2 server with our limits (codec settings, frame-flood
//! watcher, first-request, header, idle and ping deadlines); every stream goes through
//! `process_new_http`, so it gets the same pipeline as an HTTP/1.1 request.

mod frames;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::apps::HttpServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::http::v2::server::{self, H2Accept, H2Options, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Ssl, Stream};
use tokio::sync::watch;

use crate::accept::tls::stream::TlsIo;
use crate::config::Http2Config;
use crate::forward::conn;
use crate::forward::errors;
use crate::forward::request_log;
use crate::forward::respond;
use crate::state::Process;
use frames::{FrameLimits, FrameWatch, Violation};

/// Streams pingora refused (bad :path, Content-Length, authority) before the connection goes:
/// pingora's own accept loop keeps this budget, its public `from_h2_conn` does not.
const MAX_REJECTED_STREAMS: usize = 32;

/// The h2 codec's settings from the config.
pub fn options(h: &Http2Config) -> H2Options {
    let mut o = server::default_h2_options();
    o.max_concurrent_streams(h.max_concurrent_streams)
        .max_header_list_size(h.max_header_list_bytes)
        .max_send_buffer_size(h.max_send_buffer_bytes)
        .max_pending_accept_reset_streams(h.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(h.max_local_error_reset_streams));
    o
}

/// RFC 9113 §6.5.2 size of a request's header list (pseudo-headers included, 32 bytes of
/// overhead per field) and its field count: what `limits.max_request_header_bytes/_headers` cap.
pub fn header_list_size(req: &RequestHeader) -> (usize, usize) {
    let uri = &req.uri;
    let pseudo = [
        (":method", req.method.as_str().len()),
        (
            ":path",
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        ),
        (":scheme", uri.scheme_str().map_or(5, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
    ]
    .iter()
    .map(|(n, v)| n.len() + v + 32)
    .sum::<usize>();
    let fields: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    (pseudo + fields, req.headers.len())
}

/// What the frame watcher (in the TLS read path) tells the accept loop.
#[derive(Default)]
struct Signals {
    /// 0 = none, else 1 + `Violation` index.
    violation: AtomicU8,
    /// Milliseconds after `epoch` + 1 that the open header block started; 0 = none.
    block_since: AtomicU64,
}

const VIOLATIONS: [Violation; 4] = [
    Violation::RapidReset,
    Violation::ControlFlood,
    Violation::ContinuationFlood,
    Violation::RequestTrailers,
];

impl Signals {
    fn violation(&self) -> Option<Violation> {
        match self.violation.load(Ordering::Relaxed) {
            0 => None,
            n => VIOLATIONS.get(n as usize - 1).copied(),
        }
    }
}

/// Live streams of the connection, and since when it has had none (for the idle timeout).
struct Active {
    count: AtomicUsize,
    epoch: Instant,
    /// Milliseconds after `epoch` the last stream ended (0 = the connection's start).
    idle_since: AtomicU64,
}

struct StreamGuard(Arc<Active>);

impl Active {
    fn start(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        StreamGuard(Arc::clone(self))
    }
    /// How long the connection has had no open stream (zero while it has one).
    fn idle_for(&self) -> Duration {
        if self.count.load(Ordering::Relaxed) != 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(since)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = self.0.epoch.elapsed().as_millis() as u64;
            self.0.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

/// Serves one h2 connection to its end; returns why it closed.
pub async fn serve<P: HttpServerApp + Send + Sync + 'static>(
    mut io: TlsIo,
    peer: SocketAddr,
    proxy: Arc<P>,
    shared: Arc<Process>,
    shutdown: watch::Receiver<bool>,
) -> &'static str {
    let live = shared.live.load_full();
    let h = live.config.http2.clone();
    let epoch = Instant::now();
    let signals = Arc::new(Signals::default());
    let mut frames = FrameWatch::new(FrameLimits {
        max_resets: h.max_client_resets,
        max_control: h.max_control_frames,
        max_continuations: h.max_continuation_frames,
        window: h.flood_window,
    });
    let hook_signals = Arc::clone(&signals);
    io.set_read_hook(Box::new(move |bytes| {
        let now = Instant::now();
        if let Err(v) = frames.feed(bytes, now) {
            let code = VIOLATIONS.iter().position(|x| *x == v).unwrap_or(0) as u8 + 1;
            hook_signals.violation.store(code, Ordering::Relaxed);
            return Err(std::io::Error::other(v.reason()));
        }
        let since = frames
            .header_block_since()
            .map_or(0, |t| t.duration_since(epoch).as_millis() as u64 + 1);
        hook_signals.block_since.store(since, Ordering::Relaxed);
        Ok(())
    }));
    let digest = Arc::new(Digest {
        ssl_digest: io.get_ssl_digest(),
        timing_digest: io.get_timing_digest(),
        proxy_digest: io.get_proxy_digest(),
        socket_digest: io.get_socket_digest(),
    });
    let stream: Stream = Box::new(io);
    let mut conn = match tokio::time::timeout(
        h.header_timeout,
        server::handshake(stream, Some(options(&h))),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => {
            return signals
                .violation()
                .map_or("handshake_failed", Violation::reason)
        }
        Err(_) => return "header_timeout",
    };
    let mut pings = conn.ping_pong();
    let keepalive = async {
        let Some(p) = pings.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(h.keepalive_interval).await;
            let pong = tokio::time::timeout(h.keepalive_timeout, p.ping(h2::Ping::opaque()));
            if !matches!(pong.await, Ok(Ok(_))) {
                return;
            }
        }
    };
    tokio::pin!(keepalive);
    // Checks the open header block's age and the idle time; never a zero period.
    let period = h.header_timeout.min(h.idle_timeout) / 4;
    let mut deadlines = tokio::time::interval(period.max(Duration::from_millis(50)));
    let active = Arc::new(Active {
        count: AtomicUsize::new(0),
        epoch,
        idle_since: AtomicU64::new(0),
    });
    // One drain signal for the connection's life, not a new `changed()` per stream.
    let mut drain_watch = shutdown.clone();
    let drain = drain_watch.changed();
    tokio::pin!(drain);
    let mut rejected = 0usize;
    let mut served_any = false;
    let mut draining = false;
    loop {
        // A fresh connection gets the header timeout to open its first stream.
        let idle = if served_any {
            h.idle_timeout
        } else {
            h.header_timeout
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut drain, if !draining => {
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
            _ = &mut keepalive => return "ping_timeout",
            _ = deadlines.tick() => {
                let since = signals.block_since.load(Ordering::Relaxed);
                let open = since != 0
                    && epoch.elapsed() > Duration::from_millis(since - 1) + h.header_timeout;
                if open {
                    return "header_timeout";
                }
                if active.idle_for() > idle {
                    return if served_any { "idle_timeout" } else { "header_timeout" };
                }
                continue;
            }
            a = HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)) => a,
        };
        let session = match accepted {
            Ok(Some(H2Accept::Session(s))) => s,
            Ok(Some(H2Accept::Rejected)) => {
                rejected += 1;
                if rejected >= MAX_REJECTED_STREAMS {
                    return "malformed_streams";
                }
                continue;
            }
            Ok(None) => {
                return if draining {
                    "shutdown"
                } else {
                    "client_closed"
                }
            }
            Err(e) => return close_reason(&e, signals.violation(), draining),
        };
        served_any = true;
        let guard = active.start();
        let (proxy, shared, shutdown) = (proxy.clone(), shared.clone(), shutdown.clone());
        // Boxed: tokio moves a spawned future several times (spawn, task cell, stage
        // changes); a pointer is cheaper to move than the stream's state.
        let task = Box::pin(stream_task(session, guard, peer, proxy, shared, shutdown));
        match crate::forward::conn::balancer() {
            None => tokio::spawn(task),
            Some(b) => tokio::spawn(crate::forward::conn::with_balancer(Some(b), task)),
        };
    }
}

/// One stream, from its HEADERS to the end of its response. Kept small (it is spawned per
/// request): the rare refusal path is boxed, the pipeline is pingora's boxed future.
async fn stream_task<P: HttpServerApp + Send + Sync + 'static>(
    session: HttpSession,
    _guard: StreamGuard,
    peer: SocketAddr,
    proxy: Arc<P>,
    shared: Arc<Process>,
    shutdown: watch::Receiver<bool>,
) {
    let mut session = session;
    // Rapid reset: a stream the client reset before we got to it does no work (no
    // pipeline, no upstream request). Its RST_STREAM usually came in the same read.
    tokio::task::yield_now().await;
    let reset = tokio::select! {
        biased;
        _ = session.idle() => true,
        _ = std::future::ready(()) => false,
    };
    if reset {
        return;
    }
    let (bytes, fields) = header_list_size(session.req_header());
    let mut session = ServerSession::new_http2(session);
    let live = shared.live.load();
    let limits = &live.config.limits;
    if bytes > limits.max_request_header_bytes || fields > limits.max_request_headers {
        drop(live);
        Box::pin(refuse_oversized(session, peer, &shared)).await;
        return;
    }
    conn::client_timeouts(&mut session, &live.config.timeouts);
    drop(live);
    proxy.process_new_http(session, &shutdown).await;
}

/// Our JSON 431 on the stream (the codec's bare 431 is only above `max_header_list_bytes`).
async fn refuse_oversized(mut session: ServerSession, peer: SocketAddr, shared: &Process) {
    let started = Instant::now();
    let req = session.req_header().clone();
    let tls = session.digest().and_then(|d| d.ssl_digest.clone());
    let live = shared.live.load();
    let id = edgekit::new_request_id();
    let err = errors::HEADERS_TOO_LARGE;
    let body = err.body(None);
    if let Ok(head) = respond::error_header(err, body.len(), &live, &id) {
        let write = async {
            session.write_response_header(Box::new(head)).await?;
            session.write_response_body(Bytes::from(body), true).await?;
            session.finish().await
        };
        let _ = tokio::time::timeout(live.config.timeouts.downstream_write, write).await;
    }
    let conn = request_log::EdgeConn {
        peer,
        balancer: crate::forward::conn::balancer(),
        protocol: "HTTP/2",
        tls_version: tls.as_deref().map(request_log::tls_name),
    };
    let seen = request_log::Seen::request(&req);
    request_log::edge_answer(&shared.metrics, conn, seen, id, err, "too_large", started);
}

/// Pure: why the codec ended the connection.
fn close_reason(e: &pingora::Error, violation: Option<Violation>, draining: bool) -> &'static str {
    if let Some(v) = violation {
        return v.reason();
    }
    let h2e = e.root_cause().downcast_ref::<h2::Error>();
    match h2e {
        Some(h) if (h.is_io() || h.is_remote()) && draining => "shutdown",
        Some(h) if h.is_io() || h.is_remote() => "client_closed",
        Some(h) if h.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) => "enhance_your_calm",
        Some(_) => "protocol_error",
        None if draining => "shutdown",
        None => "client_closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::labels::H2_CLOSE_REASONS;

    #[test]
    fn header_list_size_counts_pseudo_headers_and_overhead() {
        let mut req = RequestHeader::build("GET", b"/v1/x", None).unwrap();
        let base = header_list_size(&req);
        // :method GET, :path /v1/x, :scheme (5 assumed), :authority empty.
        assert_eq!(base, (7 + 3 + 32 + 5 + 5 + 32 + 7 + 5 + 32 + 10 + 32, 0));
        req.insert_header("x-a", "b".repeat(100)).unwrap();
        assert_eq!(header_list_size(&req), (base.0 + 3 + 100 + 32, 1));
    }

    #[test]
    fn close_reasons_are_bounded() {
        // A connection lost under the codec: pingora's error with no h2 reason.
        let io = pingora::Error::new(pingora::ErrorType::H2Error);
        let calm = pingora::Error::because(
            pingora::ErrorType::H2Error,
            "x",
            h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM),
        );
        let proto = pingora::Error::because(
            pingora::ErrorType::H2Error,
            "x",
            h2::Error::from(h2::Reason::PROTOCOL_ERROR),
        );
        let cases = [
            (&io, None, false, "client_closed"),
            (&io, None, true, "shutdown"),
            (&io, Some(Violation::RapidReset), false, "rapid_reset"),
            (&io, Some(Violation::ControlFlood), false, "control_flood"),
            (&calm, None, false, "enhance_your_calm"),
            (&proto, None, false, "protocol_error"),
        ];
        for (e, v, draining, want) in cases {
            let got = close_reason(e, v, draining);
            assert_eq!(got, want, "{e} {v:?}");
            assert!(H2_CLOSE_REASONS.contains(&got));
        }
        for v in VIOLATIONS {
            assert!(H2_CLOSE_REASONS.contains(&v.reason()));
        }
    }
}
