//! A TLS connection as pingora sees a stream: ALPN and the TLS digest (version, cipher)
//! for the access log, the socket digest (client address) from the TCP stream below.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::accept::h1::buffered::Transport;

/// Sees every plaintext byte read from the client; an error ends the connection.
pub type ReadHook = Box<dyn FnMut(&[u8]) -> std::io::Result<()> + Send + Sync>;

pub struct TlsIo {
    inner: TlsStream<L4Stream>,
    /// Plaintext read ahead (a request head) and put back, served before the TLS stream.
    rewound: Bytes,
    digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
    on_read: Option<ReadHook>,
}

impl std::fmt::Debug for TlsIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo")
            .field("inner", &self.inner)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl TlsIo {
    pub fn new(inner: TlsStream<L4Stream>) -> TlsIo {
        let conn = inner.get_ref().1;
        let version = conn.protocol_version().map_or("", |v| version_name(v));
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("");
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        TlsIo {
            inner,
            rewound: Bytes::new(),
            digest: Arc::new(SslDigest::new(cipher, version, None, None, Vec::new())),
            alpn,
            on_read: None,
        }
    }

    /// Watches what the client sends from now on (the h2 frame watcher).
    pub fn set_read_hook(&mut self, hook: ReadHook) {
        self.on_read = Some(hook);
    }

    /// "TLSv1.3" / "TLSv1.2", as the access log writes it.
    pub fn version(&self) -> &str {
        &self.digest.version
    }
}

/// The names nginx and OpenSSL print; the config allows only these two.
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

impl Transport for TlsIo {
    fn rewind(&mut self, data: &[u8]) {
        if !data.is_empty() {
            let mut v = data.to_vec();
            v.extend_from_slice(&self.rewound);
            self.rewound = v.into();
        }
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.rewound.is_empty() {
            let n = self.rewound.len().min(buf.remaining());
            buf.put_slice(&self.rewound[..n]);
            self.rewound.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(hook) = this.on_read.as_mut() {
            hook(&buf.filled()[before..])?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl Shutdown for TlsIo {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for TlsIo {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().0.id()
    }
}

impl Ssl for TlsIo {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(Arc::clone(&self.digest))
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

/// No peeking through TLS (pingora peeks only for h2c, which a TLS stream never uses).
impl Peek for TlsIo {}

impl GetTimingDigest for TlsIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().0.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_ref().0.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_ref().0.get_write_pending_time()
    }
}

impl GetProxyDigest for TlsIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().0.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().0.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for TlsIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().0.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(digest)
    }
}
