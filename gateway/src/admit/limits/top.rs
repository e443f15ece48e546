//! Which keys a policy refuses most: a bounded heavy-hitter sketch per policy.
//!
//! Space-Saving (Metwally, Agrawal, El Abbadi 2005) with `cap` counters: a refused key
//! already counted gets +1; a new key takes a free counter, or else replaces the smallest
//! one and inherits its count (+1). So memory is `cap` counters whatever the traffic;
//! counts are exact while fewer than `cap` distinct keys were refused; otherwise every
//! count is over by at most refusals/`cap`, and every key refused more than
//! refusals/`cap` times is held.
//!
//! The sliding window is two half-window sketches: the current one and the one before.
//! A query sums both, so it looks back between half and all of `window`. The bounds
//! above hold for the sum (each half's error is at most its refusals/`cap`; a key missing
//! from one half had at most that half's smallest count there).
//!
//! Admissions are counted only for keys already held and only when the caller says so
//! (the limiter does it when a request empties the bucket): nothing is recorded for an
//! admitted request with budget to spare, so the admitted path stays as it was.
//!
//! Pure: time (monotonic ns) is passed in; the caller holds the lock.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A refused client as it is shown: canonical IPv4, an IPv6 prefix, a user id or `global`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopKey {
    V4(u32),
    /// Address already masked to the policy's `ipv6_prefix`.
    V6(u128),
    User(Box<str>),
    Global,
}

