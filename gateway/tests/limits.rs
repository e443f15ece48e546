//! Rate limits end to end: per-IP (direct and behind a trusted proxy), per-user,
//! forged tokens, shadow mode, exempt networks and hot reload of the policies.
//! Real gateway process, Echo stub upstream, distinct 127.x source addresses as
//! distinct clients. Rates are slow (`5/min`, `1/hour`) so that a fresh key gets
//! exactly `burst` requests and nothing refills while a test runs.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use keyring::Keyring;

const PATH: &str = "/v1/documents";
const RELOADS: &str = "gateway_config_reloads_total";
const DECISIONS: &str = "gateway_rate_limit_decisions_total";
const AUTH_FAILURES: &str = "gateway_auth_failures_total";

// ---------------------------------------------------------------------------
// Config snippets (appended to the harness's base config).
// ---------------------------------------------------------------------------

/// One enforcing per-IP policy named `per-ip`.
fn per_ip_yaml(rate: &str, burst: u32) -> String {
    format!(
        "rate_limits:\n  policies:\n    - {{name: per-ip, key: ip, rate: {rate}, burst: {burst}}}\n"
    )
}

/// Per-IP limit with two trusted proxies in front.
fn trusted_proxy_yaml() -> String {
    format!(
        "trusted_proxies: [127.0.0.2/32, 127.0.0.4/32]\n{}",
        per_ip_yaml("1/hour", 3)
    )
}

/// One per-user policy (anonymous requests match nothing).
fn per_user_yaml() -> String {
    "rate_limits:\n  policies:\n    - {name: per-user, key: user, rate: 1/hour, burst: 3}\n".into()
}

/// A small per-user policy: the bucket a token-rotating client would hope to reset.
fn forged_token_yaml() -> String {
    "rate_limits:\n  policies:\n    - {name: per-user, key: user, rate: 1/hour, burst: 1}\n".into()
}

/// A per-IP and a per-user policy: a refused token must not touch either.
fn forged_token_per_ip_yaml() -> String {
    "rate_limits:\n  policies:\n    - {name: per-ip, key: ip, rate: 1/hour, burst: 5}\n    - {name: per-user, key: user, rate: 1/hour, burst: 1}\n".into()
}

fn shadow_yaml() -> String {
    "rate_limits:\n  policies:\n    - {name: shadow-ip, key: ip, rate: 1/hour, burst: 2, mode: shadow}\n"
        .into()
}

fn exempt_yaml() -> String {
    "rate_limits:\n  exempt: [127.0.0.30/32]\n  policies:\n    - {name: per-ip, key: ip, rate: 1/hour, burst: 3}\n"
        .into()
}

/// Policy A on /v1/a, optionally policy B on /v1/b.
fn two_policies_yaml(with_b: bool) -> String {
    let mut y = String::from(
        "rate_limits:\n  policies:\n    - {name: policy-a, key: ip, rate: 1/hour, burst: 3, match: {path_prefix: /v1/a}}\n",
    );
    if with_b {
        y.push_str(
            "    - {name: policy-b, key: ip, rate: 1/hour, burst: 2, match: {path_prefix: /v1/b}}\n",
        );
    }
    y
}

/// Valid YAML, invalid config: burst 0.
fn zero_burst_yaml() -> String {
    per_ip_yaml("1/hour", 0)
}

