//! One shared policy's local state: per key the local view of the shared TAT, the lease
//! (how much of the shared burst this replica may spend before it hears from Redis), the
//! hits not yet reported and the 128-bit key id. Pure and synchronous, time injected: the
//! sync loop (`sync.rs`) moves hits out with `take_dirty` and corrects with `apply_reply`,
//! and the model test drives the very same functions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntCounter;

use super::config::{OnUnavailable, SharedMode};
use super::keys::{self, ClientId};
use super::metrics::SharedMetrics;
use super::Engine;
use crate::admit::limits::gcra::{Decision, Gcra};
use crate::admit::limits::policy::PolicyConfig;

const SHARDS: usize = 16;
/// Entries scanned for a victim when a shard is at its cap.
const EVICT_SAMPLE: usize = 8;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    id: u128,
    /// Local view of the shared TAT (ns, this process's monotonic clock).
    tat: u64,
    /// Lease: how far past now the TAT may go before this replica must hear from Redis.
    tol: u64,
    /// Free burst this lease granted; a flush is due when half of it is used.
    share: u64,
    /// When the lease was granted (0 = never).
    leased_at: u64,
    /// Hits admitted here and not yet sent.
    pending: u32,
    /// Hits in the flush now in flight.
    inflight: u32,
    /// Listed in its shard's dirty list.
    dirty: bool,
    /// `shared: exact` only: the degraded-share bucket used when Redis can't confirm.
    fallback_tat: u64,
    /// The last reply from Redis for this key: when (local ns) and the TAT it implied.
    heard_at: u64,
    heard_tat: u64,
}

impl Entry {
    /// A full bucket with no lease and nothing to send; keeps the id and the flush
    /// bookkeeping (the dirty list and an in-flight reply still point at it).
    fn cleared(&self) -> Entry {
        Entry {
            id: self.id,
            dirty: self.dirty,
            inflight: self.inflight,
            ..Entry::default()
        }
    }
}

/// One key as this replica sees it, for the admin port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyView {
    /// Local view of the shared TAT.
    pub tat: u64,
    /// When Redis last answered for this key (local monotonic ns; 0 = never) and the TAT
    /// its answer implied.
    pub heard_at: u64,
    pub heard_tat: u64,
}

/// Keys are already keyed 64-bit hashes (`Store::hash_key`): hashing them again is waste.
#[derive(Default)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Entries = HashMap<u64, Entry, std::hash::BuildHasherDefault<PreHashed>>;

struct Shard {
    entries: Entries,
    dirty: Vec<u64>,
}

/// Hits of one key on their way to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushItem {
    pub hash: u64,
    pub id: u128,
    pub hits: u32,
}

/// What the local check decided, and whether the caller must confirm with Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalDecision {
    pub decision: Decision,
    /// `shared: exact` with Redis in sync: allowed locally, Redis has the last word.
    pub confirm: bool,
    /// Pending hits reached half the lease: flush now rather than at the next tick.
    pub flush_now: bool,
}

pub struct SharedPolicy {
    pub name: Arc<str>,
    pub mode: SharedMode,
    pub on_unavailable: OnUnavailable,
    pub fingerprint: u32,
    pub gcra: Gcra,
    pub engine: Arc<Engine>,
    shards: Box<[Mutex<Shard>]>,
    max_keys_per_shard: usize,
    degraded_allowed: IntCounter,
    degraded_rejected: IntCounter,
}

