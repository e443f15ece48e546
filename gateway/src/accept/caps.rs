//! Per-client connection admission at accept, before any TLS handshake: how many
//! connections one client may hold open (`limits.max_connections_per_client`) and how
//! fast it may open new ones (`limits.new_connections_per_client`). Without it, one
//! client reconnecting unpaced costs a full handshake per connection and slows everyone;
//! `limits.max_connections` only bounds the total.
//!
//! The client is the socket peer, or for a `proxy_protocol.from` balancer the source its
//! header names (then checked after the header; nothing of the request is known yet), grouped like the
//! per-IP rate limits (IPv4-mapped IPv6 as IPv4, IPv6 by `rate_limits.ipv6_prefix`).
//! Peers in `trusted_proxies` (a load balancer carries many clients; they are limited per
//! request) and in `rate_limits.exempt` are not counted.
//!
//! Reused parts, both bounded: open connections are counted in the count-min sketch of
//! `inflight` (fixed size, never undercounts; see there for the false-sharing bound,
//! which holds here as every counted slot is one of at most `max_connections`), new
//! connections in a GCRA `limits::store::Store` (capped keys, full buckets evicted first).
//! The state lives in `Process`; the caps are read per connection, so a reload applies to
//! the next connection.

use std::net::IpAddr;

use pingora_limits::inflight::Guard;

use crate::admit::client_ip::ClientIpPolicy;
use crate::admit::inflight::{Claim, InflightCap};
use crate::admit::limits::gcra::Gcra;
use crate::admit::limits::store::Store;
use crate::admit::limits::Limiter;
use crate::config::SizeLimits;

/// Keys tracked for the new-connection rate; beyond it full buckets go first, then the
/// fullest (an evicted client gets at most one extra burst).
pub const MAX_KEYS: usize = 100_000;
/// A refused client is logged at most once per this interval.
pub const LOG_INTERVAL_NS: u64 = 10_000_000_000;
const LOG_KEYS: usize = 10_000;

/// A client as the caps see it: (4 or 6, address or IPv6 prefix).
pub type ClientKey = (u8, u128);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `max_connections_per_client` open already.
    TooManyOpen,
    /// Over `new_connections_per_client`.
    TooManyNew,
}

impl Reason {
    /// One of `labels::CONNECTION_REJECTIONS`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::TooManyOpen => "per_client_open",
            Reason::TooManyNew => "per_client_rate",
        }
    }
}

/// The caps from config, read per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// 0: no cap on open connections.
    pub max_open: usize,
    pub new: Option<Gcra>,
}

impl Caps {
    pub fn from_config(l: &SizeLimits) -> Caps {
        Caps {
            max_open: l.max_connections_per_client,
            new: l
                .new_connections_per_client
                .map(|c| Gcra::new(c.rate, c.burst)),
        }
    }
}

#[derive(Debug)]
pub enum ConnectionVerdict {
    /// Not counted (trusted or exempt peer).
    Exempt,
    /// Admitted; the open slot (if counted) is held until the guard drops.
    Admitted(Option<Guard>),
    /// Close at once; nothing is held and no token is spent.
    Refused(Reason),
}

pub struct ConnLimits {
    open: InflightCap,
    new: Store,
    logged: Store,
    log_every: Gcra,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            open: InflightCap::default(),
            new: Store::new(MAX_KEYS),
            logged: Store::new(LOG_KEYS),
            log_every: Gcra::from_interval(LOG_INTERVAL_NS, 1),
        }
    }
}

/// The key for a socket peer; `None` for a trusted proxy or an exempt client.
pub fn client_key(peer: IpAddr, proxies: &ClientIpPolicy, limiter: &Limiter) -> Option<ClientKey> {
    if proxies.is_trusted(peer) {
        return None;
    }
    limiter.client_group(peer)
}

impl ConnLimits {
    /// Open cap first, then the rate: a client refused for holding too many connections
    /// spends no token, and one refused by the rate gives its open slot back at once.
    pub fn admit(&self, client: Option<ClientKey>, caps: Caps, now_ns: u64) -> ConnectionVerdict {
        let Some(client) = client else {
            return ConnectionVerdict::Exempt;
        };
        let guard = match caps.max_open {
            0 => None,
            cap => match self.open.admit(Some(client), cap) {
                Claim::Admitted(g) => Some(g),
                Claim::Refused | Claim::Exempt => {
                    return ConnectionVerdict::Refused(Reason::TooManyOpen)
                }
            },
        };
        if let Some(gcra) = caps.new {
            let key = self.new.hash_key(&client);
            let d = self.new.update(key, now_ns, |tat| gcra.check(tat, now_ns));
            if !d.allowed {
                return ConnectionVerdict::Refused(Reason::TooManyNew);
            }
        }
        ConnectionVerdict::Admitted(guard)
    }

