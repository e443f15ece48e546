//! Shared limits on Redis Sentinel, on loopback: 1 master + 1 replica + 3 sentinels
//! (`down-after-milliseconds 1000`), 3 gateway processes under a bounded load (background
//! traffic on every policy plus one client round-robin on a 60/min burst 30 policy).
//! `SENTINEL FAILOVER`, then `kill -9` of the new master: zero failed requests, none
//! slower than 0.5 s, every replica writing to the new master within 5 s of it answering
//! (`gateway_shared_limits_topology_changes_total{kind="master_switch"}`), and the client's
//! admitted count within the bound README states. Then every sentinel down and the
//! gateways' connections killed: they stay in sync on the last master. Prints the
//! figures. ~30 s.
//! Skips loudly without `redis-server`.

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::redis_server::{spawn_server, Redis};
use common::*;

const MASTER: &str = "edge-limits";

/// A sentinel: `redis-server sentinel.conf --sentinel` (it rewrites its own config file).
struct Sentinel {
    _child: ChildGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 3000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let conf = conf.display().to_string();
        let child = spawn_server(&[&conf, "--sentinel"], &dir.path().join("sentinel.log"));
        let s = Sentinel {
            _child: child,
            port,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "sentinel did not start"
        );
        s
    }
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let fut = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async::<T>(&mut c).await.ok()
    };
    tokio::time::timeout(Duration::from_millis(500), fut)
        .await
        .ok()
        .flatten()
}

async fn role(port: u16) -> Option<String> {
    let v: Vec<redis::Value> = query(port, &redis::cmd("ROLE")).await?;
    redis::from_redis_value_ref(v.first()?).ok()
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every sentinel knows the replica and the other sentinels (they find each other by
/// hello messages every 2 s).
async fn sentinels_ready(sentinels: &[Sentinel], replica_port: u16) -> bool {
    for s in sentinels {
        let replicas: Vec<Vec<String>> =
            query(s.port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER))
                .await
                .unwrap_or_default();
        let ok_replica = replicas.iter().any(|r| {
            let port = r.iter().position(|f| f == "port").map(|i| &r[i + 1]);
            let flags = r.iter().position(|f| f == "flags").map(|i| &r[i + 1]);
            port == Some(&replica_port.to_string()) && flags.is_some_and(|f| f == "slave")
        });
        let others: Vec<redis::Value> =
            query(s.port, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER))
                .await
                .unwrap_or_default();
        if !ok_replica || others.len() < 2 {
            return false;
        }
    }
    true
}

fn switches(gws: &[GatewayProc]) -> Vec<f64> {
    gws.iter()
        .map(|g| {
            g.metric_sum(
                "gateway_shared_limits_topology_changes_total",
                &[("kind", "master_switch")],
            )
        })
        .collect()
}

