//! Answers the gateway gives itself: 404, 408, 413, 431, 400, 502, 504, drain,
//! and `check-config`. Real gateway process on loopback.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: &str = "127.0.0.3";

async fn send_raw(gw: std::net::SocketAddr, request: &[u8]) -> Response {
    raw_request(CLIENT.parse().unwrap(), gw, request, Duration::from_secs(5))
        .await
        .unwrap()
}

fn assert_json_error(resp: &Response, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["error"]["code"], code, "{}", resp.text());
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    assert!(resp.header("content-security-policy").is_some());
    assert!(resp.header("x-request-id").is_some());
}

#[tokio::test]
async fn only_configured_routes_reach_the_app() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "");
    for path in [
        "/", "/metrics", "/readyz", "/healthz", "/v1", "/v10/x", "/admin",
    ] {
        let resp = get_from(CLIENT, gw.addr, path, &[]).await;
        assert_json_error(&resp, 404, "not_found");
    }
    for path in [
        "/v1/../metrics",
        "/v1/%2e%2e/metrics",
        "/v1//x",
        "/v1/a%2fb",
    ] {
        let resp = get_from(CLIENT, gw.addr, path, &[]).await;
        assert_json_error(&resp, 400, "bad_request");
    }
    assert_eq!(stub.count(), 0, "nothing unrouted reached the upstream");
    let ok = get_from(CLIENT, gw.addr, "/v1/documents", &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("x-frame-options"),
        Some("DENY"),
        "proxied responses carry security headers"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "limits:\n  max_request_body_bytes: 1024\n");
    // Declared too large: refused before reading the body.
    let req = "POST /v1/documents HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n";
    let resp = send_raw(gw.addr, req.as_bytes()).await;
    assert_json_error(&resp, 413, "payload_too_large");
    // Chunked without a length: counted while streaming.
    let mut req = b"POST /v1/documents HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'a'; 512]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = send_raw(gw.addr, &req).await;
    assert_json_error(&resp, 413, "payload_too_large");
    // Within the limit passes.
    let req = "POST /v1/documents HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789";
    let resp = send_raw(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        stub.requests.lock().unwrap().last().unwrap()["body_len"],
        10
    );
}

/// Head limits the 431 cases below exceed: 8000 bytes in one header, 30 headers.
const SMALL_HEADS: &str = "limits:\n  max_request_header_bytes: 4096\n  max_request_headers: 20\n";

#[tokio::test]
async fn oversized_and_malformed_heads_get_431_and_400() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, SMALL_HEADS);
    let big = format!(
        "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let resp = send_raw(gw.addr, big.as_bytes()).await;
    assert_json_error(&resp, 431, "request_header_fields_too_large");
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\n{many}\r\n");
    let resp = send_raw(gw.addr, req.as_bytes()).await;
    assert_json_error(&resp, 431, "request_header_fields_too_large");
    let resp = send_raw(gw.addr, b"GET /v1/x HTTP/1.1\r\nBad Header: x\r\n\r\n").await;
    assert_json_error(&resp, 400, "bad_request");
    assert_eq!(stub.count(), 0);
    assert_eq!(
        gw.metric_sum(
            "gateway_request_head_rejections_total",
            &[("reason", "too_large")]
        ),
        2.0
    );
    // The access log is written off the request path: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.proc.access_logs().iter().any(|l| l["status"] == 431) {
        assert!(Instant::now() < deadline, "no 431 access-log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_gets_408() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "timeouts:\n  request_header: 1s\n");
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Trickle bytes faster than any per-read timeout, never finishing the head.
    let trickle = async {
        for b in b"GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
        {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        buf
    };
    let buf = trickle.await;
    let resp = parse_response(&buf).expect("a response before close");
    assert_json_error(&resp, 408, "request_timeout");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "408 after {took:?}"
    );
    assert_eq!(stub.count(), 0);
}

#[tokio::test]
async fn upstream_down_is_502_and_stalled_is_504() {
    // Nothing listens on this port.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = GatewayProc::start(dead, "");
    let resp = get_from(CLIENT, gw.addr, "/v1/x", &[]).await;
    assert_json_error(&resp, 502, "bad_gateway");
    gw.wait_ready(503);
    assert!(gw.metric_sum("gateway_upstream_errors_total", &[("kind", "connect")]) >= 1.0);

    let stalled = Stub::start(StubMode::Stall).await;
    let gw = GatewayProc::start(stalled.addr, "timeouts:\n  upstream_read: 1s\n");
    let start = Instant::now();
    let resp = get_from(CLIENT, gw.addr, "/v1/x", &[]).await;
    assert_json_error(&resp, 504, "gateway_timeout");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "504 after {:?}",
        start.elapsed()
    );
    assert_eq!(
        gw.metric_sum("gateway_upstream_errors_total", &[("kind", "timeout")]),
        1.0
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let slow = Stub::start(StubMode::Slow(Duration::from_millis(1500))).await;
    let mut gw = GatewayProc::start(
        slow.addr,
        "timeouts:\n  shutdown_grace: 5s\n  shutdown_delay: 0s\n",
    );
    gw.wait_ready(200);
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get_from(CLIENT, addr, "/v1/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.proc.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready, no new connections.
    assert_eq!(get_blocking(gw.admin, "/readyz").unwrap().status, 503);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed while draining"
    );
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status, 200, "in-flight request finished");
    let (took, status) = gw
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("exited within grace");
    assert!(status.success());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after the last request, not after the full grace"
    );
}

