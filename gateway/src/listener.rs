//! The public accept loop: caps connections, reads each request head under a
//! total deadline (408/431/400 answered here), then hands the connection to
//! pingora's proxy for the rest of the request; repeats for keep-alive.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::errors;
use crate::forwarding;
use crate::head::{read_head, HeadLimits, HeadOutcome};
use crate::request_log;
use crate::respond::raw_error_response;
use crate::state::Shared;

/// Accepts until `shutdown` flips. Each connection holds a permit of `permits`,
/// so the caller can wait for all of them to come back to know it has drained.
pub async fn serve<P: HttpServerApp + Send + Sync + 'static>(
    listener: TcpListener,
    proxy: Arc<P>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.inc();
            let shared = shared.clone();
            tokio::spawn(async move { refuse(tcp, peer, &shared).await });
            continue;
        };
        let (proxy, shared, shutdown) = (proxy.clone(), shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            shared.metrics.connections.inc();
            handle(tcp, peer, proxy, &shared, shutdown).await;
            shared.metrics.connections.dec();
            drop(permit);
        });
    }
}

/// Over the connection cap: a short 503 and close, without reading the request.
async fn refuse(mut tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    let live = shared.live.load();
    let id = forwarding::new_request_id();
    let bytes = raw_error_response(errors::UNAVAILABLE, &live, &id);
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&bytes)).await;
    let started = Instant::now();
    let m = &shared.metrics;
    request_log::edge_answer(
        m,
        peer,
        id,
        errors::UNAVAILABLE,
        "over_connection_cap",
        started,
    );
}

async fn handle<P: HttpServerApp>(
    tcp: TcpStream,
    peer: SocketAddr,
    proxy: Arc<P>,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream: L4Stream = tcp.into();
    // pingora reads the client address from the socket digest.
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    let mut io = Box::new(Buffered::new(stream));
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
            HeadOutcome::Malformed => Some(errors::BAD_REQUEST),
            HeadOutcome::Idle | HeadOutcome::Broken => return,
        };
        if let Some(err) = answer {
            let id = forwarding::new_request_id();
            let bytes = raw_error_response(err, &live, &id);
            let _ = tokio::time::timeout(t.downstream_write, async {
                io.write_all(&bytes).await?;
                io.flush().await?;
                io.shutdown().await
            })
            .await;
            request_log::edge_answer(&shared.metrics, peer, id, err, outcome.reason(), started);
            return;
        }
        io.inner.rewind(&buf);
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
        io = match stream.into_any().downcast::<Buffered>() {
            Ok(s) => s,
            Err(_) => return,
        };
        if shared.is_draining() {
            return;
        }
        first = false;
    }
}

/// Bytes of response gathered before a write reaches the socket: a response head and a
/// small body go out in one send.
const WRITE_BUFFER: usize = 4096;

/// The client connection with a write buffer. pingora's own listeners give each stream
/// a write buffer (and flush where a response must go out); a stream built from a
/// `TcpStream`, as our accept loop does, has none, so every response cost a send for the
/// head and another for the body, each waking the client (perf/RESULTS.md).
#[derive(Debug)]
struct Buffered {
    inner: L4Stream,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already sent.
    sent: usize,
}

impl Buffered {
    fn new(inner: L4Stream) -> Buffered {
        Buffered {
            inner,
            wbuf: Vec::new(),
            sent: 0,
        }
    }

    /// Sends what is buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.wbuf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.wbuf.len() + buf.len() > WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Buffered {}

#[async_trait::async_trait]
impl Peek for Buffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_writes_go_out_together_on_flush_and_large_ones_pass_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut io = Buffered::new(tcp.into());
        io.write_all(b"head ").await.unwrap();
        io.write_all(b"body").await.unwrap();
        assert_eq!(io.wbuf, b"head body", "held until flush");
        io.flush().await.unwrap();
        assert!(io.wbuf.is_empty());
        let big = vec![b'x'; WRITE_BUFFER * 3];
        io.write_all(&big).await.unwrap();
        io.write_all(b"tail").await.unwrap();
        AsyncWriteExt::shutdown(&mut io).await.unwrap();
        drop(io);
        let got = client.await.unwrap();
        let mut want = b"head body".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(got, want, "shutdown flushes what is left, in order");
    }
}
