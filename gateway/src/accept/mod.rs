//! Accept: everything before pingora has a request. The public accept loop caps
//! connections per client (`caps`, before any handshake is spent), with `tls` runs the
//! handshake under a deadline and picks HTTP/1.1 (`h1`) or HTTP/2 (`h2`) by ALPN; cleartext
//! is HTTP/1.1.
//! A peer in `proxy_protocol.from` (an L4 balancer) must open with a `proxy_protocol`
//! header; the client it names is then the connection's peer for everything, the caps
//! included (checked after the header), and the balancer is logged as `balancer_ip`.

pub mod caps;
pub mod h1;
pub mod h2;
pub mod proxy_protocol;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::apps::HttpServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Ssl, ALPN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use caps::{ConnectionVerdict, Reason};
use pingora_limits::inflight::Guard;

use crate::accept::h1::buffered::Buffered;
use crate::accept::tls::acceptor;
use crate::admit::limits::shared::monotonic_ns;
use crate::admit::net::canonical_ip;
use crate::forward::conn::with_balancer;
use crate::forward::errors;
use crate::forward::request_log;
use crate::forward::respond::raw_error_response;
use crate::state::Process;

/// Accepts until `shutdown` flips. Each connection holds a permit of `permits`,
/// so the caller can wait for all of them to come back to know it has drained.
pub async fn serve<P: HttpServerApp + Send + Sync + 'static>(
    listener: TcpListener,
    proxy: Arc<P>,
    shared: Arc<Process>,
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
        // A balancer's connection is admitted once its header names the client.
        let from_balancer = is_balancer(peer.ip(), &shared);
        let slot = match from_balancer {
            true => None,
            false => match admit(peer, &shared) {
                Ok(slot) => slot,
                Err(_) => {
                    refuse_client(tcp, &shared);
                    continue;
                }
            },
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
            if from_balancer {
                // Boxed: the header's state does not grow every other connection's task.
                Box::pin(proxied(tcp, peer, proxy, &shared, shutdown)).await;
            } else {
                handle(stream(tcp), peer, proxy, &shared, shutdown).await;
            }
            shared.metrics.connections.dec();
            drop(permit);
            drop(slot);
        });
    }
}

/// The per-client caps for a new connection; `Ok` holds its open slot (if counted) until
/// dropped, however the connection ends.
fn admit(peer: SocketAddr, shared: &Process) -> Result<Option<Guard>, Reason> {
    let live = shared.live.load();
    let key = caps::client_key(peer.ip(), &live.client_ip, &live.limiter);
    let caps = caps::Caps::from_config(&live.config.limits);
    match shared.conn_limits.admit(key, caps, monotonic_ns()) {
        ConnectionVerdict::Exempt => Ok(None),
        ConnectionVerdict::Admitted(slot) => Ok(slot),
        ConnectionVerdict::Refused(reason) => {
            shared
                .metrics
                .connection_rejections
                .with_label_values(&[reason.as_str()])
                .inc();
            if shared.conn_limits.should_log(key, monotonic_ns()) {
                tracing::warn!(peer = %peer.ip(), reason = reason.as_str(), "connections refused: per-client cap (logged once per 10 s per client)");
            }
            Err(reason)
        }
    }
}

/// The peer is in `proxy_protocol.from` (off: one length check per connection).
fn is_balancer(peer: IpAddr, shared: &Process) -> bool {
    let live = shared.live.load();
    if live.balancers.is_empty() {
        return false;
    }
    let ip = canonical_ip(peer);
    live.balancers.iter().any(|n| n.contains(&ip))
}