#[tokio::test]
async fn sigterm_fails_readiness_but_serves_through_the_delay_and_a_second_signal_ends_it() {
    let stub = Stub::start(StubMode::Echo).await;
    let mut gw = GatewayProc::start(stub.addr, "timeouts:\n  shutdown_delay: 30s\n");
    gw.wait_ready(200);
    gw.proc.signal("-TERM");
    gw.wait_ready(503);
    let ready = get_blocking(gw.admin, "/readyz").unwrap();
    assert_eq!(ready.json()["status"], "shutting_down");
    // Still accepting and serving: whoever routes here has not caught up yet.
    for _ in 0..3 {
        let resp = get_from(CLIENT, gw.addr, "/v1/x", &[]).await;
        assert_eq!(resp.status, 200);
    }
    // A second signal ends the delay: drained (nothing in flight) and gone at once.
    gw.proc.signal("-TERM");
    let (took, status) = gw
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("exited after the second signal");
    assert!(status.success());
    assert!(took < Duration::from_secs(2), "exited after {took:?}");
}

#[test]
fn check_config_accepts_good_and_names_line_and_field_of_bad() {
    // The shipped stack config, with the compose secret's path pointed at a test key file.
    let (dir, keys) = dev_key_file();
    let shipped = std::fs::read_to_string(workspace_root().join("config/gateway.yaml")).unwrap();
    assert!(shipped.contains("/run/secrets/token_keys"));
    let stack = dir.path().join("gateway.yaml");
    let admin_token = dir.path().join("admin_token");
    std::fs::write(&admin_token, "edge-test-admin-token-01\n").unwrap();
    std::fs::write(
        &stack,
        shipped
            .replace("/run/secrets/token_keys", &keys.display().to_string())
            .replace(
                "/run/secrets/admin_token",
                &admin_token.display().to_string(),
            ),
    )
    .unwrap();
    let out = check_config(&stack);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = [
        ("bad cidr", "trusted_proxies:\n  - 10.0.0.0/33\n", ":5:", "trusted_proxies[0]"),
        ("unknown key", "listen_port: 80\n", ":4:", "listen_port"),
        ("bad rate", "rate_limits:\n  policies:\n    - name: a\n      key: ip\n      rate: 10/fortnight\n      burst: 1\n", ":8:", "rate_limits.policies[0].rate"),
        ("bad burst", "rate_limits:\n  policies:\n    - name: a\n      key: ip\n      rate: 10/min\n      burst: 0\n", ":9", "burst"),
    ];
    for (name, extra, line, field) in cases {
        let file = dir.path().join("bad.yaml");
        std::fs::write(
            &file,
            format!(
                "upstream: 127.0.0.1:1\ntoken_key_file: {}\nroutes: [\"/v1/\"]\n{extra}",
                keys.display()
            ),
        )
        .unwrap();
        let out = check_config(&file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(
            err.contains("bad.yaml") && err.contains(line) && err.contains(field),
            "{name}: {err}"
        );
    }
    // A missing key file is a config error too.
    let file = dir.path().join("nokey.yaml");
    std::fs::write(
        &file,
        "upstream: 127.0.0.1:1\ntoken_key_file: /nonexistent/keys.yaml\n",
    )
    .unwrap();
    let out = check_config(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nokey.yaml:2: field `token_key_file`: ")
            && err.contains("/nonexistent/keys.yaml"),
        "a missing key file is reported as file:line: field: {err}"
    );

    // On a host, the shipped stack config as it is: its key file is a container path, so
    // `--skip-files` checks the file itself; without the flag the same file names the field.
    let shipped_path = workspace_root().join("config/gateway.yaml");
    let out = run_gateway_ok([
        "check-config".as_ref(),
        "--skip-files".as_ref(),
        shipped_path.as_os_str(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (referenced files not checked)"));
    if !std::path::Path::new("/run/secrets/token_keys").exists() {
        let out = check_config(&shipped_path);
        let err = String::from_utf8_lossy(&out.stderr);
        let line = shipped
            .lines()
            .position(|l| l.starts_with("token_key_file:"))
            .unwrap()
            + 1;
        assert!(
            err.contains(&format!("gateway.yaml:{line}: field `token_key_file`: ")),
            "{err}"
        );
    }
    // --skip-files still rejects a broken file.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["check-config", "--skip-files"])
        .arg(dir.path().join("bad.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn healthcheck_subcommand_reports_admin_health() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stub = rt.block_on(Stub::start(StubMode::Echo));
    let gw = GatewayProc::start(stub.addr, "");
    let url = format!("http://{}/healthz", gw.admin);
    let ok = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["healthcheck", "--url", &url])
        .status()
        .unwrap();
    assert!(ok.success());
    let dead = format!("http://127.0.0.1:{}/healthz", free_port());
    let bad = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["healthcheck", "--url", &dead])
        .status()
        .unwrap();
    assert!(!bad.success());
}

/// `gateway check-config <file>`, as an operator runs it.
fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}
