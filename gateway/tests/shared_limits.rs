//! Shared rate limits against a real `redis-server` on loopback:
//! - the Lua scripts themselves: arithmetic, TTLs (DBSIZE back to 0 after refill),
//!   NOSCRIPT recovery after `SCRIPT FLUSH`, the exact script and the replica heartbeat;
//! - end to end: 3 gateway processes + redis-server + an upstream stub. One client spread
//!   round-robin is limited about as one gateway would; `exact` admits exactly the burst;
//!   `kill -9` Redis fails no request and delays none past 0.5 s, limits follow
//!   `on_unavailable`, `gateway_shared_limits_up` is 0; Redis back → in sync within 3 s;
//!   `SIGSTOP`/`SIGCONT` (a hung socket) is an outage too, then recovers.
//!
//! Skips loudly when `redis-server` is not installed (`.ci/run` installs it).

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::redis_server::Redis;
use common::*;
use gateway::admit::limits::shared::{script, sync};

async fn cmd<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    c: &redis::Cmd,
) -> T {
    c.query_async(conn).await.unwrap()
}

fn flush_cmd(keys_hits: &[(&str, &str, u32)]) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script::FLUSH.get_hash()).arg(keys_hits.len());
    for (k, _, _) in keys_hits {
        c.arg(*k);
    }
    for (_, interval, hits) in keys_hits {
        c.arg(*interval).arg(*hits);
    }
    c
}