    /// True at most once per `LOG_INTERVAL_NS` per client (refusals are logged, not flooded).
    pub fn should_log(&self, client: Option<ClientKey>, now_ns: u64) -> bool {
        self.once_per_interval(&client, now_ns)
    }

    /// True at most once per `LOG_INTERVAL_NS` per balancer whose PROXY headers are refused.
    pub fn should_log_balancer(&self, balancer: IpAddr, now_ns: u64) -> bool {
        // Its own key space in the same bounded store: never shares a client's interval.
        self.once_per_interval(&("proxy_protocol", balancer), now_ns)
    }

    fn once_per_interval<K: std::hash::Hash>(&self, key: &K, now_ns: u64) -> bool {
        let key = self.logged.hash_key(key);
        let g = self.log_every;
        self.logged
            .update(key, now_ns, |tat| g.check(tat, now_ns))
            .allowed
    }

    /// Clients tracked by the rate (bounded by `MAX_KEYS`).
    pub fn tracked(&self) -> usize {
        self.new.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admit::limits::Rate;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    #[test]
    fn reasons_are_the_registered_labels() {
        let all = [Reason::TooManyOpen, Reason::TooManyNew].map(Reason::as_str);
        assert_eq!(all, crate::observe::labels::CONNECTION_REJECTIONS);
    }

    fn caps(max_open: usize, per_sec: u32, burst: u32) -> Caps {
        let rate = Rate {
            count: per_sec,
            period: Duration::from_secs(1),
        };
        Caps {
            max_open,
            new: (per_sec > 0).then(|| Gcra::new(rate, burst)),
        }
    }

    /// (trusted proxies, rate-limit config) as the accept loop gets them from `Live`.
    fn world(trusted: &[&str], ipv6_prefix: u8, exempt: &[&str]) -> (ClientIpPolicy, Limiter) {
        let nets = |v: &[&str]| v.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>();
        let proxies = ClientIpPolicy::new(&nets(trusted), Vec::new(), 1);
        let cfg = crate::admit::limits::RateLimitsConfig {
            ipv6_prefix,
            exempt: nets(exempt),
            ..Default::default()
        };
        (proxies, Limiter::new(&cfg))
    }

    fn refused(v: &ConnectionVerdict) -> Option<Reason> {
        match v {
            ConnectionVerdict::Refused(r) => Some(*r),
            _ => None,
        }
    }

    #[test]
    fn caps_table() {
        // (caps, connections opened at once by one client at t=0, want admitted, reason of the rest)
        let cases = [
            (caps(8, 0, 1), 12, 8, Some(Reason::TooManyOpen)),
            (caps(0, 5, 10), 15, 10, Some(Reason::TooManyNew)),
            (caps(4, 5, 10), 15, 4, Some(Reason::TooManyOpen)),
            (caps(0, 0, 1), 1000, 1000, None),
            (caps(1, 1, 1), 3, 1, Some(Reason::TooManyOpen)),
        ];
        for (c, n, want, reason) in cases {
            let l = ConnLimits::default();
            let got: Vec<ConnectionVerdict> = (0..n).map(|_| l.admit(Some((4, 1)), c, S)).collect();
            let ok = got.iter().filter(|v| refused(v).is_none()).count();
            assert_eq!(ok, want, "{c:?}");
            assert!(got.iter().take(want).all(|v| refused(v).is_none()));
            assert!(got.iter().skip(want).all(|v| refused(v) == reason), "{c:?}");
        }
    }

    #[test]
    fn rate_refills_and_refusals_spend_nothing() {
        let l = ConnLimits::default();
        let c = caps(0, 10, 2);
        let a = Some((4, 7));
        assert!(refused(&l.admit(a, c, S)).is_none());
        assert!(refused(&l.admit(a, c, S)).is_none());
        // An unpaced client hammering at one instant stays refused and earns nothing.
        for _ in 0..1000 {
            assert_eq!(refused(&l.admit(a, c, S)), Some(Reason::TooManyNew));
        }
        // 100 ms later exactly one more fits (10/s).
        assert!(refused(&l.admit(a, c, S + S / 10)).is_none());
        assert!(refused(&l.admit(a, c, S + S / 10)).is_some());
        // Another client is unaffected throughout.
        assert!(refused(&l.admit(Some((4, 8)), c, S)).is_none());
    }

    #[test]
    fn open_slots_come_back_and_a_refused_rate_gives_its_slot_back() {
        let l = ConnLimits::default();
        let a = Some((6, 42));
        let held: Vec<ConnectionVerdict> = (0..3).map(|_| l.admit(a, caps(3, 0, 1), S)).collect();
        assert_eq!(
            refused(&l.admit(a, caps(3, 0, 1), S)),
            Some(Reason::TooManyOpen)
        );
        drop(held);
        // Rate of burst 1: the first takes a slot and the token, the second is refused by
        // the rate; its open slot must not leak (cap 1 still admits after the first drops).
        let first = l.admit(a, caps(1, 1, 1), 5 * S);
        assert_eq!(
            refused(&l.admit(a, caps(1, 1, 1), 5 * S)),
            Some(Reason::TooManyOpen)
        );
        drop(first);
        assert_eq!(
            refused(&l.admit(a, caps(1, 1, 1), 5 * S)),
            Some(Reason::TooManyNew)
        );
        assert!(
            refused(&l.admit(a, caps(1, 1, 1), 7 * S)).is_none(),
            "slot and token back"
        );
        // A reload (new caps) applies to the next connection.
        let l = ConnLimits::default();
        let _two: Vec<ConnectionVerdict> = (0..2).map(|_| l.admit(a, caps(2, 0, 1), S)).collect();
        assert!(refused(&l.admit(a, caps(2, 0, 1), S)).is_some());
        assert!(refused(&l.admit(a, caps(3, 0, 1), S)).is_none());
    }

    #[test]
    fn keys_group_like_the_rate_limits_and_trusted_peers_are_exempt() {
        let (p, l) = world(
            &["10.0.0.0/8", "::ffff:192.0.2.0/120"],
            56,
            &["198.51.100.0/24"],
        );
        let key = |s: &str| client_key(s.parse().unwrap(), &p, &l);
        // (peer, same client as, exempt)
        let cases = [
            ("2001:db8:0:ff::1", Some("2001:db8::9"), false),
            ("2001:db8:0:100::1", None, false),
            ("::ffff:203.0.113.9", Some("203.0.113.9"), false),
            ("10.1.2.3", None, true),
            ("::ffff:10.1.2.3", None, true),
            ("192.0.2.77", None, true),
            ("198.51.100.1", None, true),
            ("203.0.113.10", None, false),
        ];
        for (peer, same_as, exempt) in cases {
            assert_eq!(key(peer).is_none(), exempt, "{peer}");
            if let Some(other) = same_as {
                assert_eq!(key(peer), key(other), "{peer} ~ {other}");
            }
        }
        assert_ne!(key("2001:db8:0:100::1"), key("2001:db8::1"), "another /56");
        assert!(matches!(
            ConnLimits::default().admit(key("10.9.9.9"), caps(1, 1, 1), S),
            ConnectionVerdict::Exempt
        ));
    }

    #[test]
    fn ipv6_rotation_inside_one_prefix_is_one_client() {
        let (p, lim) = world(&[], 64, &[]);
        let l = ConnLimits::default();
        let c = caps(0, 10, 20);
        // 500 addresses of one /64, one connection each: 20 (the burst) get in.
        let ok = (0..500u128)
            .filter(|i| {
                let ip =
                    std::net::Ipv6Addr::from(0x2001_0db8_0000_0001_0000_0000_0000_0000 + i * 7919);
                refused(&l.admit(client_key(ip.into(), &p, &lim), c, S)).is_none()
            })
            .count();
        assert_eq!(ok, 20);
    }

    #[test]
    fn many_ips_stay_bounded_and_each_gets_its_own_burst() {
        let l = ConnLimits::default();
        let c = caps(0, 1, 1);
        // Twice the key cap of distinct clients: every one is admitted once (eviction fails
        // open, it never refuses a newcomer), and the store stays at its cap.
        for i in 0..(2 * MAX_KEYS as u128) {
            assert!(refused(&l.admit(Some((4, i)), c, S)).is_none(), "{i}");
        }
        assert!(l.tracked() <= MAX_KEYS, "{} tracked", l.tracked());
        assert!(l.tracked() >= MAX_KEYS / 2);
    }

    #[test]
    fn refusals_are_logged_once_per_interval_per_client() {
        let l = ConnLimits::default();
        let (a, b) = (Some((4, 1)), Some((4, 2)));
        let logged = (0..1000).filter(|_| l.should_log(a, S)).count();
        assert_eq!(logged, 1);
        assert!(l.should_log(b, S), "another client has its own interval");
        assert!(!l.should_log(a, S + LOG_INTERVAL_NS / 2));
        assert!(l.should_log(a, S + LOG_INTERVAL_NS));
        // A balancer has its own interval, apart from the same address as a client.
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        let logged = (0..1000).filter(|_| l.should_log_balancer(lb, S)).count();
        assert_eq!(logged, 1);
        assert!(l.should_log(Some((4, 0x0a00_0002)), S));
        assert!(l.should_log_balancer(lb, S + LOG_INTERVAL_NS));
    }
}
