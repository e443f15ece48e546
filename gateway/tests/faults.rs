//! Failure and abuse under load, against real gateway (and app) processes:
//! slowloris, the app killed / stalled / restarted, 100 config reloads under
//! traffic, and a flood of client IPs against the limiter's key cap.
//!
//! These are timing- and resource-heavy, so every test takes `SERIAL` and they
//! run one at a time even inside one `cargo test`. `FAULTS_SCALE=N` (default 1)
//! multiplies the load for longer local runs (scripts/reliability.sh).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scale() -> usize {
    std::env::var("FAULTS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

// ---------------------------------------------------------------- helpers

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Soft RLIMIT_NOFILE of this process (children inherit it).
fn nofile_soft() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap_or(u64::MAX)
}

/// Raises the fd limit with util-linux `prlimit` if it is below `want` (no libc
/// dependency needed); the gateway started afterwards inherits it.
fn ensure_nofile(want: u64) {
    if nofile_soft() >= want {
        return;
    }
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{want}")])
        .status();
    let got = nofile_soft();
    assert!(
        got >= want,
        "need {want} open files for this test, limit is {got}: run `ulimit -n {want}` first"
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

async fn connect_from(local: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(server).await
}

/// Reads exactly one response (Content-Length framed, as all of ours are) from a
/// keep-alive connection; `buf` carries bytes of the next one.
async fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Response> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut head = httparse::Response::new(&mut hs);
            if head.parse(&buf[..end + 4]).is_err() {
                return Err(std::io::Error::other("unparsable response head"));
            }
            let len: usize = head
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let raw: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return parse_response(&raw)
                    .ok_or_else(|| std::io::Error::other("unparsable response"));
            }
        }
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed mid-response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Polls the admin metrics until `name` sums to `want` (bounded); returns the last value.
async fn wait_metric(gw: &GatewayProc, name: &str, want: f64, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = gw.metric_sum(name, &[]);
        if v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_json_error(r: &Response, code: &str) -> bool {
    r.header("content-type") == Some("application/json")
        && serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .is_some_and(|j| j["error"]["code"] == code)
}

// ---------------------------------------------------------------- slowloris

/// Latencies of sequential fresh-connection GETs by a well-behaved client: at
/// least `n` of them and for at least `min_time`. Runs on its own thread and
/// runtime so the slow clients' tasks in this process cannot delay it.
async fn normal_client(gw: SocketAddr, n: usize, min_time: Duration) -> Vec<Duration> {
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::with_capacity(n);
            let started = Instant::now();
            while out.len() < n || started.elapsed() < min_time {
                let start = Instant::now();
                let r = raw_request(
                    "127.0.0.3".parse().unwrap(),
                    gw,
                    b"GET /v1/normal HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(10),
                )
                .await
                .expect("normal client got no answer");
                assert_eq!(r.status, 200, "normal client: {}", r.text());
                out.push(start.elapsed());
            }
            out
        })
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap()
}

#[derive(Default)]
struct SlowStats {
    /// Slow connections currently open and trickling.
    open: AtomicUsize,
}

