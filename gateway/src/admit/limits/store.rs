//! Bounded, sharded map from hashed client key to GCRA TAT (16 bytes per slot).
//!
//! Keys are 64-bit SipHash-1-3 digests under a random per-store 128-bit key (std
//! `RandomState`), so clients cannot aim collisions at a chosen bucket. Among n tracked
//! keys the chance of any collision is about n²/2^65 (≈ 3·10^-8 at 10^6 keys); a collision
//! only merges two clients' buckets. Hash value 0 marks an empty slot and is remapped to 1.
//!
//! Bounding: each shard holds at most its share of `max_keys`. A new key at the cap first
//! displaces entries whose TAT <= now (full buckets, so forgetting them is exact): by a
//! full purge, rationed to once per cap/4 inserts so it stays amortised O(1), or else by
//! the eviction scan, which takes the first full bucket it meets. Only if the scanned
//! sample (up to `SAMPLE` entries) holds no full bucket is the entry with the smallest TAT
//! (the one closest to full) evicted. An evicted active key fails open: it next appears
//! with a fresh, full bucket (at most one extra burst).
//! Only such lossy evictions are counted.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Occupied slots examined, at most, to find an eviction victim at the cap. Large enough
/// that a shard still holding idle entries almost surely yields one (miss chance is
/// active_fraction^24), small enough to stay a few cache lines of sequential reads.
const SAMPLE: usize = 24;
/// Shards are never smaller than this (unless `max_keys` is), so the split stays even.
const MIN_SHARD_KEYS: usize = 1024;
const MAX_SHARDS: usize = 64;
/// Smallest table allocation, in slots.
const MIN_SLOTS: usize = 16;

pub struct Store {
    seed: RandomState,
    shards: Box<[Shard]>,
    max_keys: usize,
    evictions: AtomicU64,
}

// Own cache line per shard so two cores locking neighbours do not false-share.
#[repr(align(64))]
struct Shard(Mutex<Table>);

impl Store {
    pub fn new(max_keys: usize) -> Store {
        Store::with_seed(max_keys, RandomState::new())
    }

    fn with_seed(max_keys: usize, seed: RandomState) -> Store {
        let max_keys = max_keys.max(1);
        let n = (max_keys / MIN_SHARD_KEYS).clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|i| {
                // Split exactly: the first `max_keys % n` shards take one extra key.
                let cap = max_keys / n + usize::from(i < max_keys % n);
                Shard(Mutex::new(Table::new(cap)))
            })
            .collect();
        Store {
            seed,
            shards,
            max_keys,
            evictions: AtomicU64::new(0),
        }
    }

    /// A store with a new cap holding this one's entries (same seed, so hashes stay valid).
    /// Used on reload when `max_keys` changes; entries over the new cap are evicted.
    pub fn resized(&self, max_keys: usize, now: u64) -> Store {
        let new = Store::with_seed(max_keys, self.seed.clone());
        for shard in self.shards.iter() {
            let entries: Vec<(u64, u64)> = lock(shard).entries().collect();
            for (key, tat) in entries {
                new.update(key, now, |_| ((), Some(tat)));
            }
        }
        new.evictions.fetch_add(self.evictions(), Ordering::Relaxed);
        new
    }

    /// The keyed 64-bit digest of a client key. Never 0.
    pub fn hash_key<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.seed.hash_one(key).max(1)
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Stored TAT for `key`, 0 if unknown. Read-only.
    pub fn peek(&self, key: u64) -> u64 {
        lock(self.shard(key)).get(key)
    }

    /// Atomically read the TAT (0 if unknown), let `f` decide, and store `Some(tat)`.
    /// The shard lock is held only for this call; `f` must be quick and must not block.
    pub fn update<R>(&self, key: u64, now: u64, f: impl FnOnce(u64) -> (R, Option<u64>)) -> R {
        let mut table = lock(self.shard(key));
        let slot = table.find(key);
        let tat = slot.map_or(0, |i| table.slots[i].tat);
        let (result, new_tat) = f(tat);
        if let Some(new_tat) = new_tat {
            match slot {
                Some(i) => table.slots[i].tat = new_tat,
                None => {
                    if table.insert(key, new_tat, now) {
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        result
    }

    /// Tracked keys (includes full-bucket keys not yet purged).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Active keys forgotten at the cap (each may have got one extra burst).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Bytes held by the tables (slots only; excludes the fixed per-shard overhead).
    pub fn table_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).slots.len() * std::mem::size_of::<Slot>())
            .sum()
    }

    fn shard(&self, key: u64) -> &Shard {
        // High 32 bits pick the shard; the table indexes with the low 32, so they are independent.
        let i = ((key >> 32) * self.shards.len() as u64) >> 32;
        &self.shards[i as usize]
    }
}

/// A poisoned shard only means a panic elsewhere mid-update; TATs are always valid u64s.
fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, Table> {
    shard.0.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64, // 0 = empty
    tat: u64,
}

