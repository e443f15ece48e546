//! PROXY protocol from trusted L4 balancers, end to end: a real gateway with
//! `proxy_protocol.from: [127.0.0.2/32]` and a recording stub. The header's source is the
//! client for the forwarded headers, the trusted-proxy walk, the per-client caps, the
//! block list and the access log (`balancer_ip` the balancer); a bad header closes only
//! its connection; a `PROXY` line from anyone else is a JSON 400. Then real HAProxy in TCP
//! mode with `send-proxy` and `send-proxy-v2` in front (skips loudly without `haproxy`;
//! `.ci/run` installs it), cleartext and TLS.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BALANCER: &str = "127.0.0.2";
const OTHER: &str = "127.0.0.3";
const ERRORS: &str = "gateway_proxy_protocol_errors_total";
const PP: &str = "proxy_protocol:\n  from: [127.0.0.2/32]\n  header_timeout: 1s\n";

fn v1(src: &str, port: u16) -> Vec<u8> {
    let family = if src.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if src.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {family} {src} {dst} {port} 8080\r\n").into_bytes()
}

/// A v2 header: command (0 LOCAL, 1 PROXY), source, and TLVs (type, value).
fn v2(command: u8, src: &str, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let ip: std::net::IpAddr = src.parse().unwrap();
    let mut block = Vec::new();
    let family = match ip {
        std::net::IpAddr::V4(a) => {
            block.extend_from_slice(&a.octets());
            block.extend_from_slice(&[127, 0, 0, 1]);
            0x11
        }
        std::net::IpAddr::V6(a) => {
            block.extend_from_slice(&a.octets());
            block.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    block.extend_from_slice(&[0xc3, 0x50, 0x1f, 0x90]);
    for (kind, value) in tlvs {
        block.push(*kind);
        block.extend_from_slice(&(value.len() as u16).to_be_bytes());
        block.extend_from_slice(value);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20 | command, family]);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n").into_bytes()
}

async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    let s = socket.connect(server).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one response with a Content-Length body (bounded at 10 s); None if closed first.
async fn read_response(s: &mut TcpStream) -> Option<testkit::Response> {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return testkit::parse_response(&buf);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = testkit::parse_response(&buf) {
                if r.header("content-length").is_some() {
                    return Some(r);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// `header` then `request` from `local`, the two split at `cut` into two writes.
async fn send_split(
    local: &str,
    gw: SocketAddr,
    header: &[u8],
    request: &[u8],
    cut: usize,
) -> Option<testkit::Response> {
    let wire = [header, request].concat();
    let mut s = connect_from(local, gw).await;
    s.write_all(&wire[..cut]).await.ok()?;
    if cut < wire.len() {
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.write_all(&wire[cut..]).await.ok()?;
    }
    read_response(&mut s).await
}

/// The first access-log line with `field` = `value` (bounded wait: lines are written by a
/// background thread).
async fn access_line(gw: &GatewayProc, field: &str, value: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let found = gw
            .proc
            .access_logs()
            .into_iter()
            .find(|l| l[field] == value);
        if let Some(line) = found {
            return line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no access line with {field} = {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn real_ip(stub: &Stub) -> String {
    header_values(&stub.last_headers(), "x-real-ip").join(",")
}

#[tokio::test]
async fn the_headers_source_is_the_client_for_everything() {
    let stub = Stub::start(StubMode::Echo).await;
    let extra = format!(
        "{PP}trusted_proxies: [10.0.0.0/8]\nblock:\n  clients: [198.51.100.66/32]\n{NO_CONN_CAPS}"
    );
    let gw = GatewayProc::start(stub.addr, &extra);
    // (name, header, extra request headers, want X-Real-IP at the upstream, want status)
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, &str, &str, u16)> = vec![
        ("v1 tcp4", v1("203.0.113.7", 50000), "", "203.0.113.7", 200),
        ("v1 tcp6", v1("2001:db8::7", 50000), "", "2001:db8::7", 200),
        ("v1 mapped v6 is v4", v1("::ffff:203.0.113.8", 1), "", "203.0.113.8", 200),
        ("v2 tcp4", v2(1, "203.0.113.9", &[]), "", "203.0.113.9", 200),
        ("v2 tcp6 + tlvs", v2(1, "2001:db8::9", &[(0x01, b"h2"), (0xEE, &[1; 40])]), "", "2001:db8::9", 200),
        ("v2 local keeps the balancer", v2(0, "203.0.113.10", &[]), "", BALANCER, 200),
        ("v1 unknown keeps the balancer", b"PROXY UNKNOWN\r\n".to_vec(), "", BALANCER, 200),
        ("XFF from an untrusted source is stripped", v1("203.0.113.11", 1), "X-Forwarded-For: 6.6.6.6\r\n", "203.0.113.11", 200),
        ("XFF from a trusted source is believed", v1("10.1.2.3", 1), "X-Forwarded-For: 203.0.113.12\r\n", "203.0.113.12", 200),
        ("the balancer is not a trusted proxy", b"PROXY UNKNOWN\r\n".to_vec(), "X-Forwarded-For: 6.6.6.6\r\n", BALANCER, 200),
        ("blocked source", v1("198.51.100.66", 1), "", "", 403),
    ];
    for (name, header, xff, want_ip, want_status) in cases {
        let before = stub.count();
        let resp = send_split(
            BALANCER,
            gw.addr,
            &header,
            &get("/v1/echo", xff),
            header.len() + 5,
        )
        .await
        .unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(resp.status, want_status, "{name}: {}", resp.text());
        if want_status == 200 {
            assert_eq!(real_ip(&stub), want_ip, "{name}");
        } else {
            assert_eq!(stub.count(), before, "{name}: reached the upstream");
            assert_eq!(resp.json()["error"]["code"], "blocked", "{name}");
        }
    }
    // The access log: `peer` and `client_ip` the source, `balancer_ip` the balancer.
    let line = access_line(&gw, "client_ip", "203.0.113.7").await;
    assert_eq!(line["peer"], "203.0.113.7");
    assert_eq!(line["balancer_ip"], BALANCER);
    let local = access_line(&gw, "peer", BALANCER).await;
    assert_eq!(local["balancer_ip"], BALANCER);
    assert_eq!(gw.metric_sum(ERRORS, &[]), 0.0);
}

#[tokio::test]
async fn header_and_request_split_at_every_byte_and_keep_alive_keeps_the_source() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &format!("{PP}{NO_CONN_CAPS}"));
    let request = get("/v1/echo", "");
    for (version, header_of) in [
        ("v1", (|s: &str| v1(s, 4242)) as fn(&str) -> Vec<u8>),
        ("v2", |s: &str| v2(1, s, &[(0x04, b"noop")])),
    ] {
        let probe = header_of("198.51.100.1");
        for cut in 1..probe.len() + 8 {
            // A source per cut: the upstream must see this one, not a neighbour's.
            let src = format!("198.51.{}.{}", 100 + cut / 250, cut % 250 + 1);
            let header = header_of(&src);
            let resp = send_split(BALANCER, gw.addr, &header, &request, cut)
                .await
                .unwrap_or_else(|| panic!("{version} cut at {cut}: no response"));
            assert_eq!(resp.status, 200, "{version} cut at {cut}");
            assert_eq!(real_ip(&stub), src, "{version} cut at {cut}");
        }
    }
    // Three requests on one connection: each carries the header's source; a second
    // PROXY line later on is just a bad request line.
    let mut s = connect_from(BALANCER, gw.addr).await;
    s.write_all(&[v1("203.0.113.44", 1), request.clone()].concat())
        .await
        .unwrap();
    for i in 0..3 {
        let resp = read_response(&mut s).await.expect("keep-alive response");
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(real_ip(&stub), "203.0.113.44", "request {i}");
        if i < 2 {
            s.write_all(&request).await.unwrap();
        }
    }
    s.write_all(&v1("203.0.113.45", 1)).await.unwrap();
    s.write_all(&request).await.unwrap();
    let resp = read_response(&mut s)
        .await
        .expect("answer to a late PROXY line");
    assert_eq!(resp.status, 400);
    assert_eq!(real_ip(&stub), "203.0.113.44");
}

#[tokio::test]
async fn a_bad_header_closes_only_its_connection_and_is_counted() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &format!("{PP}{NO_CONN_CAPS}"));
    let mut bad_crc = v2(1, "203.0.113.7", &[(0x03, &[0, 0, 0, 0])]);
    let n = bad_crc.len();
    bad_crc[n - 1] = 1;
    // (reason, bytes the balancer sends before the request)
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing", Vec::new()),
        (
            "malformed",
            b"PROXY TCP4 203.0.113.7 127.0.0.1 01 2\r\n".to_vec(),
        ),
        (
            "malformed",
            b"PROXY TCP4 203.0.113.256 127.0.0.1 1 2\r\n".to_vec(),
        ),
        (
            "oversized",
            format!("PROXY UNKNOWN {}\r\n", "x".repeat(100)).into_bytes(),
        ),
        ("unsupported", {
            let mut h = v2(1, "203.0.113.7", &[]);
            h[13] = 0x12; // UDP
            h
        }),
        ("checksum", bad_crc),
    ];
    for (reason, header) in cases {
        let before = gw.metric_sum(ERRORS, &[("reason", reason)]);
        let mut s = connect_from(BALANCER, gw.addr).await;
        let _ = s.write_all(&[header, get("/v1/echo", "")].concat()).await;
        let got = testkit::read_until_close(&mut s, Duration::from_secs(5)).await;
        assert!(
            got.is_empty(),
            "{reason}: answered {:?}",
            String::from_utf8_lossy(&got)
        );
        let after = gw
            .wait_metric_above(
                ERRORS,
                &[("reason", reason)],
                before,
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(after, before + 1.0, "{reason}");
    }
    // Closed: a balancer that hangs up mid-header.
    let mut s = connect_from(BALANCER, gw.addr).await;
    s.write_all(b"PROXY TCP4 203.0").await.unwrap();
    drop(s);
    gw.wait_metric_above(ERRORS, &[("reason", "closed")], 0.0, Duration::from_secs(5))
        .await;
    // Timeout: a stalled header is closed after `header_timeout` (1 s); meanwhile other
    // connections from the same balancer are served.
    let mut stalled = connect_from(BALANCER, gw.addr).await;
    stalled.write_all(b"PROXY TCP4 203.0.113.9 ").await.unwrap();
    let started = Instant::now();
    let resp = send_split(
        BALANCER,
        gw.addr,
        &v1("203.0.113.10", 1),
        &get("/v1/echo", ""),
        3,
    )
    .await
    .expect("a healthy connection meanwhile");
    assert_eq!(resp.status, 200);
    let got = testkit::read_until_close(&mut stalled, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert_eq!(gw.metric_sum(ERRORS, &[("reason", "timeout")]), 1.0);
    assert_eq!(
        stub.count(),
        1,
        "only the healthy request reached the upstream"
    );
    // Logged at most once per 10 s per balancer, however many were refused.
    let warned = gw
        .proc
        .log_text()
        .matches("PROXY protocol header refused")
        .count();
    assert_eq!(warned, 1, "{}", gw.proc.log_text());
}

#[tokio::test]
async fn a_proxy_line_from_anyone_else_is_a_bad_request_and_never_believed() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &format!("{PP}{NO_CONN_CAPS}"));
    for header in [v1("203.0.113.7", 1), v2(1, "203.0.113.7", &[])] {
        let resp = send_from(
            OTHER,
            gw.addr,
            &[header.clone(), get("/v1/echo", "")].concat(),
        )
        .await;
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(&header));
        assert_eq!(resp.json()["error"]["code"], "bad_request");
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(stub.count(), 0);
    // Plain HTTP from it is served as ever, with its own address.
    let resp = send_from(OTHER, gw.addr, &get("/v1/echo", "Connection: close\r\n")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(real_ip(&stub), OTHER);
    assert_eq!(gw.metric_sum(ERRORS, &[]), 0.0);
}

#[tokio::test]
async fn per_client_caps_count_the_source_not_the_balancer_and_reload_turns_it_off() {
    let stub = Stub::start(StubMode::Echo).await;
    let caps = "limits:\n  max_connections_per_client: 1\n  new_connections_per_client: null\n";
    let gw = GatewayProc::start(stub.addr, &format!("{PP}{caps}"));
    // One open connection per source: a second from the same source is refused (429),
    // another source behind the same balancer is not.
    let mut a = connect_from(BALANCER, gw.addr).await;
    a.write_all(&v1("203.0.113.1", 1)).await.unwrap();
    a.write_all(&get("/v1/echo", "")).await.unwrap();
    assert_eq!(read_response(&mut a).await.unwrap().status, 200);
    let status = |src: &'static str| {
        let header = v1(src, 2);
        let addr = gw.addr;
        async move {
            let r = send_split(BALANCER, addr, &header, &get("/v1/echo", ""), 10).await;
            r.map(|r| r.status)
        }
    };
    assert_eq!(status("203.0.113.1").await, Some(429));
    assert_eq!(status("203.0.113.2").await, Some(200));
    drop(a);
    // Off by reload (new connections): the balancer's bytes are HTTP again.
    reload(&gw, stub.addr, NO_CONN_CAPS, "ok").await;
    let resp = send_from(BALANCER, gw.addr, &get("/v1/echo", "Connection: close\r\n")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(real_ip(&stub), BALANCER);
    let resp = send_from(
        BALANCER,
        gw.addr,
        &[v1("203.0.113.3", 1), get("/v1/echo", "")].concat(),
    )
    .await;
    assert_eq!(resp.status, 400);
}

/// HAProxy in TCP mode: `v1` and `v2` frontends on `HAPROXY_FRONT`, each to the gateway with
/// `send-proxy` / `send-proxy-v2` (with a CRC32C TLV) from source address 127.0.0.5.
struct Haproxy {
    _child: testkit::ChildGuard,
    v1: SocketAddr,
    v2: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Retries with other ports if one was taken meanwhile (free_port's race).
    fn start(gateway: SocketAddr) -> Haproxy {
        let mut last = String::new();
        for _ in 0..3 {
            match Haproxy::try_start(gateway) {
                Ok(h) => return h,
                Err(e) => last = e,
            }
        }
        panic!("haproxy did not start: {last}");
    }

    fn try_start(gateway: SocketAddr) -> Result<Haproxy, String> {
        let dir = tempfile::tempdir().unwrap();
        // Its own loopback address: no test client binds ephemeral ports on it.
        let front = || -> SocketAddr {
            format!("{HAPROXY_FRONT}:{}", testkit::free_port())
                .parse()
                .unwrap()
        };
        let (v1, v2) = (front(), front());
        let cfg = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             listen v1\n  bind {v1}\n  server gw {gateway} send-proxy source 127.0.0.5\n\
             listen v2\n  bind {v2}\n  server gw {gateway} send-proxy-v2 proxy-v2-options crc32c source 127.0.0.5\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        run_ok(Command::new("haproxy").arg("-c").arg("-f").arg(&path));
        let log = dir.path().join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut child = testkit::ChildGuard::new(child);
        // Listening = its port cannot be bound. (A probe connection would make HAProxy open
        // one to the gateway that may close before its header: a counted error.)
        let up = |a: SocketAddr| std::net::TcpListener::bind(a).is_err();
        let mut exited = None;
        let started = testkit::wait_until(Duration::from_secs(10), || {
            exited = child.exited();
            exited.is_some() || (up(v1) && up(v2))
        });
        if !started || exited.is_some() {
            return Err(format!(
                "{exited:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Ok(Haproxy {
            _child: child,
            v1,
            v2,
            _dir: dir,
        })
    }
}

/// HAProxy's frontends.
const HAPROXY_FRONT: &str = "127.0.0.6";
const HAPROXY_PP: &str = "proxy_protocol:\n  from: [127.0.0.5/32]\n";

#[tokio::test]
async fn through_haproxy_the_client_reaches_the_app_and_per_ip_limits_separate_clients() {
    if missing("haproxy", "-v") {
        return;
    }
    let stub = Stub::start(StubMode::Echo).await;
    let limits = "rate_limits:\n  policies:\n    - {name: per-ip, key: ip, rate: 1/hour, burst: 3, match: {path_prefix: /v1/echo}}\n";
    let gw = GatewayProc::start(stub.addr, &format!("{HAPROXY_PP}{limits}{NO_CONN_CAPS}"));
    let hap = Haproxy::start(gw.addr);
    for (version, front) in [("send-proxy", hap.v1), ("send-proxy-v2", hap.v2)] {
        // Two clients behind the one balancer, each with its own address and bucket.
        let (a, b) = match version {
            "send-proxy" => ("127.0.0.11", "127.0.0.12"),
            _ => ("127.0.0.21", "127.0.0.22"),
        };
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let resp = get_from(a, front, "/v1/echo", &[]).await;
            if resp.status == 200 {
                assert_eq!(real_ip(&stub), a, "{version}");
            }
            statuses.push(resp.status);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429], "{version}: client a");
        let resp = get_from(b, front, "/v1/echo", &[]).await;
        assert_eq!(resp.status, 200, "{version}: client b has its own bucket");
        assert_eq!(real_ip(&stub), b, "{version}");
        let line = access_line(&gw, "client_ip", b).await;
        assert_eq!(line["peer"], b);
        assert_eq!(line["balancer_ip"], "127.0.0.5");
    }
    assert_eq!(gw.metric_sum(ERRORS, &[]), 0.0);
    // Figures for the notes (printed, not asserted): request latency through each frontend
    // and direct, on one keep-alive connection and with a new connection per request.
    for (name, addr, local) in [
        ("direct (no PROXY)", gw.addr, "127.0.0.40"),
        ("haproxy send-proxy", hap.v1, "127.0.0.41"),
        ("haproxy send-proxy-v2", hap.v2, "127.0.0.42"),
    ] {
        let mut s = connect_from(local, addr).await;
        let mut kept = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            s.write_all(&get("/v1/figures", "")).await.unwrap();
            assert_eq!(read_response(&mut s).await.map(|r| r.status), Some(200));
            kept.push(t.elapsed());
        }
        let mut fresh = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            let r = get_from(local, addr, "/v1/figures", &[]).await;
            assert_eq!(r.status, 200);
            fresh.push(t.elapsed());
        }
        let (k50, k99) = percentiles(&mut kept);
        let (f50, f99) = percentiles(&mut fresh);
        eprintln!(
            "FIGURE {name}: keep-alive p50 {k50:?} p99 {k99:?}; new connection p50 {f50:?} p99 {f99:?}"
        );
    }
}

