//! A fleet of gateway processes sharing limits: requests from chosen loopback sources,
//! background traffic that must never fail or stall, and waits on their metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{raw_request, GatewayProc};

pub const UP: &str = "gateway_shared_limits_up";

pub fn wait_all(
    gws: &[GatewayProc],
    what: &str,
    limit: Duration,
    ok: impl Fn(&GatewayProc) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if gws.iter().all(&ok) {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let states: Vec<String> = gws
                .iter()
                .map(|g| {
                    format!(
                        "up={} replicas={}",
                        g.metric_sum(UP, &[]),
                        g.metric_sum("gateway_shared_limits_replicas", &[])
                    )
                })
                .collect();
            panic!("{what} not reached within {limit:?}: {states:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request from `local`; (status, elapsed).
pub async fn hit(local: &str, gw: SocketAddr, path: &str) -> (u16, Duration) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    let r = raw_request(
        local.parse().unwrap(),
        gw,
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    (r.map_or(0, |r| r.status), start.elapsed())
}

/// `count` requests round-robin over `gws`, `pace` apart: none may fail (only 200 or
/// 429) or take 0.5 s, whatever Redis is doing. Returns (admitted, slowest).
pub async fn round_robin(
    gws: &[GatewayProc],
    local: &str,
    path: &str,
    count: usize,
    pace: Duration,
) -> (usize, Duration) {
    let (mut admitted, mut slowest) = (0, Duration::ZERO);
    for i in 0..count {
        let (status, took) = hit(local, gws[i % gws.len()].addr, path).await;
        slowest = slowest.max(took);
        assert!(
            status == 200 || status == 429,
            "{path} from {local}: {status}"
        );
        admitted += usize::from(status == 200);
        tokio::time::sleep(pace).await;
    }
    assert!(slowest < Duration::from_millis(500), "{path}: {slowest:?}");
    (admitted, slowest)
}

/// Traffic on every policy from fresh addresses while a fault is injected.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Duration, Vec<u16>)>,
}

impl Traffic {
    pub async fn start(gws: &[GatewayProc]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(background_traffic(
            gws.iter().map(|g| g.addr).collect(),
            stop.clone(),
        ));
        // Some healthy traffic first, so the fault hits a busy fleet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Traffic { stop, task }
    }

    /// Stops it; asserts nothing failed or took 0.5 s. Returns (requests, slowest).
    pub async fn finish(self, what: &str) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, slowest, bad) = self.task.await.unwrap();
        assert!(bad.is_empty(), "failed requests during {what}: {bad:?}");
        assert!(slowest < Duration::from_millis(500), "{what}: {slowest:?}");
        (sent, slowest)
    }
}

pub async fn background_traffic(
    gws: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> (usize, Duration, Vec<u16>) {
    let (mut sent, mut slowest, mut bad) = (0usize, Duration::ZERO, Vec::new());
    let paths = ["/v1/sync/x", "/v1/exact/x", "/v1/full/x", "/v1/share/x"];
    while !stop.load(Ordering::Relaxed) && sent < 5_000 {
        let local = format!("127.0.1.{}", 1 + sent % 200);
        let (status, took) = hit(&local, gws[sent % gws.len()], paths[sent % paths.len()]).await;
        slowest = slowest.max(took);
        if status != 200 && status != 429 {
            bad.push(status);
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sent, slowest, bad)
}

pub fn in_sync(g: &GatewayProc) -> bool {
    g.metric_sum(UP, &[]) == 1.0 && g.metric_sum("gateway_shared_limits_replicas", &[]) == 3.0
}

pub fn fleet_sum(gws: &[GatewayProc], name: &str, labels: &[(&str, &str)]) -> f64 {
    gws.iter().map(|g| g.metric_sum(name, labels)).sum()
}

/// Waits (at most 3 s) until every replica's `gateway_shared_limits_up` is `up`.
pub fn wait_up(gws: &[GatewayProc], up: f64, what: &str) -> Duration {
    wait_all(gws, what, Duration::from_secs(3), |g| {
        g.metric_sum(UP, &[]) == up
    })
}

/// WARN lines "shared limits degraded" over the fleet: one per episode.
pub fn degraded_episodes(gws: &[GatewayProc]) -> usize {
    gws.iter()
        .map(|g| g.proc.log_text().matches("shared limits degraded").count())
        .sum()
}

/// One client (127.0.0.11) round-robin on `/v1/sync/a` over the fleet until stopped (at
/// most 4000 requests, 20 ms apart): (sent, admitted, failed, slowest).
pub async fn client_load(
    gws: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> (usize, usize, usize, Duration) {
    let (mut sent, mut admitted, mut failed, mut slowest) = (0, 0, 0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) && sent < 4_000 {
        let (status, took) = hit("127.0.0.11", gws[sent % gws.len()], "/v1/sync/a").await;
        slowest = slowest.max(took);
        admitted += usize::from(status == 200);
        failed += usize::from(status != 200 && status != 429);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (sent, admitted, failed, slowest)
}

/// Policies of the failover tests: one the client spreads over the fleet (60/min, burst 30)
/// and one per mode / `on_unavailable` for the background traffic.
pub const FAILOVER_POLICIES: &str = r#"  sync_interval: 250ms
rate_limits:
  policies:
    - {name: spread, key: ip, rate: 60/min, burst: 30, match: {path_prefix: /v1/sync}}
    - {name: login, key: ip, rate: 1/hour, burst: 5, match: {path_prefix: /v1/exact}, shared: exact}
    - {name: full, key: ip, rate: 1/hour, burst: 6, match: {path_prefix: /v1/full}, on_unavailable: full}
    - {name: shared-share, key: ip, rate: 1/hour, burst: 9, match: {path_prefix: /v1/share}}
"#;

/// 3 gateways with `shared_limits:` + `topology` (indented YAML lines) + the failover
/// policies, in sync, under background traffic and `client_load`, 1 s in.
pub struct LoadedFleet {
    pub gws: Vec<GatewayProc>,
    pub traffic: Traffic,
    pub stop: Arc<AtomicBool>,
    pub client: tokio::task::JoinHandle<(usize, usize, usize, Duration)>,
    pub started: Instant,
}

impl LoadedFleet {
    pub async fn start(upstream: SocketAddr, topology: &str) -> LoadedFleet {
        let yaml = format!("shared_limits:\n{topology}{FAILOVER_POLICIES}");
        let gws: Vec<GatewayProc> = (0..3)
            .map(|_| GatewayProc::start(upstream, &yaml))
            .collect();
        wait_all(&gws, "3 replicas in sync", Duration::from_secs(10), in_sync);
        let traffic = Traffic::start(&gws).await;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let client = tokio::spawn(client_load(
            gws.iter().map(|g| g.addr).collect(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        LoadedFleet {
            gws,
            traffic,
            stop,
            client,
            started,
        }
    }

    /// Stops the load (asserting the background traffic never failed or stalled) and gives
    /// the gateways back with the figures.
    pub async fn finish(self, what: &str) -> (Vec<GatewayProc>, LoadFigures) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, admitted, failed, slowest) = self.client.await.unwrap();
        let load_secs = self.started.elapsed().as_secs_f64();
        let (bg_sent, bg_slowest) = self.traffic.finish(what).await;
        let figures = (
            sent, admitted, failed, slowest, load_secs, bg_sent, bg_slowest,
        );
        (self.gws, figures)
    }
}

/// Client sent, admitted, failed, slowest; seconds under load; background sent, slowest.
pub type LoadFigures = (usize, usize, usize, Duration, f64, usize, Duration);
