//! `limits.max_in_flight_per_client` through the real gateway: one client
//! holding slow requests is capped with fast 429s while another client goes on, and its
//! slots come back when its requests end, however they end.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLIENT_A: &str = "127.0.0.3";
const CLIENT_B: &str = "127.0.0.4";

async fn timed_get(
    client: &'static str,
    gw: std::net::SocketAddr,
    path: &str,
) -> (u16, Duration, Response) {
    let started = Instant::now();
    let r = get_from(client, gw, path, &[]).await;
    (r.status, started.elapsed(), r)
}

/// `n` GETs from `client` at once, to `{prefix}/{i}`; the statuses in order.
async fn concurrent_statuses(
    client: &'static str,
    gw: std::net::SocketAddr,
    prefix: &'static str,
    n: usize,
) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move { timed_get(client, gw, &format!("{prefix}/{i}")).await.0 })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

/// 12 concurrent slow requests from one client against a cap of 8: 8 × 200 and 4 fast
/// 429s; another client meanwhile 200; afterwards the first client's slots are free.
#[tokio::test]
async fn one_client_is_capped_another_is_not_and_slots_come_back() {
    let slow = Duration::from_millis(1500);
    let stub = Stub::start(StubMode::Slow(slow)).await;
    let gw = GatewayProc::start(stub.addr, "limits:\n  max_in_flight_per_client: 8\n");
    let addr = gw.addr;
    let burst: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(async move { timed_get(CLIENT_A, addr, &format!("/v1/slow/{i}")).await })
        })
        .collect();
    // While A holds its 8 slots, B is served (after the slow upstream's delay).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (b_status, _, _) = timed_get(CLIENT_B, addr, "/v1/other").await;
    assert_eq!(b_status, 200, "another client is not capped");
    let mut ok = 0;
    let mut refused = Vec::new();
    for task in burst {
        let (status, took, r) = task.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(r.json()["error"]["code"], "too_many_in_flight");
                assert!(r.header("x-request-id").is_some());
                assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
                refused.push(took);
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!((ok, refused.len()), (8, 4), "8 served, 4 refused");
    let slowest_refusal = refused.iter().max().unwrap();
    assert!(
        *slowest_refusal < slow / 2,
        "429s must be immediate, took {slowest_refusal:?}"
    );
    assert_eq!(gw.metric_sum("gateway_inflight_rejections_total", &[]), 4.0);
    // Every slot came back: 8 more at once are all served.
    let again = concurrent_statuses(CLIENT_A, addr, "/v1/again", 8).await;
    assert_eq!(again, [200; 8], "slots were freed");
    let logged = gw.proc.access_logs();
    let refusals = logged
        .iter()
        .filter(|l| l["error"] == "too_many_in_flight")
        .count();
    assert_eq!(refusals, 4, "each refusal logged once");
    eprintln!(
        "in-flight cap: 8 of 12 served, 4 refused in at most {slowest_refusal:?}, other client 200, 8/8 after"
    );
}

/// Slots free when the request fails: upstream timeouts (504) and clients that hang up.
#[tokio::test]
async fn slots_free_on_upstream_timeout_and_client_abort() {
    let stub = Stub::start(StubMode::Stall).await;
    let gw = GatewayProc::start(
        stub.addr,
        "limits:\n  max_in_flight_per_client: 4\ntimeouts:\n  upstream_read: 400ms\n",
    );
    let addr = gw.addr;
    for round in 0..2 {
        let statuses = concurrent_statuses(CLIENT_A, addr, "/v1/t", 4).await;
        assert_eq!(statuses, [504; 4], "round {round}: timeouts, not 429");
    }
    // Client abort: 4 requests whose clients hang up while the upstream stalls.
    for i in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{CLIENT_A}:0").parse().unwrap())
            .unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        s.write_all(format!("GET /v1/abort/{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    // The aborted requests end at the latest at the upstream timeout (400 ms); a loaded
    // machine may take longer, so wait for the gauge, bounded, rather than a fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric_sum("gateway_inflight_requests", &[]) > 0.0 {
        assert!(
            Instant::now() < deadline,
            "aborted requests still in flight after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = concurrent_statuses(CLIENT_A, addr, "/v1/after", 4).await;
    assert_eq!(after, [504; 4], "slots came back after the client aborts");
    assert_eq!(gw.metric_sum("gateway_inflight_rejections_total", &[]), 0.0);
}

/// `limits.max_connections_per_client` on the cleartext listener: a client holding its 2
/// connections gets a JSON 429 `too_many_connections` (with our headers) on a third, at
/// accept; another client is served; the slots come back when the connections close.
#[tokio::test]
async fn per_client_connection_cap_answers_429_and_slots_come_back() {
    const HOLDER: &str = "127.0.0.5";
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "limits:\n  max_connections_per_client: 2\n");
    let held = hold_two(HOLDER, &gw).await;
    let started = Instant::now();
    let r = get_from(HOLDER, gw.addr, "/v1/third", &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_many_connections");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let labels = [("reason", "per_client_open")];
    assert_eq!(
        gw.metric_sum("gateway_connection_rejections_total", &labels),
        1.0
    );
    assert_eq!(
        get_from(CLIENT_B, gw.addr, "/v1/other", &[]).await.status,
        200
    );
    drop(held);
    // The gateway sees the closes on its next read; then the holder is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get_from(HOLDER, gw.addr, "/v1/again", &[]).await.status;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reload applies to new connections: holding 2 again, the third is refused at cap 2
    // and served once the cap is 3.
    let _held = hold_two(HOLDER, &gw).await;
    assert_eq!(get_from(HOLDER, gw.addr, "/v1/c", &[]).await.status, 429);
    reload(
        &gw,
        stub.addr,
        "limits:\n  max_connections_per_client: 3\n",
        "ok",
    )
    .await;
    assert_eq!(get_from(HOLDER, gw.addr, "/v1/d", &[]).await.status, 200);
}

/// Two idle connections from `client`, returned once the gateway has accepted both (the
/// test's earlier connections closed first, so the gauge counts just these).
async fn hold_two(client: &str, gw: &GatewayProc) -> Vec<tokio::net::TcpStream> {
    const OPEN: &str = "gateway_open_connections";
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric_sum(OPEN, &[]) > 0.0 {
        assert!(Instant::now() < deadline, "connections never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{client}:0").parse().unwrap()).unwrap();
        held.push(socket.connect(gw.addr).await.unwrap());
    }
    gw.wait_metric_above(OPEN, &[], 1.0, Duration::from_secs(5))
        .await;
    held
}