impl std::fmt::Debug for SharedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPolicy")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic mid-update leaves plain integers behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedPolicy {
    pub fn new(p: &PolicyConfig, engine: Arc<Engine>, max_keys: usize) -> SharedPolicy {
        let mode = p.shared.unwrap_or(SharedMode::Sync);
        let on_unavailable = p.on_unavailable.unwrap_or(engine.on_unavailable);
        let m = SharedMetrics::get();
        SharedPolicy {
            name: Arc::from(p.name.as_str()),
            mode,
            on_unavailable,
            fingerprint: keys::policy_fingerprint(p),
            gcra: Gcra::new(p.rate, p.burst),
            engine,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: Entries::default(),
                        dirty: Vec::new(),
                    })
                })
                .collect(),
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            degraded_allowed: m
                .degraded_decisions
                .with_label_values(&[&p.name, "allowed"]),
            degraded_rejected: m
                .degraded_decisions
                .with_label_values(&[&p.name, "rejected"]),
        }
    }

    /// Same Redis state and the same local semantics: a reload may keep this policy.
    pub fn same_as(&self, p: &PolicyConfig, engine: &Arc<Engine>) -> bool {
        Arc::ptr_eq(&self.engine, engine)
            && self.fingerprint == keys::policy_fingerprint(p)
            && self.mode == p.shared.unwrap_or(SharedMode::Sync)
            && self.on_unavailable == p.on_unavailable.unwrap_or(engine.on_unavailable)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Middle bits: the table itself uses the low bits (index) and the top 7 (tags).
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    pub fn key_id(&self, client: ClientId) -> u128 {
        keys::key_id(&self.engine.secret, self.fingerprint, client)
    }

    pub fn redis_key(&self, id: u128) -> String {
        keys::redis_key(&self.engine.key_prefix, self.fingerprint, id)
    }

    /// Bucket used locally while degraded in `share`: rate R/n and burst B/n (at least 1).
    fn share_gcra(&self, n: u32) -> Gcra {
        let n = n.max(1);
        Gcra::from_interval(
            self.gcra.interval_ns().saturating_mul(u64::from(n)),
            (self.gcra.burst() / n).max(1),
        )
    }

    /// Lease from a shared view `ahead` ns past now: the TAT may go up to `ahead` plus
    /// 1/n of the free burst (at least one request), never past the whole burst.
    fn lease(&self, ahead: u64, n: u32) -> (u64, u64) {
        let tau = self.gcra.tolerance_ns();
        let t_e = self.gcra.interval_ns();
        if ahead >= tau {
            return (tau, 0);
        }
        let share = ((tau - ahead) / u64::from(n.max(1))).max(t_e);
        let tol = (ahead + share).min(tau);
        (tol, tol - ahead)
    }

    /// Decides one request at `now` without charging (the multi-policy look-ahead).
    pub fn peek(&self, hash: u64, now: u64) -> bool {
        let e = lock(self.shard(hash))
            .entries
            .get(&hash)
            .copied()
            .unwrap_or_default();
        if self.mode == SharedMode::Exact {
            return self.gcra.check(e.tat, now).0.allowed;
        }
        if self.engine.is_healthy() {
            let tol = if e.leased_at == 0 {
                self.lease(e.tat.saturating_sub(now), self.engine.replicas())
                    .0
            } else {
                e.tol
            };
            return self.gcra.check_within(e.tat, now, tol).0.allowed;
        }
        match self.on_unavailable {
            OnUnavailable::Share => {
                self.share_gcra(self.engine.replicas())
                    .check(e.tat, now)
                    .0
                    .allowed
            }
            OnUnavailable::Full => self.gcra.check(e.tat, now).0.allowed,
            OnUnavailable::Deny => false,
        }
    }

    /// Decides and charges one request. `id` computes the key id (only for a new key).
    pub fn check(&self, hash: u64, now: u64, id: impl FnOnce() -> u128) -> LocalDecision {
        let healthy = self.engine.is_healthy();
        let n = self.engine.replicas();
        let mut guard = lock(self.shard(hash));
        let shard = &mut *guard;
        if !shard.entries.contains_key(&hash) {
            self.make_room(shard, now);
            shard.entries.insert(
                hash,
                Entry {
                    id: id(),
                    ..Entry::default()
                },
            );
        }
        let e = shard.entries.get_mut(&hash).expect("just inserted");
        let mut out = LocalDecision {
            decision: Decision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
                next_after: Duration::ZERO,
            },
            confirm: false,
            flush_now: false,
        };
        if self.mode == SharedMode::Exact {
            // Local pre-check at the whole limit; a local "no" costs no Redis call.
            let (d, new) = self.gcra.check(e.tat, now);
            out.decision = d;
            if let Some(t) = new {
                e.tat = t;
                if healthy && !self.engine.exact_tripped() {
                    out.confirm = true;
                } else {
                    drop(guard);
                    let fb = self.fallback(hash, now, d, "down");
                    out.decision = fb;
                }
            }
            return out;
        }
        if healthy {
            let lease_ttl = self.engine.lease_ttl_ns();
            if e.leased_at == 0 || (e.inflight == 0 && now.saturating_sub(e.leased_at) > lease_ttl)
            {
                // No fresh word from Redis: take 1/n of what the local view says is free.
                let (tol, share) = self.lease(e.tat.saturating_sub(now), n);
                e.tol = tol;
                e.share = share;
                e.leased_at = now.max(1);
            }
            let (d, new) = self.gcra.check_within(e.tat, now, e.tol);
            out.decision = d;
            if let Some(t) = new {
                e.tat = t;
                e.pending += 1;
                if !e.dirty {
                    e.dirty = true;
                    shard.dirty.push(hash);
                }
                let used = u64::from(e.pending) * self.gcra.interval_ns();
                // No share (bucket at its limit, admitting only by refill): the tick will do.
                if e.inflight == 0 && e.share > 0 && used * 2 >= e.share {
                    out.flush_now = true;
                }
            }
            return out;
        }
        // Degraded: decide locally per on_unavailable; nothing is queued for Redis.
        let (d, new) = match self.on_unavailable {
            OnUnavailable::Share => self.share_gcra(n).check(e.tat, now),
            OnUnavailable::Full => self.gcra.check(e.tat, now),
            OnUnavailable::Deny => (deny_decision(), None),
        };
        if let Some(t) = new {
            e.tat = t;
        }
        drop(guard);
        self.count_degraded(d.allowed);
        out.decision = d;
        out
    }

    fn count_degraded(&self, allowed: bool) {
        if allowed {
            self.degraded_allowed.inc();
            SharedMetrics::get().dropped("down", 1);
        } else {
            self.degraded_rejected.inc();
        }
    }

    /// `shared: exact` without Redis's word (`reason`: timeout, error, down): decide per
    /// `on_unavailable`. `local` is the pre-check's decision (charged at the whole limit).
    pub fn fallback(&self, hash: u64, now: u64, local: Decision, reason: &'static str) -> Decision {
        SharedMetrics::get()
            .exact_fallbacks
            .with_label_values(&[&self.name, reason])
            .inc();
        let d = match self.on_unavailable {
            OnUnavailable::Full => local,
            OnUnavailable::Deny => deny_decision(),
            OnUnavailable::Share => {
                let g = self.share_gcra(self.engine.replicas());
                let mut shard = lock(self.shard(hash));
                match shard.entries.get_mut(&hash) {
                    Some(e) => {
                        let (d, new) = g.check(e.fallback_tat, now);
                        if let Some(t) = new {
                            e.fallback_tat = t;
                        }
                        d
                    }
                    None => g.check(0, now).0,
                }
            }
        };
        self.count_degraded(d.allowed);
        d
    }

    /// Makes room for one more entry at the cap: drops a refilled, quiet entry if the
    /// sample has one, else the one nearest to full (its unsent hits are counted).
    fn make_room(&self, shard: &mut Shard, now: u64) {
        if shard.entries.len() < self.max_keys_per_shard {
            return;
        }
        let victim = shard
            .entries
            .iter()
            .take(EVICT_SAMPLE)
            .min_by_key(|(_, e)| (e.pending + e.inflight > 0, e.tat.max(now)))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            if let Some(e) = shard.entries.remove(&k) {
                SharedMetrics::get().dropped("evicted", u64::from(e.pending));
            }
        }
    }

    /// Moves every dirty key's pending hits into a flush. `max` bounds the batch; keys
    /// beyond it stay dirty for the next flush.
    pub fn take_dirty(&self, max: usize) -> Vec<FlushItem> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            if out.len() >= max {
                break;
            }
            let mut guard = lock(s);
            let shard = &mut *guard;
            let take = (max - out.len()).min(shard.dirty.len());
            let rest = shard.dirty.split_off(take);
            let keys = std::mem::replace(&mut shard.dirty, rest);
            for hash in keys {
                let Some(e) = shard.entries.get_mut(&hash) else {
                    continue;
                };
                e.dirty = false;
                if e.pending == 0 || e.inflight > 0 {
                    // In flight already: stays for the flush after the reply.
                    if e.pending > 0 {
                        e.dirty = true;
                        shard.dirty.push(hash);
                    }
                    continue;
                }
                e.inflight = e.pending;
                e.pending = 0;
                out.push(FlushItem {
                    hash,
                    id: e.id,
                    hits: e.inflight,
                });
            }
        }
        out
    }

    /// Whether any key waits for a flush.
    pub fn has_dirty(&self) -> bool {
        self.shards.iter().any(|s| !lock(s).dirty.is_empty())
    }

    /// Redis answered: the shared TAT is `ahead` ns past `t_exec` (local time at which the
    /// script ran, estimated as the midpoint of the round trip). Hits admitted here since
    /// the send are not in that figure, so they go on top. Never moves the TAT back.
    /// Returns true when the new lease is already half used (flush again soon).
    pub fn apply_reply(&self, item: &FlushItem, ahead: u64, t_exec: u64) -> bool {
        let n = self.engine.replicas();
        let mut shard = lock(self.shard(item.hash));
        let Some(e) = shard.entries.get_mut(&item.hash) else {
            return false;
        };
        e.inflight = e.inflight.saturating_sub(item.hits);
        let view = t_exec
            .saturating_add(ahead)
            .saturating_add(u64::from(e.pending) * self.gcra.interval_ns());
        e.tat = e.tat.max(view);
        e.heard_at = t_exec.max(1);
        e.heard_tat = t_exec.saturating_add(ahead);
        let (tol, share) = self.lease(ahead, n);
        e.tol = tol;
        e.share = share;
        e.leased_at = t_exec.max(1);
        let used = u64::from(e.pending) * self.gcra.interval_ns();
        e.pending > 0 && share > 0 && used * 2 >= share
    }

    /// A flush failed after it was sent (timeout): its hits are not retried, since the
    /// script has probably run and a retry would charge them twice.
    pub fn forget_inflight(&self, item: &FlushItem) {
        let mut shard = lock(self.shard(item.hash));
        if let Some(e) = shard.entries.get_mut(&item.hash) {
            e.inflight = e.inflight.saturating_sub(item.hits);
        }
    }

    /// A flush that never reached Redis: its hits go back to pending.
    pub fn requeue(&self, item: &FlushItem) {
        let mut guard = lock(self.shard(item.hash));
        let shard = &mut *guard;
        if let Some(e) = shard.entries.get_mut(&item.hash) {
            e.inflight = e.inflight.saturating_sub(item.hits);
            e.pending = e.pending.saturating_add(item.hits);
            if !e.dirty {
                e.dirty = true;
                shard.dirty.push(item.hash);
            }
        }
    }

    /// Degraded: unsent hits are dropped (never replayed); returns how many.
    pub fn drop_pending(&self) -> u64 {
        let mut dropped = 0u64;
        for s in self.shards.iter() {
            let mut guard = lock(s);
            let shard = &mut *guard;
            for hash in std::mem::take(&mut shard.dirty) {
                if let Some(e) = shard.entries.get_mut(&hash) {
                    dropped += u64::from(e.pending);
                    e.pending = 0;
                    e.dirty = false;
                }
            }
        }
        dropped
    }

    /// Drops quiet entries whose bucket is full again and whose lease is stale: lossless.
    pub fn purge(&self, now: u64) {
        let ttl = self.engine.lease_ttl_ns();
        for s in self.shards.iter() {
            lock(s).entries.retain(|_, e| {
                e.pending > 0
                    || e.inflight > 0
                    || e.tat > now
                    || e.fallback_tat > now
                    || now.saturating_sub(e.leased_at) <= ttl
            });
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The admin view of a key; `None` if this replica does not track it.
    pub fn view(&self, hash: u64) -> Option<KeyView> {
        lock(self.shard(hash)).entries.get(&hash).map(|e| KeyView {
            tat: e.tat,
            heard_at: e.heard_at,
            heard_tat: e.heard_tat,
        })
    }

    /// An operator reset: the key's local bucket is full and its unsent hits are dropped
    /// (the caller clears Redis). Hits already in flight may still land in Redis.
    pub fn reset_local(&self, hash: u64) {
        if let Some(e) = lock(self.shard(hash)).entries.get_mut(&hash) {
            *e = e.cleared();
        }
    }

    /// Resets (as `reset_local`) the key whose Redis id is `id`, if tracked here: another
    /// replica reset it. A scan, but resets are rare operator actions.
    pub fn reset_id(&self, id: u128) -> bool {
        for s in self.shards.iter() {
            let mut guard = lock(s);
            if let Some(e) = guard.entries.values_mut().find(|e| e.id == id) {
                *e = e.cleared();
                return true;
            }
        }
        false
    }

    /// For tests and the admin view: the local TAT of a key (0 if unknown).
    pub fn local_tat(&self, hash: u64) -> u64 {
        lock(self.shard(hash))
            .entries
            .get(&hash)
            .map_or(0, |e| e.tat)
    }
}

fn deny_decision() -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        retry_after: Duration::from_secs(1),
        reset_after: Duration::from_secs(1),
        next_after: Duration::from_secs(1),
    }
}

impl Engine {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}
