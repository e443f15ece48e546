//! Redis key names: `<prefix>:rl:<policy fingerprint>:{<tag>}<keyed 128-bit id>`, the tag in
//! literal braces. No raw IP or user id ever reaches Redis, and a policy whose name, key,
//! rate or burst changes gets a new fingerprint, so it starts fresh. The hash tag (the id's
//! top 8 bits) picks the Redis Cluster slot: keys with one tag share a slot, so one Lua call
//! may hold them, and one policy's keys spread over 256 tags, so over every master.

use std::hash::Hasher as _;

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::cluster::slots;
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

/// The hash tag of a bucket key: the id's top 8 bits (ids are keyed hashes, so uniform).
pub fn tag(id: u128) -> u8 {
    (id >> 120) as u8
}

fn tag_text(tag: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(tag >> 4)], HEX[usize::from(tag & 15)]]
}

pub fn redis_key(prefix: &str, policy_fp: u32, id: u128) -> String {
    let t = tag_text(tag(id));
    let (a, b) = (char::from(t[0]), char::from(t[1]));
    format!("{prefix}:rl:{policy_fp:08x}:{{{a}{b}}}{id:032x}")
}

/// The Redis Cluster slot of the bucket key of `id` (whatever the prefix and policy), without
/// building the key.
pub fn key_slot(id: u128) -> u16 {
    slots::slot_of(&tag_text(tag(id)))
}

/// A flush's items grouped into Lua calls whose keys share a slot, at most `max` keys each
/// (`script::MAX_KEYS_PER_CALL`), in slot order. On a single Redis the grouping only costs
/// more, smaller calls in the same pipeline.
pub fn flush_calls<T>(
    items: impl IntoIterator<Item = T>,
    id_of: impl Fn(&T) -> u128,
    max: usize,
) -> Vec<(u16, Vec<T>)> {
    slots::group_by_slot(items, |t| key_slot(id_of(t)), max)
}

/// One key, one slot: the replica heartbeat's sorted set.
pub fn replicas_key(prefix: &str) -> String {
    format!("{prefix}:replicas")
}

/// The fleet's reset list and its sequence counter share the tag `{resets}`, so one
/// `MULTI` may write both on a cluster. The bucket key a reset deletes lives elsewhere: on a
/// cluster it is deleted in its own call.
pub fn resets_list_key(prefix: &str) -> String {
    format!("{prefix}:rl:{{resets}}")
}

pub fn resets_seq_key(prefix: &str) -> String {
    format!("{prefix}:rl:{{resets}}:seq")
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
        assert!(key.starts_with("edge:rl:deadbeef:{"), "{key}");
        assert_eq!(key.len(), "edge:rl:deadbeef:{xx}".len() + 32);
        assert!(!key.contains("alice"));
        assert!(!format!("{a:?}").contains(|c: char| c.is_ascii_digit()));
    }

    #[test]
    fn keys_of_one_tag_share_a_slot_and_tags_spread() {
        let secret = ClusterSecret::derive(Some("pw"), "edge");
        // The slot Redis computes from the full key equals `key_slot`, for any prefix/policy.
        for i in 0..2000u32 {
            let id = key_id(&secret, i % 7, ClientId::V4(i));
            for prefix in ["edge", "a:b", ""] {
                let key = redis_key(prefix, i % 7, id);
                assert_eq!(slots::slot_of(key.as_bytes()), key_slot(id), "{key}");
                assert_eq!(slots::hash_tag(key.as_bytes()).len(), 2, "{key}");
            }
        }
        // 256 tags over the default 3-master split: each master gets a fair share.
        let mut per_master = [0u32; 3];
        let mut seen = std::collections::HashSet::new();
        for t in 0..=255u8 {
            let s = slots::slot_of(&tag_text(t));
            seen.insert(s);
            per_master[match s {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            }] += 1;
        }
        assert_eq!(seen.len(), 256, "every tag its own slot");
        assert_eq!(per_master, [89, 83, 84], "the figures README gives");
        // A global policy is one key, so one slot.
        let g = key_id(&secret, 9, ClientId::Global);
        assert_eq!(key_slot(g), key_slot(key_id(&secret, 9, ClientId::Global)));
        // Single keys: one slot each; the reset list and its counter share one.
        assert_eq!(
            slots::slot_of(resets_list_key("edge").as_bytes()),
            slots::slot_of(resets_seq_key("edge").as_bytes())
        );
        assert!(resets_list_key("edge").starts_with("edge:"));
        assert!(replicas_key("edge").starts_with("edge:"));
    }

    #[test]
    fn flush_calls_never_cross_slots() {
        let secret = ClusterSecret::derive(None, "edge");
        for n in [0usize, 1, 63, 64, 65, 1024, 5000] {
            let ids: Vec<u128> = (0..n)
                .map(|i| key_id(&secret, 3, ClientId::V6(i as u128)))
                .collect();
            let calls = flush_calls(ids.iter().copied(), |id| *id, 64);
            assert_eq!(calls.iter().map(|(_, c)| c.len()).sum::<usize>(), n);
            for (slot, call) in &calls {
                assert!(!call.is_empty() && call.len() <= 64);
                for id in call {
                    let key = redis_key("edge", 3, *id);
                    assert_eq!(slots::slot_of(key.as_bytes()), *slot, "CROSSSLOT");
                }
            }
        }
        // Many keys of one tag: cut at 64, still one slot.
        let ids: Vec<u128> = (0..200u128).map(|i| (0xab << 120) | i).collect();
        let calls = flush_calls(ids, |id| *id, 64);
        assert_eq!(calls.len(), 4);
        assert!(calls.iter().all(|(s, _)| *s == calls[0].0));
    }
}
