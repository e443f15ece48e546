//! TLS and HTTP/2 on the public listener, end to end: a real gateway with a certificate
//! made at test time (rcgen), curl over TLS (HTTP/1.1 and HTTP/2) to a recording stub,
//! and hostile h2 clients (tests/h2_client.py, Python's h2 package). Every client is bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The tests of this file run one at a time: the p99 comparison needs a quiet machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const H2_CLOSED: &str = "gateway_h2_connections_closed_total";
const TLS_FAILURES: &str = "gateway_tls_handshake_failures_total";

/// Writes a fresh `localhost` certificate pair into `dir`; returns the `tls:` YAML.
fn tls_yaml(dir: &std::path::Path, extra_tls: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n{extra_tls}",
        c.display(),
        k.display()
    )
}

/// One test's world: the file's turn (tests run one at a time), a recording stub and a TLS
/// gateway in front of it; `extra` is appended to the config.
struct World {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    stub: Stub,
    gw: GatewayProc,
    _dir: tempfile::TempDir,
}

async fn world(extra_tls: &str, extra: &str) -> World {
    let serial = SERIAL.lock().await;
    let stub = Stub::start(StubMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{}{extra}", tls_yaml(dir.path(), extra_tls));
    let gw = GatewayProc::start(stub.addr, &yaml);
    World {
        _serial: serial,
        stub,
        gw,
        _dir: dir,
    }
}

/// curl over TLS (certificate not verified: it is made per test); bounded at 10 s.
/// Returns (exit ok, stdout) with `-w` output last.
fn curl(gw: &GatewayProc, args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-o", "-"])
        .args(args)
        .output()
        .expect("curl runs");
    let _ = gw;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn url(gw: &GatewayProc, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.addr.port())
}

fn resolve(gw: &GatewayProc) -> String {
    format!("localhost:{}:127.0.0.1", gw.addr.port())
}

fn python() -> &'static str {
    // Debian's interpreter carries python3-h2; a pyenv shim on PATH may not.
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn spawn_h2_client(gw: &GatewayProc, args: &[&str]) -> std::process::Child {
    spawn_script(Command::new(python()), gw, args)
}

/// `spawn_h2_client` at the lowest CPU priority: a real attacker's CPU is not the gateway's,
/// and on this 2-core box an unpaced Python loop would otherwise mostly measure itself.
fn spawn_niced_h2_client(gw: &GatewayProc, args: &[&str]) -> std::process::Child {
    let mut nice = Command::new("nice");
    nice.args(["-n", "19", python()]);
    spawn_script(nice, gw, args)
}

fn spawn_script(mut cmd: Command, gw: &GatewayProc, args: &[&str]) -> std::process::Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_client.py");
    let port = gw.addr.port().to_string();
    cmd.arg(script)
        .arg(args[0])
        .arg(&port)
        .args(&args[1..])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

fn attacker_result(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"))
}

/// Runs tests/h2_client.py; returns its JSON line.
fn h2_client(gw: &GatewayProc, args: &[&str]) -> serde_json::Value {
    attacker_result(spawn_h2_client(gw, args))
}

/// Waits (5 s) until `metric{reason}` counts one; returns the count.
async fn wait_reason(gw: &GatewayProc, metric: &str, reason: &str) -> f64 {
    let labels = [("reason", reason)];
    gw.wait_metric_above(metric, &labels, 0.0, Duration::from_secs(5))
        .await
}

/// The normal h2 client's p99 (200 GETs) unloaded and beside `attack` (spawned once per
/// round, its JSON line handed to `check`). Each attempt is three interleaved rounds,
/// medians compared; loopback p99s of a few ms swing 2x between identical runs on this
/// shared box, so (as faults.rs' slowloris test does) up to three attempts, each with its
/// own baseline. A real regression fails all three. Returns the attempts' figures.
fn p99_beside(
    gw: &GatewayProc,
    mut attack: impl FnMut() -> std::process::Child,
    mut check: impl FnMut(serde_json::Value),
) -> Vec<String> {
    tokio::task::block_in_place(|| {
        h2_client(gw, &["normal", "20"]);
        let mut attempts = Vec::new();
        loop {
            let (mut base, mut beside) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                let quiet = h2_client(gw, &["normal", "200"]);
                base.push(quiet["p99_ms"].as_f64().unwrap());
                let attacker = attack();
                let loaded = h2_client(gw, &["normal", "200"]);
                beside.push(loaded["p99_ms"].as_f64().unwrap());
                check(attacker_result(attacker));
            }
            base.sort_by(f64::total_cmp);
            beside.sort_by(f64::total_cmp);
            let (base_p99, loaded_p99) = (base[1], beside[1]);
            attempts.push(format!(
                "{base_p99} -> {loaded_p99} ms ({base:?} / {beside:?})"
            ));
            // 2 ms floor against sub-millisecond noise.
            if loaded_p99 <= (2.0 * base_p99).max(base_p99 + 2.0) {
                return attempts;
            }
            assert!(
                attempts.len() < 3,
                "median p99 unloaded -> beside the attacker over 2x in every attempt: {attempts:?}"
            );
        }
    })
}

