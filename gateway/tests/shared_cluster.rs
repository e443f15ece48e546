//! Shared limits on a real Redis Cluster (3 masters + 3 replicas on loopback,
//! `cluster-node-timeout 1000`): `ClusterLink` driven the way the sync loop drives it, with
//! flush-shaped EVALSHA batches built from the real script and real key names, while
//! `CLUSTER FAILOVER`, `redis-cli --cluster reshard`, a slot migrated slowly (ASK), a
//! master's `kill -9` and another's `SIGSTOP` (hung until the cluster replaces it) happen. Checks: no CROSSSLOT, every call not known to have run is
//! requeued and lands (zero lost), no acknowledged charge disappears except those a killed
//! master had not yet replicated, redirects and refreshes counted, back to all-Ok within
//! 5 s of the new master answering. Prints the figures.
//!
//! Skips loudly when `redis-server`/`redis-cli` are not installed (`.ci/run` installs them).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::missing;
use common::redis_cluster::RedisCluster;
use gateway::admit::limits::shared::cluster::slots::{self, NodeAddr};
use gateway::admit::limits::shared::cluster::{Call, CallError, ClusterLink, Stats};
use gateway::admit::limits::shared::keys::{self, ClientId, ClusterSecret};
use gateway::admit::limits::shared::script;
use tokio::time::Instant;

/// 1000 s per hit: every charge stays visible in the key's TAT for the whole test, so
/// `ceil(ahead / I)` is the number of charges the key has seen.
const INTERVAL_US: i64 = 1_000_000_000;
/// A flush's budget off the request path.
const FLUSH_DEADLINE: Duration = Duration::from_millis(500);
const BATCH_EVERY: Duration = Duration::from_millis(20);
const ITEMS_PER_BATCH: usize = 120;
const PREFIX: &str = "edge";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Item {
    fp: u32,
    id: u128,
}

impl Item {
    fn key(&self) -> String {
        keys::redis_key(PREFIX, self.fp, self.id)
    }
}

/// One batch as the load loop saw it.
#[derive(Clone, Debug)]
struct Batch {
    start: f64,
    end: f64,
    calls: usize,
    failed: usize,
    errors: Vec<String>,
}

#[derive(Default)]
struct Tally {
    charged: HashMap<Item, i64>,
    /// Calls that failed after being sent (may have run), per key.
    uncertain: HashMap<Item, i64>,
    /// Charges acknowledged by Redis that a later reply no longer shows.
    lost_acked: i64,
    uncertain_total: i64,
    requeued: u64,
    crossslot: u64,
}

fn flush_cmd(items: &[Item]) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script::FLUSH.get_hash()).arg(items.len());
    for it in items {
        c.arg(it.key());
    }
    for _ in items {
        c.arg(INTERVAL_US).arg(1);
    }
    c
}

/// One flush-shaped batch: per-slot calls of ≤ 64 keys, one hit each.
async fn one_batch(
    link: &mut ClusterLink,
    items: Vec<Item>,
    tally: &mut Tally,
    requeue: &mut Vec<Item>,
    t0: Instant,
) -> Batch {
    let groups = keys::flush_calls(items, |it| it.id, script::MAX_KEYS_PER_CALL);
    let calls: Vec<Call> = groups
        .iter()
        .map(|(slot, its)| {
            for it in its {
                assert_eq!(slots::slot_of(it.key().as_bytes()), *slot, "CROSSSLOT");
            }
            Call {
                slot: *slot,
                cmd: flush_cmd(its),
            }
        })
        .collect();
    let start = t0.elapsed().as_secs_f64();
    let results = link.run(calls, Instant::now() + FLUSH_DEADLINE).await;
    let end = t0.elapsed().as_secs_f64();
    let mut b = Batch {
        start,
        end,
        calls: groups.len(),
        failed: 0,
        errors: Vec::new(),
    };
    for ((_, its), r) in groups.into_iter().zip(results) {
        match r {
            Ok(v) => {
                let aheads: Vec<i64> = redis::from_redis_value(v).expect("array of ints");
                assert_eq!(aheads.len(), its.len());
                for (it, ahead) in its.iter().zip(aheads) {
                    let seen = (ahead + INTERVAL_US - 1) / INTERVAL_US;
                    let before = tally.charged.get(it).copied().unwrap_or(0);
                    let maybe = tally.uncertain.remove(it).unwrap_or(0);
                    let want = before + 1;
                    if seen < want {
                        tally.lost_acked += want - seen;
                    } else {
                        assert!(seen <= want + maybe, "{it:?}: {seen} charges, {want} sent");
                    }
                    tally.charged.insert(*it, seen);
                }
            }
            Err(e) => {
                b.failed += 1;
                if matches!(&e, CallError::Server { code, .. } if code == "CROSSSLOT") {
                    tally.crossslot += 1;
                }
                b.errors.push(match &e {
                    CallError::Server { code, .. } => code.clone(),
                    other => other.kind().to_string(),
                });
                if e.may_have_run() {
                    for it in its {
                        *tally.uncertain.entry(it).or_default() += 1;
                        tally.uncertain_total += 1;
                    }
                } else {
                    tally.requeued += its.len() as u64;
                    requeue.extend(its);
                }
            }
        }
    }
    b
}

