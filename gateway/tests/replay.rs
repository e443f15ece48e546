//! `gateway replay` is exact: a live run's access log, replayed with the config it ran with,
//! reproduces that run's refusals per policy (enforced and shadow) exactly. Real gateway,
//! bursts from many clients and users at once, refills during the run.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;
use std::ffi::OsStr;

const CONFIG: &str = r#"threads: 1
trusted_proxies: [127.0.0.2/32]
rate_limits:
  policies:
    - {name: per-ip, key: ip, rate: 20/s, burst: 4}
    - {name: per-user, key: user, rate: 10/s, burst: 3, match: {path_prefix: /v1/documents}}
    - {name: ip-shadow, key: ip, rate: 5/s, burst: 2, mode: shadow}
    - {name: all, key: global, rate: 400/s, burst: 60}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_live_log_with_its_config_reproduces_its_refusals() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, CONFIG);
    let tokens: Vec<String> = (0..6)
        .map(|i| mint_token(&format!("u-{i}"), Duration::from_secs(600)))
        .collect();
    // 24 clients in 4 waves, each a burst of 8 at once; a third of them carry a user's
    // token; one bad token (401, still charged to the ip policies).
    let mut sent = 0;
    for wave in 0..4 {
        let mut tasks = Vec::new();
        for c in 0..24 {
            for r in 0..8 {
                let ip = format!("198.51.100.{}", 1 + c);
                let auth = match (c + r) % 3 {
                    0 => Some(format!("Bearer {}", tokens[(c + r) % tokens.len()])),
                    1 if c == 5 => Some("Bearer not-a-token".to_string()),
                    _ => None,
                };
                let path = if r % 2 == 0 {
                    "/v1/documents"
                } else {
                    "/v1/other"
                };
                let addr = gw.addr;
                tasks.push(tokio::spawn(async move {
                    let mut headers = vec![("x-forwarded-for", ip.as_str())];
                    if let Some(a) = &auth {
                        headers.push(("authorization", a.as_str()));
                    }
                    get_from("127.0.0.2", addr, path, &headers).await.status
                }));
                sent += 1;
            }
        }
        for t in tasks {
            let status = t.await.unwrap();
            assert!([200, 401, 429].contains(&status), "{status}");
        }
        tokio::time::sleep(Duration::from_millis(150 + 50 * wave)).await;
    }
    assert!(
        wait_until(Duration::from_secs(10), || gw.proc.access_logs().len()
            >= sent),
        "access log incomplete"
    );
    let lines = gw.proc.access_logs();

    // Live: the policy a 429 names; shadow policies named in shadow_rejected_by.
    let mut live: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in &lines {
        assert!(
            l["limit_at_ns"].as_u64().is_some(),
            "every request reached the limits: {l}"
        );
        if l["policy_decision"] == "rejected" {
            live.entry(l["policy"].as_str().unwrap().into())
                .or_default()
                .0 += 1;
        }
        for p in l["shadow_rejected_by"]
            .as_str()
            .into_iter()
            .flat_map(|s| s.split(','))
        {
            live.entry(p.into()).or_default().1 += 1;
        }
    }
    let refused: u64 = live.values().map(|v| v.0).sum();
    assert!(
        refused > 50 && live.len() >= 3,
        "the run must refuse in several policies: {live:?}"
    );

    let config = gw.config_path.as_os_str();
    let out = run_gateway_ok([
        OsStr::new("replay"),
        OsStr::new("--json"),
        OsStr::new("--config"),
        config,
        gw.proc.log.as_os_str(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["replayed"].as_u64(),
        Some(lines.len() as u64),
        "{report}"
    );
    assert_eq!(report["garbled"], 0);
    let mut replayed: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in report["policies"].as_array().unwrap() {
        let (r, f) = (
            p["would_refuse"].as_u64().unwrap(),
            p["would_flag"].as_u64().unwrap(),
        );
        if r + f > 0 {
            replayed.insert(p["policy"].as_str().unwrap().into(), (r, f));
        }
    }
    eprintln!("live {live:?}\nreplay {replayed:?}");
    assert_eq!(
        replayed, live,
        "replay must reproduce the live refusals exactly"
    );
}
