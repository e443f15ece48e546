//! The limiter with shared policies: leases, degraded modes, exact confirmation requests
//! and what a reload keeps.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::config::{OnUnavailable, SharedLimitsConfig};
use super::{Connection, Engine};
use crate::admit::limits::{Limiter, RateLimitsConfig, RequestFacts};

const SEC: u64 = 1_000_000_000;

fn limits(yaml: &str) -> RateLimitsConfig {
    let c: RateLimitsConfig = serde_yaml::from_str(yaml).unwrap();
    c.validate().unwrap();
    c
}

fn engine(n: u32, healthy: bool) -> Arc<Engine> {
    let e = Engine::new(
        Connection::single("redis://127.0.0.1:1/0", None, "edge"),
        Duration::from_millis(250),
        OnUnavailable::Share,
    );
    e.set_replicas(n);
    e.set_healthy(healthy);
    Arc::new(e)
}

fn facts(ip: [u8; 4]) -> RequestFacts<'static> {
    RequestFacts {
        method: "GET",
        path: "/v1/x",
        client_ip: IpAddr::from(ip),
        user: None,
    }
}

fn admitted(l: &Limiter, ip: [u8; 4], count: usize, now: u64) -> usize {
    (0..count)
        .filter(|_| !l.check(&facts(ip), now).is_rejected())
        .count()
}

const POLICIES: &str = "policies:
  - {name: sync, key: ip, rate: 60/min, burst: 30}
  - {name: mine, key: ip, rate: 60/min, burst: 30, shared: local}
";

#[test]
fn healthy_replica_spends_one_nth_of_the_burst_until_redis_answers() {
    let e = engine(3, true);
    let l = Limiter::with_shared(&limits(POLICIES), Some(&e), None);
    assert_eq!(l.shared_policies().len(), 1, "`local` stays local");
    // 30 / 3 = 10 (the local policy alone would allow 30).
    assert_eq!(admitted(&l, [10, 0, 0, 1], 40, 5 * SEC), 10);
    let sp = &l.shared_policies()[0];
    assert!(sp.has_dirty());
    let items = sp.take_dirty(64);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].hits, 10);
    // Redis says 25 hits are in the bucket fleet-wide: 5 left, this replica gets 5/3 → 1.
    let again = sp.apply_reply(&items[0], 25 * SEC, 5 * SEC);
    assert!(!again);
    assert_eq!(admitted(&l, [10, 0, 0, 1], 10, 5 * SEC), 1);
}

#[test]
fn degraded_modes() {
    let yaml = "policies:
  - {name: share, key: ip, rate: 1/hour, burst: 9, match: {path_prefix: /v1/s}}
  - {name: full, key: ip, rate: 1/hour, burst: 9, on_unavailable: full, match: {path_prefix: /v1/f}}
  - {name: deny, key: ip, rate: 1/hour, burst: 9, on_unavailable: deny, match: {path_prefix: /v1/d}}
  - {name: exact, key: ip, rate: 1/hour, burst: 9, shared: exact, match: {path_prefix: /v1/e}}
";
    let e = engine(3, false);
    let l = Limiter::with_shared(&limits(yaml), Some(&e), None);
    let run = |path: &'static str| {
        let f = RequestFacts {
            path,
            ..facts([10, 0, 0, 2])
        };
        (0..20)
            .filter(|_| {
                let v = l.check(&f, SEC);
                assert!(v.confirm.is_empty(), "degraded: never wait for Redis");
                !v.is_rejected()
            })
            .count()
    };
    assert_eq!(run("/v1/s"), 3, "burst / n");
    assert_eq!(run("/v1/f"), 9, "whole burst");
    assert_eq!(run("/v1/d"), 0, "fail closed");
    assert_eq!(run("/v1/e"), 3, "exact falls back per on_unavailable");

    // Healthy again: exact asks Redis; a local rejection never does.
    e.set_healthy(true);
    let f = RequestFacts {
        path: "/v1/e",
        ..facts([10, 0, 0, 3])
    };
    let v = l.check(&f, SEC);
    assert_eq!(v.confirm.len(), 1);
    assert_eq!(v.confirm[0].outcome, 0);
    for _ in 0..8 {
        l.check(&f, SEC);
    }
    let v = l.check(&f, SEC);
    assert!(v.is_rejected() && v.confirm.is_empty());
}

#[test]
fn reload_keeps_state_only_for_the_same_redis_and_fingerprint() {
    let e = engine(3, true);
    let cfg = limits(POLICIES);
    let l1 = Limiter::with_shared(&cfg, Some(&e), None);
    let l2 = Limiter::with_shared(&cfg, Some(&e), Some(&l1));
    assert!(Arc::ptr_eq(
        &l1.shared_policies()[0],
        &l2.shared_policies()[0]
    ));
    let changed = limits("policies:\n  - {name: sync, key: ip, rate: 60/min, burst: 31}\n");
    let l3 = Limiter::with_shared(&changed, Some(&e), Some(&l2));
    assert_ne!(
        l3.shared_policies()[0].fingerprint,
        l2.shared_policies()[0].fingerprint,
        "a changed burst starts fresh in Redis"
    );
    let exact =
        limits("policies:\n  - {name: sync, key: ip, rate: 60/min, burst: 30, shared: exact}\n");
    let l4 = Limiter::with_shared(&exact, Some(&e), Some(&l2));
    assert!(!Arc::ptr_eq(
        &l4.shared_policies()[0],
        &l2.shared_policies()[0]
    ));
    let l5 = Limiter::with_shared(&cfg, None, Some(&l2));
    assert!(l5.shared_policies().is_empty(), "shared_limits removed");

    let yaml = |url: &str| -> SharedLimitsConfig {
        serde_yaml::from_str(&format!("{{redis: '{url}', sync_interval: 100ms}}")).unwrap()
    };
    let a = Engine::for_reload(&yaml("redis://r:6379/0"), None).unwrap();
    let b = Engine::for_reload(&yaml("redis://r:6379/0"), Some(&a)).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "same Redis: same engine and connection"
    );
    b.set_replicas(3);
    let c = Engine::for_reload(&yaml("redis://r2:6379/0"), Some(&b)).unwrap();
    assert!(!Arc::ptr_eq(&b, &c), "changed URL reconnects");
    assert_eq!(
        c.replicas(),
        3,
        "a reconnecting replica keeps the known fleet size"
    );
    let fresh = Engine::for_reload(&yaml("redis://r2:6379/0"), None).unwrap();
    assert_eq!(fresh.replicas(), 1, "at startup the fleet size is unknown");
}
