//! Rate limiting: named GCRA policies keyed by client IP, user or globally.
//!
//! Pure and synchronous: callers pass request facts and a monotonic `now` in ns; the
//! `Verdict` says whether to reject and what to put in headers and metrics.
//!
//! A request is charged only if no enforcing policy rejects it, so a client that is over
//! one limit does not burn its (or everyone's) budget in the others.

pub mod gcra;
pub mod headers;
pub mod inspect;
pub mod policy;
pub mod rate;
pub mod shared;
pub mod store;
pub mod top;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;

use crate::admit::net::canonical_ip;

use gcra::Gcra;
pub use policy::{KeyKind, MatchConfig, Mode, PolicyConfig, RateLimitsConfig};
pub use rate::Rate;
use shared::keys::ClientId;
use shared::policy::SharedPolicy;
use shared::Engine;
use store::Store;
use top::{TopKey, TopRefusals};

/// What the limiter needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Normalised path (percent-decoding and dot-segment removal are the caller's job).
    pub path: &'a str,
    pub client_ip: IpAddr,
    /// Authenticated user id; `None` for anonymous requests.
    pub user: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// An enforcing policy rejected the request.
    Rejected,
    /// A shadow policy would have rejected it (`would_reject`); the request goes on.
    ShadowRejected,
}

impl Decision {
    /// `gateway_rate_limit_decisions_total{decision}`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Rejected => "rejected",
            Decision::ShadowRejected => "shadow_rejected",
        }
    }
}

/// A request's overall limit decision: the access log's `policy_decision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overall {
    Allowed,
    Rejected,
    /// Only a shadow policy said no.
    WouldReject,
}

impl Overall {
    pub const fn as_str(self) -> &'static str {
        match self {
            Overall::Allowed => "allowed",
            Overall::Rejected => "rejected",
            Overall::WouldReject => "would_reject",
        }
    }
}

/// One matching policy's view of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub policy: Arc<str>,
    pub mode: Mode,
    pub decision: Decision,
    pub remaining: u32,
    /// Quota advertised in headers: the burst.
    pub limit: u32,
    /// Seconds for an empty bucket to refill (headers' `w`).
    pub window_secs: u64,
    /// `RateLimit-Policy`'s value, built once per policy and config (it never changes).
    pub policy_value: HeaderValue,
    pub reset_after: Duration,
    /// Until one more request fits (the RateLimit header's `t`).
    pub next_after: Duration,
    /// Zero unless this policy said no.
    pub retry_after: Duration,
}

/// Outcome of `Limiter::check`. `outcomes` is a `Vec` in policy order, one entry per
/// matching policy (no allocation when nothing matches). When rejected, no policy was
/// charged; the other outcomes say what they would have decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub outcomes: Vec<PolicyOutcome>,
    /// Index into `outcomes` of the first enforcing policy that rejected.
    pub rejected_by: Option<usize>,
    /// Index into `outcomes` of the policy to show in response headers: the rejecting one,
    /// else the enforcing one with the least `remaining`. Shadow policies are never shown
    /// to clients.
    pub report: Option<usize>,
    /// `shared: exact` policies that allowed locally and need Redis's word: the caller
    /// awaits `shared::exact::confirm` (the only await a limit decision ever needs).
    pub confirm: Vec<shared::exact::Confirm>,
    /// The instant the limiter decided (its `now`, monotonic ns): logged so `gateway replay`
    /// can re-run the decisions on the same clock.
    pub at_ns: u64,
}

impl Verdict {
    /// Sets `report`: the rejecting policy, else the enforcing one with the least `remaining`.
    pub fn recompute_report(&mut self) {
        self.report = self.rejected_by.or_else(|| {
            (self.outcomes.iter().enumerate())
                .filter(|(_, o)| o.mode == Mode::Enforce)
                .min_by_key(|(_, o)| o.remaining)
                .map(|(i, _)| i)
        });
    }

    pub fn is_rejected(&self) -> bool {
        self.rejected_by.is_some()
    }

    pub fn rejection(&self) -> Option<&PolicyOutcome> {
        self.rejected_by.map(|i| &self.outcomes[i])
    }

