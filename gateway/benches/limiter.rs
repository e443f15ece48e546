//! Rate-limiter micro-benchmarks: nanoseconds per decision and memory at 10^4, 10^5 and
//! 10^6 active keys, and a flood of 10^7 random keys that must stay under the key cap.
//!
//! `cargo bench -p gateway --bench limiter` (add `-- --quick` for a short run). Memory
//! figures are printed to stderr: the store's own table bytes per key and the process
//! RSS growth while the keys were added.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::admit::limits::store::Store;
use gateway::admit::limits::{Limiter, RateLimitsConfig, RequestFacts};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_000 * SEC;
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const FLOOD_KEYS: u64 = 10_000_000;
const FLOOD_CAP: usize = 1_000_000;

fn config(max_keys: usize, with_user: bool) -> RateLimitsConfig {
    config_with_rate(max_keys, with_user, "100/s", 100)
}

fn config_with_rate(max_keys: usize, with_user: bool, rate: &str, burst: u32) -> RateLimitsConfig {
    let user = if with_user {
        // Sized so the one bench user never runs out: every request is charged to both.
        "  - {name: per-user, key: user, rate: 1000000/s, burst: 1000000}\n"
    } else {
        ""
    };
    let yaml = format!(
        "max_keys: {max_keys}\npolicies:\n  - {{name: per-ip, key: ip, rate: {rate}, burst: {burst}}}\n{user}"
    );
    let cfg: RateLimitsConfig = serde_yaml::from_str(&yaml).expect("bench config parses");
    cfg.validate().expect("bench config is valid");
    cfg
}

fn client(i: u64) -> IpAddr {
    // Spread over the whole IPv4 space, like real clients (not one /16).
    IpAddr::V4(Ipv4Addr::from((i as u32).wrapping_mul(2_654_435_761)))
}

fn facts(i: u64, user: Option<&str>) -> RequestFacts<'_> {
    RequestFacts {
        method: "GET",
        path: "/v1/documents",
        client_ip: client(i),
        user,
    }
}

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// xorshift64*: a cheap, deterministic stream of key indices.
struct Keys(u64);
impl Keys {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    for (label, with_user) in [("per-ip", false), ("per-ip+per-user", true)] {
        for n in SIZES {
            let before = rss_kib();
            // 10 % headroom over the active clients, as the README advises.
            let limiter = Limiter::new(&config(n + n / 10, with_user));
            for i in 0..n as u64 {
                limiter.check(&facts(i, Some("u-bench")), T0);
            }
            let grown = rss_kib().saturating_sub(before);
            let active: usize = limiter.policies().map(|p| p.active_keys).sum();
            eprintln!(
                "{label}: {n} clients -> {active} active keys, RSS +{grown} KiB ({:.1} bytes per key)",
                grown as f64 * 1024.0 / active as f64
            );
            let mut keys = Keys(0x9e37_79b9_7f4a_7c15);
            let mut now = T0;
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, &n| {
                b.iter(|| {
                    now += 1_000; // 1 µs between requests
                    let i = keys.next(n as u64);
                    black_box(limiter.check(&facts(i, Some("u-bench")), now))
                })
            });
        }
    }
    group.finish();
}

/// Store memory per key at each size (the table alone, without allocator overhead).
fn store_memory(_c: &mut Criterion) {
    for n in SIZES {
        let store = Store::new(n + n / 10);
        for i in 0..n as u64 {
            let k = store.hash_key(&i);
            store.update(k, T0, |_| ((), Some(T0 + SEC)));
        }
        eprintln!(
            "store: {n} active keys, table {} KiB ({:.1} bytes per key)",
            store.table_bytes() / 1024,
            store.table_bytes() as f64 / store.len() as f64
        );
    }
}

/// 10^7 distinct random clients against a cap of 10^6: the store never holds more than
/// the cap, its table stays at the cap's size, and the process does not keep growing.
fn flood(c: &mut Criterion) {
    let before = rss_kib();
    // 10/min: a key stays active (its bucket not yet refilled) for 6 s, longer than the
    // flood lasts, so the cap, not lossless purging, has to hold the line.
    let limiter = Limiter::new(&config_with_rate(FLOOD_CAP, false, "10/min", 1));
    let mut keys = Keys(0x2545_f491_4f6c_dd1d);
    let mut now = T0;
    let started = std::time::Instant::now();
    let mut peak_keys = 0;
    for i in 0..FLOOD_KEYS {
        now += 100; // 10 M new clients/s
        limiter.check(&facts(keys.next(u64::MAX), None), now);
        if i % 100_000 == 0 {
            let active: usize = limiter.policies().map(|p| p.active_keys).sum();
            peak_keys = peak_keys.max(active);
        }
    }
    let elapsed = started.elapsed();
    let stats = limiter.policies().next().expect("one policy");
    let grown = rss_kib().saturating_sub(before);
    eprintln!(
        "flood: {FLOOD_KEYS} random keys, cap {FLOOD_CAP}: {} active (peak sampled {peak_keys}), \
         {} evictions, RSS +{grown} KiB, {:.0} ns per request",
        stats.active_keys,
        stats.evictions,
        elapsed.as_nanos() as f64 / FLOOD_KEYS as f64
    );
    assert!(stats.active_keys <= FLOOD_CAP && peak_keys <= FLOOD_CAP);

    let store = Store::new(FLOOD_CAP);
    for i in 0..FLOOD_KEYS {
        let k = store.hash_key(&i);
        store.update(k, T0, |_| ((), Some(T0 + SEC)));
    }
    // A table for the cap at 3/4 load: 16-byte slots, 4/3 slots per key, plus up to two
    // slots of rounding in each of the (at most 64) shards.
    let bound = (FLOOD_CAP * 4 / 3 + 2 * 64) * 16;
    eprintln!(
        "flood: store of cap {FLOOD_CAP} after {FLOOD_KEYS} keys: {} keys, table {} KiB (bound {} KiB)",
        store.len(),
        store.table_bytes() / 1024,
        bound / 1024
    );
    assert!(store.len() <= FLOOD_CAP);
    assert!(store.table_bytes() <= bound);

    // Cost of a new client when the store is full (the eviction path).
    let mut next = FLOOD_KEYS;
    c.bench_function("insert at cap (evicting)", |b| {
        b.iter(|| {
            next += 1;
            let k = store.hash_key(&next);
            store.update(k, T0, |_| ((), Some(T0 + SEC)));
        })
    });
}

criterion_group!(benches, decisions, store_memory, flood);
criterion_main!(benches);