/// Not YAML at all.
fn broken_yaml() -> String {
    "rate_limits:\n  policies: [ {name: per-ip, key: ip\n".into()
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn dev_keys() -> Keyring {
    Keyring::from_yaml(DEV_KEYS).unwrap()
}

fn token_for(user: &str) -> String {
    dev_keys().sign(user, Duration::from_secs(300), SystemTime::now())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `"name";r=R;t=T` → (name, R, T).
fn parse_ratelimit(v: &str) -> (String, u32, u64) {
    let mut parts = v.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_string();
    let mut r = None;
    let mut t = None;
    for p in parts {
        if let Some(x) = p.strip_prefix("r=") {
            r = x.parse().ok();
        } else if let Some(x) = p.strip_prefix("t=") {
            t = x.parse().ok();
        }
    }
    (
        name,
        r.unwrap_or_else(|| panic!("no r in {v:?}")),
        t.unwrap_or_else(|| panic!("no t in {v:?}")),
    )
}

/// Remaining (`r`) from the RateLimit header, checking it names `policy`.
fn remaining(resp: &Response, policy: &str) -> u32 {
    let v = resp
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit header: {:?}", resp.headers));
    let (name, r, _) = parse_ratelimit(v);
    assert_eq!(name, policy, "{v}");
    r
}

fn assert_rate_limited(resp: &Response, policy: &str) {
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body = resp.json();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(body["error"]["policy"], policy, "{body}");
    let retry: u64 = resp
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    let p = resp.header("ratelimit-policy").expect("RateLimit-Policy");
    assert!(p.starts_with(&format!("\"{policy}\";q=")), "{p}");
    assert_eq!(remaining(resp, policy), 0);
}

/// Sends `n` requests that must all be 200, then one that must be a 429 from `policy`.
async fn allowed_then_limited(
    gw: &GatewayProc,
    from: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: u32,
    policy: &str,
) {
    for i in 0..n {
        let resp = get_from(from, gw.addr, path, headers).await;
        assert_eq!(
            resp.status,
            200,
            "request {} of {n} from {from} to {path}: {}",
            i + 1,
            resp.text()
        );
        assert_eq!(remaining(&resp, policy), n - 1 - i, "request {}", i + 1);
    }
    let resp = get_from(from, gw.addr, path, headers).await;
    assert_rate_limited(&resp, policy);
}

/// Access-log lines for `path`, waiting (bounded) until there are `n` of them.
async fn wait_access_logs(gw: &GatewayProc, path: &str, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let lines: Vec<_> = gw
            .proc
            .access_logs()
            .into_iter()
            .filter(|l| l["path"] == path)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "only {} access-log lines for {path}, want {n}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the gateway log contains every needle.
async fn wait_log_contains(gw: &GatewayProc, needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let log = gw.proc.log_text();
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "log lacks one of {needles:?}:\n{}",
            tail(&gw.proc.log, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn decisions(gw: &GatewayProc, policy: &str, decision: &str) -> f64 {
    gw.metric_sum(DECISIONS, &[("policy", policy), ("decision", decision)])
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn per_ip_limit_is_exact_and_per_address() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &per_ip_yaml("5/min", 5));

    // A fresh key gets exactly `burst`; every allowed answer says what is left.
    for i in 0..5u32 {
        let resp = get_from("127.0.0.10", gw.addr, PATH, &[]).await;
        assert_eq!(resp.status, 200, "request {}: {}", i + 1, resp.text());
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"per-ip\";q=5;w=60"),
            "5/min with burst 5 refills in 60 s"
        );
        let (name, r, t) = parse_ratelimit(resp.header("ratelimit").unwrap());
        assert_eq!(name, "per-ip");
        assert_eq!(r, 4 - i, "remaining after request {}", i + 1);
        // Each request takes one 12 s interval off a full bucket.
        assert!(
            (1..=12 * u64::from(i + 1)).contains(&t),
            "t={t} after {} requests",
            i + 1
        );
    }
    assert_eq!(stub.count(), 5);

    let resp = get_from("127.0.0.10", gw.addr, PATH, &[]).await;
    assert_rate_limited(&resp, "per-ip");
    assert_eq!(resp.header("ratelimit-policy"), Some("\"per-ip\";q=5;w=60"));
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    // One 12 s interval, rounded up, plus at most 1 s of jitter.
    assert!((1..=13).contains(&retry), "Retry-After {retry}");
    // draft-10's `t` is the time until more quota is available: Retry-After without its
    // jitter, never the ~60 s until the whole bucket has refilled (README's example).
    let (_, r, t) = parse_ratelimit(resp.header("ratelimit").unwrap());
    assert_eq!(r, 0);
    assert!((1..=12).contains(&t), "t={t} on the 429");
    assert!(retry == t || retry == t + 1, "Retry-After {retry} vs t={t}");
    assert_eq!(stub.count(), 5, "the 429 never reached the upstream");

    // Still limited: rejections do not move the bucket.
    let resp = get_from("127.0.0.10", gw.addr, PATH, &[]).await;
    assert_rate_limited(&resp, "per-ip");

    // Another address has its own full bucket.
    let resp = get_from("127.0.0.11", gw.addr, PATH, &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(remaining(&resp, "per-ip"), 4);
    assert_eq!(stub.count(), 6);

    assert_eq!(decisions(&gw, "per-ip", "allowed"), 6.0);
    assert_eq!(decisions(&gw, "per-ip", "rejected"), 2.0);
    assert_eq!(decisions(&gw, "per-ip", "shadow_rejected"), 0.0);
}

#[tokio::test]
async fn client_behind_trusted_proxies_shares_one_bucket_and_spoofers_do_not() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &trusted_proxy_yaml());
    let xff7 = [("X-Forwarded-For", "198.51.100.7")];
    let xff8 = [("X-Forwarded-For", "198.51.100.8")];

    // 198.51.100.7 through either trusted hop: one bucket of 3.
    for (i, hop) in ["127.0.0.2", "127.0.0.4", "127.0.0.2"].iter().enumerate() {
        let resp = get_from(hop, gw.addr, PATH, &xff7).await;
        assert_eq!(resp.status, 200, "request {} via {hop}", i + 1);
        assert_eq!(remaining(&resp, "per-ip"), 2 - i as u32);
        let seen = stub.last_headers();
        assert_eq!(header_values(&seen, "x-real-ip"), ["198.51.100.7"]);
    }
    for hop in ["127.0.0.4", "127.0.0.2"] {
        let resp = get_from(hop, gw.addr, PATH, &xff7).await;
        assert_rate_limited(&resp, "per-ip");
    }

    // Another client behind the same proxy is unaffected.
    let resp = get_from("127.0.0.2", gw.addr, PATH, &xff8).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(remaining(&resp, "per-ip"), 2);

    // An untrusted peer naming an exhausted client is limited on its own address:
    // a full bucket of 3, not the spoofed one's 0.
    allowed_then_limited(&gw, "127.0.0.12", PATH, &xff7, 3, "per-ip").await;
    let seen = stub.last_headers();
    assert_eq!(header_values(&seen, "x-real-ip"), ["127.0.0.12"]);
    // Naming a half-used client does not charge that client either.
    allowed_then_limited(&gw, "127.0.0.13", PATH, &xff8, 3, "per-ip").await;
    // 198.51.100.8 still has exactly the 2 it had left.
    allowed_then_limited(&gw, "127.0.0.4", PATH, &xff8, 2, "per-ip").await;

    // 3 (.7) + 1 (.8) + 3 (.12) + 3 (.13) + 2 (.8)
    assert_eq!(decisions(&gw, "per-ip", "allowed"), 12.0);
    assert_eq!(decisions(&gw, "per-ip", "rejected"), 5.0);
    assert_eq!(stub.count(), 12);
}

#[tokio::test]
async fn per_user_limit_follows_the_user_across_addresses() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &per_user_yaml());
    let alice = bearer(&token_for("u-alice"));
    let bob = bearer(&token_for("u-bob"));
    let as_alice = [("Authorization", alice.as_str())];

    for (i, from) in ["127.0.0.20", "127.0.0.21", "127.0.0.22"]
        .iter()
        .enumerate()
    {
        let resp = get_from(from, gw.addr, PATH, &as_alice).await;
        assert_eq!(resp.status, 200, "request {} from {from}", i + 1);
        assert_eq!(remaining(&resp, "per-user"), 2 - i as u32);
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"per-user\";q=3;w=10800")
        );
    }
    // The 4th request overall, from yet another address.
    let resp = get_from("127.0.0.23", gw.addr, PATH, &as_alice).await;
    assert_rate_limited(&resp, "per-user");
    let resp = get_from("127.0.0.20", gw.addr, PATH, &as_alice).await;
    assert_rate_limited(&resp, "per-user");

    // Bob, from an address alice used, has his own bucket.
    let resp = get_from("127.0.0.20", gw.addr, PATH, &[("Authorization", &bob)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(remaining(&resp, "per-user"), 2);

    // Anonymous requests skip the user policy entirely.
    for _ in 0..5 {
        let resp = get_from("127.0.0.20", gw.addr, PATH, &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("ratelimit"), None, "no policy matched");
    }

    assert_eq!(decisions(&gw, "per-user", "allowed"), 4.0);
    assert_eq!(decisions(&gw, "per-user", "rejected"), 2.0);
    assert_eq!(stub.count(), 3 + 1 + 5);

    let lines = wait_access_logs(&gw, PATH, 11).await;
    let rejected: Vec<_> = lines.iter().filter(|l| l["status"] == 429).collect();
    assert_eq!(rejected.len(), 2);
    for l in rejected {
        assert_eq!(l["user_id"], "u-alice", "{l}");
        assert_eq!(l["policy"], "per-user", "{l}");
        assert_eq!(l["policy_decision"], "rejected", "{l}");
    }
}

/// 20 tokens, each for a different user: 5 signed with the right kid but a wrong
/// secret, 5 with an unknown kid, 5 expired, 5 garbage.
fn forged_tokens() -> Vec<String> {
    let wrong_secret = Keyring::from_yaml(
        "signing_kid: test-1\nkeys:\n  - kid: test-1\n    secret: \"not-the-integration-secret-0123456789\"\n",
    )
    .unwrap();
    let unknown_kid = Keyring::from_yaml(
        "signing_kid: other-9\nkeys:\n  - kid: other-9\n    secret: \"integration-test-secret-0123456789abcdef\"\n",
    )
    .unwrap();
    let now = SystemTime::now();
    let mut forged = Vec::new();
    for i in 0..5 {
        let sub = format!("u-forged-{i}");
        forged.push(wrong_secret.sign(&sub, Duration::from_secs(300), now));
        forged.push(unknown_kid.sign(&sub, Duration::from_secs(300), now));
        forged.push(dev_keys().sign(
            &sub,
            Duration::from_secs(1),
            now - Duration::from_secs(3600),
        ));
        forged.push(format!("garbage.{i}.token"));
    }
    forged
}

/// Sends every forged token from `from`; each must be a 401 that never reached the app.
async fn send_forged(gw: &GatewayProc, stub: &Stub, from: &str) {
    let before = stub.count();
    for (i, t) in forged_tokens().iter().enumerate() {
        let auth = bearer(t);
        let resp = get_from(from, gw.addr, PATH, &[("Authorization", &auth)]).await;
        assert_eq!(resp.status, 401, "forged token {i}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "invalid_token");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            resp.header("ratelimit"),
            None,
            "token {i}: no policy applied"
        );
    }
    assert_eq!(
        stub.count(),
        before,
        "no forged request reached the upstream"
    );
    assert_eq!(gw.metric_sum(AUTH_FAILURES, &[]), 20.0);
    for reason in ["bad_signature", "unknown_key", "expired", "malformed"] {
        assert_eq!(
            gw.metric_sum(AUTH_FAILURES, &[("reason", reason)]),
            5.0,
            "{reason}"
        );
    }
}

#[tokio::test]
async fn rotating_forged_tokens_get_401_not_fresh_buckets() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &forged_token_yaml());

    send_forged(&gw, &stub, "127.0.0.25").await;
    assert_eq!(
        gw.metric_sum(DECISIONS, &[]),
        0.0,
        "no forged token got a user bucket"
    );

    // A real user gets exactly the 1 the user policy allows, from the same address.
    let alice = bearer(&token_for("u-alice"));
    let as_alice = [("Authorization", alice.as_str())];
    allowed_then_limited(&gw, "127.0.0.25", PATH, &as_alice, 1, "per-user").await;
    assert_eq!(stub.count(), 1);
}