struct Load {
    batches: Vec<Batch>,
    tally: Tally,
    left: usize,
    stats: Stats,
    link: ClusterLink,
}

/// Batches every 20 ms until `stop`, then drains what was requeued (bounded).
async fn load(mut link: ClusterLink, all: Vec<Item>, stop: Arc<AtomicBool>, t0: Instant) -> Load {
    let mut tally = Tally::default();
    let mut requeue: Vec<Item> = Vec::new();
    let mut batches = Vec::new();
    let mut next = 0usize;
    for _ in 0..5_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut items: Vec<Item> = std::mem::take(&mut requeue);
        while items.len() < ITEMS_PER_BATCH {
            items.push(all[next % all.len()]);
            next += 1;
        }
        items.dedup();
        let b = one_batch(&mut link, items, &mut tally, &mut requeue, t0).await;
        batches.push(b);
        tokio::time::sleep(BATCH_EVERY).await;
    }
    // Drain: every requeued call must land.
    for _ in 0..50 {
        if requeue.is_empty() {
            break;
        }
        let items = std::mem::take(&mut requeue);
        batches.push(one_batch(&mut link, items, &mut tally, &mut requeue, t0).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Load {
        batches,
        tally,
        left: requeue.len(),
        stats: link.stats(),
        link,
    }
}

/// Figures of one fault: failed batches after `at`, the failure window, and how long after
/// `answering` (the new master answers) the batches were all-Ok for good.
fn window(batches: &[Batch], at: f64, until: f64, answering: f64) -> (usize, usize, f64, f64) {
    let phase: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.start >= at && b.start < until)
        .collect();
    let failed: Vec<&&Batch> = phase.iter().filter(|b| b.failed > 0).collect();
    let window = match (failed.first(), failed.last()) {
        (Some(a), Some(b)) => b.end - a.start,
        _ => 0.0,
    };
    let all_ok_from = failed.last().map_or(at, |b| b.end);
    (
        phase.len(),
        failed.len(),
        window,
        (all_ok_from - answering).max(0.0),
    )
}

/// Waits (off the runtime: the harness blocks) for `cluster_state:ok`, at most 20 s.
async fn wait_cluster_ok(c: &Arc<Mutex<RedisCluster>>) {
    let cc = c.clone();
    tokio::task::spawn_blocking(move || {
        let cl = cc.lock().unwrap();
        assert!(cl.wait_ok(Duration::from_secs(20)), "{}", cl.describe());
    })
    .await
    .unwrap();
}