/// Linear-probing open-addressing table with backward-shift deletion. Hand-rolled (rather
/// than `HashMap`) because eviction needs a random sample and the slot array gives one.
struct Table {
    slots: Vec<Slot>,
    len: usize,
    cap: usize,
    /// Inserts since the last purge; purging rescans the table, so it is rationed.
    since_purge: usize,
}

impl Table {
    fn new(cap: usize) -> Table {
        Table {
            slots: vec![Slot::default(); MIN_SLOTS.min(slots_for(cap))],
            len: 0,
            cap,
            since_purge: 0,
        }
    }

    fn home(&self, key: u64) -> usize {
        (((key & 0xffff_ffff) * self.slots.len() as u64) >> 32) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        let mut i = self.home(key);
        loop {
            match self.slots[i].key {
                k if k == key => return Some(i),
                0 => return None,
                _ => i = self.next(i),
            }
        }
    }

    fn get(&self, key: u64) -> u64 {
        self.find(key).map_or(0, |i| self.slots[i].tat)
    }

    fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != 0)
            .map(|s| (s.key, s.tat))
    }

    /// Inserts an absent key, making room first. Returns true if an active key was evicted.
    fn insert(&mut self, key: u64, tat: u64, now: u64) -> bool {
        self.since_purge += 1;
        let mut evicted = false;
        if self.len >= self.cap || self.len + 1 > max_load(self.slots.len()) {
            // Purge when it can pay for itself: at most once per cap/4 inserts, which makes
            // the O(table) scan O(1) amortised per insert.
            if self.since_purge >= (self.cap / 4).max(1) {
                self.purge(now);
            }
            if self.len >= self.cap {
                evicted = self.evict_sampled(key, now);
            } else if self.len + 1 > max_load(self.slots.len()) {
                self.resize(slots_for(self.cap).min(self.slots.len() * 2));
            }
        }
        self.place(key, tat);
        evicted
    }

    fn place(&mut self, key: u64, tat: u64) {
        let mut i = self.home(key);
        while self.slots[i].key != 0 {
            i = self.next(i);
        }
        self.slots[i] = Slot { key, tat };
        self.len += 1;
    }

    /// Drops full buckets (TAT <= now): lossless. Also shrinks the table after a flood.
    fn purge(&mut self, now: u64) {
        self.since_purge = 0;
        let live = self
            .slots
            .iter()
            .filter(|s| s.key != 0 && s.tat > now)
            .count();
        let size = slots_for(self.cap).min(slots_for(live * 2).max(MIN_SLOTS));
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        self.len = 0;
        for s in old.into_iter().filter(|s| s.key != 0 && s.tat > now) {
            self.place(s.key, s.tat);
        }
    }

    fn resize(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        self.len = 0;
        for s in old.into_iter().filter(|s| s.key != 0) {
            self.place(s.key, s.tat);
        }
    }

    /// Makes room at the cap: scans up to `SAMPLE` occupied slots from a position the client
    /// cannot predict (derived from the keyed hash), dropping the first full bucket found
    /// (lossless) or else the smallest TAT seen. True if the victim was still active.
    fn evict_sampled(&mut self, salt: u64, now: u64) -> bool {
        let mut i = (salt.rotate_left(21) % self.slots.len() as u64) as usize;
        let mut victim: Option<usize> = None;
        let mut seen = 0;
        while seen < SAMPLE.min(self.len) {
            let slot = self.slots[i];
            if slot.key != 0 {
                seen += 1;
                if victim.is_none_or(|v| slot.tat < self.slots[v].tat) {
                    victim = Some(i);
                }
                if slot.tat <= now {
                    break;
                }
            }
            i = self.next(i);
        }
        let Some(v) = victim else { return false };
        let active = self.slots[v].tat > now;
        self.remove(v);
        active
    }

    /// Backward-shift deletion: keeps every probe chain gap-free without tombstones.
    fn remove(&mut self, mut hole: usize) {
        let n = self.slots.len();
        let mut j = hole;
        loop {
            j = self.next(j);
            let key = self.slots[j].key;
            if key == 0 {
                break;
            }
            // Move j back into the hole unless its home lies cyclically in (hole, j].
            let home = self.home(key);
            if (j + n - home) % n >= (j + n - hole) % n {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }
}

/// Most keys a table of `slots` holds: 3/4 load keeps linear probes short.
fn max_load(slots: usize) -> usize {
    slots / 4 * 3 + slots % 4 * 3 / 4
}

/// Slots needed to hold `keys` within `max_load`, plus one so a probe always ends.
fn slots_for(keys: usize) -> usize {
    (keys * 4).div_ceil(3) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// Insert-or-overwrite, as an allowed request would.
    fn put(s: &Store, key: u64, tat: u64, now: u64) {
        s.update(key, now, |_| ((), Some(tat)));
    }

    #[test]
    fn get_update_and_fresh_keys_read_zero() {
        let s = Store::new(100);
        let k = s.hash_key("a");
        assert_ne!(k, 0);
        assert_eq!(s.peek(k), 0);
        put(&s, k, 42, 0);
        assert_eq!(s.peek(k), 42);
        // Returning None leaves state alone (a rejected request).
        let seen = s.update(k, 0, |tat| (tat, None));
        assert_eq!(seen, 42);
        assert_eq!(s.peek(k), 42);
        assert_eq!(s.len(), 1);
        assert_ne!(
            s.hash_key("a"),
            Store::new(100).hash_key("a"),
            "seeds differ"
        );
    }

    #[test]
    fn table_survives_heavy_churn_with_removals() {
        // Small caps force many evictions through backward-shift deletion; every key still
        // present must stay findable.
        let s = Store::new(50);
        let now = 10 * SEC;
        let mut live = std::collections::HashMap::new();
        for i in 0..20_000u64 {
            let k = s.hash_key(&i);
            put(&s, k, now + 1 + i, now);
            live.insert(k, now + 1 + i);
        }
        assert_eq!(s.len(), 50);
        let mut found = 0;
        for (k, tat) in &live {
            let got = s.peek(*k);
            if got != 0 {
                assert_eq!(got, *tat);
                found += 1;
            }
        }
        assert_eq!(found, 50);
    }

    #[test]
    fn cap_respected_under_flood_of_a_million_keys() {
        let cap = 10_000;
        let s = Store::new(cap);
        let now = 100 * SEC;
        for i in 0..1_000_000u64 {
            // Every key active (TAT in the future): nothing can be purged losslessly.
            put(&s, s.hash_key(&i), now + SEC + i, now);
            if i % 1_000 == 0 {
                assert!(s.len() <= cap, "len {} at {i}", s.len());
            }
        }
        assert_eq!(s.len(), cap);
        assert_eq!(s.evictions(), 1_000_000 - cap as u64);
        let bytes = s.table_bytes() as f64 / cap as f64;
        assert!(bytes < 24.0, "{bytes} bytes/key at cap");
    }

    #[test]
    fn eviction_prefers_nearest_to_full() {
        // One shard, cap 8 (<= SAMPLE): the sample covers every entry, so the victim is
        // exactly the minimum TAT.
        let s = Store::new(8);
        let now = SEC;
        for i in 0..8u64 {
            put(&s, s.hash_key(&i), now + (i + 1) * 1_000, now);
        }
        put(&s, s.hash_key(&100u64), now + 50_000, now);
        assert_eq!(s.peek(s.hash_key(&0u64)), 0, "smallest TAT evicted");
        for i in 1..8u64 {
            assert_ne!(s.peek(s.hash_key(&i)), 0);
        }
        assert_eq!(s.evictions(), 1);
    }

    #[test]
    fn idle_keys_are_purged_losslessly_first() {
        let cap = 10_000;
        let s = Store::new(cap);
        let t0 = 100 * SEC;
        for i in 0..cap as u64 {
            put(&s, s.hash_key(&i), t0 + SEC, t0);
        }
        // Shards fill unevenly, so a few active keys may already have been evicted.
        assert!(s.len() <= cap && s.len() > cap * 9 / 10, "{}", s.len());
        let before = s.evictions();
        // Later all those buckets are full again; a new wave replaces them without loss.
        let t1 = t0 + 2 * SEC;
        let wave = cap as u64 / 2;
        for i in 0..wave {
            put(&s, s.hash_key(&(i + 1_000_000)), t1 + SEC, t1);
        }
        assert_eq!(s.evictions(), before, "only idle keys were dropped");
        assert!(s.len() <= cap);
        let kept = (0..wave)
            .filter(|i| s.peek(s.hash_key(&(i + 1_000_000))) != 0)
            .count();
        assert_eq!(kept as u64, wave, "every new key is tracked");
    }

    #[test]
    fn purge_shrinks_after_a_flood() {
        let s = Store::new(100_000);
        let t0 = SEC;
        for i in 0..100_000u64 {
            put(&s, s.hash_key(&i), t0 + SEC, t0);
        }
        let big = s.table_bytes();
        let before = s.evictions();
        // Flood over; a trickle of new keys at the cap purges the idle ones and shrinks.
        let t1 = t0 + 10 * SEC;
        for i in 0..30_000u64 {
            put(&s, s.hash_key(&(i + 1_000_000)), t1 + SEC, t1);
        }
        assert_eq!(s.evictions(), before);
        assert!(
            s.table_bytes() < big * 3 / 4,
            "{} vs {big}",
            s.table_bytes()
        );
    }

    #[test]
    fn resized_keeps_entries_and_seed() {
        let s = Store::new(1_000);
        for i in 0..500u64 {
            put(&s, s.hash_key(&i), 10 * SEC, SEC);
        }
        let bigger = s.resized(5_000, SEC);
        assert_eq!(bigger.len(), 500);
        assert_eq!(bigger.hash_key(&7u64), s.hash_key(&7u64));
        assert_eq!(bigger.peek(bigger.hash_key(&7u64)), 10 * SEC);
        let smaller = s.resized(100, SEC);
        assert_eq!(smaller.len(), 100);
        assert_eq!(smaller.evictions(), 400);
    }

    #[test]
    fn capacity_math() {
        for slots in 1..200 {
            assert!(max_load(slots) < slots);
        }
        for keys in 1..10_000 {
            assert!(max_load(slots_for(keys)) >= keys, "{keys}");
        }
    }
}