/// A connection from a balancer: its PROXY header within `proxy_protocol.header_timeout`,
/// else closed (counted, logged at most once per 10 s per balancer) with nothing read
/// as HTTP. Then the named source (or, for `LOCAL`/`UNKNOWN`, the balancer itself) is the
/// peer: the per-client caps are checked for it, and the connection is served as any other.
async fn proxied<P: HttpServerApp + Send + Sync + 'static>(
    tcp: TcpStream,
    balancer: SocketAddr,
    proxy: Arc<P>,
    shared: &Arc<Process>,
    shutdown: watch::Receiver<bool>,
) {
    let mut io = stream(tcp);
    let deadline = shared.live.load().config.proxy_protocol.header_timeout;
    let (header, rest) = match proxy_protocol::read(&mut io, deadline).await {
        Ok(read) => read,
        Err(e) => {
            let m = &shared.metrics.proxy_protocol_errors;
            m.with_label_values(&[e.reason()]).inc();
            if shared
                .conn_limits
                .should_log_balancer(balancer.ip(), monotonic_ns())
            {
                tracing::warn!(balancer = %balancer.ip(), reason = e.reason(), "PROXY protocol header refused, connection closed (logged once per 10 s per balancer)");
            }
            return;
        }
    };
    let peer = match header {
        proxy_protocol::Header::Proxied { source, .. } => source,
        proxy_protocol::Header::Local => balancer,
    };
    if !rest.is_empty() {
        io.rewind(&rest);
    }
    let _slot = match admit(peer, shared) {
        Ok(slot) => slot,
        Err(_) => return refuse_client(io, shared),
    };
    let serve = handle(io, peer, proxy, shared, shutdown);
    with_balancer(Some(balancer.ip()), serve).await;
}

/// A TCP connection as pingora's stream.
fn stream(tcp: TcpStream) -> L4Stream {
    let _ = tcp.set_nodelay(true);
    tcp.into()
}

/// Over a per-client cap: TLS is closed at once (no handshake); cleartext gets a short
/// JSON 429 and a lingering close (so the client's unread request does not turn it into a
/// reset), under a tiny deadline and at most `REFUSING` at a time, so a flood can hold
/// neither many tasks nor many fds (beyond that it is just closed).
fn refuse_client<S>(tcp: S, shared: &Arc<Process>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    static REFUSING: Semaphore = Semaphore::const_new(64);
    let Some(turn) = shared
        .tls
        .is_none()
        .then(|| REFUSING.try_acquire().ok())
        .flatten()
    else {
        return drop(tcp);
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let _turn = turn;
        let id = edgekit::new_request_id();
        let bytes = raw_error_response(errors::TOO_MANY_CONNECTIONS, &shared.live.load(), &id);
        let mut tcp = tcp;
        let answer = async {
            tcp.write_all(&bytes).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 512];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSE_DEADLINE, answer).await;
    });
}

/// Writing a refusal and draining the client's request: a local client needs well under this.
const REFUSE_DEADLINE: Duration = Duration::from_millis(250);

/// Over the connection cap: a short 503 (cleartext listener only) and close, without reading
/// the request.
async fn refuse(mut tcp: TcpStream, peer: SocketAddr, shared: &Process) {
    let live = shared.live.load();
    let id = edgekit::new_request_id();
    let bytes = raw_error_response(errors::UNAVAILABLE, &live, &id);
    // A TLS client could not read cleartext; it only sees the close (no handshake is spent).
    if shared.tls.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&bytes)).await;
    }
    let started = Instant::now();
    let m = &shared.metrics;
    request_log::edge_answer(
        m,
        request_log::EdgeConn::plain(peer),
        request_log::Seen::default(),
        id,
        errors::UNAVAILABLE,
        "over_connection_cap",
        started,
    );
}

async fn handle<P: HttpServerApp + Send + Sync + 'static>(
    mut stream: L4Stream,
    peer: SocketAddr,
    proxy: Arc<P>,
    shared: &Arc<Process>,
    shutdown: watch::Receiver<bool>,
) {
    // pingora reads the client address from the socket digest (with PROXY protocol, the
    // header's source).
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    let Some(tls) = &shared.tls else {
        return h1::serve(
            Box::new(Buffered::new(stream)),
            peer,
            proxy,
            shared,
            shutdown,
        )
        .await;
    };
    let deadline = shared
        .live
        .load()
        .config
        .tls
        .as_ref()
        .map_or(crate::config::TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
            t.handshake_timeout
        });
    let io = match acceptor::handshake(&tls.acceptor, stream, deadline).await {
        Ok(io) => io,
        Err(reason) => {
            let m = &shared.metrics.tls_handshake_failures;
            m.with_label_values(&[reason]).inc();
            return;
        }
    };
    if io.selected_alpn_proto() == Some(ALPN::H2) {
        let reason = h2::serve(io, peer, proxy, shared.clone(), shutdown).await;
        shared.metrics.h2_closed.with_label_values(&[reason]).inc();
    } else {
        h1::serve(Box::new(Buffered::new(io)), peer, proxy, shared, shutdown).await;
    }
}
