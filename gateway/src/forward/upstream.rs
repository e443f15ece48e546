//! The app's address: resolved off the request path (pingora's `HttpPeer::new`
//! would call blocking getaddrinfo and panic on failure), cached, re-resolved and
//! probed in the background.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Upstream;

#[derive(Default)]
pub struct UpstreamState {
    addrs: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    reachable: AtomicBool,
}

impl UpstreamState {
    /// An IP-literal upstream is known before the background refresh first runs, so the
    /// first requests after start-up are not refused as "not resolved yet"; a name waits.
    pub fn new(upstream: &Upstream) -> UpstreamState {
        let state = UpstreamState::default();
        if let Some(addr) = literal(upstream) {
            state.addrs.store(Arc::new(vec![addr]));
        }
        state
    }

    /// Round-robin over the resolved addresses; None until the first resolution succeeds.
    pub fn pick(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        if addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Some(addrs[i])
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn set(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        if **self.addrs.load() != addrs {
            tracing::info!(upstream_addrs = ?addrs, "upstream resolved");
            self.addrs.store(Arc::new(addrs));
        }
    }
}

fn literal(upstream: &Upstream) -> Option<SocketAddr> {
    let ip = upstream.host.parse().ok()?;
    Some(SocketAddr::new(ip, upstream.port))
}

async fn resolve(upstream: &Upstream) -> std::io::Result<Vec<SocketAddr>> {
    // An IP literal needs no lookup; a name goes through tokio's off-thread resolver.
    if let Some(addr) = literal(upstream) {
        return Ok(vec![addr]);
    }
    Ok(
        tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
            .await?
            .collect(),
    )
}

async fn probe(addr: SocketAddr, connect_timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Resolves and probes the app every `interval` until `shutdown` flips.
pub async fn refresh_loop(
    upstream: Upstream,
    state: Arc<UpstreamState>,
    interval: Duration,
    connect_timeout: Duration,
    up_gauge: prometheus::IntGauge,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match resolve(&upstream).await {
            Ok(addrs) if !addrs.is_empty() => state.set(addrs),
            Ok(_) => {
                tracing::warn!(upstream = %upstream, "upstream resolved to no address; keeping the last good one")
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream, error = %e, "upstream resolution failed; keeping the last good one")
            }
        }
        let up = match state.pick() {
            Some(addr) => probe(addr, connect_timeout).await,
            None => false,
        };
        if up != state.reachable.swap(up, Ordering::Relaxed) {
            if up {
                tracing::info!(upstream = %upstream, "upstream reachable");
            } else {
                tracing::warn!(upstream = %upstream, "upstream unreachable");
            }
        }
        up_gauge.set(i64::from(up));
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_literals_and_names_and_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lit = Upstream {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(
            resolve(&lit).await.unwrap(),
            vec![listener.local_addr().unwrap()]
        );
        let name = Upstream {
            host: "localhost".into(),
            port,
        };
        assert!(!resolve(&name).await.unwrap().is_empty());
        let bad = Upstream {
            host: "no-such-host.invalid".into(),
            port,
        };
        assert!(resolve(&bad).await.map(|a| a.is_empty()).unwrap_or(true));
        assert!(probe(listener.local_addr().unwrap(), Duration::from_secs(1)).await);
        drop(listener);
        let closed: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(!probe(closed, Duration::from_secs(1)).await);
    }

    #[test]
    fn pick_round_robins_and_is_empty_before_resolution() {
        let s = UpstreamState::default();
        assert_eq!(s.pick(), None);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        s.set(vec![b, a, b]);
        let picks: Vec<_> = (0..4).map(|_| s.pick().unwrap()).collect();
        assert_eq!(picks, vec![a, b, a, b]);
    }
}
