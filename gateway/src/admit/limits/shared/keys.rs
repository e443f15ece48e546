//! Redis key names: `{prefix}:rl:{policy fingerprint}:{keyed 128-bit id}`. No raw IP or
//! user id ever reaches Redis, and a policy whose name, key, rate or burst changes gets a
//! new fingerprint, so it starts fresh.

use std::hash::Hasher as _;

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::admit::limits::policy::{KeyKind, PolicyConfig};

/// The fleet-wide key for the 128-bit ids. Derived from the Redis password when there is
/// one (every replica has it, an outsider who can read Redis keys still can't map ids to
/// clients), else from the key prefix alone, which makes ids pseudonymous but not secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClusterSecret([u8; 16]);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    pub fn derive(password: Option<&str>, key_prefix: &str) -> ClusterSecret {
        let mut h = Sha256::new();
        h.update(b"gateway shared limits key id v1\0");
        h.update(key_prefix.as_bytes());
        h.update(b"\0");
        if let Some(pw) = password {
            h.update(pw.as_bytes());
        }
        let digest = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&digest[..16]);
        ClusterSecret(k)
    }

    fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_key(&self.0)
    }
}

/// A client's identity within one policy, serialised the same way on every replica.
#[derive(Clone, Copy, Debug)]
pub enum ClientId<'a> {
    V4(u32),
    V6(u128),
    User(&'a str),
    Global,
}

/// The keyed 128-bit id of a client within a policy.
pub fn key_id(secret: &ClusterSecret, policy_fp: u32, client: ClientId) -> u128 {
    let mut h = secret.hasher();
    h.write_u32(policy_fp);
    match client {
        ClientId::V4(a) => {
            h.write_u8(4);
            h.write_u32(a);
        }
        ClientId::V6(a) => {
            h.write_u8(6);
            h.write_u128(a);
        }
        ClientId::User(u) => {
            h.write_u8(b'u');
            h.write_usize(u.len());
            h.write(u.as_bytes());
        }
        ClientId::Global => h.write_u8(b'g'),
    }
    h.finish128().as_u128()
}

/// 32-bit fingerprint of what defines a bucket: name, key kind, rate and burst.
pub fn policy_fingerprint(p: &PolicyConfig) -> u32 {
    // Unkeyed on purpose: every replica must compute the same value.
    let mut h = SipHasher13::new_with_keys(0, 0);
    h.write(p.name.as_bytes());
    h.write_u8(0);
    h.write_u8(match p.key {
        KeyKind::Ip => 1,
        KeyKind::User => 2,
        KeyKind::Global => 3,
    });
    h.write_u64(p.rate.emission_interval().as_nanos() as u64);
    h.write_u32(p.burst);
    h.finish() as u32
}

pub fn redis_key(prefix: &str, policy_fp: u32, id: u128) -> String {
    format!("{prefix}:rl:{policy_fp:08x}:{id:032x}")
}

pub fn replicas_key(prefix: &str) -> String {
    format!("{prefix}:replicas")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> PolicyConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn fingerprint_changes_with_bucket_semantics_only() {
        let base = policy("{name: per-ip, key: ip, rate: 60/min, burst: 30}");
        let fp = policy_fingerprint(&base);
        assert_eq!(
            fp,
            policy_fingerprint(&policy(
                "{name: per-ip, key: ip, rate: 1/s, burst: 30, mode: shadow, shared: exact}"
            )),
            "same rate spelled differently, other fields free"
        );
        for other in [
            "{name: per-ip2, key: ip, rate: 60/min, burst: 30}",
            "{name: per-ip, key: user, rate: 60/min, burst: 30}",
            "{name: per-ip, key: ip, rate: 61/min, burst: 30}",
            "{name: per-ip, key: ip, rate: 60/min, burst: 31}",
        ] {
            assert_ne!(fp, policy_fingerprint(&policy(other)), "{other}");
        }
    }

    #[test]
    fn key_ids_are_keyed_and_distinct() {
        let a = ClusterSecret::derive(Some("pw"), "edge");
        let b = ClusterSecret::derive(Some("pw2"), "edge");
        let c = ClusterSecret::derive(Some("pw"), "edge2");
        let d = ClusterSecret::derive(None, "edge");
        let ip = ClientId::V4(0x7f00_0001);
        let ids: Vec<u128> = [a, b, c, d].iter().map(|s| key_id(s, 7, ip)).collect();
        for i in 0..ids.len() {
            for j in 0..i {
                assert_ne!(ids[i], ids[j]);
            }
        }
        assert_eq!(key_id(&a, 7, ip), key_id(&a, 7, ClientId::V4(0x7f00_0001)));
        assert_ne!(
            key_id(&a, 7, ip),
            key_id(&a, 8, ip),
            "policy is part of the id"
        );
        // No cross-kind collisions between shapes that hash similar bytes.
        let samples = [
            ClientId::V4(1),
            ClientId::V6(1),
            ClientId::User(""),
            ClientId::User("\u{1}"),
            ClientId::Global,
        ];
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            assert!(seen.insert(key_id(&a, 7, s)), "{s:?}");
        }
        let key = redis_key("edge", 0xdead_beef, key_id(&a, 7, ClientId::User("alice")));
        assert!(key.starts_with("edge:rl:deadbeef:"), "{key}");
        assert_eq!(key.len(), "edge:rl:deadbeef:".len() + 32);
        assert!(!key.contains("alice"));
        assert!(!format!("{a:?}").contains(|c: char| c.is_ascii_digit()));
    }
}
