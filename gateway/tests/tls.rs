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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2_client.py");
    let port = gw.addr.port().to_string();
    Command::new(python())
        .arg(script)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_floods_close_the_connection_and_spare_other_clients() {
    let w = world("", "").await;
    let (stub, gw) = (&w.stub, &w.gw);
    // A rapid-reset client alongside the normal one: cut long before its 5000 pairs and
    // counted, while the normal client's p99 stays within 2x its unloaded p99. Each attempt
    // is three interleaved rounds, medians compared; loopback p99s of a few ms swing 2x
    // between identical runs on this shared box, so (as faults.rs' slowloris test does) up
    // to three attempts, each with its own baseline. A real regression fails all three.
    tokio::task::block_in_place(|| h2_client(gw, &["normal", "20"]));
    let cut = || {
        gw.metric_sum(H2_CLOSED, &[("reason", "rapid_reset")])
            + gw.metric_sum(H2_CLOSED, &[("reason", "enhance_your_calm")])
    };
    let (mut attempts, mut pairs, mut normal) = (Vec::new(), 0, 20);
    for _ in 0..3 {
        let (mut base, mut beside) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let cut_before = cut();
            let quiet = tokio::task::block_in_place(|| h2_client(gw, &["normal", "200"]));
            base.push(quiet["p99_ms"].as_f64().unwrap());
            let attacker = spawn_h2_client(gw, &["rapid-reset", "5000", "5"]);
            let loaded = tokio::task::block_in_place(|| h2_client(gw, &["normal", "200"]));
            beside.push(loaded["p99_ms"].as_f64().unwrap());
            let one = tokio::task::block_in_place(|| attacker_result(attacker));
            assert_eq!(one["closed"], true, "{one}");
            let sent = one["sent"].as_u64().unwrap();
            assert!(sent < 5000, "cut before the end: {one}");
            (pairs, normal) = (pairs + sent, normal + 400);
            assert!(cut() > cut_before, "not counted: {}", gw.metrics());
        }
        base.sort_by(f64::total_cmp);
        beside.sort_by(f64::total_cmp);
        let (base_p99, loaded_p99) = (base[1], beside[1]);
        attempts.push(format!(
            "{base_p99} -> {loaded_p99} ms ({base:?} / {beside:?})"
        ));
        // 2 ms floor against sub-millisecond noise.
        if loaded_p99 <= (2.0 * base_p99).max(base_p99 + 2.0) {
            break;
        }
        assert!(attempts.len() < 3, "median p99 unloaded -> beside a rapid-reset client over 2x in every attempt: {attempts:?}");
    }

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
