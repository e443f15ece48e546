//! Limiter behaviour end to end over injected time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_000 * SEC;

fn cfg(yaml: &str) -> RateLimitsConfig {
    let c: RateLimitsConfig = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap();
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn req<'a>(client: &str, user: Option<&'a str>) -> RequestFacts<'a> {
    RequestFacts {
        method: "GET",
        path: "/v1/x",
        client_ip: ip(client),
        user,
    }
}

/// Allowed requests out of `n` sent at one instant.
fn allowed(l: &Limiter, r: &RequestFacts, n: usize, now: u64) -> usize {
    (0..n).filter(|_| !l.check(r, now).is_rejected()).count()
}

const PER_IP: &str = "
policies:
  - {name: per-ip, key: ip, rate: 60/min, burst: 3}
";

#[test]
fn no_policies_no_outcomes() {
    let l = Limiter::new(&RateLimitsConfig::default());
    let v = l.check(&req("1.2.3.4", None), T0);
    // No outcome, but the request reached the limits: its instant is kept for replay.
    assert_eq!(
        v,
        Verdict {
            at_ns: T0,
            ..Verdict::default()
        }
    );
    assert!(l.is_empty());
}

#[test]
fn outcome_fields_and_report() {
    let l = Limiter::new(&cfg(PER_IP));
    let v = l.check(&req("1.2.3.4", None), T0);
    assert!(!v.is_rejected());
    let o = v.reported().unwrap();
    assert_eq!(&*o.policy, "per-ip");
    assert_eq!((o.decision, o.mode), (Decision::Allowed, Mode::Enforce));
    assert_eq!((o.remaining, o.limit, o.window_secs), (2, 3, 3));
    assert_eq!(o.reset_after, Duration::from_secs(1));
    assert_eq!(o.retry_after, Duration::ZERO);
    assert_eq!(o.policy_header(), "\"per-ip\";q=3;w=3");
    assert_eq!(o.ratelimit_header(), "\"per-ip\";r=2;t=1");
    l.check(&req("1.2.3.4", None), T0);
    l.check(&req("1.2.3.4", None), T0);
    let v = l.check(&req("1.2.3.4", None), T0);
    let o = v.rejection().unwrap();
    assert_eq!(o.decision, Decision::Rejected);
    assert_eq!(o.retry_after, Duration::from_secs(1));
    // t = until one more request fits (= retry_after), not until the bucket is full (3 s).
    assert_eq!(o.reset_after, Duration::from_secs(3));
    assert_eq!(o.ratelimit_header(), "\"per-ip\";r=0;t=1");
    assert_eq!(v.report, v.rejected_by);
}

#[test]
fn header_values_are_the_formatted_strings() {
    let l = Limiter::new(&cfg(PER_IP));
    for n in 0..4 {
        let v = l.check(&req("1.2.3.4", None), T0 + n);
        let o = v.reported().unwrap();
        assert_eq!(o.policy_value, o.policy_header().as_str());
        assert_eq!(o.ratelimit_header_value(), o.ratelimit_header().as_str());
    }
}

#[test]
fn ipv6_grouped_by_prefix_and_ipv4_mapped_is_ipv4() {
    let l = Limiter::new(&cfg(PER_IP));
    // Same /64: one bucket.
    assert_eq!(allowed(&l, &req("2001:db8:1:2::1", None), 2, T0), 2);
    assert_eq!(allowed(&l, &req("2001:db8:1:2:ffff::9", None), 5, T0), 1);
    // Neighbouring /64: its own bucket.
    assert_eq!(allowed(&l, &req("2001:db8:1:3::1", None), 5, T0), 3);
    // IPv4-mapped shares the IPv4 client's bucket.
    assert_eq!(allowed(&l, &req("192.0.2.7", None), 2, T0), 2);
    assert_eq!(allowed(&l, &req("::ffff:192.0.2.7", None), 5, T0), 1);

    let l = Limiter::new(&cfg(&format!("ipv6_prefix: 128\n{PER_IP}")));
    assert_eq!(allowed(&l, &req("2001:db8::1", None), 5, T0), 3);
    assert_eq!(allowed(&l, &req("2001:db8::2", None), 5, T0), 3);
    let l = Limiter::new(&cfg(&format!("ipv6_prefix: 48\n{PER_IP}")));
    assert_eq!(allowed(&l, &req("2001:db8:0:1::1", None), 2, T0), 2);
    assert_eq!(allowed(&l, &req("2001:db8:0:ffff::1", None), 5, T0), 1);
}

const MIXED: &str = "
exempt: [10.0.0.0/8, '::ffff:192.168.0.0/112', '2001:db8:e::/48']
policies:
  - {name: per-ip, key: ip, rate: 60/min, burst: 2}
  - {name: per-user, key: user, rate: 60/min, burst: 3}
  - {name: everyone, key: global, rate: 60/min, burst: 100}
";

fn names(v: &Verdict) -> Vec<&str> {
    v.outcomes.iter().map(|o| &*o.policy).collect()
}