/// Whether the node at `port` says it is master within 15 s (the lock is taken per look).
async fn becomes_master(c: &Arc<Mutex<RedisCluster>>, port: u16) -> bool {
    let cc = c.clone();
    tokio::task::spawn_blocking(move || {
        common::wait_until(Duration::from_secs(15), || {
            cc.lock().unwrap().is_master(port)
        })
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_link_survives_failover_kill_and_resharding() {
    if missing("redis-server", "--version") || missing("redis-cli", "--version") {
        return;
    }
    let started = std::time::Instant::now();
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    eprintln!("cluster up in {:.1} s", started.elapsed().as_secs_f64());

    // Three policies' keys (ip, user, global), ids as the gateway makes them.
    let secret = ClusterSecret::derive(None, PREFIX);
    let mut all = Vec::new();
    for i in 0..150u32 {
        all.push(Item {
            fp: 0x1111_1111,
            id: keys::key_id(&secret, 0x1111_1111, ClientId::V4(0x0a00_0000 + i)),
        });
        let user = format!("user-{i}");
        all.push(Item {
            fp: 0x2222_2222,
            id: keys::key_id(&secret, 0x2222_2222, ClientId::User(&user)),
        });
    }
    all.push(Item {
        fp: 0x3333_3333,
        id: keys::key_id(&secret, 0x3333_3333, ClientId::Global),
    });

    let template = redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1").unwrap();
    let seeds = cluster
        .seeds()
        .iter()
        .map(|s| NodeAddr::seed(s).unwrap())
        .collect();
    let events: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let ev = events.clone();
    let link = ClusterLink::new(template, seeds)
        .with_scripts(&[script::FLUSH_LUA, script::EXACT_LUA, script::HEARTBEAT_LUA])
        .with_observer(Arc::new(move |k| ev.lock().unwrap().push(k)));

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let now = move || t0.elapsed().as_secs_f64();
    let worker = tokio::spawn(load(link, all.clone(), stop.clone(), t0));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. CLUSTER FAILOVER: the replica of the master of the first key's slot takes over.
    let slot = keys::key_slot(all[0].id);
    let old = cluster.master_of(slot).unwrap();
    let replica = cluster.replica_of(old).unwrap();
    let t_failover = now();
    let c = Arc::new(Mutex::new(cluster));
    let cc = c.clone();
    let promoted = tokio::task::spawn_blocking(move || {
        cc.lock()
            .unwrap()
            .failover(replica, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(promoted, "CLUSTER FAILOVER did not promote {replica}");
    let t_failover_answering = now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. redis-cli --cluster reshard of 1000 slots during load, then one slot moved slowly
    //    (ASK while it is migrating).
    let t_reshard = now();
    let cc = c.clone();
    let (resharded, reshard_took, ask_slot) = tokio::task::spawn_blocking(move || {
        let cl = cc.lock().unwrap();
        let masters: Vec<u16> = cl
            .nodes
            .iter()
            .filter(|n| n.alive() && cl.is_master(n.port))
            .map(|n| n.port)
            .collect();
        let (ok, took) = cl.reshard(masters[0], masters[1], 1000);
        assert!(cl.wait_ok(Duration::from_secs(20)), "{}", cl.describe());
        let from = cl.master_of(slot).unwrap();
        let to = *masters.iter().find(|&&m| m != from).unwrap();
        cl.migrate_slot_slowly(slot, from, to, Duration::from_secs(1));
        assert!(
            cl.wait_ok(Duration::from_secs(10)),
            "not ok after migration"
        );
        (ok, took, slot)
    })
    .await
    .unwrap();
    assert!(resharded, "redis-cli --cluster reshard failed");
    let t_reshard_done = now();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. kill -9 of the master now serving the first key's slot.
    let cc = c.clone();
    let (victim, heir) = tokio::task::spawn_blocking(move || {
        let cl = cc.lock().unwrap();
        let m = cl.master_of(slot).unwrap();
        (m, cl.replica_of(m).unwrap())
    })
    .await
    .unwrap();
    let t_kill = now();
    c.lock().unwrap().kill9(victim);
    let heir_answers = becomes_master(&c, heir).await;
    assert!(heir_answers, "replica {heir} not promoted within 15 s");
    let t_heir = now();
    wait_cluster_ok(&c).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. SIGSTOP of another master (hung, not dead) until the cluster fails it over, then
    //    SIGCONT: it rejoins as a replica.
    let cc = c.clone();
    let (frozen, heir2) = tokio::task::spawn_blocking(move || {
        let cl = cc.lock().unwrap();
        cl.nodes
            .iter()
            .filter(|n| n.alive() && cl.is_master(n.port))
            .find_map(|n| Some((n.port, cl.replica_of(n.port)?)))
            .expect("a master with a replica")
    })
    .await
    .unwrap();
    let t_stop = now();
    c.lock().unwrap().signal(frozen, "-STOP");
    let cc = c.clone();
    let heir2_answers = tokio::task::spawn_blocking(move || {
        let promoted = common::wait_until(Duration::from_secs(15), || {
            cc.lock().unwrap().is_master(heir2)
        });
        cc.lock().unwrap().signal(frozen, "-CONT");
        promoted
    })
    .await
    .unwrap();
    assert!(heir2_answers, "replica {heir2} not promoted within 15 s");
    let t_heir2 = now();
    wait_cluster_ok(&c).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t_end = now();
    stop.store(true, Ordering::Relaxed);
    let l = worker.await.unwrap();

    let b = &l.batches;
    let total_calls: usize = b.iter().map(|b| b.calls).sum();
    let failed_calls: usize = b.iter().map(|b| b.failed).sum();
    let mut codes: HashMap<&str, usize> = HashMap::new();
    for e in b.iter().flat_map(|b| b.errors.iter()) {
        *codes.entry(e.as_str()).or_default() += 1;
    }
    let slowest = b.iter().map(|b| b.end - b.start).fold(0.0, f64::max);
    let before: Vec<&Batch> = b.iter().filter(|b| b.start < t_failover).collect();
    // (name, fault at, next fault at, new owner answering at)
    let phases = [
        (
            "CLUSTER FAILOVER",
            t_failover,
            t_reshard,
            t_failover_answering,
        ),
        (
            "reshard + slow migration",
            t_reshard,
            t_kill,
            t_reshard_done,
        ),
        ("kill -9 master", t_kill, t_stop, t_heir),
        ("SIGSTOP master", t_stop, t_end + 1.0, t_heir2),
    ];
    eprintln!(
        "batches {} calls {} failed calls {} (by error {:?}), slowest batch {:.0} ms",
        b.len(),
        total_calls,
        failed_calls,
        codes,
        slowest * 1000.0
    );
    let seen = events.lock().unwrap().clone();
    let count = |kind: &str| seen.iter().filter(|k| **k == kind).count() as u64;
    eprintln!(
        "stats {:?}; observer saw moved {} ask {} slots_refresh {}",
        l.stats,
        count("moved"),
        count("ask"),
        count("slots_refresh"),
    );
    assert_eq!(
        (count("moved"), count("ask"), count("slots_refresh")),
        (l.stats.moved, l.stats.ask, l.stats.slots_refresh)
    );
    let mut phase_errors = Vec::new();
    let mut ok_after = Vec::new();
    for (name, from, to, answering) in phases {
        let (n, failed, win, after) = window(b, from, to, answering);
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for e in b
            .iter()
            // A batch running when the next fault struck belongs to neither.
            .filter(|b| b.start >= from && b.end < to)
            .flat_map(|b| b.errors.iter())
        {
            *kinds.entry(e.as_str()).or_default() += 1;
        }
        eprintln!(
            "{name}: {n} batches, {failed} with a failed call (by error {kinds:?}), failure window {:.0} ms, new owner answering {:.0} ms after the fault, all-Ok {:.0} ms after that",
            win * 1000.0,
            (answering - from) * 1000.0,
            after * 1000.0
        );
        phase_errors.push(kinds);
        ok_after.push(after);
    }
    eprintln!(
        "reshard of 1000 slots took {:.1} s (then slot {ask_slot} moved slowly)",
        reshard_took.as_secs_f64(),
    );
    eprintln!(
        "requeued {} key updates, left unsent {}, uncertain (sent, no reply) {}, acknowledged charges lost {}",
        l.tally.requeued, l.left, l.tally.uncertain_total, l.tally.lost_acked
    );

    assert_eq!(l.tally.crossslot, 0, "CROSSSLOT");
    assert!(
        before.iter().all(|b| b.failed == 0),
        "failures before any fault"
    );
    assert_eq!(l.left, 0, "requeued calls that never landed");
    assert!(l.stats.moved >= 1, "a failover and a reshard show as MOVED");
    assert!(l.stats.ask >= 1, "a migrating slot shows as ASK");
    assert!(l.stats.slots_refresh >= 3, "{:?}", l.stats);
    assert!(ok_after.iter().all(|&t| t <= 5.0), "all-Ok within 5 s");
    // A manual failover and a migration are planned: the old owner hands over, nothing
    // fails but a multi-key call caught mid-migration twice (TRYAGAIN, requeued).
    for kinds in &phase_errors[..2] {
        assert!(kinds.keys().all(|k| *k == "TRYAGAIN"), "{kinds:?}");
    }
    // The deadline bounds every batch; the slack is scheduling on a busy 2-core machine.
    assert!(
        slowest <= FLUSH_DEADLINE.as_secs_f64() + 0.25,
        "deadline kept"
    );
    // Only a killed master may take acknowledged charges with it (asynchronous
    // replication); on loopback it replicates within a millisecond.
    assert!(
        l.tally.lost_acked <= 2 * ITEMS_PER_BATCH as i64,
        "{}",
        l.tally.lost_acked
    );
    // The request path's snapshot routes every key to its current master.
    let routes = l.link.routes();
    for it in all.iter().step_by(17) {
        let mut conn = routes
            .connection_for_key(it.key().as_bytes())
            .expect("a connection for every slot");
        let tat: Option<String> = redis::cmd("GET")
            .arg(it.key())
            .query_async(&mut conn)
            .await
            .expect("served where the routes say, no MOVED");
        assert!(tat.is_some(), "{it:?}");
    }
    // A hung master costs its own calls: timeouts, then failed connects, and CLUSTERDOWN
    // while the cluster has marked it failed but not yet promoted its replica.
    assert!(
        phase_errors[3]
            .keys()
            .all(|k| ["timeout", "connect", "CLUSTERDOWN"].contains(k)),
        "{:?}",
        phase_errors[3]
    );
    let tail: Vec<&Batch> = b.iter().filter(|b| b.start > t_heir2 + 5.0).collect();
    assert!(!tail.is_empty() && tail.iter().all(|b| b.failed == 0));
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "bounded: {:?}",
        started.elapsed()
    );
}