/// One slowloris connection at a time from `local`, each trickling a never-ending
/// head one byte per 500 ms; reconnects after every answer until `stop`. Returns
/// (status, time from first byte to answer, JSON code matched) per cycle.
async fn slow_client(
    local: IpAddr,
    gw: SocketAddr,
    first_delay: Duration,
    stop: Arc<AtomicBool>,
    stats: Arc<SlowStats>,
) -> Vec<(u16, Duration, bool)> {
    let mut results = Vec::new();
    tokio::time::sleep(first_delay).await;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = connect_from(local, gw).await else {
            results.push((0, Duration::ZERO, false));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let start = Instant::now();
        if s.write_all(b"GET /v1/slow HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            .await
            .is_err()
        {
            results.push((0, start.elapsed(), false));
            continue;
        }
        stats.open.fetch_add(1, Ordering::SeqCst);
        let mut buf = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.tick().await;
        let outcome = loop {
            let mut chunk = [0u8; 4096];
            tokio::select! {
                r = s.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break parse_response(&buf),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                _ = tick.tick() => {
                    // Writes may fail once the gateway has answered and closed.
                    let _ = s.write_all(b"a").await;
                }
            }
            // Nothing sane takes 3x the header timeout.
            if start.elapsed() > Duration::from_secs(6) {
                break None;
            }
        };
        stats.open.fetch_sub(1, Ordering::SeqCst);
        let elapsed = start.elapsed();
        results.push(match outcome {
            Some(r) => (r.status, elapsed, is_json_error(&r, "request_timeout")),
            None => (0, elapsed, false),
        });
    }
    results
}

const SLOW: usize = 1000;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// One attack: `SLOW` slowloris connections ramped over one header timeout, the
/// normal client sampled while every one of them is open, then the attack stopped.
/// Returns (normal-client latencies under attack, slow cycles, open-count median
/// and min while sampling, connections the gateway saw).
async fn slowloris_round(
    gw: &GatewayProc,
    samples: usize,
    window: Duration,
) -> (Vec<Duration>, Vec<(u16, Duration, bool)>, usize, usize, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SlowStats::default());
    let mut tasks = Vec::new();
    for i in 0..SLOW {
        // Spread over 40 source addresses, and the starts over one header timeout,
        // so 408s and reconnects are spread evenly and the attack never pauses.
        let local: IpAddr = format!("127.0.2.{}", 1 + i % 40).parse().unwrap();
        let delay = HEADER_TIMEOUT * i as u32 / SLOW as u32;
        tasks.push(tokio::spawn(slow_client(
            local,
            gw.addr,
            delay,
            stop.clone(),
            stats.clone(),
        )));
    }
    let deadline = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(10);
    while stats.open.load(Ordering::SeqCst) < SLOW * 9 / 10 {
        assert!(
            Instant::now() < deadline,
            "only {} slow connections opened",
            stats.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_gateway = gw.metric_sum("gateway_open_connections", &[]);
    // Watch the attack while the normal client samples: it must not fade.
    let sampling = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (stats, sampling) = (stats.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while sampling.load(Ordering::SeqCst) {
                seen.push(stats.open.load(Ordering::SeqCst));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let during = normal_client(gw.addr, samples, window).await;
    sampling.store(false, Ordering::SeqCst);
    let mut open_seen = watcher.await.unwrap();
    open_seen.sort();
    stop.store(true, Ordering::SeqCst);
    let mut cycles = Vec::new();
    for t in tasks {
        cycles.extend(t.await.unwrap());
    }
    (
        during,
        cycles,
        open_seen[open_seen.len() / 2],
        open_seen[0],
        open_gateway,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408_and_normal_clients_keep_their_latency() {
    let _serial = SERIAL.lock().await;
    let samples = 300 * scale();
    ensure_nofile(4 * SLOW as u64);
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(
        stub.addr,
        &format!("timeouts:\n  request_header: 2s\n{NO_CONN_CAPS}"),
    );
    // Every sampling window spans more than one header timeout, so it covers a
    // full cycle of the attack (every slow connection answered and replaced).
    let window = HEADER_TIMEOUT + Duration::from_millis(500);
    let mut proxied = normal_client(gw.addr, 50, Duration::ZERO).await.len();
    let mut cycles = Vec::new();
    let mut rounds = Vec::new();
    // Latency on a shared 2-core box is noisy, so the comparison gets up to three
    // attempts, each with a fresh unloaded baseline right before its attack. A real
    // regression (slow clients starving the accept loop or the workers) shows up
    // as 10-100x, in every attempt.
    let mut passed = false;
    for _attempt in 0..3 {
        let mut before = normal_client(gw.addr, samples, window).await;
        let (mut during, round_cycles, open_median, open_min, open_gateway) =
            slowloris_round(&gw, samples, window).await;
        proxied += before.len() + during.len();
        cycles.extend(round_cycles);
        // The gateway's gauge is one instant of a 2 s answer-and-replace cycle (and a
        // busy debug build accepts the replacements late), so it gets a wider margin
        // than the client-side median.
        assert!(
            open_median >= SLOW * 9 / 10 && open_gateway >= (SLOW * 3 / 4) as f64,
            "the attack faded while sampling (median {open_median} open, gateway saw {open_gateway})"
        );
        let p99_before = percentile(&mut before, 0.99);
        let p99_during = percentile(&mut during, 0.99);
        // Floored at 1 ms: sub-millisecond loopback p99s are mostly scheduler noise.
        let ok = p99_during <= p99_before.max(Duration::from_millis(1)) * 2;
        rounds.push(format!(
            "unloaded {p99_before:?} / under attack {p99_during:?} ({} / {} samples; {open_gateway} open at the gateway, {open_min}..{open_median} trickling while sampling){}",
            before.len(),
            during.len(),
            if ok { "" } else { " over 2x" }
        ));
        if ok {
            passed = true;
            break;
        }
    }

    // Every slow connection was answered 408 (JSON) at the header deadline.
    let lo = HEADER_TIMEOUT - Duration::from_millis(50);
    let hi = HEADER_TIMEOUT + Duration::from_millis(1500);
    let bad: Vec<_> = cycles
        .iter()
        .filter(|(status, took, json)| *status != 408 || !json || *took < lo || *took > hi)
        .collect();
    let mut took: Vec<Duration> = cycles.iter().map(|c| c.1).collect();
    let took_p50 = percentile(&mut took, 0.5);
    let took_max = *took.last().unwrap();
    eprintln!(
        "slowloris: {SLOW} concurrent slow connections per attack, {} slow cycles answered, 408 after p50 {took_p50:?} max {took_max:?}; normal client p99 per attempt: {}",
        cycles.len(),
        rounds.join("; ")
    );
    assert!(
        bad.is_empty(),
        "{} of {} slow cycles not a 408 JSON in [{lo:?}, {hi:?}]: {:?}",
        bad.len(),
        cycles.len(),
        &bad[..bad.len().min(10)]
    );
    assert!(
        passed,
        "normal client p99 over 2x its unloaded p99 in every attempt: {}",
        rounds.join("; ")
    );
    assert_eq!(
        wait_metric(&gw, "gateway_open_connections", 0.0, Duration::from_secs(5)).await,
        0.0,
        "connections left open after the attack"
    );
    let timeouts = gw.metric_sum(
        "gateway_request_head_rejections_total",
        &[("reason", "timeout")],
    );
    assert_eq!(timeouts as usize, cycles.len(), "every 408 counted");
    assert_eq!(stub.count(), proxied, "no slow request reached the app");
}

// ---------------------------------------------------------------- upstream faults

fn alice_token() -> String {
    mint_token("u-alice", Duration::from_secs(600))
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    took: Duration,
    /// 0 = no answer (hung or connection error).
    status: u16,
    json_code: Option<String>,
}

/// `workers` clients each sending fresh-connection GETs until `stop`.
fn start_load(
    gw: SocketAddr,
    workers: usize,
    token: &str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..workers)
        .map(|i| {
            let req = format!(
                "GET /v1/documents HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            let stop = stop.clone();
            let local: IpAddr = format!("127.0.3.{}", 1 + i).parse().unwrap();
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let r = raw_request(local, gw, req.as_bytes(), Duration::from_secs(10)).await;
                    let (status, json_code) = match r {
                        Ok(r) => {
                            let code = serde_json::from_slice::<serde_json::Value>(&r.body)
                                .ok()
                                .and_then(|j| j["error"]["code"].as_str().map(str::to_owned));
                            (r.status, code)
                        }
                        Err(_) => (0, None),
                    };
                    out.push(Sample {
                        at,
                        took: at.elapsed(),
                        status,
                        json_code,
                    });
                }
                out
            })
        })
        .collect()
}

async fn join_load(tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// First 200 through the gateway after `from`, polling every 20 ms (bounded).
async fn time_to_first_200(gw: SocketAddr, token: &str, from: Instant) -> Duration {
    let req = format!(
        "GET /v1/documents HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    loop {
        if let Ok(r) = raw_request(
            "127.0.0.3".parse().unwrap(),
            gw,
            req.as_bytes(),
            Duration::from_secs(5),
        )
        .await
        {
            if r.status == 200 {
                return from.elapsed();
            }
        }
        assert!(from.elapsed() < Duration::from_secs(15), "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) for the gateway's fd count to drop to `baseline`; returns the last count.
/// After a fault: open connections and in-flight back to 0 (5 s each), the fd count
/// back to `fds_baseline` (8 s). Returns the last readings of all three.
async fn wait_quiet(gw: &GatewayProc, pid: u32, fds_baseline: usize) -> (f64, f64, usize) {
    let open = wait_metric(gw, "gateway_open_connections", 0.0, Duration::from_secs(5)).await;
    let inflight = wait_metric(gw, "gateway_inflight_requests", 0.0, Duration::from_secs(5)).await;
    let fds = wait_fds(pid, fds_baseline, Duration::from_secs(8)).await;
    (open, inflight, fds)
}

async fn wait_fds(pid: u32, baseline: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let n = fd_count(pid);
        if n <= baseline || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_killed_under_load_gives_only_json_502_503_and_recovers() {
    let _serial = SERIAL.lock().await;
    let (_keys_dir, keys) = dev_key_file();
    let app = AppProc::start(&keys);
    let app_addr = app.addr;
    // Short upstream idle so pooled connections (and their fds) expire quickly.
    let gw = GatewayProc::start(
        app_addr,
        &format!("timeouts:\n  upstream_idle: 1s\n  upstream_connect: 1s\n{NO_CONN_CAPS}"),
    );
    gw.wait_ready(200);
    let token = alice_token();
    let pid = gw.proc.pid();
    // Baseline after a warm-up and pool expiry: the fds a quiet gateway holds.
    let warm_stop = Arc::new(AtomicBool::new(false));
    let warm_load = start_load(gw.addr, 2, &token, warm_stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    warm_stop.store(true, Ordering::SeqCst);
    let warm = join_load(warm_load).await;
    assert!(warm.iter().all(|s| s.status == 200), "warm-up failed");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fds_baseline = fd_count(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(gw.addr, 8, &token, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    let dir = app.proc.kill_keep_dir();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restart_at = Instant::now();
    let _app = AppProc::start_in(dir, app_addr, &keys);
    let app_up_at = Instant::now();
    let recovery_from_up = time_to_first_200(gw.addr, &token, app_up_at).await;
    let recovery_from_spawn = (app_up_at - restart_at) + recovery_from_up;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let samples = join_load(load).await;

    let outage: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= killed_at && s.status != 200)
        .collect();
    let hung: Vec<&Sample> = samples.iter().filter(|s| s.status == 0).collect();
    let wrong: Vec<&Sample> = samples
        .iter()
        .filter(|s| match s.status {
            200 => false,
            502 => s.json_code.as_deref() != Some("bad_gateway"),
            503 => s.json_code.as_deref() != Some("service_unavailable"),
            _ => true,
        })
        .collect();
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    let before_kill_failures = samples
        .iter()
        .filter(|s| s.at + s.took < killed_at && s.status != 200)
        .count();
    let ok_after = samples
        .iter()
        .filter(|s| s.at > app_up_at + recovery_from_up && s.status == 200)
        .count();
    let (open, inflight, fds_end) = wait_quiet(&gw, pid, fds_baseline).await;
    eprintln!(
        "app kill: {} requests by 8 clients, {} non-200 during the outage (all JSON 502/503: {}), slowest {slowest:?}, recovery {recovery_from_up:?} after the app was up ({recovery_from_spawn:?} after respawn), {ok_after} ok after; fds baseline {fds_baseline} end {fds_end}, open {open}, inflight {inflight}",
        samples.len(),
        outage.len(),
        wrong.is_empty()
    );
    assert!(hung.is_empty(), "{} requests got no answer", hung.len());
    assert!(
        wrong.is_empty(),
        "non-JSON or unexpected answers: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(before_kill_failures, 0, "failures before the kill");
    assert!(!outage.is_empty(), "the outage was never observed");
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?}"
    );
    assert!(
        recovery_from_up < Duration::from_secs(2),
        "recovery took {recovery_from_up:?}"
    );
    assert!(ok_after > 0, "no successful requests after recovery");
    assert_eq!(open, 0.0, "gateway_open_connections after the load");
    assert_eq!(inflight, 0.0, "gateway_inflight_requests after the load");
    assert!(
        fds_end <= fds_baseline,
        "gateway holds {fds_end} fds, {fds_baseline} before the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_app_gives_504_at_the_configured_timeout_and_recovers() {
    let _serial = SERIAL.lock().await;
    let (_keys_dir, keys) = dev_key_file();
    let app = AppProc::start(&keys);
    let gw = GatewayProc::start(
        app.addr,
        &format!("timeouts:\n  upstream_read: 1s\n  upstream_connect: 1s\n  upstream_idle: 1s\n{NO_CONN_CAPS}"),
    );
    gw.wait_ready(200);
    let token = alice_token();
    let pid = gw.proc.pid();
    time_to_first_200(gw.addr, &token, Instant::now()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fds_baseline = fd_count(pid);

    // SIGSTOP: the kernel still accepts connections, the app never answers.
    app.proc.signal("-STOP");
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(gw.addr, 8, &token, stop.clone());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::SeqCst);
    let stalled = join_load(load).await;
    app.proc.signal("-CONT");
    let resumed = Instant::now();
    let recovery = time_to_first_200(gw.addr, &token, resumed).await;

    let mut took: Vec<Duration> = stalled.iter().map(|s| s.took).collect();
    let (p50, max) = (percentile(&mut took, 0.5), *took.last().unwrap());
    let min = took[0];
    let bad: Vec<&Sample> = stalled
        .iter()
        .filter(|s| s.status != 504 || s.json_code.as_deref() != Some("gateway_timeout"))
        .collect();
    let (open, inflight, fds_end) = wait_quiet(&gw, pid, fds_baseline).await;
    eprintln!(
        "app stall: {} requests by 8 clients, all JSON 504: {}, latency min {min:?} p50 {p50:?} max {max:?}; recovery {recovery:?} after SIGCONT; fds baseline {fds_baseline} end {fds_end}",
        stalled.len(),
        bad.is_empty()
    );
    assert!(stalled.len() >= 8, "{} stalled requests", stalled.len());
    assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(5)]);
    assert!(
        min >= Duration::from_millis(950) && max < Duration::from_millis(2500),
        "504 after {min:?}..{max:?}, configured 1s"
    );
    assert!(
        recovery < Duration::from_secs(2),
        "recovery took {recovery:?}"
    );
    assert_eq!(open, 0.0);
    assert_eq!(inflight, 0.0);
    assert!(fds_end <= fds_baseline, "fds {fds_end} vs {fds_baseline}");
    assert!(
        gw.metric_sum("gateway_upstream_errors_total", &[("kind", "timeout")])
            >= stalled.len() as f64
    );
}

// ---------------------------------------------------------------- reload under load

const POLICY_A: &str = "rate_limits:\n  policies:\n    - name: reload-a\n      key: ip\n      rate: 100000/s\n      burst: 100000\n";
const POLICY_B: &str = "rate_limits:\n  policies:\n    - name: reload-b\n      key: global\n      rate: 50000/s\n      burst: 200000\n";
/// What clients see for each valid version (draft-10 `RateLimit-Policy`: q = burst,
/// w = seconds for an empty bucket to refill).
const HEADER_A: &str = "\"reload-a\";q=100000;w=1";
const HEADER_B: &str = "\"reload-b\";q=200000;w=4";

/// Invalid in different ways: YAML syntax, unknown key, bad rate, zero burst,
/// empty file, cross-field validation, binary junk, a missing key file.
const BROKEN: &[&str] = &[
    "rate_limits: [\n  policies:\n",
    "rate_limits:\n  policies: []\n  surprise: 1\n",
    "rate_limits:\n  policies:\n    - name: reload-a\n      key: ip\n      rate: 10/fortnight\n      burst: 5\n",
    "rate_limits:\n  policies:\n    - name: reload-a\n      key: ip\n      rate: 10/s\n      burst: 0\n",
    "routes: []\n",
    "\u{1}\u{2}\u{3}: [}\n",
    "max_forwarded_hops: 0\n",
];

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_valid_and_broken_under_load_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let reloads = 100 * scale();
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, POLICY_A);
    let key_file = gw.key_file();
    let config_for = |extra: &str| gateway_yaml(gw.addr, gw.admin, stub.addr, &key_file, extra);
    let broken_for = |i: usize| -> String {
        if i % 8 == 7 {
            // Valid YAML naming a key file that does not exist.
            gateway_yaml(
                gw.addr,
                gw.admin,
                stub.addr,
                std::path::Path::new("/nonexistent/keys.yaml"),
                POLICY_A,
            )
        } else if BROKEN[i % BROKEN.len()].starts_with("rate_limits: [") {
            format!("{}{}", config_for(""), BROKEN[i % BROKEN.len()])
        } else {
            config_for(BROKEN[i % BROKEN.len()])
        }
    };

    // Traffic: 4 keep-alive clients as fast as they can, checking every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, addr) = (stop.clone(), gw.addr);
        clients.push(tokio::spawn(async move {
            let local: IpAddr = format!("127.0.4.{}", c + 1).parse().unwrap();
            let mut s = connect_from(local, addr).await.unwrap();
            let mut buf = Vec::new();
            let (mut a, mut b, mut failures) = (0usize, 0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                s.write_all(b"GET /v1/reload HTTP/1.1\r\nHost: gw\r\n\r\n")
                    .await
                    .unwrap();
                match read_one(&mut s, &mut buf).await {
                    Ok(r) if r.status == 200 => match r.header("ratelimit-policy") {
                        Some(HEADER_A) => a += 1,
                        Some(HEADER_B) => b += 1,
                        other => failures.push(format!("policy header {other:?}")),
                    },
                    Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                    Err(e) => {
                        failures.push(format!("connection failed: {e}"));
                        break;
                    }
                }
            }
            (a, b, failures)
        }));
    }

    let reload_count = |gw: &GatewayProc| {
        (
            gw.metric_sum("gateway_config_reloads_total", &[("result", "ok")]),
            gw.metric_sum("gateway_config_reloads_total", &[("result", "error")]),
        )
    };
    let started = Instant::now();
    let mut last_valid = HEADER_A;
    for i in 0..reloads {
        let (ok0, err0) = reload_count(&gw);
        let valid = i % 2 == 0;
        let text = if valid {
            // Alternate the two valid versions: A, broken, B, broken, A, …
            if i % 4 == 0 {
                last_valid = HEADER_B;
                config_for(POLICY_B)
            } else {
                last_valid = HEADER_A;
                config_for(POLICY_A)
            }
        } else {
            broken_for(i / 2)
        };
        write_atomically(&gw.config_path, &text);
        gw.proc.signal("-HUP");
        // Wait until this version was read (the file watcher may re-read it too).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (ok, err) = reload_count(&gw);
            if (valid && ok > ok0) || (!valid && err > err0) {
                break;
            }
            assert!(Instant::now() < deadline, "reload {i} never happened");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The live version is the last valid one, broken files change nothing.
        let probe = get_from("127.0.0.3", gw.addr, "/v1/probe", &[]).await;
        assert_eq!(probe.status, 200);
        assert_eq!(
            probe.header("ratelimit-policy"),
            Some(last_valid),
            "after reload {i} ({})",
            if valid { "valid" } else { "broken" }
        );
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (mut a, mut b, mut failures) = (0, 0, Vec::new());
    for c in clients {
        let (ca, cb, cf) = c.await.unwrap();
        a += ca;
        b += cb;
        failures.extend(cf);
    }
    let (ok, err) = reload_count(&gw);
    eprintln!(
        "reload under load: {reloads} reloads in {took:?} (counted ok {ok}, error {err}); {} requests by 4 keep-alive clients, {a} saw version A, {b} version B, {} failed",
        a + b + failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(a > 0 && b > 0, "both versions served ({a}, {b})");
    assert!(ok >= (reloads / 2) as f64 && err >= (reloads / 2) as f64);
    gw.wait_ready(200);
}

// ---------------------------------------------------------------- limiter memory

/// Distinct client addresses: IPv4 from 11.0.0.0/8 and IPv6 /64s from
/// 2001:db8::/32 (one key each with `ipv6_prefix: 64`), none repeated.
fn client_ip(i: usize) -> String {
    if i.is_multiple_of(2) {
        let n = (i / 2) as u32 + 1;
        format!("11.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
    } else {
        let n = i / 2;
        format!("2001:db8:{:x}:{:x}::1", (n >> 16) & 0xffff, n & 0xffff)
    }
}

/// Sends `count` requests from the trusted proxy on `conns` keep-alive connections,
/// one at a time per connection (the gateway does not serve pipelined requests).
/// XFF names client `first + i` for request i, or one fixed client if `same_ip`.
async fn flood(gw: SocketAddr, first: usize, count: usize, conns: usize, same_ip: bool) -> usize {
    let per = count.div_ceil(conns);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let start = first + c * per;
        let end = (start + per).min(first + count);
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from("127.0.0.2".parse().unwrap(), gw)
                .await
                .unwrap();
            let mut buf = Vec::new();
            let mut ok = 0;
            for i in start..end {
                let ip = if same_ip {
                    "198.51.100.77".to_string()
                } else {
                    client_ip(i)
                };
                let req =
                    format!("GET /v1/flood HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: {ip}\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                let r = read_one(&mut s, &mut buf).await.unwrap();
                // A repeated client goes over flood-b's limit: 429s are expected then.
                assert!(
                    r.status == 200 || (same_ip && r.status == 429),
                    "{} {}",
                    r.status,
                    r.text()
                );
                ok += 1;
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_client_ips_keeps_limiter_memory_under_the_key_cap() {
    let _serial = SERIAL.lock().await;
    // 32 per-IP policies: every request creates 32 limiter keys, so a modest flood
    // is a large key flood. Rate 1/h keeps every bucket non-full for the whole test,
    // so no key can be dropped for free: the cap itself (eviction) must hold the line.
    // Shadow mode keeps every request a normal proxied 200 (same code path as the
    // warm-up), and the store works the same in both modes.
    const MAX_KEYS: usize = 2_000;
    const POLICIES: usize = 32;
    let fill = 2 * MAX_KEYS;
    let flood_keys = 26_000 * scale();
    let policies: String = (0..POLICIES)
        .map(|i| {
            format!("    - name: flood-{i}\n      key: ip\n      rate: 1/h\n      burst: 5\n      mode: shadow\n")
        })
        .collect();
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(
        stub.addr,
        &format!(
            "trusted_proxies: [127.0.0.2/32]\nrate_limits:\n  ipv6_prefix: 64\n  max_keys: {MAX_KEYS}\n  policies:\n{policies}"
        ),
    );
    let pid = gw.proc.pid();
    // Warm up with one repeated client so buffers, pools and the log writer exist.
    let warm = flood(gw.addr, 0, 5_000, 8, true).await;
    let rss_base = proc_status_kb(pid, "VmRSS:");
    // Fill every store past its cap…
    let started = Instant::now();
    let mut sent = flood(gw.addr, 0, fill, 8, false).await;
    let rss_full = proc_status_kb(pid, "VmRSS:");
    // …then keep flooding with new addresses.
    sent += flood(gw.addr, fill, flood_keys, 8, false).await;
    let took = started.elapsed();
    let rss_end = proc_status_kb(pid, "VmRSS:");
    let metrics = gw.metrics();
    let keys: Vec<f64> = (0..POLICIES)
        .map(|i| {
            let policy = format!("flood-{i}");
            metric_sum(
                &metrics,
                "gateway_rate_limit_active_keys",
                &[("policy", policy.as_str())],
            )
        })
        .collect();
    let evictions = metric_sum(&metrics, "gateway_rate_limit_evictions", &[]);
    // Bounds. A full store costs at most 43 B per key (README) in each policy:
    // capped_kb. On top we allow 4 MiB of allocator and buffer noise (RSS moved
    // by ±1.5 MiB between identical floods in our runs). An uncapped
    // store would grow by at least 21 B per key (README's lower figure) for every
    // key of the second flood in every policy: uncapped_kb, which must exceed the
    // plateau allowance for this test to mean anything.
    let capped_kb = (POLICIES * MAX_KEYS * 43 / 1024) as u64;
    let noise_kb = 4 * 1024;
    let uncapped_kb = (flood_keys * POLICIES * 21 / 1024) as u64;
    let distinct = fill + flood_keys;
    eprintln!(
        "limiter flood: {POLICIES} per-IP policies, max_keys {MAX_KEYS}; {sent} requests with {distinct} distinct client IPs (half IPv4, half IPv6 /64s) via trusted XFF in {took:?} ({:.0} req/s) after {warm} warm-up requests; RSS {rss_base} kB -> {rss_full} kB at the cap -> {rss_end} kB at the end (plateau +{} kB, allowed {noise_kb} kB; an uncapped store would add >= {uncapped_kb} kB); active keys per policy max {}, evictions {evictions}",
        sent as f64 / took.as_secs_f64(),
        rss_end.saturating_sub(rss_full),
        keys.iter().cloned().fold(0.0, f64::max)
    );
    assert_eq!(sent, distinct);
    assert!(
        uncapped_kb > noise_kb,
        "flood too small to tell a cap from noise"
    );
    for (i, k) in keys.iter().enumerate() {
        assert!(*k <= MAX_KEYS as f64, "flood-{i} holds {k} keys");
        assert!(
            *k >= (MAX_KEYS * 9 / 10) as f64,
            "flood-{i} holds only {k} keys"
        );
    }
    // Non-full buckets can only leave by eviction: one per new key past the cap.
    let want_evictions = ((distinct + 1 - MAX_KEYS) * POLICIES) as f64;
    assert!(
        evictions >= want_evictions * 0.99 && evictions <= want_evictions,
        "evictions {evictions}, expected about {want_evictions}"
    );
    assert!(
        rss_end.saturating_sub(rss_full) <= noise_kb,
        "RSS kept growing past the cap: {rss_full} -> {rss_end} kB"
    );
    assert!(
        rss_end.saturating_sub(rss_base) <= capped_kb + noise_kb,
        "RSS grew {} kB, more than a full store ({capped_kb} kB) plus {noise_kb} kB",
        rss_end - rss_base
    );
}
