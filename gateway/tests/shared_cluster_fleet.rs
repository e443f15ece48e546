//! Shared limits end to end on a real Redis Cluster (3 masters + 3 replicas on loopback,
//! `cluster-node-timeout 1000`): 3 gateway processes configured with `cluster: nodes`,
//! background traffic on every policy plus one client round-robin on a 60/min burst 30
//! policy, logged in as the least-privilege ACL user (README's rule plus the cluster
//! commands), while a `CLUSTER FAILOVER`, a `kill -9` of the master that holds the replicas
//! key and a `redis-cli --cluster reshard` of 1000 slots happen. Checks: zero failed
//! requests, none slower than 0.5 s, every replica in sync (and past a slot-map refresh)
//! within 5 s of the new master answering, redirects counted, no `CROSSSLOT` ever, the
//! client's admitted count within README's bound. Prints the figures. ~40 s.
//!
//! Skips loudly without `redis-server`/`redis-cli`.

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::redis_cluster::{cli, RedisCluster};
use common::*;
use gateway::admit::limits::shared::cluster::slots::slot_of;
use gateway::admit::limits::shared::keys::replicas_key;
use gateway::admit::limits::shared::link::{self, ACL_CLUSTER_COMMANDS};
use gateway::admit::limits::shared::metrics::ERROR_KINDS;

const TOPOLOGY: &str = "gateway_shared_limits_topology_changes_total";

fn changes(gws: &[GatewayProc], kind: &str) -> Vec<f64> {
    gws.iter()
        .map(|g| g.metric_sum(TOPOLOGY, &[("kind", kind)]))
        .collect()
}

