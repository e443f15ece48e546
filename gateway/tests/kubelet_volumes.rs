//! Hot reload through Kubernetes volume updates: the config (a ConfigMap) and the token keys
//! (a Secret) mounted as directories, updated the way the kubelet does it (a new timestamped
//! directory swapped in under `..data` by one rename, the old one deleted), several times in a
//! row, against a real gateway process. Each update must be applied within 2 s; an invalid
//! config is rejected, counted, and the running one kept. (The certificate pair: tls_ops.rs.)

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const CLIENT: &str = "127.0.0.3";
const APPLY_WITHIN: Duration = Duration::from_secs(2);
const RELOADS: &str = "gateway_config_reloads_total";

fn keys_yaml(kid: &str) -> String {
    format!("signing_kid: {kid}\nkeys:\n  - kid: {kid}\n    secret: \"kubelet-volume-test-{kid}-0123456789abcdef\"\n")
}

fn token(kid: &str) -> String {
    keyring::Keyring::from_yaml(&keys_yaml(kid)).unwrap().sign(
        "u-alice",
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
}

async fn status_from(client: &str, gw: SocketAddr, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    get_from(client, gw, "/v1/x", &[("authorization", &bearer)])
        .await
        .status
}

async fn status(gw: SocketAddr, token: &str) -> u16 {
    status_from(CLIENT, gw, token).await
}

/// Polls from `client` until a request with `token` gets `want`; panics after `APPLY_WITHIN`
/// of the update.
async fn applied_from(
    client: &str,
    gw: &GatewayProc,
    token: &str,
    want: u16,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = status_from(client, gw.addr, token).await;
        let took = start.elapsed();
        if got == want && took <= APPLY_WITHIN {
            return took;
        }
        assert!(
            took < APPLY_WITHIN,
            "{what}: {got} (want {want}) {took:?} after the swap; log:\n{}",
            tail(&gw.proc.log, 20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn applied(gw: &GatewayProc, token: &str, want: u16, what: &str) -> Duration {
    applied_from(CLIENT, gw, token, want, what).await
}

#[tokio::test]
async fn kubelet_swaps_of_the_config_and_token_key_volumes_apply_within_2s() {
    let stub = Stub::start(StubMode::Echo).await;
    let root = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut keys = KubeletVolume::new(
        &root.path().join("secret"),
        &[("token_keys", keys_yaml("k0").as_bytes())],
    );
    let key_file = keys.path("token_keys");
    let config = |blocked: bool| {
        let block = if blocked {
            format!("block:\n  clients: [{CLIENT}/32]\n")
        } else {
            String::new()
        };
        gateway_yaml(addr, admin, stub.addr, &key_file, &block)
    };
    let mut cm = KubeletVolume::new(
        &root.path().join("configmap"),
        &[("gateway.yaml", config(false).as_bytes())],
    );
    let gw = GatewayProc::start_at(
        tempfile::tempdir().unwrap(),
        cm.path("gateway.yaml"),
        addr,
        admin,
    );
    let ok = [("result", "ok")];
    let err = [("result", "error")];
    assert_eq!(status(addr, &token("k0")).await, 200);

    // Six ConfigMap updates in a row, alternating a block of this client on and off.
    let mut slowest = Duration::ZERO;
    for i in 1..=6 {
        let blocked = i % 2 == 1;
        let before = gw.metric_sum(RELOADS, &ok);
        cm.update(&[("gateway.yaml", config(blocked).as_bytes())]);
        let want = if blocked { 403 } else { 200 };
        let took = applied(&gw, &token("k0"), want, &format!("config swap {i}")).await;
        slowest = slowest.max(took);
        gw.wait_metric_above(RELOADS, &ok, before, APPLY_WITHIN)
            .await;
    }
    eprintln!("config swaps: slowest applied after {slowest:?}");

    // An invalid config swapped in: rejected, counted, the running config (no block) kept.
    let errors = gw.metric_sum(RELOADS, &err);
    cm.update(&[("gateway.yaml", b"upstream: [not, an, address]\n")]);
    gw.wait_metric_above(RELOADS, &err, errors, APPLY_WITHIN)
        .await;
    assert_eq!(status(addr, &token("k0")).await, 200, "old config kept");
    // The watcher outlives the deleted directories: a good update after it still applies.
    cm.update(&[("gateway.yaml", config(true).as_bytes())]);
    applied(&gw, &token("k0"), 403, "config after the invalid one").await;
    cm.update(&[("gateway.yaml", config(false).as_bytes())]);
    applied(&gw, &token("k0"), 200, "config unblocked").await;

    // Secret updates: each replaces the key set; the new key's tokens pass, the old one's fail.
    // Each from its own address: the polls before a swap lands are refused tokens, which the
    // gateway rate-limits per client.
    let mut slowest = Duration::ZERO;
    for i in 1..=4 {
        let (old, new) = (format!("k{}", i - 1), format!("k{i}"));
        let client = format!("127.0.0.{}", 10 + i);
        keys.update(&[("token_keys", keys_yaml(&new).as_bytes())]);
        let what = format!("key swap {i}");
        let took = applied_from(&client, &gw, &token(&new), 200, &what).await;
        slowest = slowest.max(took);
        let refused = status_from(&client, addr, &token(&old)).await;
        assert_eq!(refused, 401, "key {old} retired");
    }
    eprintln!("token key swaps: slowest applied after {slowest:?}");
    assert_eq!(
        gw.metric_sum(RELOADS, &err),
        errors + 1.0,
        "only the invalid config was refused"
    );
}
