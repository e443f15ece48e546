//! What operators ask of the limiter (the admin port's `/limits` endpoints): describe the
//! policies, list the keys refused most, look at one key, give one key its burst back.
//! Pure and synchronous like the limiter; Redis work for shared policies is the caller's.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::shared::config::SharedMode;
use super::shared::policy::{KeyView, SharedPolicy};
use super::top::{TopEntry, TopRefusals};
use super::{BucketKey, Compiled, KeyKind, Limiter, Mode, Rate};

/// Longest user id accepted as a key (ids in tokens are far shorter).
const MAX_USER_KEY: usize = 256;

/// One policy as `/limits` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInfo {
    pub name: Arc<str>,
    pub key: KeyKind,
    pub rate: Rate,
    pub burst: u32,
    pub mode: Mode,
    /// `local` unless the policy's state is shared through Redis.
    pub shared: SharedMode,
    pub tracked_keys: usize,
}

/// Why a policy/key pair cannot be looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    UnknownPolicy,
    /// The key is not one this policy could track; the message says why.
    BadKey(&'static str),
}

/// A key's bucket now, without charging it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyState {
    /// Requests it may make right now.
    pub remaining: u32,
    /// Until its bucket is full again.
    pub reset_after: Duration,
    /// Until its next request fits (zero when `remaining > 0`).
    pub retry_after: Duration,
    /// Shared policies: this replica's last word from Redis.
    pub shared: Option<KeyView>,
}

/// A reset done here; for a shared policy the caller also clears Redis with these.
pub struct Reset {
    pub shared: Option<(Arc<SharedPolicy>, u128)>,
}

/// An owned, parsed key value; borrowed as the limiter's `BucketKey` to hash it.
enum Parsed<'a> {
    Ip(BucketKey<'static>),
    User(&'a str),
    Global,
}

fn lock(m: &Mutex<TopRefusals>) -> MutexGuard<'_, TopRefusals> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Compiled {
    pub(super) fn record_refusal(&self, hash: u64, client: BucketKey, now: u64) {
        lock(&self.top).refuse(hash, || client.top_key(), now);
    }

    pub(super) fn record_admission(&self, hash: u64, now: u64) {
        lock(&self.top).admit(hash, now);
    }
}

impl Limiter {
    /// Sizes every policy's top-refusals sketch; a policy whose buckets carried over from
    /// `previous` (same hashes) keeps its sketch when the size and window are unchanged.
    pub fn set_top(&mut self, cap: usize, window: Duration, previous: Option<&Limiter>) {
        for p in &mut self.policies {
            let carried = previous.and_then(|prev| {
                prev.policies
                    .iter()
                    .find(|o| Arc::ptr_eq(&o.store, &p.store) && o.same_buckets(&p.config))
                    .filter(|o| lock(&o.top).same_shape(cap, window))
                    .map(|o| Arc::clone(&o.top))
            });
            p.top = carried.unwrap_or_else(|| Arc::new(Mutex::new(TopRefusals::new(cap, window))));
        }
    }

    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    pub fn describe(&self) -> Vec<PolicyInfo> {
        self.policies
            .iter()
            .map(|p| PolicyInfo {
                name: Arc::clone(&p.name),
                key: p.config.key,
                rate: p.config.rate,
                burst: p.config.burst,
                mode: p.config.mode,
                shared: p.shared.as_ref().map_or(SharedMode::Local, |s| s.mode),
                tracked_keys: p.shared.as_ref().map_or_else(|| p.store.len(), |s| s.len()),
            })
            .collect()
    }

    pub fn has_policy(&self, name: &str) -> bool {
        self.policy(name).is_some()
    }

    fn policy(&self, name: &str) -> Option<&Compiled> {
        self.policies.iter().find(|p| &*p.name == name)
    }

    /// The `n` keys `policy` refused most within its window; `None` for an unknown policy.
    pub fn top(&self, policy: &str, n: usize, now: u64) -> Option<Vec<TopEntry>> {
        Some(lock(&self.policy(policy)?.top).top(n, now))
    }

    /// The bucket of `value` under `policy` at `now`, not charged.
    pub fn key_state(&self, policy: &str, value: &str, now: u64) -> Result<KeyState, LookupError> {
        let p = self.policy(policy).ok_or(LookupError::UnknownPolicy)?;
        let (hash, _) = self.hash(p, value)?;
        let (tat, shared) = match &p.shared {
            Some(sp) => {
                let view = sp.view(hash);
                (view.as_ref().map_or(0, |v| v.tat), view)
            }
            None => (p.store.peek(hash), None),
        };
        let (d, _) = p.gcra.check(tat, now);
        Ok(KeyState {
            // `check` answered for one more request: count it back.
            remaining: if d.allowed { d.remaining + 1 } else { 0 },
            reset_after: Duration::from_nanos(tat.saturating_sub(now)),
            retry_after: d.retry_after,
            shared,
        })
    }