#[test]
fn exempt_skips_only_ip_policies_and_anonymous_skips_user() {
    let l = Limiter::new(&cfg(MIXED));
    let v = l.check(&req("10.1.2.3", Some("alice")), T0);
    assert_eq!(names(&v), ["per-user", "everyone"]);
    let v = l.check(&req("::ffff:10.1.2.3", None), T0);
    assert_eq!(names(&v), ["everyone"]);
    let v = l.check(&req("192.168.3.4", None), T0);
    assert_eq!(names(&v), ["everyone"], "mapped exempt CIDR covers IPv4");
    let v = l.check(&req("2001:db8:e:5::1", None), T0);
    assert_eq!(names(&v), ["everyone"]);
    let v = l.check(&req("11.0.0.1", None), T0);
    assert_eq!(names(&v), ["per-ip", "everyone"]);
    let v = l.check(&req("11.0.0.1", Some("bob")), T0);
    assert_eq!(names(&v), ["per-ip", "per-user", "everyone"]);
    // Exempt clients are still limited per user.
    let alice = req("10.9.9.9", Some("alice"));
    assert_eq!(allowed(&l, &alice, 10, T0), 2, "alice had 1 of 3 left");
}

#[test]
fn any_enforcing_rejection_rejects_and_charges_nothing() {
    let l = Limiter::new(&cfg(MIXED));
    let bob = req("11.0.0.1", Some("bob"));
    assert_eq!(allowed(&l, &bob, 2, T0), 2);
    // per-ip is empty now: rejected, reported, and the other buckets are not charged.
    for _ in 0..50 {
        let v = l.check(&bob, T0);
        assert!(v.is_rejected());
        assert_eq!(&*v.rejection().unwrap().policy, "per-ip");
        assert_eq!(v.reported(), v.rejection());
    }
    let v = l.check(&req("11.0.0.2", Some("bob")), T0);
    assert!(!v.is_rejected());
    let user = &v.outcomes[1];
    assert_eq!((&*user.policy, user.remaining), ("per-user", 0));
    let global = &v.outcomes[2];
    assert_eq!(
        global.remaining,
        100 - 3,
        "rejected requests were not charged globally"
    );
    // Report picks the enforcing policy with the least remaining.
    assert_eq!(&*v.reported().unwrap().policy, "per-user");
}