/// Waits until every replica is in sync and has fetched a slot map since `before`.
fn wait_resync(gws: &[GatewayProc], before: &[f64], what: &str) -> Duration {
    wait_all(gws, what, Duration::from_secs(10), |g| {
        let i = gws.iter().position(|x| x.addr == g.addr).unwrap();
        in_sync(g) && g.metric_sum(TOPOLOGY, &[("kind", "slots_refresh")]) > before[i]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_failover_kill_and_reshard_fail_no_request() {
    if missing("redis-server", "--version") || missing("redis-cli", "--version") {
        return;
    }
    let mut cluster = RedisCluster::start(3);
    assert!(
        cluster.wait_ok(Duration::from_secs(20)),
        "{}",
        cluster.describe()
    );

    // The fleet logs in as a least-privilege user: README's rule plus the cluster commands,
    // on every node (ACLs are per node, and a replica may be promoted).
    let mut rule = vec!["edge", "on", ">edge-secret"];
    let shipped = link::acl_rule("edge");
    rule.extend(shipped.split_whitespace());
    let extra: Vec<String> = ACL_CLUSTER_COMMANDS
        .iter()
        .map(|c| format!("+{c}"))
        .collect();
    rule.extend(extra.iter().map(String::as_str));
    for n in &cluster.nodes {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend(&rule);
        assert_eq!(cli(n.port, &args).trim(), "OK", "ACL SETUSER on {}", n.port);
    }
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("redis_password");
    std::fs::write(&password_file, "edge-secret\n").unwrap();

    let stub = Stub::start(StubMode::Echo).await;
    let nodes: Vec<String> = cluster.seeds().iter().map(|s| format!("'{s}'")).collect();
    let topology = format!(
        "  cluster:\n    nodes: [{}]\n  username: edge\n  password_file: {}\n",
        nodes.join(", "),
        password_file.display()
    );
    let fleet = LoadedFleet::start(stub.addr, &topology).await;
    let gws = &fleet.gws;

    // 1. CLUSTER FAILOVER of the master that holds the replicas key (the heartbeat's slot).
    let heartbeat_slot = slot_of(replicas_key("edge").as_bytes());
    let old = cluster.master_of(heartbeat_slot).expect("an owner");
    let replica = cluster.replica_of(old).expect("a replica");
    let before = changes(gws, "slots_refresh");
    let started = Instant::now();
    assert!(
        cluster.failover(replica, Duration::from_secs(10)),
        "{}",
        cluster.describe()
    );
    let promoted1 = started.elapsed();
    let resync1 = wait_resync(gws, &before, "every replica past the failover");
    eprintln!("CLUSTER FAILOVER: {replica} master {promoted1:?} after the command; every replica in sync on the new map {resync1:?} later");

    // 2. kill -9 of the (new) master of that slot, once its replica is in sync.
    let victim = cluster.master_of(heartbeat_slot).expect("an owner");
    assert!(
        wait_until(Duration::from_secs(20), || cluster.is_ok()
            && cluster.replicas_in_sync()
            && cluster.replica_of(victim).is_some()),
        "{}",
        cluster.describe()
    );
    let heir = cluster.replica_of(victim).expect("a replica");
    let before = changes(gws, "slots_refresh");
    let started = Instant::now();
    cluster.kill9(victim);
    assert!(
        wait_until(Duration::from_secs(20), || cluster.is_master(heir)),
        "{}",
        cluster.describe()
    );
    let promoted2 = started.elapsed();
    let resync2 = wait_resync(gws, &before, "every replica past the killed master");
    eprintln!("kill -9 of {victim}: {heir} master {promoted2:?} after the kill; every replica in sync on the new map {resync2:?} later");

    // 3. 1000 slots resharded between the two masters that are left untouched, under load.
    assert!(
        wait_until(Duration::from_secs(20), || cluster.is_ok()),
        "{}",
        cluster.describe()
    );
    let masters: Vec<u16> = cluster
        .nodes
        .iter()
        .filter(|n| n.alive() && n.port != heir && cluster.is_master(n.port))
        .map(|n| n.port)
        .collect();
    assert!(masters.len() >= 2, "{}", cluster.describe());
    let moved_before: f64 = changes(gws, "moved").iter().sum();
    let refreshes_before = changes(gws, "slots_refresh");
    let (ok, took) = cluster.reshard(masters[0], masters[1], 1000);
    assert!(ok, "reshard failed: {}", cluster.describe());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved: f64 = changes(gws, "moved").iter().sum::<f64>() - moved_before;
    eprintln!("reshard of 1000 slots took {took:?}; {moved} MOVED followed by the fleet");
    assert!(gws.iter().all(in_sync), "after the reshard");

    // `exact` after every change, once every replica has fetched the slot map the reshard
    // left (it routes `exact` by that map): each of 32 new clients (keys on every master, the
    // promoted replicas included) is answered by Redis, not by the fallback.
    let fallbacks =
        |gws: &[GatewayProc]| fleet_sum(gws, "gateway_shared_limits_exact_fallbacks_total", &[]);
    wait_resync(gws, &refreshes_before, "every replica on the resharded map");
    let fallback_lines = |gws: &[GatewayProc]| -> Vec<String> {
        gws.iter()
            .flat_map(|g| {
                g.metrics()
                    .lines()
                    .filter(|l| l.starts_with("gateway_shared_limits_exact_fallbacks_total"))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let before_lines = fallback_lines(gws);
    let before = fallbacks(gws);
    for i in 0..32 {
        let (status, _) = hit(
            &format!("127.0.2.{}", i + 1),
            gws[i % 3].addr,
            "/v1/exact/z",
        )
        .await;
        assert_eq!(status, 200, "exact for client {i}");
    }
    assert_eq!(
        fallbacks(gws),
        before,
        "exact answered by the cluster: before {before_lines:?}, after {:?}",
        fallback_lines(gws)
    );

    let (gws, (sent, admitted, failed, slowest, load_secs, bg_sent, bg_slowest)) =
        fleet.finish("cluster failovers and a reshard").await;
    // README's bound: burst + rate × duration + one burst per master change.
    let bound = 30.0 + load_secs + 2.0 * 30.0;
    let unshared = 3.0 * (30.0 + load_secs);
    let crossslot: usize = gws
        .iter()
        .map(|g| g.proc.log_text().matches("CROSSSLOT").count())
        .sum();
    eprintln!(
        "cluster figures: client {sent} requests, {failed} failed, slowest {slowest:?}, {admitted} admitted \
         over {load_secs:.1} s (bound {bound:.0}, unshared would be ~{unshared:.0}); background {bg_sent} requests, \
         slowest {bg_slowest:?}; resync {resync1:?} (failover) and {resync2:?} (kill -9) after the new master \
         answered; {} degraded episodes over 3 replicas; per replica moved {:?} ask {:?} slots_refresh {:?}; \
         sync errors {:?}; CROSSSLOT {crossslot}",
        degraded_episodes(&gws),
        changes(&gws, "moved"),
        changes(&gws, "ask"),
        changes(&gws, "slots_refresh"),
        gws.iter()
            .map(|g| {
                let by_kind = |k| g.metric_sum("gateway_shared_limits_sync_errors_total", &[("kind", k)]);
                ERROR_KINDS
                    .iter()
                    .map(|k| (*k, by_kind(k)))
                    .filter(|(_, n)| *n > 0.0)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>(),
    );
    // With full coverage required (Redis's default) the whole cluster answers CLUSTERDOWN
    // until the killed master's replica takes over: the fleet degrades for that window
    // (limits per `on_unavailable`) and is back within the resync figure above.
    for g in &gws {
        for line in g.proc.log_text().lines().filter(|l| l.contains("degraded")) {
            eprintln!("  {line}");
        }
    }
    assert_eq!(failed, 0, "failed requests");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    assert!(resync1 <= Duration::from_secs(5), "{resync1:?}");
    assert!(resync2 <= Duration::from_secs(5), "{resync2:?}");
    assert!(
        moved > 0.0,
        "the reshard's redirects were followed and counted"
    );
    assert_eq!(crossslot, 0);
    assert!(
        (admitted as f64) <= bound,
        "{admitted} admitted, bound {bound:.0}"
    );
    assert!(admitted >= 30, "{admitted}: the burst must be usable");
}