    /// Gives `value` its full burst back under `policy` on this replica.
    pub fn reset(&self, policy: &str, value: &str, now: u64) -> Result<Reset, LookupError> {
        let p = self.policy(policy).ok_or(LookupError::UnknownPolicy)?;
        let (hash, client) = self.hash(p, value)?;
        // A zero TAT reads as a full bucket; an unknown key is left unknown.
        p.store
            .update(hash, now, |tat| ((), (tat != 0).then_some(0)));
        let shared = p.shared.as_ref().map(|sp| {
            sp.reset_local(hash);
            (Arc::clone(sp), sp.key_id(client.id()))
        });
        Ok(Reset { shared })
    }

    /// The policy's keyed hash of `value` and the client key it names.
    fn hash<'a>(&self, p: &Compiled, value: &'a str) -> Result<(u64, BucketKey<'a>), LookupError> {
        let client = match self.parse(p.config.key, value)? {
            Parsed::Ip(k) => k,
            Parsed::User(u) => BucketKey::User(u),
            Parsed::Global => BucketKey::Global,
        };
        Ok((p.store.hash_key(&(&*p.name, client)), client))
    }

    fn parse<'a>(&self, kind: KeyKind, value: &'a str) -> Result<Parsed<'a>, LookupError> {
        if value.contains('*') {
            return Err(LookupError::BadKey("a key may not be a wildcard"));
        }
        match kind {
            KeyKind::Global if value == "global" => Ok(Parsed::Global),
            KeyKind::Global => Err(LookupError::BadKey("a global policy's key is \"global\"")),
            KeyKind::User => {
                let ok = !value.is_empty()
                    && value.len() <= MAX_USER_KEY
                    && !value.chars().any(char::is_control);
                if ok {
                    Ok(Parsed::User(value))
                } else {
                    Err(LookupError::BadKey(
                        "a user id is 1 to 256 characters without control characters",
                    ))
                }
            }
            KeyKind::Ip => {
                let bad = LookupError::BadKey(
                    "an ip policy's key is an IP address or, for IPv6, its ipv6_prefix network",
                );
                let (addr, prefix) = match value.split_once('/') {
                    Some((a, len)) => (a, Some(len.parse::<u8>().map_err(|_| bad.clone())?)),
                    None => (value, None),
                };
                let ip = crate::admit::net::canonical_ip(
                    addr.parse::<IpAddr>().map_err(|_| bad.clone())?,
                );
                if prefix.is_some_and(|len| !ip.is_ipv6() || len != self.ipv6_prefix) {
                    return Err(bad);
                }
                match self.ip_key(ip) {
                    Some(k) => Ok(Parsed::Ip(k)),
                    None => Err(LookupError::BadKey(
                        "this address is in rate_limits.exempt: no policy tracks it",
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::RequestFacts;
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(yaml: &str) -> Limiter {
        let cfg: super::super::RateLimitsConfig = serde_yaml::from_str(yaml).unwrap();
        cfg.validate().unwrap();
        let mut l = Limiter::new(&cfg);
        l.set_top(10, Duration::from_secs(60), None);
        l
    }

    const CFG: &str = r#"
exempt: [10.0.0.0/8]
policies:
  - {name: per-ip, key: ip, rate: 1/s, burst: 2}
  - {name: per-user, key: user, rate: 1/s, burst: 3, mode: shadow}
  - {name: all, key: global, rate: 1000/s, burst: 1000}
"#;

    fn hit(l: &Limiter, ip: &str, user: Option<&str>, now: u64) -> bool {
        let facts = RequestFacts {
            method: "GET",
            path: "/v1/x",
            client_ip: ip.parse().unwrap(),
            user,
        };
        l.check(&facts, now).is_rejected()
    }

    #[test]
    fn key_parsing_table() {
        let l = limiter(CFG);
        #[rustfmt::skip]
        let cases: &[(&str, &str, Result<(), LookupError>)] = &[
            ("per-ip", "192.0.2.1", Ok(())),
            ("per-ip", "::ffff:192.0.2.1", Ok(())),
            ("per-ip", "2001:db8::1", Ok(())),
            ("per-ip", "2001:db8::/64", Ok(())),
            ("per-ip", "2001:db8::/48", Err(LookupError::BadKey(""))),
            ("per-ip", "192.0.2.1/32", Err(LookupError::BadKey(""))),
            ("per-ip", "10.1.2.3", Err(LookupError::BadKey(""))),
            ("per-ip", "*", Err(LookupError::BadKey(""))),
            ("per-ip", "192.0.2.*", Err(LookupError::BadKey(""))),
            ("per-ip", "not-an-ip", Err(LookupError::BadKey(""))),
            ("per-ip", "", Err(LookupError::BadKey(""))),
            ("per-user", "alice", Ok(())),
            ("per-user", "", Err(LookupError::BadKey(""))),
            ("per-user", "a\nb", Err(LookupError::BadKey(""))),
            ("per-user", &"x".repeat(257), Err(LookupError::BadKey(""))),
            ("per-user", "*", Err(LookupError::BadKey(""))),
            ("all", "global", Ok(())),
            ("all", "192.0.2.1", Err(LookupError::BadKey(""))),
            ("nope", "192.0.2.1", Err(LookupError::UnknownPolicy)),
        ];
        for (policy, key, want) in cases {
            let got = l.key_state(policy, key, SEC).map(drop);
            let same = match (&got, want) {
                (Ok(()), Ok(())) => true,
                (Err(LookupError::BadKey(_)), Err(LookupError::BadKey(_))) => true,
                (a, b) => a.as_ref().err() == b.as_ref().err(),
            };
            assert!(same, "{policy} {key:?}: {got:?}");
        }
    }

    #[test]
    fn refusals_are_listed_and_a_reset_gives_the_burst_back() {
        let l = limiter(CFG);
        let now = 10 * SEC;
        // Burst 2: the third and fourth requests are refused.
        let refused: Vec<bool> = (0..4).map(|_| hit(&l, "192.0.2.7", None, now)).collect();
        assert_eq!(refused, [false, false, true, true]);
        // The shadow user policy (burst 3) would refuse the 4th of 4 admitted... none here:
        // refused requests charge nothing.
        let top = l.top("per-ip", 10, now).unwrap();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].key.render(l.ipv6_prefix()), "192.0.2.7");
        assert_eq!(top[0].refused, 2);
        // The second admission emptied the bucket: counted once the key is held? It was
        // admitted before any refusal, so not held yet: 0.
        assert_eq!(top[0].admitted, 0);

        let s = l.key_state("per-ip", "192.0.2.7", now).unwrap();
        assert_eq!(s.remaining, 0);
        assert_eq!(s.retry_after, Duration::from_secs(1));
        assert_eq!(s.reset_after, Duration::from_secs(2));
        assert!(s.shared.is_none());

        l.reset("per-ip", "192.0.2.7", now).unwrap();
        let s = l.key_state("per-ip", "192.0.2.7", now).unwrap();
        assert_eq!(
            (s.remaining, s.reset_after, s.retry_after),
            (2, Duration::ZERO, Duration::ZERO)
        );
        assert!(!hit(&l, "192.0.2.7", None, now));
        assert!(!hit(&l, "192.0.2.7", None, now));
        assert!(hit(&l, "192.0.2.7", None, now));
        // Another client was never touched by the reset.
        let other = l.key_state("per-ip", "192.0.2.8", now).unwrap();
        assert_eq!(other.remaining, 2);
        // A reset of an unknown key creates nothing.
        let before = l.describe()[0].tracked_keys;
        l.reset("per-ip", "192.0.2.9", now).unwrap();
        assert_eq!(l.describe()[0].tracked_keys, before);
    }

    #[test]
    fn shadow_refusals_are_listed_and_admissions_at_the_limit_counted() {
        let l = limiter(CFG);
        let now = 10 * SEC;
        // per-user shadow burst 3; per-ip burst 2 refuses from the 3rd, so use distinct IPs.
        for i in 0..5 {
            let ip = format!("192.0.2.{}", 100 + i);
            assert!(!hit(&l, &ip, Some("bob"), now));
        }
        let top = l.top("per-user", 10, now).unwrap();
        assert_eq!(top[0].key.render(64), "bob");
        assert_eq!(top[0].refused, 2);
        // One second later one more request fits and empties the bucket: counted.
        assert!(!hit(&l, "192.0.2.200", Some("bob"), now + SEC));
        assert_eq!(l.top("per-user", 10, now + SEC).unwrap()[0].admitted, 1);
        assert!(l.top("nope", 10, now).is_none());
    }

    #[test]
    fn describe_lists_every_policy() {
        let l = limiter(CFG);
        let d = l.describe();
        let names: Vec<&str> = d.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["per-ip", "per-user", "all"]);
        assert_eq!(d[1].mode, Mode::Shadow);
        assert_eq!(d[0].shared, SharedMode::Local);
        assert_eq!((d[2].burst, d[2].key), (1000, KeyKind::Global));
    }

    #[test]
    fn top_carries_over_a_reload_with_the_buckets() {
        let l = limiter(CFG);
        for _ in 0..3 {
            hit(&l, "192.0.2.7", None, SEC);
        }
        let cfg: super::super::RateLimitsConfig = serde_yaml::from_str(CFG).unwrap();
        let mut next = l.reconfigure(&cfg);
        next.set_top(10, Duration::from_secs(60), Some(&l));
        assert_eq!(next.top("per-ip", 10, SEC).unwrap()[0].refused, 1);
        let mut resized = l.reconfigure(&cfg);
        resized.set_top(20, Duration::from_secs(60), Some(&l));
        assert!(resized.top("per-ip", 10, SEC).unwrap().is_empty());
    }
}