#[test]
fn shadow_never_rejects_but_reports() {
    let l = Limiter::new(&cfg("
policies:
  - {name: strict, key: ip, rate: 1/min, burst: 1, mode: shadow}
  - {name: loose, key: ip, rate: 60/min, burst: 5}
"));
    let r = req("1.2.3.4", None);
    let v = l.check(&r, T0);
    assert_eq!(v.would_reject().count(), 0);
    for i in 0..4 {
        let v = l.check(&r, T0);
        assert!(!v.is_rejected(), "{i}");
        assert_eq!(v.would_reject().collect::<Vec<_>>(), ["strict"]);
        assert_eq!(v.outcomes[0].decision, Decision::ShadowRejected);
        assert_eq!(
            &*v.reported().unwrap().policy,
            "loose",
            "shadow never shown"
        );
    }
    // The enforcing policy still rejects.
    let v = l.check(&r, T0);
    assert_eq!(&*v.rejection().unwrap().policy, "loose");

    // Only shadow policies: nothing reported in headers, nothing rejected.
    let l = Limiter::new(&cfg(
        "policies: [{name: s, key: global, rate: 1/min, burst: 1, mode: shadow}]",
    ));
    for _ in 0..10 {
        let v = l.check(&r, T0);
        assert!(!v.is_rejected());
        assert_eq!(v.report, None);
    }
}

#[test]
fn method_and_path_matching_select_policies() {
    let l = Limiter::new(&cfg(
        "
policies:
  - {name: writes, key: global, rate: 1/min, burst: 1, match: {methods: [POST], path_prefix: /v1/documents}}
  - {name: all, key: global, rate: 60/min, burst: 100}
",
    ));
    let mut r = req("1.2.3.4", None);
    r.method = "POST";
    r.path = "/v1/documents/1";
    assert_eq!(names(&l.check(&r, T0)), ["writes", "all"]);
    assert!(l.check(&r, T0).is_rejected());
    r.path = "/v1/documentsX";
    assert_eq!(names(&l.check(&r, T0)), ["all"]);
    r.method = "GET";
    r.path = "/v1/documents/1";
    assert_eq!(names(&l.check(&r, T0)), ["all"]);
}

#[test]
fn policies_never_share_buckets() {
    let l = Limiter::new(&cfg("
policies:
  - {name: a, key: global, rate: 60/min, burst: 1}
  - {name: b, key: global, rate: 60/min, burst: 1, match: {path_prefix: /b}}
"));
    let mut r = req("1.2.3.4", None);
    r.path = "/a";
    assert_eq!(allowed(&l, &r, 3, T0), 1);
    r.path = "/b";
    // Exhausted `a` rejects first; the look-ahead keeps `b` uncharged.
    assert!(l.check(&r, T0).is_rejected());
    let v = l.check(&r, T0 + SEC);
    assert!(!v.is_rejected());
    assert_eq!(v.outcomes[1].remaining, 0);
}

#[test]
fn reconfigure_keeps_unchanged_state_and_resets_changed() {
    let old = Limiter::new(&cfg("
policies:
  - {name: keep, key: ip, rate: 60/min, burst: 2}
  - {name: retune, key: ip, rate: 60/min, burst: 2, match: {path_prefix: /r}}
  - {name: gone, key: ip, rate: 60/min, burst: 2, match: {path_prefix: /g}}
"));
    let mut r = req("1.2.3.4", None);
    for p in ["/k", "/r", "/r", "/g", "/g"] {
        r.path = p;
        old.check(&r, T0);
    }
    let new = old.reconfigure(&cfg("
max_keys: 100000
policies:
  - {name: keep, key: ip, rate: 60/min, burst: 2, mode: shadow, match: {methods: [GET]}}
  - {name: retune, key: ip, rate: 60/min, burst: 3, match: {path_prefix: /r}}
  - {name: fresh, key: ip, rate: 60/min, burst: 2, match: {path_prefix: /g}}
"));
    r.path = "/k";
    let v = new.check(&r, T0);
    assert_eq!(
        v.outcomes[0].remaining, 0,
        "keep: state carried (mode/match changed)"
    );
    r.path = "/r";
    let v = new.check(&r, T0);
    assert_eq!(
        v.outcomes[1].remaining, 2,
        "retune: burst changed, fresh bucket"
    );
    r.path = "/g";
    let v = new.check(&r, T0);
    assert_eq!(&*v.outcomes[1].policy, "fresh");
    assert_eq!(v.outcomes[1].remaining, 1, "fresh: new name, fresh bucket");
    let stats: Vec<_> = new.policies().collect();
    assert_eq!(stats[0].active_keys, 1);
    assert_eq!(stats[0].mode, Mode::Shadow);

    // A different max_keys carries state over into a resized store.
    let resized = new.reconfigure(&cfg("
max_keys: 5000
policies: [{name: keep, key: ip, rate: 60/min, burst: 2}]
"));
    r.path = "/k";
    assert!(resized.check(&r, T0).is_rejected());
    let s = resized.policies().next().unwrap();
    assert_eq!((s.max_keys, s.active_keys), (5000, 1));
}

#[test]
fn stats_count_keys_and_evictions() {
    let l = Limiter::new(&cfg("
max_keys: 100
policies: [{name: p, key: user, rate: 1/hour, burst: 5}]
"));
    for i in 0..1_000 {
        let user = format!("u{i}");
        l.check(&req("1.1.1.1", Some(&user)), T0);
    }
    let s = l.policies().next().unwrap();
    assert_eq!(&*s.name, "p");
    assert_eq!(s.key, KeyKind::User);
    assert_eq!(s.active_keys, 100);
    assert_eq!(s.evictions, 900);
}

/// 10^6 distinct active IPv4 clients, each within its limit: zero false rejections;
/// then clients that exceed the limit are held to it.
fn accuracy(keys: u32) {
    let l = Limiter::new(&cfg(&format!(
        "
max_keys: {}
policies: [{{name: per-ip, key: ip, rate: 10/min, burst: 10}}]
",
        keys + keys / 10
    )));
    let client = |i: u32| RequestFacts {
        method: "GET",
        path: "/",
        client_ip: IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)),
        user: None,
    };
    let started = Instant::now();
    let mut sent = 0u64;
    // Everyone sends 1..=3 requests; every 1000th client uses its whole burst.
    for i in 0..keys {
        let n = if i % 1000 == 0 { 10 } else { 1 + i % 3 };
        for _ in 0..n {
            sent += 1;
            assert!(
                !l.check(&client(i), T0).is_rejected(),
                "false rejection of {i}"
            );
        }
    }
    let s = l.policies().next().unwrap();
    assert_eq!(s.active_keys, keys as usize);
    assert_eq!(s.evictions, 0);
    // Over the limit: each sampled client gets exactly its remaining allowance.
    for i in (0..keys).step_by(997) {
        let used = if i % 1000 == 0 { 10 } else { 1 + i % 3 };
        let got = allowed(&l, &client(i), 20, T0 + 1);
        assert_eq!(got, 10 - used as usize, "client {i}");
        // ...and then one per 6 s.
        assert_eq!(
            allowed(&l, &client(i), 5, T0 + 6 * SEC + 1),
            1,
            "client {i}"
        );
    }
    eprintln!(
        "accuracy({keys}): {sent} checks in {:?}, {} bytes/key",
        started.elapsed(),
        l.policies[0].store.table_bytes() / keys as usize
    );
}

/// ~2·10^6 checks; about 2-3 s in a debug build, so it always runs.
#[test]
fn accuracy_million_active_keys() {
    accuracy(1_000_000);
}

#[test]
fn concurrent_checks_never_exceed_burst() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Limiter>();
    let l = Limiter::new(&cfg(
        "policies: [{name: g, key: global, rate: 1/min, burst: 1000}]",
    ));
    let total: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let l = &l;
                s.spawn(move || {
                    let client = format!("10.0.0.{t}");
                    allowed(l, &req(&client, None), 500, T0)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(total, 1000);
}