/// (median, p99) of `d`.
fn percentiles(d: &mut [Duration]) -> (Duration, Duration) {
    d.sort_unstable();
    (d[d.len() / 2], d[d.len() * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_tls_follows_the_header_for_h1_and_h2() {
    if missing("haproxy", "-v") {
        return;
    }
    let stub = Stub::start(StubMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let tls = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        c.display(),
        k.display()
    );
    let gw = GatewayProc::start(stub.addr, &format!("{HAPROXY_PP}{tls}"));
    let hap = Haproxy::start(gw.addr);
    // Name `localhost` for SNI, reached through HAProxy's address.
    for (front, client) in [(hap.v1, "127.0.0.31"), (hap.v2, "127.0.0.32")] {
        let resolve = format!("localhost:{}:{HAPROXY_FRONT}", front.port());
        for proto in ["--http1.1", "--http2"] {
            let out = tokio::task::block_in_place(|| {
                Command::new("curl")
                    .args([
                        "-sk",
                        "--max-time",
                        "10",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{http_version}",
                    ])
                    .args([proto, "--interface", client, "--resolve", &resolve])
                    .arg(format!("https://localhost:{}/v1/echo", front.port()))
                    .output()
                    .expect("curl runs")
            });
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            let want_version = if proto == "--http2" { "2" } else { "1.1" };
            assert_eq!(out, format!("200 {want_version}"), "{proto} via {front}");
            assert_eq!(real_ip(&stub), client, "{proto} via {front}");
        }
    }
    // Every request's line, h2 streams (their own tasks) included, names the balancer.
    let ours =
        |l: &serde_json::Value| l["client_ip"] == "127.0.0.31" || l["client_ip"] == "127.0.0.32";
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<_> = gw.proc.access_logs().into_iter().filter(ours).collect();
        if lines.len() >= 4 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        assert_eq!(l["balancer_ip"], "127.0.0.5", "{l}");
        assert_eq!(l["peer"], l["client_ip"], "{l}");
        assert_eq!(l["tls_version"], "TLSv1.3", "{l}");
    }
    assert_eq!(
        lines.iter().filter(|l| l["protocol"] == "HTTP/2").count(),
        2
    );
    assert_eq!(gw.metric_sum(ERRORS, &[]), 0.0);
}