#[tokio::test]
async fn lua_scripts_against_real_redis() {
    if missing("redis-server", "--version") {
        return;
    }
    let r = Redis::start();
    let mut c = r.conn().await;
    sync::load_scripts(&mut c).await.unwrap();

    // Flush arithmetic: 3 hits at 100 ms and 5 at 1.5 ms; debt beyond any burst is kept.
    let a = "edge:rl:00000001:aa";
    let b = "edge:rl:00000001:bb";
    let aheads: Vec<i64> = cmd(
        &mut c,
        &flush_cmd(&[
            (a, &script::interval_us_arg(100_000_000), 3),
            (b, "1500.000", 5),
        ]),
    )
    .await;
    assert!((299_000..=300_000).contains(&aheads[0]), "{aheads:?}");
    assert!((7_400..=7_500).contains(&aheads[1]), "{aheads:?}");
    let aheads: Vec<i64> = cmd(&mut c, &flush_cmd(&[(a, "100000.000", 20)])).await;
    assert!(
        (2_250_000..=2_300_000).contains(&aheads[0]),
        "debt allowed: {aheads:?}"
    );
    // TTL = time to refill (+1 ms), so a key exists only while its bucket is not full.
    let pttl: i64 = cmd(&mut c, redis::cmd("PTTL").arg(a)).await;
    assert!((2_200..=2_302).contains(&pttl), "{pttl}");
    let pttl_b: i64 = cmd(&mut c, redis::cmd("PTTL").arg(b)).await;
    assert!(pttl_b <= 9, "{pttl_b}");
    // Zero hits on a full bucket writes nothing.
    let aheads: Vec<i64> = cmd(
        &mut c,
        &flush_cmd(&[("edge:rl:00000001:cc", "1000.000", 0)]),
    )
    .await;
    assert_eq!(aheads, vec![0]);

    // Exact: burst 3 at 1/hour → exactly 3 allowed, then rejected with the time to wait.
    let exact = |key: &str| {
        let mut e = redis::cmd("EVALSHA");
        e.arg(script::EXACT.get_hash())
            .arg(1)
            .arg(key.to_string())
            .arg("3600000000.000")
            .arg(3 * 3_600_000_000u64);
        e
    };
    let mut results = Vec::new();
    for _ in 0..5 {
        let v: Vec<i64> = cmd(&mut c, &exact("edge:rl:00000002:ee")).await;
        results.push(v[0]);
    }
    assert_eq!(results, vec![1, 1, 1, 0, 0]);

    // Heartbeat: distinct replicas counted, and the set has a TTL.
    for (id, want) in [("r1", 1), ("r2", 2), ("r1", 2)] {
        let mut h = redis::cmd("EVALSHA");
        h.arg(script::HEARTBEAT.get_hash())
            .arg(1)
            .arg("edge:replicas")
            .arg(id)
            .arg(5_000);
        let n: i64 = cmd(&mut c, &h).await;
        assert_eq!(n, want, "{id}");
    }
    let ttl: i64 = cmd(&mut c, redis::cmd("PTTL").arg("edge:replicas")).await;
    assert!(ttl > 0 && ttl <= 10_000, "{ttl}");
    cmd::<()>(
        &mut c,
        redis::cmd("DEL")
            .arg("edge:replicas")
            .arg("edge:rl:00000002:ee"),
    )
    .await;

    // Every bucket key expires by itself once refilled: DBSIZE back to 0.
    let start = Instant::now();
    loop {
        let n: i64 = cmd(&mut c, &redis::cmd("DBSIZE")).await;
        if n == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{n} keys left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "a expired too early"
    );

    // NOSCRIPT after SCRIPT FLUSH: reloaded and retried once.
    cmd::<()>(&mut c, redis::cmd("SCRIPT").arg("FLUSH")).await;
    let raw: redis::RedisResult<Vec<i64>> =
        flush_cmd(&[(a, "1000.000", 1)]).query_async(&mut c).await;
    assert_eq!(raw.unwrap_err().code(), Some("NOSCRIPT"));
    let v = sync::call_reloading(
        &mut c,
        &flush_cmd(&[(a, "1000.000", 1)]),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let aheads: Vec<i64> = redis::from_redis_value(v).unwrap();
    assert!((900..=1_000).contains(&aheads[0]), "{aheads:?}");
}

// ---------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------

fn fleet_yaml(redis_url: &str) -> String {
    fleet_yaml_with(redis_url, "edge", 30)
}

fn fleet_yaml_with(redis_url: &str, prefix: &str, spread_burst: u32) -> String {
    format!(
        r#"shared_limits:
  redis: {redis_url}
  key_prefix: {prefix}
  sync_interval: 250ms
rate_limits:
  policies:
    - {{name: spread, key: ip, rate: 60/min, burst: {spread_burst}, match: {{path_prefix: /v1/sync}}}}
    - {{name: login, key: ip, rate: 1/hour, burst: 5, match: {{path_prefix: /v1/exact}}, shared: exact}}
    - {{name: full, key: ip, rate: 1/hour, burst: 6, match: {{path_prefix: /v1/full}}, on_unavailable: full}}
    - {{name: closed, key: ip, rate: 1/hour, burst: 6, match: {{path_prefix: /v1/deny}}, on_unavailable: deny}}
    - {{name: shared-share, key: ip, rate: 1/hour, burst: 9, match: {{path_prefix: /v1/share}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_limits_and_survive_redis_failures() {
    if missing("redis-server", "--version") {
        return;
    }
    let mut redis = Redis::start();
    let stub = Stub::start(StubMode::Echo).await;
    let yaml = fleet_yaml(&redis.url());
    let gws: Vec<GatewayProc> = (0..3)
        .map(|_| GatewayProc::start(stub.addr, &yaml))
        .collect();
    wait_all(&gws, "3 replicas in sync", Duration::from_secs(10), in_sync);
    let paced = Duration::from_millis(8);

    // 1. One client spread round-robin over 3 replicas, 60/min burst 30: about what one
    //    gateway admits (30 + refill), never the unshared ~90.
    let started = Instant::now();
    let (admitted, slowest) = round_robin(&gws, "127.0.0.11", "/v1/sync/a", 300, paced).await;
    let took = started.elapsed();
    eprintln!("sync: {admitted} of 300 admitted in {took:?}, slowest {slowest:?}");
    assert!(admitted >= 30, "{admitted}: the burst must be usable");
    assert!(
        admitted <= 50,
        "{admitted} of 300 admitted (unshared would be ~90)"
    );

    // 2. exact admits exactly the burst.
    let (admitted, slowest) =
        round_robin(&gws, "127.0.0.12", "/v1/exact/a", 30, Duration::ZERO).await;
    eprintln!("exact: {admitted} of 30 admitted, slowest {slowest:?}");
    assert_eq!(admitted, 5, "exact admits exactly the burst");

    // 3. kill -9 Redis while traffic flows: zero failures, none slower than 0.5 s.
    let traffic = Traffic::start(&gws).await;
    redis.kill9();
    let degraded_in = wait_up(&gws, 0.0, "degraded after kill -9");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, slowest) = traffic.finish("kill -9").await;
    eprintln!("kill -9: all degraded {degraded_in:?} after the kill, {sent} requests during, slowest {slowest:?}");
    for g in &gws {
        assert!(
            g.proc.log_text().contains("shared limits degraded"),
            "one WARN per change"
        );
        let ready = get_blocking(g.admin, "/readyz").unwrap().status;
        assert_eq!(ready, 200, "/readyz stays green");
    }

    // 4. Limits per on_unavailable while degraded.
    let degraded_run = |local: &'static str, path: &'static str, count: usize| {
        let gws = &gws;
        async move { round_robin(gws, local, path, count, Duration::ZERO).await.0 }
    };
    //    share: B/n = 9/3 = 3 per replica → 9 over the fleet.
    assert_eq!(
        degraded_run("127.0.0.13", "/v1/share/a", 30).await,
        9,
        "share: burst/3 on each"
    );
    //    full: the whole burst (6) on each replica; deny: fail closed.
    assert_eq!(
        degraded_run("127.0.0.14", "/v1/full/a", 30).await,
        18,
        "full: burst on each"
    );
    assert_eq!(
        degraded_run("127.0.0.15", "/v1/deny/a", 6).await,
        0,
        "deny: nothing passes"
    );
    //    exact falls back to share without waiting: 5/3 → 1 per replica.
    assert_eq!(
        degraded_run("127.0.0.16", "/v1/exact/b", 12).await,
        3,
        "exact → share"
    );
    let fallbacks = fleet_sum(
        &gws,
        "gateway_shared_limits_exact_fallbacks_total",
        &[("policy", "login")],
    );
    assert!(fallbacks >= 12.0, "{fallbacks}");
    let denied = fleet_sum(
        &gws,
        "gateway_shared_limits_degraded_decisions_total",
        &[("policy", "closed"), ("decision", "rejected")],
    );
    assert_eq!(denied, 6.0);

    // 5. Redis back (empty, no scripts loaded): every replica in sync within 3 s.
    redis.spawn();
    let resync = wait_up(&gws, 1.0, "in sync after restart");
    eprintln!("restart: all replicas in sync {resync:?} after Redis answered again");
    for g in &gws {
        assert!(
            g.proc.log_text().contains("shared limits back in sync"),
            "INFO on recovery"
        );
    }
    // Sharing works again (the new Redis had no scripts: NOSCRIPT → reload).
    let (admitted, _) = round_robin(&gws, "127.0.0.17", "/v1/sync/b", 120, paced).await;
    assert!(
        (30..=45).contains(&admitted),
        "{admitted} of 120 after recovery"
    );

    // 6. SIGSTOP: a hung socket, not a refused one. Same outcome, then recovery.
    let traffic = Traffic::start(&gws).await;
    redis.signal("-STOP");
    let degraded_in = wait_up(&gws, 0.0, "degraded after SIGSTOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("-CONT");
    let resync = wait_up(&gws, 1.0, "in sync after SIGCONT");
    let (sent, slowest) = traffic.finish("SIGSTOP").await;
    eprintln!("SIGSTOP: degraded in {degraded_in:?}, back in sync {resync:?} after SIGCONT; {sent} requests, slowest {slowest:?}");
    let dropped = fleet_sum(&gws, "gateway_shared_limits_dropped_hits_total", &[]);
    eprintln!("hits dropped over the outages: {dropped}");

    // 7. Hot reload: a new key_prefix reconnects (new engine), a new burst is a new
    //    fingerprint: the client exhausted in step 1 starts fresh.
    let yaml = fleet_yaml_with(&redis.url(), "edge2", 24);
    for g in &gws {
        let reloads = || g.metric_sum("gateway_config_reloads_total", &[("result", "ok")]);
        let before = reloads();
        let text = gateway_yaml(g.addr, g.admin, stub.addr, &g.key_file(), &yaml);
        let tmp = g.config_path.with_extension("yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &g.config_path).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || reloads() > before),
            "reload not applied"
        );
    }
    wait_all(
        &gws,
        "in sync after reload",
        Duration::from_secs(5),
        in_sync,
    );
    // The gauges above may still be the old engines'. The new ones are in sync once all
    // three have announced themselves under the new prefix.
    let mut c = redis.conn().await;
    let started = Instant::now();
    loop {
        let n: u32 = redis::cmd("ZCARD")
            .arg("edge2:replicas")
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{n} of 3 new engines announced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (admitted, _) = round_robin(&gws, "127.0.0.11", "/v1/sync/a", 60, paced).await;
    assert!(
        (24..=34).contains(&admitted),
        "{admitted} of 60 after the reload"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("edge2:rl:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "new prefix in use");
    assert!(keys.iter().all(|k| !k.contains("127.0.0")), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_without_redis_and_syncs_when_it_appears() {
    if missing("redis-server", "--version") {
        return;
    }
    let stub = Stub::start(StubMode::Echo).await;
    let port = free_port();
    let yaml = fleet_yaml(&format!("redis://127.0.0.1:{port}/0"));
    let gws = vec![GatewayProc::start(stub.addr, &yaml)];
    // No Redis: requests are served and limited locally, never failed or slowed.
    let (admitted, _) = round_robin(&gws, "127.0.0.21", "/v1/share/a", 12, Duration::ZERO).await;
    assert_eq!(
        admitted, 9,
        "share with the last known n = 1: the whole burst"
    );
    assert_eq!(gws[0].metric_sum(UP, &[]), 0.0);
    assert!(wait_until(Duration::from_secs(3), || gws[0]
        .proc
        .log_text()
        .contains("shared limits not in sync")));
    assert_eq!(get_blocking(gws[0].admin, "/readyz").unwrap().status, 200);
    // Redis appears: in sync within 3 s (probes run every ~1 s).
    let mut redis = Redis::unstarted(port, &[]);
    redis.spawn();
    let took = wait_up(&gws, 1.0, "in sync once Redis is up");
    eprintln!("first sync {took:?} after Redis started");
    assert!(gws[0].proc.log_text().contains("shared limits in sync"));
}

/// `POST /limits/reset` on one replica of three for a shared policy: Redis forgets the
/// key and every replica admits the client again within a couple of sync intervals, while
/// another limited client stays limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_one_replica_reaches_the_fleet() {
    if missing("redis-server", "--version") {
        return;
    }
    let redis = Redis::start();
    let stub = Stub::start(StubMode::Echo).await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin_token");
    std::fs::write(&token_file, "fleet-reset-token-0001\n").unwrap();
    let yaml = format!(
        "admin: {{token_file: {}}}\nshared_limits:\n  redis: {}\n  sync_interval: 100ms\nrate_limits:\n  policies:\n    - {{name: per-ip, key: ip, rate: 1/hour, burst: 3}}\n",
        token_file.display(),
        redis.url()
    );
    let gws: Vec<GatewayProc> = (0..3)
        .map(|_| GatewayProc::start(stub.addr, &yaml))
        .collect();
    wait_all(&gws, "3 replicas in sync", Duration::from_secs(10), in_sync);

    // Spend both clients' burst until every replica refuses them (bounded).
    for client in ["127.0.0.41", "127.0.0.42"] {
        let mut admitted = 0;
        let limited = 'rounds: {
            for _ in 0..20 {
                let mut all_refused = true;
                for g in &gws {
                    let status = hit(client, g.addr, "/v1/x").await.0;
                    assert!(status == 200 || status == 429, "{status}");
                    admitted += usize::from(status == 200);
                    all_refused &= status == 429;
                }
                if all_refused {
                    break 'rounds true;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            false
        };
        assert!(limited, "{client} never limited on every replica");
        assert!(
            admitted <= 6,
            "{client}: {admitted} admitted against a burst of 3"
        );
    }

    let resp = reqwest::Client::new()
        .post(format!("http://{}/limits/reset", gws[0].admin))
        .bearer_auth("fleet-reset-token-0001")
        .body(r#"{"policy":"per-ip","key":"127.0.0.41"}"#)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["reset"], "fleet");

    // Within a sync interval (100 ms) plus a tick: every replica admits it again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    for (i, g) in gws.iter().enumerate() {
        assert_eq!(
            hit("127.0.0.41", g.addr, "/v1/x").await.0,
            200,
            "replica {i}"
        );
        assert_eq!(
            hit("127.0.0.42", g.addr, "/v1/x").await.0,
            429,
            "replica {i}: the other client"
        );
    }
    let resets: f64 = fleet_sum(&gws, "gateway_limit_resets_total", &[("policy", "per-ip")]);
    assert_eq!(resets, 1.0);
}
