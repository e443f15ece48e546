//! The top-refusals sketch under a flood of 10^6 distinct refused clients, in its own
//! process so its resident memory can be measured: the growth must be the sketch's fixed
//! size (and the store's `max_keys`), not one entry per client. The heavy hitters stay
//! listed. Driven through the limiter's own `check`, as the live path is.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use gateway::admit::limits::{Limiter, RateLimitsConfig, RequestFacts};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_million_distinct_refused_clients_keep_memory_at_the_sketch_bound() {
    let cfg: RateLimitsConfig = serde_yaml::from_str(
        "max_keys: 10000\npolicies:\n  - {name: per-ip, key: ip, rate: 1/hour, burst: 1}\n",
    )
    .unwrap();
    let mut limiter = Limiter::new(&cfg);
    limiter.set_top(100, Duration::from_secs(300), None);
    let now = 1_000_000_000u64;
    let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    let check = |l: &Limiter, client: IpAddr| {
        let facts = RequestFacts {
            method: "GET",
            path: "/v1/x",
            client_ip: client,
            user: None,
        };
        l.check(&facts, now).is_rejected()
    };
    // Warm up: fill the store to its cap so its memory is in the baseline.
    for i in 0..20_000 {
        check(&limiter, ip(2_000_000 + i));
    }
    let before = rss_kib();
    // Each client: one admitted, one refused. Three heavy clients get over 1 % each.
    let heavy = [ip(3_000_001), ip(3_000_002), ip(3_000_003)];
    let (mut refused, mut truth) = (0u64, [0u64; 3]);
    for i in 0..1_000_000u32 {
        let c = ip(i);
        check(&limiter, c);
        refused += u64::from(check(&limiter, c));
        if i % 50 == 0 {
            for (j, h) in heavy.iter().enumerate() {
                // The store may evict a heavy key at its cap (it then fails open): count
                // what was really refused.
                let r = u64::from(check(&limiter, *h));
                refused += r;
                truth[j] += r;
            }
        }
    }
    let grown = rss_kib().saturating_sub(before);
    let top = limiter.top("per-ip", 100, now).unwrap();
    eprintln!(
        "10^6 distinct refused clients ({refused} refusals): RSS grew {grown} KiB; top holds {} keys",
        top.len()
    );
    for (h, truth) in heavy.iter().zip(truth) {
        let e = top
            .iter()
            .find(|e| e.key.render(64) == h.to_string())
            .unwrap_or_else(|| panic!("{h} not listed"));
        assert!(
            truth > refused / 100 && e.refused >= truth && e.refused - truth <= refused / 100,
            "{h}: {}",
            e.refused
        );
    }
    assert!(top.len() <= 100);
    // The sketch is 2 × 100 counters: a few tens of KiB. One entry per client would be
    // tens of MiB; allow allocator noise well below that.
    assert!(grown < 4 * 1024, "RSS grew {grown} KiB");
}