/// Waits for the node at `port` to be master (≤ 20 s), then for every replica to have
/// switched `switches_seen` times in all and be in sync (≤ 10 s): both durations.
async fn promoted_then_followed(
    gws: &[GatewayProc],
    port: u16,
    switches_seen: f64,
) -> (Duration, Duration) {
    let promoted = wait_for(
        "the replica promoted",
        Duration::from_secs(20),
        async || role(port).await.as_deref() == Some("master"),
    )
    .await;
    let followed = wait_for(
        "every replica on the new master",
        Duration::from_secs(10),
        async || switches(gws).iter().all(|n| *n >= switches_seen) && gws.iter().all(in_sync),
    )
    .await;
    (promoted, followed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_and_a_killed_master_fail_no_request() {
    if missing("redis-server", "--version") {
        return;
    }
    let first = Redis::start();
    let mut second = Redis::start_with(&[
        "--replicaof".into(),
        "127.0.0.1".into(),
        first.port.to_string(),
    ]);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(first.port)).collect();
    let setup = wait_for(
        "sentinels see the replica and each other",
        Duration::from_secs(20),
        async || sentinels_ready(&sentinels, second.port).await,
    )
    .await;
    eprintln!("sentinel: topology ready in {setup:?}");

    let stub = Stub::start(StubMode::Echo).await;
    let nodes: Vec<String> = sentinels
        .iter()
        .map(|s| format!("'127.0.0.1:{}'", s.port))
        .collect();
    let topology = format!(
        "  sentinel:\n    master: {MASTER}\n    nodes: [{}]\n",
        nodes.join(", ")
    );
    let fleet = LoadedFleet::start(stub.addr, &topology).await;
    let gws = &fleet.gws;

    // 1. SENTINEL FAILOVER: the replica is promoted, the old master stays writable a while.
    let _: Option<String> = query(
        sentinels[0].port,
        redis::cmd("SENTINEL").arg("failover").arg(MASTER),
    )
    .await;
    let (promoted, resync1) = promoted_then_followed(gws, second.port, 1.0).await;
    eprintln!("SENTINEL FAILOVER: new master answered {promoted:?} after the command; every replica writing to it {resync1:?} later");

    // 2. kill -9 of the new master, once the old one follows it (else nothing to promote).
    wait_for(
        "the old master turned replica",
        Duration::from_secs(30),
        async || {
            let info: Option<String> =
                query(first.port, redis::cmd("INFO").arg("replication")).await;
            info.is_some_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
                && sentinels_ready(&sentinels, first.port).await
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.kill9();
    let (promoted2, resync2) = promoted_then_followed(gws, first.port, 2.0).await;
    eprintln!("kill -9: new master answered {promoted2:?} after the kill; every replica writing to it {resync2:?} later");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. Every sentinel down, the master fine: keep using it, even after the connections
    //    drop (CLIENT KILL): the last master that answered is used again.
    let degraded_before: usize = degraded_episodes(gws);
    drop(sentinels);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors_before = fleet_sum(gws, "gateway_shared_limits_sync_errors_total", &[]);
    let killed: Option<i64> = query(
        first.port,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
    )
    .await;
    assert!(killed.unwrap_or(0) >= 3, "{killed:?} connections killed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(gws.iter().all(in_sync), "sentinels down: still in sync");
    assert_eq!(
        degraded_episodes(gws),
        degraded_before,
        "sentinels down and connections dropped: no replica degraded"
    );
    let errors = fleet_sum(gws, "gateway_shared_limits_sync_errors_total", &[]) - errors_before;
    eprintln!("sentinels all down, {killed:?} connections killed ({errors} failed calls): every replica still in sync on the last master");

    let (gws, (sent, admitted, failed, slowest, load_secs, bg_sent, bg_slowest)) =
        fleet.finish("sentinel failovers").await;
    // README's bound: burst + rate × duration + one burst per master change (the client's
    // state on the fleet is kept by Redis; a switch may lose the last replicated writes and
    // each replica enforces burst/n locally while it cannot write).
    let bound = 30.0 + load_secs + 2.0 * 30.0;
    let unshared = 3.0 * (30.0 + load_secs);
    let down_events = degraded_episodes(&gws);
    eprintln!(
        "sentinel figures: client {sent} requests, {failed} failed, slowest {slowest:?}, {admitted} admitted \
         over {load_secs:.1} s (bound {bound:.0}, unshared would be ~{unshared:.0}); background {bg_sent} requests, \
         slowest {bg_slowest:?}; resync {resync1:?} (failover) and {resync2:?} (kill -9) after the new master answered; \
         {down_events} degraded episodes over 3 replicas; master_switch per replica {:?}",
        switches(&gws)
    );
    assert_eq!(failed, 0, "failed requests");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    assert!(resync1 <= Duration::from_secs(5), "{resync1:?}");
    assert!(resync2 <= Duration::from_secs(5), "{resync2:?}");
    assert!(
        (admitted as f64) <= bound,
        "{admitted} admitted, bound {bound:.0}"
    );
    assert!(admitted >= 30, "{admitted}: the burst must be usable");
    drop(first);
}