/// Token guessing is throttled like any traffic: a refused token is charged to
/// the address's per-IP bucket (as anonymous), so a flood of forgeries ends in 429.
#[tokio::test]
async fn forged_tokens_are_charged_to_the_per_ip_bucket() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &forged_token_per_ip_yaml());
    let forged = forged_tokens();
    let with_token = |t: &str| {
        let auth = bearer(t);
        let addr = gw.addr;
        async move { get_from("127.0.0.28", addr, PATH, &[("Authorization", &auth)]).await }
    };
    for (i, t) in forged.iter().take(5).enumerate() {
        let resp = with_token(t).await;
        assert_eq!(resp.status, 401, "forged token {i}: {}", resp.text());
        assert_eq!(remaining(&resp, "per-ip"), 4 - i as u32, "forged token {i}");
    }
    for t in forged.iter().skip(5).take(3) {
        let resp = with_token(t).await;
        assert_rate_limited(&resp, "per-ip");
    }
    // The address is over its limit with or without a token.
    assert_rate_limited(&get_from("127.0.0.28", gw.addr, PATH, &[]).await, "per-ip");
    assert_eq!(
        gw.metric_sum(AUTH_FAILURES, &[]),
        5.0,
        "only the answered 401s count as auth failures"
    );
    assert_eq!(stub.count(), 0, "no forged request reached the upstream");
    // Another address is untouched.
    allowed_then_limited(&gw, "127.0.0.29", PATH, &[], 5, "per-ip").await;
}