    pub fn reported(&self) -> Option<&PolicyOutcome> {
        self.report.map(|i| &self.outcomes[i])
    }

    /// `None` when no policy matched.
    pub fn overall(&self) -> Option<Overall> {
        if self.is_rejected() {
            Some(Overall::Rejected)
        } else if self.would_reject().next().is_some() {
            Some(Overall::WouldReject)
        } else if self.outcomes.is_empty() {
            None
        } else {
            Some(Overall::Allowed)
        }
    }

    /// Names of shadow policies that would have rejected this request.
    pub fn would_reject(&self) -> impl Iterator<Item = &str> + '_ {
        self.outcomes
            .iter()
            .filter(|o| o.decision == Decision::ShadowRejected)
            .map(|o| &*o.policy)
    }
}

/// Per-policy numbers for gauges and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyStats {
    pub name: Arc<str>,
    pub mode: Mode,
    pub key: KeyKind,
    /// Tracked keys (a key whose bucket has refilled may linger until purged).
    pub active_keys: usize,
    pub max_keys: usize,
    /// Active keys dropped at the cap (monotonic; carried across reloads).
    pub evictions: u64,
}

struct Compiled {
    name: Arc<str>,
    config: PolicyConfig,
    gcra: Gcra,
    window_secs: u64,
    policy_value: HeaderValue,
    store: Arc<Store>,
    /// Set when the policy's state is shared through Redis (`shared: sync|exact`).
    shared: Option<Arc<SharedPolicy>>,
    /// The keys this policy refused most (`/limits/top`); touched on refusals only.
    top: Arc<Mutex<TopRefusals>>,
}

impl Compiled {
    /// Same bucket semantics, so existing state stays meaningful across a reload.
    fn same_buckets(&self, p: &PolicyConfig) -> bool {
        let c = &self.config;
        c.name == p.name && c.key == p.key && c.rate == p.rate && c.burst == p.burst
    }
}

/// The key of a client's bucket within one policy's store.
#[derive(Hash, Clone, Copy)]
enum BucketKey<'a> {
    V4(u32),
    V6(u128),
    User(&'a str),
    Global,
}

impl BucketKey<'_> {
    fn top_key(&self) -> TopKey {
        match *self {
            BucketKey::V4(a) => TopKey::V4(a),
            BucketKey::V6(a) => TopKey::V6(a),
            BucketKey::User(u) => TopKey::User(u.into()),
            BucketKey::Global => TopKey::Global,
        }
    }

    fn id(&self) -> ClientId<'_> {
        match *self {
            BucketKey::V4(a) => ClientId::V4(a),
            BucketKey::V6(a) => ClientId::V6(a),
            BucketKey::User(u) => ClientId::User(u),
            BucketKey::Global => ClientId::Global,
        }
    }
}

pub struct Limiter {
    policies: Vec<Compiled>,
    exempt: Vec<IpNet>,
    ipv6_prefix: u8,
}

impl Limiter {
    /// Expects a validated config; out-of-range numbers are clamped rather than panicking.
    pub fn new(cfg: &RateLimitsConfig) -> Limiter {
        Limiter::build(cfg, None, |_| None)
    }

    /// Like `new`/`reconfigure`, with policies shared through `engine` when it is set
    /// (every policy not marked `shared: local`). Shared state carries over a reload when
    /// the engine and the policy's fingerprint and mode are unchanged.
    pub fn with_shared(
        cfg: &RateLimitsConfig,
        engine: Option<&Arc<Engine>>,
        previous: Option<&Limiter>,
    ) -> Limiter {
        let Some(prev) = previous else {
            return Limiter::build(cfg, engine, |_| None);
        };
        let mut limiter = prev.reconfigure(cfg);
        let carried = |p: &PolicyConfig| {
            let engine = engine?;
            prev.policies
                .iter()
                .filter_map(|o| o.shared.as_ref())
                .find(|sp| sp.same_as(p, engine))
                .cloned()
        };
        for (c, p) in limiter.policies.iter_mut().zip(&cfg.policies) {
            c.shared = shared_for(p, engine, cfg.max_keys, carried);
        }
        limiter
    }