/// An answer of the gateway's own (`curl -i` output, `-w` status last): JSON error with our
/// security headers, HSTS included since `tls` is on.
fn assert_edge_json(ok: bool, out: &str, status: &str, flag: &str) {
    let head = &out[..out.len().min(400)];
    assert!(ok && out.ends_with(status), "{flag}: want {status}: {head}");
    let lower = out.to_ascii_lowercase();
    for want in [
        "content-type: application/json",
        "strict-transport-security: max-age=31536000",
        "x-content-type-options: nosniff",
    ] {
        assert!(lower.contains(want), "{flag} {status}: no {want}: {head}");
    }
    assert!(out.contains(r#""error""#), "{flag} {status}: {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_h1_and_h2_over_tls_reach_the_upstream_as_https() {
    let w = world("", "limits:\n  max_request_body_bytes: 4096\n").await;
    let (stub, gw) = (&w.stub, &w.gw);
    for (flag, version, protocol) in [("--http1.1", "1.1", "HTTP/1.1"), ("--http2", "2", "HTTP/2")]
    {
        let before = stub.count();
        let target = url(gw, "/v1/documents");
        let r = resolve(gw);
        let args = [
            flag,
            "--resolve",
            &r,
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code} %{http_version}",
            &target,
        ];
        let (ok, out) = tokio::task::block_in_place(|| curl(gw, &args));
        assert!(ok, "{flag}: {out}");
        assert!(out.ends_with(&format!("200 {version}")), "{flag}: {out}");
        assert_eq!(stub.count(), before + 1, "{flag}: reached the upstream");
        let h = stub.last_headers();
        assert_eq!(header_values(&h, "x-forwarded-proto"), ["https"], "{flag}");
        assert_eq!(header_values(&h, "x-real-ip"), ["127.0.0.1"], "{flag}");
        assert_eq!(
            header_values(&h, "x-forwarded-for"),
            ["127.0.0.1"],
            "{flag}"
        );

        // Answers of our own never reach the app.
        let edge = |status: &str, args: &[&str]| {
            let (ok, out) = tokio::task::block_in_place(|| curl(gw, args));
            assert_edge_json(ok, &out, status, flag);
            assert_eq!(stub.count(), before + 1, "{flag}: {status} reached the app");
        };
        // Route allowlist: JSON 404.
        edge(
            "404",
            &[
                flag,
                "--resolve",
                &r,
                "-i",
                "-w",
                "\n%{http_code}",
                &url(gw, "/admin"),
            ],
        );
        // A header list over limits.max_request_header_bytes (16 KiB), under the h2 codec's
        // hard cap (64 KiB): our JSON 431 on h2, the head reader's on HTTP/1.1.
        let big = format!("x-big: {}", "a".repeat(20_000));
        let target = url(gw, "/v1/documents");
        edge(
            "431",
            &[
                flag,
                "--resolve",
                &r,
                "-i",
                "-H",
                &big,
                "-w",
                "\n%{http_code}",
                &target,
            ],
        );
        // Body cap (limits.max_request_body_bytes: 4096 here): JSON 413. On h2 the refusal
        // can come before the upload is in; curl 7.88 then ends about 1 upload in 10 with
        // exit 92 (HTTP/2 stream error) instead of showing the 413 (RELIABILITY "Known
        // issues"), so h2 uses the Python client, which sends headers and body at once.
        if flag == "--http2" {
            let r = tokio::task::block_in_place(|| h2_client(gw, &["post", "10000"]));
            assert_eq!(r["status"], 413, "{r}");
            assert_eq!(r["headers"]["content-type"], "application/json", "{r}");
            assert_eq!(
                r["headers"]["strict-transport-security"], "max-age=31536000",
                "{r}"
            );
            assert!(r["body"].as_str().unwrap().contains(r#""error""#), "{r}");
            assert_eq!(stub.count(), before + 1, "{flag}: 413 reached the app");
        } else {
            let body = "b".repeat(10_000);
            let post = [flag, "--resolve", &r, "-i", "--data-binary", &body];
            edge(
                "413",
                &[&post[..], &["-w", "\n%{http_code}", &target]].concat(),
            );
        }

        // The access log says how the client spoke to us.
        let ok = wait_until(Duration::from_secs(5), || {
            gw.proc.access_logs().iter().any(|l| {
                l["protocol"] == protocol && l["tls_version"] == "TLSv1.3" && l["status"] == 404
            })
        });
        assert!(ok, "{flag}: no access line with protocol {protocol}");
        // The listener's own answers name the connection too (HTTP/1.1's 431 comes from the
        // head reader, before a request exists: no protocol there).
        let lines = gw.proc.access_logs();
        let proto = if flag == "--http2" {
            protocol.into()
        } else {
            serde_json::Value::Null
        };
        let own_431 = lines
            .iter()
            .find(|l| l["status"] == 431 && l["error"] == "too_large" && l["protocol"] == proto);
        let line = own_431.unwrap_or_else(|| panic!("{flag}: no 431 line"));
        assert_eq!(line["tls_version"], "TLSv1.3", "{flag}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_logins_multiplexed_on_one_h2_connection_hit_login_per_ip() {
    let policy = "rate_limits:\n  policies:\n    - {name: login-per-ip, key: ip, rate: 10/min, burst: 10, match: {methods: [POST], path_prefix: /v1/auth/token}}\n";
    let w = world("", policy).await;
    let (stub, gw) = (&w.stub, &w.gw);
    let target = url(gw, "/v1/auth/token");
    let r = resolve(gw);
    let mut args: Vec<&str> = vec![
        "--http2",
        "--parallel",
        "--parallel-max",
        "15",
        "--resolve",
        &r,
        "-X",
        "POST",
        "-w",
        "\n%{http_code} %{num_connects}\n",
    ];
    args.extend(std::iter::repeat_n(target.as_str(), 15));
    let (ok, out) = tokio::task::block_in_place(|| curl(gw, &args));
    assert!(ok, "{out}");
    // Bodies and `-w` lines interleave; the `-w` lines are "<status> <new connections>".
    let written: Vec<(&str, u32)> = out
        .lines()
        .filter_map(|l| {
            let (code, n) = l.split_once(' ')?;
            (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
                .then_some((code, n.parse().ok()?))
        })
        .collect();
    let codes: Vec<&str> = written.iter().map(|w| w.0).collect();
    let connects: u32 = written.iter().map(|w| w.1).sum();
    assert_eq!(codes.len(), 15, "{out}");
    assert_eq!(connects, 1, "one connection for all 15: {out}");
    assert_eq!(codes.iter().filter(|c| **c == "429").count(), 5, "{out}");
    assert_eq!(stub.count(), 10, "only the burst reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_closed_fast_and_counted() {
    let w = world("", "").await;
    let (stub, gw) = (&w.stub, &w.gw);
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v1/documents HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "no cleartext answer");
    let n = wait_reason(gw, TLS_FAILURES, "not_tls").await;
    assert_eq!(n, 1.0);
    // Still serving.
    let target = url(gw, "/v1/documents");
    let r = resolve(gw);
    let args = ["--resolve", &r, "-w", "\n%{http_code}", &target];
    let (ok, out) = tokio::task::block_in_place(|| curl(gw, &args));
    assert!(ok && out.ends_with("200"), "{out}");
    assert_eq!(stub.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused_and_1_2_accepted() {
    let w = world("", "").await;
    let gw = &w.gw;
    let target = url(gw, "/v1/documents");
    let r = resolve(gw);
    // OpenSSL 3 may refuse TLS 1.1 at its default security level before sending: lower it so
    // the refusal is the gateway's.
    let old = [
        "--resolve",
        &r,
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--ciphers",
        "DEFAULT@SECLEVEL=0",
        "-w",
        "%{http_code}",
        &target,
    ];
    let (ok, out) = tokio::task::block_in_place(|| curl(gw, &old));
    assert!(!ok, "TLS 1.1 must fail: {out}");
    let v12 = [
        "--resolve",
        &r,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        // No ALPN offered at all: HTTP/1.1.
        "--no-alpn",
        "-w",
        "\n%{http_code} %{http_version}",
        &target,
    ];
    let (ok, out) = tokio::task::block_in_place(|| curl(gw, &v12));
    assert!(
        ok && out.ends_with("200 1.1"),
        "TLS 1.2 without ALPN works: {out}"
    );
    let ok = wait_until(Duration::from_secs(5), || {
        gw.proc
            .access_logs()
            .iter()
            .any(|l| l["tls_version"] == "TLSv1.2")
    });
    assert!(ok, "access log names TLSv1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshake_and_slow_h2_headers_are_cut_at_their_deadlines() {
    let w = world(
        "  handshake_timeout: 1s\n",
        "http2:\n  header_timeout: 2s\n",
    )
    .await;
    let (stub, gw) = (&w.stub, &w.gw);
    // Slow handshake: half a ClientHello record header, then nothing.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );
    wait_reason(gw, TLS_FAILURES, "timeout").await;

    // Slow h2 headers: HEADERS without END_HEADERS, then one byte of CONTINUATION a second.
    let r = tokio::task::block_in_place(|| h2_client(gw, &["slow-headers", "10", "8"]));
    assert_eq!(r["closed"], true, "{r}");
    let secs = r["seconds"].as_f64().unwrap();
    assert!((1.5..5.0).contains(&secs), "cut after {secs} s: {r}");
    eprintln!("slow handshake cut after {took:?} (deadline 1 s); slow h2 headers cut after {secs} s (deadline 2 s)");
    wait_reason(gw, H2_CLOSED, "header_timeout").await;
    assert_eq!(stub.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_at_their_deadlines() {
    let w = world("", "http2:\n  header_timeout: 1s\n  idle_timeout: 2s\n").await;
    let gw = &w.gw;
    // No request at all: the first-request deadline (header_timeout).
    let r = tokio::task::block_in_place(|| h2_client(gw, &["idle", "0", "6"]));
    let secs = r["seconds"].as_f64().unwrap();
    assert!(r["closed"] == true && (0.9..2.5).contains(&secs), "{r}");
    wait_reason(gw, H2_CLOSED, "header_timeout").await;
    // Served, then silent: idle_timeout after the last stream ended.
    let r = tokio::task::block_in_place(|| h2_client(gw, &["idle", "3", "6"]));
    let secs = r["seconds"].as_f64().unwrap();
    assert!(r["closed"] == true && (1.9..3.5).contains(&secs), "{r}");
    wait_reason(gw, H2_CLOSED, "idle_timeout").await;
    assert_eq!(w.stub.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_closes_the_connection() {
    let h2 = "http2:\n  keepalive_interval: 1s\n  keepalive_timeout: 500ms\n";
    let w = world("", &format!("{h2}timeouts:\n  downstream_read: 20s\n")).await;
    let gw = &w.gw;
    // A stream stays open (its body never comes), so only the PING can notice the silence.
    let r = tokio::task::block_in_place(|| h2_client(gw, &["no-pong", "0", "6"]));
    let secs = r["seconds"].as_f64().unwrap();
    assert!(r["closed"] == true && (1.3..3.0).contains(&secs), "{r}");
    wait_reason(gw, H2_CLOSED, "ping_timeout").await;
}

/// `content-length: 0` on a stream that never ends: the wait for its END_STREAM (so that a
/// refused trailer section never reaches the app) is bounded by `downstream_read`: 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_h2_body_that_never_ends_is_answered_408() {
    let w = world("", "timeouts:\n  downstream_read: 1s\n").await;
    let r = tokio::task::block_in_place(|| h2_client(&w.gw, &["open-empty", "0", "6"]));
    let secs = r["seconds"].as_f64().unwrap();
    assert!(r["status"] == 408 && (0.9..3.0).contains(&secs), "{r}");
    assert_eq!(w.stub.count(), 0, "reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_floods_close_the_connection_and_spare_other_clients() {
    let w = world("", "").await;
    let (stub, gw) = (&w.stub, &w.gw);
    // A rapid-reset client alongside the normal one: cut long before its 5000 pairs and
    // counted, while the normal client's p99 stays within 2x its unloaded p99.
    let cut = || {
        gw.metric_sum(H2_CLOSED, &[("reason", "rapid_reset")])
            + gw.metric_sum(H2_CLOSED, &[("reason", "enhance_your_calm")])
    };
    let (mut pairs, mut normal) = (0, 20);
    let cut_before = std::cell::Cell::new(0.0);
    let attack = || {
        cut_before.set(cut());
        spawn_h2_client(gw, &["rapid-reset", "5000", "5"])
    };
    let attempts = p99_beside(gw, attack, |one| {
        assert_eq!(one["closed"], true, "{one}");
        let sent = one["sent"].as_u64().unwrap();
        assert!(sent < 5000, "cut before the end: {one}");
        (pairs, normal) = (pairs + sent, normal + 400);
        assert!(cut() > cut_before.get(), "not counted: {}", gw.metrics());
    });

    // The attacker keeps coming back (reconnecting after every cut, up to 10 times a second):
    // every connection is cut and the normal client is never disconnected. Its p99 is printed,
    // not asserted: on a shared 2-core box the attacker's own CPU (Python) dominates it.
    let attacker = spawn_h2_client(gw, &["rapid-reset-loop", "5000", "3"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sustained = tokio::task::block_in_place(|| h2_client(gw, &["normal", "200"]));
    let attack = tokio::task::block_in_place(|| attacker_result(attacker));
    (pairs, normal) = (pairs + attack["sent"].as_u64().unwrap(), normal + 200);
    // A stream reset before its task runs does no work: almost none reach the app.
    let reached = stub.count() as u64 - normal;
    assert!(
        reached * 20 <= pairs,
        "{reached} of {pairs} reset streams reached the app"
    );
    assert!(attack["connections"].as_u64().unwrap() >= 2, "{attack}");
    // Every connection but the last (ended by the attacker's own clock) was cut by us.
    let (conns, closed) = (attack["connections"].as_u64(), attack["closed"].as_u64());
    assert!(closed.unwrap() + 1 >= conns.unwrap(), "{attack}");
    assert!(cut() >= closed.unwrap() as f64, "{}", gw.metrics());
    eprintln!(
        "normal client p99 (median of 3) unloaded -> beside a rapid-reset client: {attempts:?}; under a sustained one {} ms (attacker {attack}); {reached} of {pairs} reset streams reached the app",
        sustained["p99_ms"],
    );

    // PING and CONTINUATION floods: closed and counted.
    // The h2 codec caps CONTINUATION frames itself (ENHANCE_YOUR_CALM); our watcher is the
    // backstop, so either may cut the flood first depending on how reads are chunked.
    let floods = [
        ("ping-flood", vec!["control_flood"]),
        (
            "continuation",
            vec!["continuation_flood", "enhance_your_calm"],
        ),
    ];
    for (mode, reasons) in floods {
        let before: f64 = reasons
            .iter()
            .map(|r| gw.metric_sum(H2_CLOSED, &[("reason", r)]))
            .sum();
        let r = tokio::task::block_in_place(|| h2_client(gw, &[mode, "5000", "5"]));
        assert_eq!(r["closed"], true, "{mode}: {r}");
        let counted = wait_until(Duration::from_secs(5), || {
            let now: f64 = reasons
                .iter()
                .map(|r| gw.metric_sum(H2_CLOSED, &[("reason", r)]))
                .sum();
            now > before
        });
        assert!(
            counted,
            "{mode}: not counted as {reasons:?}: {}",
            gw.metrics()
        );
    }
    // Still serving.
    let after = tokio::task::block_in_place(|| h2_client(gw, &["normal", "5"]));
    assert_eq!(after["n"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_capped_per_client_and_spares_others() {
    // One client (127.0.0.2) reconnecting unpaced, a full TLS handshake asked each time:
    // beyond its burst it gets 10 handshakes a second, the rest are closed at accept and
    // counted; the normal client (127.0.0.1) keeps its p99 within 2x.
    let conn_rate = "limits:\n  new_connections_per_client:\n    rate: 10/s\n    burst: 20\n";
    let w = world("", conn_rate).await;
    let gw = &w.gw;
    let rejected = || {
        let labels = [("reason", "per_client_rate")];
        gw.metric_sum("gateway_connection_rejections_total", &labels)
    };
    let (mut handshakes, mut refused) = (Vec::new(), 0);
    let attack = || spawn_niced_h2_client(gw, &["handshake-flood", "100000", "1.5", "127.0.0.2"]);
    let attempts = p99_beside(gw, attack, |one| {
        let done = one["handshakes"].as_u64().unwrap();
        // Burst (20) + 10/s over 1.5 s, plus what refilled between rounds.
        assert!(done <= 20 + 15 + 15, "{one}");
        handshakes.push(done);
        refused += one["refused"].as_u64().unwrap();
    });
    assert!(refused > 0, "the flood was never refused");
    assert!(
        rejected() >= refused as f64,
        "{refused} refused, counted {}",
        rejected()
    );
    eprintln!(
        "normal client p99 (median of 3) unloaded -> beside an unpaced handshake flood: {attempts:?}; flood handshakes per 1.5 s round {handshakes:?}, {refused} refused"
    );
}

// ---- HTTP/2 to HTTP/1.1: the upstream gets each h2 request exactly as it was sent ----

/// One h2 request as the differential test generates it: how the body is cut into DATA
/// frames and how the stream ends are part of the case.
#[derive(Debug, Clone)]
struct H2Case {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// DATA frame sizes, summing to the body's length.
    frames: Vec<usize>,
    content_length: bool,
    /// END_STREAM on an empty DATA frame after the body, not on the body's last frame.
    end_on_empty: bool,
    trailers: bool,
}

/// What came back on the stream: the status, or the error that ended it.
type H2Outcome = Result<u16, String>;

/// An h2 connection over TLS (the `h2` crate), trusting the world's certificate.
async fn h2_connect(w: &World) -> h2::client::SendRequest<bytes::Bytes> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    let cert = CertificateDer::from_pem_file(w._dir.path().join("tls.crt")).unwrap();
    roots.add(cert).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(w.gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tls = connector.connect(name, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Sends `case` on a new stream; bounded at 20 s.
async fn h2_send(send: &h2::client::SendRequest<bytes::Bytes>, case: &H2Case) -> H2Outcome {
    let run = async {
        let mut send = send.clone().ready().await.map_err(|e| e.to_string())?;
        let mut req = http::Request::builder()
            .method(case.method)
            .uri(format!("https://localhost{}", case.path));
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        if case.content_length {
            req = req.header("content-length", case.body.len());
        }
        let req = req.body(()).unwrap();
        let bodiless = case.body.is_empty() && !case.end_on_empty && !case.trailers;
        let (resp, mut stream) = send
            .send_request(req, bodiless)
            .map_err(|e| e.to_string())?;
        let mut at = 0;
        for (i, n) in case.frames.iter().enumerate() {
            let last = i + 1 == case.frames.len() && !case.end_on_empty && !case.trailers;
            let piece = bytes::Bytes::copy_from_slice(&case.body[at..at + n]);
            at += n;
            stream.send_data(piece, last).map_err(|e| e.to_string())?;
        }
        if case.end_on_empty {
            stream
                .send_data(bytes::Bytes::new(), true)
                .map_err(|e| e.to_string())?;
        } else if case.trailers {
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("abc"));
            stream.send_trailers(t).map_err(|e| e.to_string())?;
        }
        let resp = resp.await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The upstream's records carrying `x-case: id`, with their bodies; every record the stub
/// could not parse as a request (a stray last-chunk) comes back too, under any id.
fn at_upstream(stub: &Stub, id: &str) -> Vec<(serde_json::Value, Vec<u8>)> {
    let reqs = stub.requests.lock().unwrap();
    let bodies = stub.bodies.lock().unwrap();
    reqs.iter()
        .zip(bodies.iter())
        .filter(|(r, _)| {
            r["method"] == "<unparsable>"
                || r["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h[0] == "x-case" && h[1] == id)
        })
        .map(|(r, b)| (r.clone(), b.clone()))
        .collect()
}

/// Headers the gateway writes or drops on the way (README "HTTP/2"): not compared.
const OURS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-request-id",
];

/// Checks one case against what the upstream recorded; `Err` says what differs.
fn compare(
    case: &H2Case,
    outcome: &H2Outcome,
    seen: &[(serde_json::Value, Vec<u8>)],
) -> Result<(), String> {
    if case.trailers {
        // Request trailers are refused: the stream fails, the upstream never holds a
        // complete request from it.
        if outcome.is_ok() {
            return Err(format!("trailers answered {outcome:?}"));
        }
        return match seen {
            [] => Ok(()),
            _ => Err(format!(
                "upstream got {} request(s): {:?}",
                seen.len(),
                seen[0].0
            )),
        };
    }
    if *outcome != Ok(200) {
        return Err(format!("answered {outcome:?}"));
    }
    let [(rec, body)] = seen else {
        let lines: Vec<_> = seen.iter().map(|(r, _)| r.to_string()).collect();
        return Err(format!("upstream got {} requests: {lines:?}", seen.len()));
    };
    if rec["method"] != case.method || rec["path"] != case.path.as_str() {
        return Err(format!("request line {} {}", rec["method"], rec["path"]));
    }
    if *body != case.body {
        return Err(format!(
            "body {} bytes, sent {}",
            body.len(),
            case.body.len()
        ));
    }
    let got: Vec<(String, String)> = record_headers(rec)
        .into_iter()
        .filter(|(k, _)| !OURS.contains(&k.as_str()))
        .collect();
    let crumbs: Vec<&str> = case
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut want: Vec<(String, String)> = case
        .headers
        .iter()
        .filter(|(k, _)| k != "cookie")
        .cloned()
        .collect();
    if !crumbs.is_empty() {
        want.push(("cookie".into(), crumbs.join("; ")));
    }
    // Order across names is pingora's map order; within one name it must be kept.
    let (mut g, mut w) = (got.clone(), want.clone());
    g.sort_by(|a, b| a.0.cmp(&b.0));
    w.sort_by(|a, b| a.0.cmp(&b.0));
    if g != w {
        return Err(format!("headers {got:?}, want {want:?}"));
    }
    if case.content_length && rec["chunked"] == true {
        return Err("content-length body went chunked".into());
    }
    Ok(())
}

/// A random case for the differential test.
fn h2_case(rng: &mut impl rand::Rng, id: usize) -> H2Case {
    const METHODS: &[&str] = &["GET", "DELETE", "POST", "PUT", "PATCH"];
    // pchar without `%`-escapes the pipeline refuses (dot segments, encoded `/` `.` `\`).
    const PCHARS: &[u8] = b"abcXYZ019-_~!$&'()*+,;=:@";
    const QCHARS: &[u8] = b"abc019-_~!$&'()*+,;=:@/?";
    fn seg(rng: &mut impl rand::Rng, set: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| set[rng.random_range(0..set.len())] as char)
            .collect()
    }
    let method = METHODS[rng.random_range(0..METHODS.len())];
    let n = rng.random_range(1..12);
    let mut path = format!("/v1/documents/{}", seg(rng, PCHARS, n));
    if rng.random_bool(0.3) {
        path.push_str(&format!(
            "/{}%20{}",
            seg(rng, PCHARS, 3),
            seg(rng, PCHARS, 2)
        ));
    }
    if rng.random_bool(0.4) {
        path.push('?');
        let n = rng.random_range(0..16);
        path.push_str(&seg(rng, QCHARS, n));
    }
    let mut headers = vec![("x-case".to_string(), id.to_string())];
    const NAMES: &[&str] = &["x-a", "x-b", "accept", "user-agent", "cookie", "x-empty"];
    const VCHARS: &[u8] = b"abcXYZ0189 ;=,:/\"'!#$%&*+-.^_`|~()<>[]{}?@\\";
    for _ in 0..rng.random_range(0..8) {
        let name = NAMES[rng.random_range(0..NAMES.len())];
        let value = match name {
            "x-empty" => String::new(),
            "cookie" => format!("c{}={}", rng.random_range(0..100), seg(rng, b"abc019", 4)),
            _ => {
                let n = rng.random_range(1..24);
                seg(rng, VCHARS, n).trim().to_string()
            }
        };
        headers.push((name.to_string(), value));
    }
    let has_body = matches!(method, "POST" | "PUT" | "PATCH");
    let len = if !has_body {
        0
    } else {
        match rng.random_range(0..10) {
            0 => 0,
            1 => 1024 * 1024,
            2..=4 => rng.random_range(1..100),
            5..=7 => rng.random_range(100..20_000),
            _ => rng.random_range(20_000..300_000),
        }
    };
    let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    let mut frames = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = rng.random_range(1..=left.min(20_000));
        frames.push(n);
        left -= n;
    }
    let trailers = has_body && rng.random_bool(0.15);
    H2Case {
        method,
        path,
        headers,
        body,
        frames,
        content_length: has_body && rng.random_bool(0.5),
        trailers,
        // A trailer section ends the stream itself.
        end_on_empty: has_body && !trailers && rng.random_bool(0.4),
    }
}

/// Property: every generated h2 request reaches the HTTP/1.1 upstream as exactly one
/// well-framed request with the same method, path, headers (cookie crumbs joined) and body
/// bytes; a request with trailers never reaches it complete. Seeded (`H2_DIFF_SEED` replays
/// a run; the seed is printed), bounded at 150 cases and 25 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_h1_translation_differential() {
    use rand::SeedableRng;
    let w = world("", "").await;
    let seed = std::env::var("H2_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("h2_to_h1_translation_differential: H2_DIFF_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut shared = h2_connect(&w).await;
    let (mut failures, mut cases, mut bytes) = (Vec::new(), 0, 0);
    while cases < 150 && started.elapsed() < Duration::from_secs(25) {
        // Up to 4 streams at once on one connection; a case with trailers gets a connection
        // of its own (refusing it closes the connection).
        let batch: Vec<H2Case> = (0..4).map(|i| h2_case(&mut rng, cases + i)).collect();
        let mut outcomes = Vec::new();
        for (i, case) in batch.iter().enumerate().filter(|(_, c)| c.trailers) {
            let own = h2_connect(&w).await;
            outcomes.push((i, h2_send(&own, case).await));
        }
        let mut sent = tokio::task::JoinSet::new();
        for (i, case) in batch.iter().enumerate().filter(|(_, c)| !c.trailers) {
            let (s, c) = (shared.clone(), case.clone());
            sent.spawn(async move { (i, h2_send(&s, &c).await) });
        }
        outcomes.extend(sent.join_all().await);
        // A stray last-chunk arrives right after its request: let it land.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (i, outcome) in outcomes {
            let (case, id) = (&batch[i], (cases + i).to_string());
            let seen = at_upstream(&w.stub, &id);
            if let Err(e) = compare(case, &outcome, &seen) {
                let summary = format!(
                    "{} {} body {} in {} frames, content-length {}, empty END_STREAM {}, trailers {}",
                    case.method, case.path, case.body.len(), case.frames.len(),
                    case.content_length, case.end_on_empty, case.trailers
                );
                failures.push(format!("case {id} ({summary}): {e}"));
            }
            bytes += case.body.len();
        }
        if failures.iter().any(|f| f.contains("answered Err")) {
            shared = h2_connect(&w).await;
        }
        cases += batch.len();
    }
    eprintln!(
        "h2_to_h1_translation_differential: {cases} cases, {} KiB of bodies, {:?}",
        bytes / 1024,
        started.elapsed()
    );
    assert!(cases >= 20, "only {cases} cases in the time bound");
    assert!(
        failures.is_empty(),
        "H2_DIFF_SEED={seed}: {} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A POST case on `path` with `body` in DATA frames of `frames` bytes.
fn post_case(
    id: &str,
    body: &[u8],
    frames: &[usize],
    content_length: bool,
    end_on_empty: bool,
) -> H2Case {
    H2Case {
        method: "POST",
        path: "/v1/documents".into(),
        headers: vec![("x-case".into(), id.into())],
        body: body.to_vec(),
        frames: frames.to_vec(),
        content_length,
        end_on_empty,
        trailers: false,
    }
}

/// Upstream desync: an h2 body without content-length, ended by an empty END_STREAM DATA
/// frame, went upstream chunked with a second last-chunk after it, which the app parsed as a
/// request line `0`. Each shape of body end must give exactly one request upstream, and the
/// pooled upstream connection must serve the next request cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_body_without_content_length_reaches_the_upstream_framed_once() {
    let w = world("", "").await;
    let send = h2_connect(&w).await;
    #[rustfmt::skip]
    let cases: &[(&str, &[usize], bool, bool)] = &[
        ("empty END_STREAM DATA after the body", &[5, 6], false, true),
        ("END_STREAM on the last DATA", &[5, 6], false, false),
        ("empty END_STREAM DATA, content-length", &[5, 6], true, true),
        ("only an empty END_STREAM DATA", &[], false, true),
        ("empty END_STREAM DATA again, same pooled upstream", &[11], false, true),
    ];
    let body = b"hello world";
    let mut failures = Vec::new();
    for (i, (name, frames, cl, empty_end)) in cases.iter().enumerate() {
        let body = if frames.is_empty() {
            &b""[..]
        } else {
            &body[..]
        };
        let case = post_case(&i.to_string(), body, frames, *cl, *empty_end);
        let outcome = h2_send(&send, &case).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = at_upstream(&w.stub, &i.to_string());
        if let Err(e) = compare(&case, &outcome, &seen) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert_all_passed(&failures, cases.len());
}

/// Cookie crumbs: RFC 9113 §8.2.3 — several h2 `cookie` fields reach the HTTP/1.1 upstream
/// as one, joined with "; ". An HTTP/1.1 request's Cookie lines are forwarded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_crumbs_are_joined_for_the_h1_upstream() {
    let w = world("", "").await;
    let send = h2_connect(&w).await;
    let mut case = post_case("crumbs", b"", &[], false, false);
    case.method = "GET";
    for c in ["a=1", "b=2", "c=3"] {
        case.headers.push(("cookie".into(), c.into()));
    }
    let outcome = h2_send(&send, &case).await;
    assert_eq!(outcome, Ok(200));
    let h = w.stub.last_headers();
    assert_eq!(header_values(&h, "cookie"), ["a=1; b=2; c=3"]);

    let (stub, gw) = (&w.stub, &w.gw);
    let r = resolve(gw);
    let target = url(gw, "/v1/documents");
    // Over HTTP/1.1 two Cookie lines stay two: only h2 crumbs are joined.
    let cookies = ["-H", "Cookie: a=1", "-H", "Cookie: b=2"];
    let args = [&["--http1.1", "--resolve", &r][..], &cookies, &[&target]].concat();
    let (ok, out) = tokio::task::block_in_place(|| curl(gw, &args));
    assert!(ok, "{out}");
    assert_eq!(
        header_values(&stub.last_headers(), "cookie"),
        ["a=1", "b=2"]
    );
}

/// Malformed trailers: a trailer section with a pseudo-header (which the h2 codec drops
/// unseen), a connection-specific field, `te` other than "trailers" or a content-length is
/// refused, as is any request trailer section (pingora cannot forward them); the upstream
/// never holds a complete request, with or without a declared content-length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_malformed_trailers_never_reach_the_upstream() {
    let w = world("", "").await;
    let (stub, gw) = (&w.stub, &w.gw);
    let mut failures = Vec::new();
    let kinds = ["pseudo", "connection", "te", "content-length", "valid"];
    // An empty body with `content-length: 0` is complete upstream at its head: it too must
    // wait for the end of the stream, which the trailers (sent 0.3 s later) never give.
    let cases: Vec<(&str, String)> = ["0", "100"]
        .into_iter()
        .flat_map(|n| {
            kinds
                .iter()
                .flat_map(move |k| [(n, k.to_string()), (n, format!("{k}-cl"))])
        })
        .collect();
    for (n, kind) in &cases {
        let before = stub.count();
        let r = tokio::task::block_in_place(|| h2_client(gw, &["trailers", n, kind]));
        if r["status"] != serde_json::Value::Null {
            failures.push(format!("{kind}, {n} bytes: answered {r}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stub.count() != before {
            let last = stub.requests.lock().unwrap().last().cloned();
            failures.push(format!("{kind}, {n} bytes: reached the upstream: {last:?}"));
        }
    }
    assert_all_passed(&failures, cases.len());
    let labels = [("reason", "request_trailers")];
    let closed = gw
        .wait_metric_above(H2_CLOSED, &labels, 19.0, Duration::from_secs(5))
        .await;
    assert!(closed >= 20.0, "closed for request_trailers: {closed}");
}
