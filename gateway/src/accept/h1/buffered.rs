//! The client connection with a write buffer, so a response head and a small body
//! leave in one send. Generic over the transport: plain TCP or our TLS stream.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes of response gathered before a write reaches the socket: a response head and a
/// small body go out in one send.
const WRITE_BUFFER: usize = 4096;

/// The client connection with a write buffer. pingora's own listeners give each stream
/// a write buffer (and flush where a response must go out); a stream built from a
/// `TcpStream`, as our accept loop does, has none, so every response cost a send for the
/// head and another for the body, each waking the client (perf/RESULTS.md).
#[derive(Debug)]
pub struct Buffered<S = L4Stream> {
    inner: S,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already sent.
    sent: usize,
}

/// What the listener serves HTTP over: a pingora-compatible stream that can put read bytes back.
pub trait Transport:
    AsyncRead
    + AsyncWrite
    + Unpin
    + Send
    + Sync
    + Debug
    + UniqueID
    + Ssl
    + Peek
    + GetTimingDigest
    + GetProxyDigest
    + GetSocketDigest
    + 'static
{
    /// Puts bytes already read in front of what is read next.
    fn rewind(&mut self, data: &[u8]);
}

impl Transport for L4Stream {
    fn rewind(&mut self, data: &[u8]) {
        L4Stream::rewind(self, data)
    }
}

impl<S: Transport> Buffered<S> {
    pub fn new(inner: S) -> Buffered<S> {
        Buffered {
            inner,
            wbuf: Vec::new(),
            sent: 0,
        }
    }

    /// Puts bytes already read (a request head) back in front of the stream.
    pub fn rewind(&mut self, data: &[u8]) {
        self.inner.rewind(data);
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

impl<S: Transport> AsyncRead for Buffered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Transport> AsyncWrite for Buffered<S> {
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
impl<S: Transport> Shutdown for Buffered<S> {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl<S: Transport> UniqueID for Buffered<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Transport> Ssl for Buffered<S> {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

#[async_trait::async_trait]
impl<S: Transport> Peek for Buffered<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl<S: Transport> GetTimingDigest for Buffered<S> {
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

impl<S: Transport> GetProxyDigest for Buffered<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<S: Transport> GetSocketDigest for Buffered<S> {
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
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

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
        let mut io: Buffered = Buffered::new(tcp.into());
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