impl TopKey {
    /// `192.0.2.1`, `2001:db8::/64`, the user id, or `global`.
    pub fn render(&self, ipv6_prefix: u8) -> String {
        match self {
            TopKey::V4(a) => Ipv4Addr::from(*a).to_string(),
            TopKey::V6(a) => format!("{}/{ipv6_prefix}", Ipv6Addr::from(*a)),
            TopKey::User(u) => u.to_string(),
            TopKey::Global => "global".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Counter {
    /// The limiter's keyed hash of the client within its policy.
    hash: u64,
    key: TopKey,
    refused: u64,
    admitted: u64,
    last_refused_ns: u64,
}

/// One Space-Saving sketch: a binary min-heap on `refused` plus an index by hash. Counts
/// only ever grow by one, so an update is one sift-down: O(log cap).
#[derive(Clone, Debug, Default)]
struct Sketch {
    heap: Vec<Counter>,
    index: HashMap<u64, usize>,
}

impl Sketch {
    fn clear(&mut self) {
        self.heap.clear();
        self.index.clear();
    }

    fn refuse(&mut self, cap: usize, hash: u64, key: impl FnOnce() -> TopKey, now: u64) {
        let i = match self.index.get(&hash) {
            Some(&i) => i,
            None if self.heap.len() < cap => {
                self.heap.push(Counter {
                    hash,
                    key: key(),
                    refused: 0,
                    admitted: 0,
                    last_refused_ns: 0,
                });
                let i = self.heap.len() - 1;
                self.index.insert(hash, i);
                self.sift_up(i)
            }
            None => {
                // Full: the smallest counter changes hands; its count stays as the error.
                let Some(min) = self.heap.first_mut() else {
                    return;
                };
                self.index.remove(&min.hash);
                min.hash = hash;
                min.key = key();
                min.admitted = 0;
                self.index.insert(hash, 0);
                0
            }
        };
        let c = &mut self.heap[i];
        c.refused += 1;
        c.last_refused_ns = now;
        self.sift_down(i);
    }

    fn admit(&mut self, hash: u64) {
        if let Some(&i) = self.index.get(&hash) {
            self.heap[i].admitted += 1;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.index.insert(self.heap[a].hash, a);
        self.index.insert(self.heap[b].hash, b);
    }

    fn sift_up(&mut self, mut i: usize) -> usize {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].refused <= self.heap[i].refused {
                break;
            }
            self.swap(parent, i);
            i = parent;
        }
        i
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l].refused < self.heap[least].refused {
                least = l;
            }
            if r < self.heap.len() && self.heap[r].refused < self.heap[least].refused {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

/// One listed key, counts summed over the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopEntry {
    pub key: TopKey,
    pub refused: u64,
    pub admitted: u64,
    /// Monotonic ns of the latest refusal.
    pub last_refused_ns: u64,
}

/// `admin.top_keys` when unset.
pub const DEFAULT_TOP_KEYS: usize = 100;
/// `admin.top_window` when unset.
pub const DEFAULT_TOP_WINDOW: Duration = Duration::from_secs(300);

/// A policy's refusals over a sliding window: two half-window sketches.
#[derive(Clone, Debug)]
pub struct TopRefusals {
    cap: usize,
    half_ns: u64,
    current_start: u64,
    current: Sketch,
    previous: Sketch,
}

impl Default for TopRefusals {
    fn default() -> Self {
        TopRefusals::new(DEFAULT_TOP_KEYS, DEFAULT_TOP_WINDOW)
    }
}

impl TopRefusals {
    /// `cap` counters per half (at least 1); `window` at least 2 ns.
    pub fn new(cap: usize, window: Duration) -> TopRefusals {
        TopRefusals {
            cap: cap.max(1),
            half_ns: (window.as_nanos() as u64 / 2).max(1),
            current_start: 0,
            current: Sketch::default(),
            previous: Sketch::default(),
        }
    }

    /// Same window and size: state can carry over a reload.
    pub fn same_shape(&self, cap: usize, window: Duration) -> bool {
        self.cap == cap.max(1) && self.half_ns == (window.as_nanos() as u64 / 2).max(1)
    }

    fn rotate(&mut self, now: u64) {
        if now < self.current_start.saturating_add(self.half_ns) {
            return;
        }
        if now < self.current_start.saturating_add(2 * self.half_ns) {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current_start += self.half_ns;
        } else {
            // Quiet for a whole window: both halves are stale.
            self.previous.clear();
            self.current_start = now;
        }
        self.current.clear();
    }

    /// A refusal (enforced or shadow) of the client `hash`; `key` is built only for a
    /// client the sketch does not hold yet.
    pub fn refuse(&mut self, hash: u64, key: impl FnOnce() -> TopKey, now: u64) {
        self.rotate(now);
        self.current.refuse(self.cap, hash, key, now);
    }

    /// An admission of `hash`: counted only if the client is held (never inserts).
    pub fn admit(&mut self, hash: u64, now: u64) {
        self.rotate(now);
        self.current.admit(hash);
    }

    /// Counters in use: never more than 2 × `cap`.
    pub fn len(&self) -> usize {
        self.current.heap.len() + self.previous.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `n` most refused keys over the window, heaviest first (ties: most recent first).
    pub fn top(&mut self, n: usize, now: u64) -> Vec<TopEntry> {
        self.rotate(now);
        let mut merged: HashMap<u64, TopEntry> = HashMap::with_capacity(self.len());
        for c in self.previous.heap.iter().chain(&self.current.heap) {
            let e = merged.entry(c.hash).or_insert_with(|| TopEntry {
                key: c.key.clone(),
                refused: 0,
                admitted: 0,
                last_refused_ns: 0,
            });
            e.refused += c.refused;
            e.admitted += c.admitted;
            e.last_refused_ns = e.last_refused_ns.max(c.last_refused_ns);
        }
        let mut out: Vec<TopEntry> = merged.into_values().collect();
        out.sort_by(|a, b| {
            (b.refused, b.last_refused_ns)
                .cmp(&(a.refused, a.last_refused_ns))
                .then_with(|| a.key.render(128).cmp(&b.key.render(128)))
        });
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn user(name: &str) -> TopKey {
        TopKey::User(name.into())
    }

    /// Feeds `(hash, times)` refusals in order at `now`.
    fn feed(t: &mut TopRefusals, refusals: &[(u64, u64)], now: u64) {
        for &(h, times) in refusals {
            for _ in 0..times {
                t.refuse(h, || TopKey::V4(h as u32), now);
            }
        }
    }

    fn counts(t: &mut TopRefusals, now: u64) -> Vec<(TopKey, u64)> {
        t.top(usize::MAX, now)
            .into_iter()
            .map(|e| (e.key, e.refused))
            .collect()
    }

    /// Cap, refusals as (key, times), expected (key, count) heaviest first.
    type Case = (usize, &'static [(u64, u64)], &'static [(u32, u64)]);

    #[test]
    fn exact_below_cap_table() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (10, &[], &[]),
            (10, &[(1, 1)], &[(1, 1)]),
            (10, &[(1, 3), (2, 5), (3, 1)], &[(2, 5), (1, 3), (3, 1)]),
            (3, &[(1, 3), (2, 5), (3, 1)], &[(2, 5), (1, 3), (3, 1)]),
            (1, &[(7, 9)], &[(7, 9)]),
        ];
        for (cap, refusals, want) in cases {
            let mut t = TopRefusals::new(*cap, Duration::from_secs(60));
            feed(&mut t, refusals, SEC);
            let want: Vec<(TopKey, u64)> = want.iter().map(|&(k, n)| (TopKey::V4(k), n)).collect();
            assert_eq!(counts(&mut t, SEC), want, "cap {cap} {refusals:?}");
        }
    }

    #[test]
    fn over_cap_the_smallest_counter_changes_hands() {
        let mut t = TopRefusals::new(2, Duration::from_secs(60));
        feed(&mut t, &[(1, 5), (2, 2), (3, 1)], SEC);
        // 3 took 2's counter: 2 + 1, an overestimate by at most refusals/cap.
        assert_eq!(
            counts(&mut t, SEC),
            vec![(TopKey::V4(1), 5), (TopKey::V4(3), 3)]
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn window_slides_by_halves() {
        let w = Duration::from_secs(60);
        let mut t = TopRefusals::new(10, w);
        t.refuse(1, || user("alice"), 10 * SEC);
        t.refuse(2, || user("bob"), 40 * SEC);
        // 40 s: second half, alice is in the previous one: both listed.
        assert_eq!(t.top(10, 40 * SEC).len(), 2);
        // 70 s: alice's half is gone, bob's is the previous one.
        let now = 70 * SEC;
        assert_eq!(counts(&mut t, now), vec![(user("bob"), 1)]);
        // Quiet for a whole window: nothing left.
        assert!(t.top(10, 200 * SEC).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn admissions_count_only_for_held_keys() {
        let mut t = TopRefusals::new(10, Duration::from_secs(60));
        t.admit(1, SEC);
        assert!(t.is_empty(), "an admission never inserts");
        t.refuse(1, || TopKey::Global, SEC);
        t.admit(1, SEC);
        t.admit(1, SEC);
        let top = t.top(1, SEC);
        assert_eq!((top[0].refused, top[0].admitted), (1, 2));
        assert_eq!(top[0].key.render(64), "global");
    }

    #[test]
    fn rendering_table() {
        let cases = [
            (TopKey::V4(0xc000_0201), 64, "192.0.2.1"),
            (TopKey::V6(0x2001_0db8 << 96), 64, "2001:db8::/64"),
            (
                TopKey::V6(0x2001_0db8_0000_0001 << 64),
                56,
                "2001:db8:0:1::/56",
            ),
            (user("user-7"), 64, "user-7"),
            (TopKey::Global, 64, "global"),
        ];
        for (k, prefix, want) in cases {
            assert_eq!(k.render(prefix), want);
        }
    }

    /// 10^6 distinct keys once each, plus heavy hitters over 1 % of all refusals: every
    /// heavy hitter is listed, its count off by at most refusals/cap, and memory stays at
    /// the cap.
    #[test]
    fn flood_of_a_million_distinct_keys_keeps_the_heavy_hitters() {
        let cap = 100;
        let mut t = TopRefusals::new(cap, Duration::from_secs(300));
        // Heavy: (hash, refusals). 1.5 %, 1.2 % and 5 % of ~1.08·10^6.
        let heavy = [
            (u64::MAX - 1, 16_000u64),
            (u64::MAX - 2, 13_000),
            (u64::MAX - 3, 54_000),
        ];
        let total = 1_000_000 + heavy.iter().map(|h| h.1).sum::<u64>();
        let mut sent = [0u64; 3];
        for i in 0..1_000_000u64 {
            t.refuse(i + 1, || TopKey::V4(i as u32), SEC + i);
            // The heavy hitters spread evenly through the flood.
            for (j, &(h, n)) in heavy.iter().enumerate() {
                while sent[j] < n * (i + 1) / 1_000_000 {
                    t.refuse(h, || TopKey::V4(h as u32), SEC + i);
                    sent[j] += 1;
                }
            }
            assert!(t.len() <= 2 * cap);
        }
        let top = t.top(cap, 2 * SEC);
        let bound = total / cap as u64;
        for &(h, n) in &heavy {
            let got = top
                .iter()
                .find(|e| e.key == TopKey::V4(h as u32))
                .unwrap_or_else(|| panic!("heavy key {h} missing"));
            assert!(
                got.refused >= n && got.refused - n <= bound,
                "{h}: {} vs {n} (bound {bound})",
                got.refused
            );
        }
        assert_eq!(top[0].key, TopKey::V4((u64::MAX - 3) as u32));
        assert!(t.len() <= 2 * cap);
        assert!(t.current.index.len() <= cap);
    }
}