#[tokio::test]
async fn shadow_policy_counts_and_logs_but_never_rejects() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &shadow_yaml());

    for i in 0..5 {
        let resp = get_from("127.0.0.27", gw.addr, PATH, &[]).await;
        assert_eq!(resp.status, 200, "request {}: {}", i + 1, resp.text());
        assert_eq!(
            resp.header("ratelimit"),
            None,
            "shadow policies stay hidden"
        );
        assert_eq!(resp.header("retry-after"), None);
    }
    assert_eq!(stub.count(), 5);
    assert_eq!(decisions(&gw, "shadow-ip", "allowed"), 2.0);
    assert_eq!(decisions(&gw, "shadow-ip", "shadow_rejected"), 3.0);
    assert_eq!(decisions(&gw, "shadow-ip", "rejected"), 0.0);

    let lines = wait_access_logs(&gw, PATH, 5).await;
    assert_eq!(lines.len(), 5);
    let with_decision = |decision: &str| -> Vec<&serde_json::Value> {
        let matches = |l: &&serde_json::Value| l["policy_decision"] == decision;
        lines.iter().filter(matches).collect()
    };
    let would = with_decision("would_reject");
    assert_eq!(would.len(), 3, "{lines:?}");
    for l in &would {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["shadow_rejected_by"], "shadow-ip", "{l}");
    }
    let allowed = with_decision("allowed");
    assert_eq!(allowed.len(), 2, "{lines:?}");
    for l in &allowed {
        assert!(l.get("shadow_rejected_by").is_none(), "{l}");
    }
}

