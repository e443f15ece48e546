//! Shared rate limits against a real `redis-server` on loopback (issue 12):
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

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gateway::limits::shared::{script, sync};

fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

macro_rules! require_redis {
    () => {
        if !redis_server_available() {
            eprintln!(
                "SKIPPED {}: redis-server is not installed (apt-get install redis-server)",
                module_path!()
            );
            return;
        }
    };
}

/// A throwaway redis-server: loopback only, no persistence.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .stdout(Stdio::from(
                std::fs::File::create(self.dir.path().join("redis.log")).unwrap(),
            ))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        assert!(Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.child.take().unwrap().wait();
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
    require_redis!();
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

const UP: &str = "gateway_shared_limits_up";

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

fn wait_all(
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
async fn hit(local: &str, gw: SocketAddr, path: &str) -> (u16, Duration) {
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

/// `count` requests round-robin over `gws`, `pace` apart; returns (admitted, slowest,
/// statuses other than 200/429).
async fn round_robin(
    gws: &[GatewayProc],
    local: &str,
    path: &str,
    count: usize,
    pace: Duration,
) -> (usize, Duration, Vec<u16>) {
    let (mut admitted, mut slowest, mut bad) = (0, Duration::ZERO, Vec::new());
    for i in 0..count {
        let (status, took) = hit(local, gws[i % gws.len()].addr, path).await;
        slowest = slowest.max(took);
        match status {
            200 => admitted += 1,
            429 => {}
            s => bad.push(s),
        }
        tokio::time::sleep(pace).await;
    }
    (admitted, slowest, bad)
}

/// Traffic on every policy from fresh addresses while a fault is injected: nothing may
/// fail or be slow. Runs until `stop` flips.
async fn background_traffic(
    gws: Vec<SocketAddr>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Duration, Vec<u16>) {
    let (mut sent, mut slowest, mut bad) = (0usize, Duration::ZERO, Vec::new());
    let paths = ["/v1/sync/x", "/v1/exact/x", "/v1/full/x", "/v1/share/x"];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 5_000 {
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

fn wait_for(limit: Duration, ok: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn up_is(v: f64) -> impl Fn(&GatewayProc) -> bool {
    move |g| g.metric_sum(UP, &[]) == v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_limits_and_survive_redis_failures() {
    require_redis!();
    let mut redis = Redis::start();
    let stub = Stub::start(StubMode::Echo).await;
    let yaml = fleet_yaml(&redis.url());
    let gws: Vec<GatewayProc> = (0..3)
        .map(|_| GatewayProc::start(stub.addr, &yaml))
        .collect();
    wait_all(&gws, "3 replicas in sync", Duration::from_secs(10), |g| {
        g.metric_sum(UP, &[]) == 1.0 && g.metric_sum("gateway_shared_limits_replicas", &[]) == 3.0
    });

    // 1. One client spread round-robin over 3 replicas, 60/min burst 30: about what one
    //    gateway admits (30 + refill), never the unshared ~90.
    let started = Instant::now();
    let (admitted, slowest, bad) = round_robin(
        &gws,
        "127.0.0.11",
        "/v1/sync/a",
        300,
        Duration::from_millis(8),
    )
    .await;
    let took = started.elapsed();
    eprintln!("sync: {admitted} of 300 admitted in {took:?}, slowest {slowest:?}");
    assert!(bad.is_empty(), "{bad:?}");
    assert!(admitted >= 30, "{admitted}: the burst must be usable");
    assert!(
        admitted <= 50,
        "{admitted} of 300 admitted (unshared would be ~90)"
    );

    // 2. exact admits exactly the burst.
    let (admitted, slowest, bad) =
        round_robin(&gws, "127.0.0.12", "/v1/exact/a", 30, Duration::ZERO).await;
    eprintln!("exact: {admitted} of 30 admitted, slowest {slowest:?}");
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(admitted, 5, "exact admits exactly the burst");

    // 3. kill -9 Redis while traffic flows: zero failures, none slower than 0.5 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn(background_traffic(
        gws.iter().map(|g| g.addr).collect(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    redis.kill9();
    let degraded_in = wait_all(
        &gws,
        "degraded after kill -9",
        Duration::from_secs(3),
        up_is(0.0),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, slowest, bad) = traffic.await.unwrap();
    eprintln!("kill -9: degraded in {degraded_in:?} ({:?} after the kill), {sent} requests during, slowest {slowest:?}", killed.elapsed());
    assert!(bad.is_empty(), "failed requests while Redis died: {bad:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    for g in &gws {
        assert!(
            g.proc.log_text().contains("shared limits degraded"),
            "one WARN per change"
        );
        assert_eq!(
            get_blocking(g.admin, "/readyz").unwrap().status,
            200,
            "/readyz stays green"
        );
    }

    // 4. Limits per on_unavailable while degraded.
    //    share: B/n = 9/3 = 3 per replica → 9 over the fleet.
    let (admitted, _, bad) =
        round_robin(&gws, "127.0.0.13", "/v1/share/a", 30, Duration::ZERO).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(admitted, 9, "share: burst/3 on each of 3 replicas");
    //    full: the whole burst on each replica.
    let (admitted, _, _) = round_robin(&gws, "127.0.0.14", "/v1/full/a", 30, Duration::ZERO).await;
    assert_eq!(admitted, 18, "full: burst 6 on each of 3 replicas");
    //    deny: fail closed.
    let (admitted, _, _) = round_robin(&gws, "127.0.0.15", "/v1/deny/a", 6, Duration::ZERO).await;
    assert_eq!(admitted, 0, "deny: nothing passes");
    //    exact falls back to share without waiting: 5/3 → 1 per replica.
    let (admitted, slowest, _) =
        round_robin(&gws, "127.0.0.16", "/v1/exact/b", 12, Duration::ZERO).await;
    assert_eq!(admitted, 3, "exact → share fallback");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let fallbacks: f64 = gws
        .iter()
        .map(|g| {
            g.metric_sum(
                "gateway_shared_limits_exact_fallbacks_total",
                &[("policy", "login")],
            )
        })
        .sum();
    assert!(fallbacks >= 12.0, "{fallbacks}");
    let degraded: f64 = gws
        .iter()
        .map(|g| {
            g.metric_sum(
                "gateway_shared_limits_degraded_decisions_total",
                &[("policy", "closed"), ("decision", "rejected")],
            )
        })
        .sum();
    assert_eq!(degraded, 6.0);

    // 5. Redis back (empty, no scripts loaded): every replica in sync within 3 s.
    let restarted = Instant::now();
    redis.spawn();
    let resync = wait_all(
        &gws,
        "in sync after restart",
        Duration::from_secs(3),
        up_is(1.0),
    );
    eprintln!(
        "restart: all replicas in sync {:?} after Redis answered again ({resync:?} polled)",
        restarted.elapsed()
    );
    for g in &gws {
        assert!(
            g.proc.log_text().contains("shared limits back in sync"),
            "INFO on recovery"
        );
    }
    // Sharing works again (the new Redis has no scripts: NOSCRIPT → reload).
    let (admitted, _, bad) = round_robin(
        &gws,
        "127.0.0.17",
        "/v1/sync/b",
        120,
        Duration::from_millis(8),
    )
    .await;
    assert!(bad.is_empty(), "{bad:?}");
    assert!(
        (30..=45).contains(&admitted),
        "{admitted} of 120 after recovery"
    );

    // 6. SIGSTOP: a hung socket, not a refused one. Same outcome, then recovery.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn(background_traffic(
        gws.iter().map(|g| g.addr).collect(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.signal("-STOP");
    let degraded_in = wait_all(
        &gws,
        "degraded after SIGSTOP",
        Duration::from_secs(3),
        up_is(0.0),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("-CONT");
    let resync = wait_all(
        &gws,
        "in sync after SIGCONT",
        Duration::from_secs(3),
        up_is(1.0),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, slowest, bad) = traffic.await.unwrap();
    eprintln!("SIGSTOP: degraded in {degraded_in:?}, back in sync {resync:?} after SIGCONT; {sent} requests, slowest {slowest:?}");
    assert!(bad.is_empty(), "{bad:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let dropped: f64 = gws
        .iter()
        .map(|g| g.metric_sum("gateway_shared_limits_dropped_hits_total", &[]))
        .sum();
    eprintln!("hits dropped over the outages: {dropped}");

    // 7. Hot reload: a new key_prefix reconnects (new engine), a new burst is a new
    //    fingerprint: the client exhausted in step 1 starts fresh.
    let yaml = fleet_yaml_with(&redis.url(), "edge2", 24);
    for g in &gws {
        let before = g.metric_sum("gateway_config_reloads_total", &[("result", "ok")]);
        let text = gateway_yaml(g.addr, g.admin, stub.addr, &g.key_file(), &yaml);
        let tmp = g.config_path.with_extension("yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &g.config_path).unwrap();
        assert!(
            wait_for(Duration::from_secs(5), || g
                .metric_sum("gateway_config_reloads_total", &[("result", "ok")])
                > before),
            "reload not applied"
        );
    }
    wait_all(&gws, "in sync after reload", Duration::from_secs(5), |g| {
        g.metric_sum(UP, &[]) == 1.0 && g.metric_sum("gateway_shared_limits_replicas", &[]) == 3.0
    });
    let (admitted, _, bad) = round_robin(
        &gws,
        "127.0.0.11",
        "/v1/sync/a",
        60,
        Duration::from_millis(8),
    )
    .await;
    assert!(bad.is_empty(), "{bad:?}");
    assert!(
        (24..=34).contains(&admitted),
        "{admitted} of 60 after the reload"
    );
    let mut c = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("edge2:rl:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "new prefix in use");
    assert!(keys.iter().all(|k| !k.contains("127.0.0")), "{keys:?}");
}
