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