#[tokio::test]
async fn exempt_network_skips_per_ip_limits() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &exempt_yaml());

    for i in 0..3 + 5 {
        let resp = get_from("127.0.0.30", gw.addr, PATH, &[]).await;
        assert_eq!(
            resp.status,
            200,
            "exempt request {}: {}",
            i + 1,
            resp.text()
        );
        assert_eq!(resp.header("ratelimit"), None);
    }
    allowed_then_limited(&gw, "127.0.0.31", PATH, &[], 3, "per-ip").await;

    assert_eq!(decisions(&gw, "per-ip", "allowed"), 3.0);
    assert_eq!(decisions(&gw, "per-ip", "rejected"), 1.0);
    assert_eq!(stub.count(), 8 + 3);
}

/// Background traffic for the reload test: every request from its own address, so each
/// is under the limit of every config version and must be answered 200.
async fn background_traffic(
    gw_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut sent = 0usize;
    while sent < 2000 && start.elapsed() < Duration::from_secs(20) && !stop.load(Ordering::SeqCst) {
        let from = format!("127.1.{}.{}", sent / 200, sent % 200 + 1);
        let req = format!("GET {PATH} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        match raw_request(
            from.parse().unwrap(),
            gw_addr,
            req.as_bytes(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(r) if r.status == 200 => {}
            Ok(r) => failures.push(format!("{from}: {} {}", r.status, r.text())),
            Err(e) => failures.push(format!("{from}: {e}")),
        }
        sent += 1;
        done.store(sent, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    failures.push(format!("sent={sent}"));
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_raises_and_lowers_a_limit_under_traffic() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &per_ip_yaml("1/hour", 3));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn(background_traffic(gw.addr, stop.clone(), done.clone()));
    // Background requests completed so far; each reload must see this grow, so it
    // happened under traffic rather than in a lull.
    let mark_traffic = |what: &str| (what.to_string(), done.load(Ordering::SeqCst));

    allowed_then_limited(&gw, "127.0.2.1", PATH, &[], 3, "per-ip").await;

    for (what, limit, client) in [
        ("raise to 10", 10, "127.0.2.2"),
        ("lower to 2", 2, "127.0.2.3"),
    ] {
        let mark = mark_traffic(what);
        reload(&gw, stub.addr, &per_ip_yaml("1/hour", limit), "ok").await;
        assert!(
            done.load(Ordering::SeqCst) > mark.1,
            "no traffic during {}",
            mark.0
        );
        allowed_then_limited(&gw, client, PATH, &[], limit, "per-ip").await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut report = tokio::time::timeout(Duration::from_secs(30), traffic)
        .await
        .expect("background traffic ended")
        .unwrap();
    let sent: usize = report
        .pop()
        .and_then(|s| s.strip_prefix("sent=").map(|n| n.parse().unwrap()))
        .unwrap();
    eprintln!("background requests: {sent}");
    assert!(report.is_empty(), "failed background requests: {report:?}");
    assert!(sent >= 20, "background loop only sent {sent} requests");
    assert_eq!(gw.metric_sum(RELOADS, &[("result", "error")]), 0.0);
    assert_eq!(gw.metric_sum(RELOADS, &[("result", "ok")]), 2.0);
    assert_eq!(
        stub.count(),
        sent + 3 + 10 + 2,
        "every allowed request reached the upstream once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_limits() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &per_ip_yaml("1/hour", 3));
    allowed_then_limited(&gw, "127.0.0.40", PATH, &[], 3, "per-ip").await;

    // Valid YAML, invalid value.
    reload(&gw, stub.addr, &zero_burst_yaml(), "error").await;
    gw.wait_ready(200);
    let path = gw.config_path.display().to_string();
    wait_log_contains(&gw, &[&path, "rate_limits.policies[0].burst"]).await;
    // The running limiter (and its state) is untouched.
    let resp = get_from("127.0.0.40", gw.addr, PATH, &[]).await;
    assert_rate_limited(&resp, "per-ip");
    allowed_then_limited(&gw, "127.0.0.41", PATH, &[], 3, "per-ip").await;

    // Not YAML at all.
    reload(&gw, stub.addr, &broken_yaml(), "error").await;
    gw.wait_ready(200);
    let resp = get_from("127.0.0.40", gw.addr, PATH, &[]).await;
    assert_rate_limited(&resp, "per-ip");
    allowed_then_limited(&gw, "127.0.0.42", PATH, &[], 3, "per-ip").await;

    assert_eq!(gw.metric_sum(RELOADS, &[("result", "error")]), 2.0);
    assert_eq!(gw.metric_sum(RELOADS, &[("result", "ok")]), 0.0);
    assert_eq!(stub.count(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_state_of_unchanged_policies() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &two_policies_yaml(false));
    allowed_then_limited(&gw, "127.0.0.50", "/v1/a", &[], 3, "policy-a").await;
    // Before the reload /v1/b is unlimited.
    let resp = get_from("127.0.0.50", gw.addr, "/v1/b", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("ratelimit"), None);

    reload(&gw, stub.addr, &two_policies_yaml(true), "ok").await;

    // A is still exhausted for the same client...
    let resp = get_from("127.0.0.50", gw.addr, "/v1/a", &[]).await;
    assert_rate_limited(&resp, "policy-a");
    // ...B starts fresh for it...
    allowed_then_limited(&gw, "127.0.0.50", "/v1/b", &[], 2, "policy-b").await;
    // ...and A still gives a fresh client its full burst.
    allowed_then_limited(&gw, "127.0.0.51", "/v1/a", &[], 3, "policy-a").await;
}

#[tokio::test]
async fn block_list_refuses_clients_behind_a_trusted_proxy_and_users_with_valid_tokens() {
    let stub = Stub::start(StubMode::Echo).await;
    let yaml = "trusted_proxies: [127.0.0.2/32]\nblock:\n  clients: [203.0.113.0/24, 127.0.0.61/32]\n  users: [u-mallory]\n";
    let gw = GatewayProc::start(stub.addr, yaml);
    let mallory = bearer(&token_for("u-mallory"));
    let alice = bearer(&token_for("u-alice"));
    // (source, extra headers, want status)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        ("127.0.0.61", vec![], 403), // blocked peer
        ("127.0.0.62", vec![], 200), // neighbour address
        ("127.0.0.2", vec![("X-Forwarded-For", "203.0.113.9")], 403), // via the trusted proxy
        ("127.0.0.2", vec![("X-Forwarded-For", "198.51.100.9")], 200),
        ("127.0.0.63", vec![("X-Forwarded-For", "198.51.100.9")], 200), // spoof ignored
        ("127.0.0.64", vec![("X-Forwarded-For", "203.0.113.9")], 200),  // spoof can't frame others
        ("127.0.0.62", vec![("Authorization", &mallory)], 403),         // blocked user, valid token
        ("127.0.0.62", vec![("Authorization", &alice)], 200),
    ];
    for (i, (source, headers, want)) in cases.iter().enumerate() {
        let resp = get_from(source, gw.addr, PATH, headers).await;
        assert_eq!(resp.status, *want, "case {i}: {}", resp.text());
        if *want == 403 {
            assert_eq!(resp.json()["error"]["code"], "blocked", "case {i}");
        }
    }
    assert_eq!(stub.count(), 5, "blocked requests never reach the upstream");
    assert_eq!(
        gw.metric_sum("gateway_blocked_requests_total", &[("reason", "client")]),
        2.0
    );
    assert_eq!(
        gw.metric_sum("gateway_blocked_requests_total", &[("reason", "user")]),
        1.0
    );
    // The access log is written off the request path: give it a moment.
    let count = |kind: &str| {
        gw.proc
            .access_logs()
            .iter()
            .filter(|l| l["error"] == kind)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while (count("blocked_client"), count("blocked_user")) != (2, 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((count("blocked_client"), count("blocked_user")), (2, 1));
}

#[tokio::test]
async fn a_refused_upload_logs_its_declared_length_and_durations_in_microseconds() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &per_ip_yaml("1/hour", 1));
    let upload = |body: &str| {
        format!(
            "POST {PATH} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let ok = send_from("127.0.0.70", gw.addr, upload("first").as_bytes()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let refused = send_from("127.0.0.70", gw.addr, upload("second upload").as_bytes()).await;
    assert_rate_limited(&refused, "per-ip");
    let mut lines = Vec::new();
    for _ in 0..40 {
        lines = gw.proc.access_logs();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 429], "{lines:?}");
    assert_eq!(lines[0]["bytes_in"], 5, "proxied: the body bytes read");
    assert_eq!(
        lines[1]["bytes_in"], 13,
        "429 before the body: its declared length"
    );
    for l in &lines {
        let ms = l["duration_ms"].as_f64().unwrap();
        assert_eq!(
            (ms * 1e3).round() / 1e3,
            ms,
            "duration_ms {ms} has more than µs digits"
        );
    }
}
