//! HTTP/1.1 on one connection (cleartext or TLS): reads each request head under a total
//! deadline (408/431/400 answered here), then hands the connection to pingora's proxy
//! for the rest of the request; repeats for keep-alive.

pub mod buffered;
pub mod head;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Ssl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::accept::h1::buffered::{Buffered, Transport};
use crate::accept::h1::head::{origin_form, read_head, seen, HeadLimits, HeadOutcome};
use crate::forward::conn;
use crate::forward::errors;
use crate::forward::request_log;
use crate::forward::respond::raw_error_response;
use crate::state::Process;

pub async fn serve<S: Transport, P: HttpServerApp>(
    mut io: Box<Buffered<S>>,
    peer: SocketAddr,
    proxy: Arc<P>,
    shared: &Process,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut settings = None;
    let mut first = true;
    loop {
        let live = shared.live.load_full();
        let t = &live.config.timeouts;
        let limits = HeadLimits {
            // A fresh connection gets the header timeout to say anything; a kept-alive one the idle timeout.
            idle: if first {
                t.request_header
            } else {
                t.keepalive_idle
            },
            head: t.request_header,
            max_bytes: live.config.limits.max_request_header_bytes,
            max_headers: live.config.limits.max_request_headers,
        };
        let mut buf = BytesMut::with_capacity(4096);
        // Waiting for a request: a drain closes the connection now rather than after the idle timeout.
        let first_read = tokio::select! {
            r = tokio::time::timeout(limits.idle, io.read_buf(&mut buf)) => r,
            _ = shutdown.wait_for(|draining| *draining) => return,
        };
        match first_read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let started = Instant::now();
        let outcome = read_head(&mut *io, &mut buf, limits).await;
        let answer = match outcome {
            HeadOutcome::Ready => None,
            HeadOutcome::TimedOut => Some(errors::REQUEST_TIMEOUT),
            HeadOutcome::TooLarge => Some(errors::HEADERS_TOO_LARGE),
            HeadOutcome::Malformed(_) => Some(errors::BAD_REQUEST),
            HeadOutcome::Idle | HeadOutcome::Broken => return,
        };
        if let Some(err) = answer {
            let id = edgekit::new_request_id();
            let bytes = raw_error_response(err, &live, &id);
            let _ = tokio::time::timeout(t.downstream_write, async {
                io.write_all(&bytes).await?;
                io.flush().await?;
                io.shutdown().await
            })
            .await;
            let conn = request_log::EdgeConn {
                tls_version: io.get_ssl_digest().as_deref().map(request_log::tls_name),
                balancer: crate::forward::conn::balancer(),
                ..request_log::EdgeConn::plain(peer)
            };
            let m = &shared.metrics;
            request_log::edge_answer(m, conn, seen(&buf), id, err, outcome.reason(), started);
            return;
        }
        // Absolute-form: forward origin-form with Host = the target's authority (RFC 9112 §3.2.2).
        match origin_form(&buf) {
            Some(rewritten) => io.rewind(&rewritten),
            None => io.rewind(&buf),
        }
        drop(buf);
        let mut session = ServerSession::new_http1(io);
        if let Some(s) = settings.take() {
            pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session);
        }
        let Some(reused) = proxy.process_new_http(session, &shutdown).await else {
            return;
        };
        let (stream, next_settings) = reused.consume();
        settings = next_settings;
        io = match stream.into_any().downcast::<Buffered<S>>() {
            Ok(s) => s,
            Err(_) => return,
        };
        // Pingora handed the connection back for the next request; a drain ends it here.
        if conn::keepalive(t, shared.is_draining(), false).is_none() {
            return;
        }
        first = false;
    }
}