    /// The policies whose state is shared, for the sync loop.
    pub fn shared_policies(&self) -> Vec<Arc<SharedPolicy>> {
        self.policies
            .iter()
            .filter_map(|p| p.shared.clone())
            .collect()
    }

    /// Rebuild for a new config, carrying over the stores of policies whose name, key,
    /// rate and burst are unchanged (mode and match may change freely). If `max_keys`
    /// changed, carried state is copied into a store of the new size; requests that land
    /// in the old store during that copy are forgotten (fail open).
    pub fn reconfigure(&self, cfg: &RateLimitsConfig) -> Limiter {
        Limiter::build(cfg, None, |p| {
            let old = self.policies.iter().find(|o| o.same_buckets(p))?;
            Some(if old.store.max_keys() == cfg.max_keys.max(1) {
                Arc::clone(&old.store)
            } else {
                Arc::new(old.store.resized(cfg.max_keys, 0))
            })
        })
    }

    fn build(
        cfg: &RateLimitsConfig,
        engine: Option<&Arc<Engine>>,
        mut carry: impl FnMut(&PolicyConfig) -> Option<Arc<Store>>,
    ) -> Limiter {
        let policies = cfg
            .policies
            .iter()
            .map(|p| {
                let gcra = Gcra::new(p.rate, p.burst);
                let window_secs = headers::window_secs(gcra.burst(), gcra.emission_interval());
                Compiled {
                    name: Arc::from(p.name.as_str()),
                    config: p.clone(),
                    gcra,
                    window_secs,
                    policy_value: headers::policy_header_value(&p.name, gcra.burst(), window_secs),
                    store: carry(p).unwrap_or_else(|| Arc::new(Store::new(cfg.max_keys))),
                    shared: shared_for(p, engine, cfg.max_keys, |_| None),
                    top: Arc::default(),
                }
            })
            .collect();
        Limiter {
            policies,
            exempt: crate::admit::net::canonical_nets(&cfg.exempt),
            ipv6_prefix: cfg.ipv6_prefix.clamp(1, 128),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn check(&self, req: &RequestFacts, now_ns: u64) -> Verdict {
        let ip = canonical_ip(req.client_ip);
        // Computed lazily: most configs have few policies and exempt lists are short.
        let mut ip_key: Option<Option<BucketKey>> = None;
        let mut matched: Vec<(&Compiled, u64, BucketKey)> = Vec::new();
        for p in &self.policies {
            if !p.config.matcher.matches(req.method, req.path) {
                continue;
            }
            let key = match p.config.key {
                KeyKind::Ip => match ip_key.get_or_insert_with(|| self.ip_key(ip)) {
                    Some(BucketKey::V4(a)) => BucketKey::V4(*a),
                    Some(BucketKey::V6(a)) => BucketKey::V6(*a),
                    _ => continue, // exempt
                },
                KeyKind::User => match req.user {
                    Some(u) => BucketKey::User(u),
                    None => continue,
                },
                KeyKind::Global => BucketKey::Global,
            };
            // The policy name is hashed in too, so no two policies ever share a bucket
            // even if they were to share a store.
            let hash = p.store.hash_key(&(&*p.name, key));
            matched.push((p, hash, key));
        }

        // With several policies, look before charging: if an enforcing one would reject,
        // charge none of them.
        let mut dry_run = matched.len() > 1
            && matched.iter().any(|(p, k, _)| {
                p.config.mode == Mode::Enforce
                    && !match &p.shared {
                        Some(sp) => sp.peek(*k, now_ns),
                        None => p.gcra.check(p.store.peek(*k), now_ns).0.allowed,
                    }
            });

        let mut verdict = Verdict {
            outcomes: Vec::with_capacity(matched.len()),
            at_ns: now_ns,
            ..Verdict::default()
        };
        for (p, key, client) in matched {
            let d = match (&p.shared, dry_run) {
                (Some(sp), true) => {
                    let allowed = sp.peek(key, now_ns);
                    let mut d = p.gcra.check(sp.local_tat(key), now_ns).0;
                    d.allowed = allowed;
                    d
                }
                (Some(sp), false) => {
                    let local = sp.check(key, now_ns, || sp.key_id(client.id()));
                    if local.flush_now {
                        sp.engine.flush_signal.notify_one();
                    }
                    if local.confirm {
                        verdict.confirm.push(shared::exact::Confirm {
                            outcome: verdict.outcomes.len(),
                            policy: Arc::clone(sp),
                            mode: p.config.mode,
                            hash: key,
                            id: sp.key_id(client.id()),
                            local: local.decision,
                        });
                    }
                    local.decision
                }
                (None, true) => p.gcra.check(p.store.peek(key), now_ns).0,
                (None, false) => p.store.update(key, now_ns, |tat| p.gcra.check(tat, now_ns)),
            };
            let decision = match (d.allowed, p.config.mode) {
                (true, _) => Decision::Allowed,
                (false, Mode::Enforce) => Decision::Rejected,
                (false, Mode::Shadow) => Decision::ShadowRejected,
            };
            if decision != Decision::Allowed {
                p.record_refusal(key, client, now_ns);
            } else if d.remaining == 0 && !dry_run {
                // Emptied the bucket: a client at its limit (the only admissions counted).
                p.record_admission(key, now_ns);
            }
            if decision == Decision::Rejected && verdict.rejected_by.is_none() {
                verdict.rejected_by = Some(verdict.outcomes.len());
                // Lost a race with a concurrent request after the look-ahead: stop charging.
                dry_run = true;
            }
            verdict.outcomes.push(PolicyOutcome {
                policy: Arc::clone(&p.name),
                mode: p.config.mode,
                decision,
                remaining: d.remaining,
                limit: p.gcra.burst(),
                window_secs: p.window_secs,
                policy_value: p.policy_value.clone(),
                reset_after: d.reset_after,
                next_after: d.next_after,
                retry_after: d.retry_after,
            });
        }
        if verdict.rejected_by.is_some() {
            // Rejected locally: nothing to confirm.
            verdict.confirm.clear();
        }
        verdict.recompute_report();
        verdict
    }

    pub fn policies(&self) -> impl Iterator<Item = PolicyStats> + '_ {
        self.policies.iter().map(|p| PolicyStats {
            name: Arc::clone(&p.name),
            mode: p.config.mode,
            key: p.config.key,
            active_keys: p.shared.as_ref().map_or_else(|| p.store.len(), |s| s.len()),
            max_keys: p.store.max_keys(),
            evictions: p.store.evictions(),
        })
    }

    /// The client as per-IP policies see it (IPv4-mapped IPv6 as IPv4, IPv6 grouped by
    /// `ipv6_prefix`), for other per-client counters; `None` when `exempt`.
    pub fn client_group(&self, ip: IpAddr) -> Option<(u8, u128)> {
        match self.ip_key(canonical_ip(ip))? {
            BucketKey::V4(a) => Some((4, u128::from(a))),
            BucketKey::V6(a) => Some((6, a)),
            BucketKey::User(_) | BucketKey::Global => None,
        }
    }

    /// `None` when the client is exempt from per-IP policies.
    fn ip_key(&self, ip: IpAddr) -> Option<BucketKey<'static>> {
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        Some(match ip {
            IpAddr::V4(a) => BucketKey::V4(u32::from(a)),
            IpAddr::V6(a) => {
                // One subscriber usually gets a whole /64: group by prefix so rotating
                // addresses does not multiply the allowance.
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                BucketKey::V6(u128::from(a) & mask)
            }
        })
    }
}

/// The shared state for policy `p`: none without an engine or for `shared: local`; else
/// the carried one when `carry` has it, or a fresh one.
fn shared_for(
    p: &PolicyConfig,
    engine: Option<&Arc<Engine>>,
    max_keys: usize,
    carry: impl FnOnce(&PolicyConfig) -> Option<Arc<SharedPolicy>>,
) -> Option<Arc<SharedPolicy>> {
    let engine = engine?;
    if p.shared == Some(shared::config::SharedMode::Local) {
        return None;
    }
    Some(carry(p).unwrap_or_else(|| Arc::new(SharedPolicy::new(p, Arc::clone(engine), max_keys))))
}

#[cfg(test)]
mod tests;
