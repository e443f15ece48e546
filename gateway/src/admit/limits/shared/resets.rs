//! Operator resets across the fleet. The replica that takes `POST /limits/reset` deletes
//! the key in Redis and appends `{fingerprint}:{id}` to a short list with a sequence
//! counter; every replica's sync loop reads the counter each tick and clears the keys
//! added since, so each admits the client again within one `sync_interval` (a replica
//! never moves a TAT back on Redis's word alone, so deleting the key is not enough).

use std::sync::Arc;

use redis::aio::ConnectionLike;

use super::policy::SharedPolicy;

/// Resets remembered in Redis; a replica more than this many behind skips the rest.
const KEPT: isize = 256;

use super::keys::{resets_list_key as list_key, resets_seq_key as seq_key};

fn entry(fingerprint: u32, id: u128) -> String {
    format!("{fingerprint:08x}:{id:032x}")
}

fn parse_entry(s: &str) -> Option<(u32, u128)> {
    let (fp, id) = s.split_once(':')?;
    Some((
        u32::from_str_radix(fp, 16).ok()?,
        u128::from_str_radix(id, 16).ok()?,
    ))
}

/// Deletes the key's shared state, then tells the fleet in one MULTI.
pub async fn publish<C: ConnectionLike + Send>(
    conn: &mut C,
    policy: &SharedPolicy,
    id: u128,
) -> redis::RedisResult<()> {
    publish_key(
        conn,
        &policy.engine.key_prefix,
        &policy.redis_key(id),
        policy.fingerprint,
        id,
    )
    .await
}

/// `publish` for a key already named: what Redis sees (the ACL test runs it).
pub async fn publish_key<C: ConnectionLike + Send>(
    conn: &mut C,
    prefix: &str,
    key: &str,
    fingerprint: u32,
    id: u128,
) -> redis::RedisResult<()> {
    // Two calls: on a cluster the bucket key and the reset list live on different slots,
    // and a MULTI may not cross slots. A failed announce is reported (the operator retries).
    let _: i64 = redis::cmd("DEL").arg(key).query_async(conn).await?;
    redis::pipe()
        .atomic()
        .lpush(list_key(prefix), entry(fingerprint, id))
        .ignore()
        .ltrim(list_key(prefix), 0, KEPT - 1)
        .ignore()
        .incr(seq_key(prefix), 1)
        .ignore()
        .query_async(conn)
        .await
}

/// Where this replica is in the fleet's reset list.
#[derive(Default)]
pub struct Feed {
    seen: Option<u64>,
}

impl Feed {
    /// Applies the resets published since the last poll; the first poll only takes the
    /// position. A counter that went back (Redis restarted empty) is followed.
    pub async fn poll<C: ConnectionLike + Send>(
        &mut self,
        conn: &mut C,
        prefix: &str,
        policies: &[Arc<SharedPolicy>],
    ) -> redis::RedisResult<usize> {
        let seq: Option<u64> = redis::cmd("GET")
            .arg(seq_key(prefix))
            .query_async(conn)
            .await?;
        let seq = seq.unwrap_or(0);
        let Some(seen) = self.seen.replace(seq) else {
            return Ok(0);
        };
        if seq <= seen {
            return Ok(0);
        }
        let n = (seq - seen).min(KEPT as u64) as isize;
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(list_key(prefix))
            .arg(0)
            .arg(n - 1)
            .query_async(conn)
            .await?;
        let mut applied = 0;
        for (fp, id) in items.iter().filter_map(|s| parse_entry(s)) {
            for p in policies.iter().filter(|p| p.fingerprint == fp) {
                applied += usize::from(p.reset_id(id));
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_skipped() {
        let e = entry(0xdead_beef, 7);
        assert_eq!(e.len(), 8 + 1 + 32);
        assert_eq!(parse_entry(&e), Some((0xdead_beef, 7)));
        for bad in ["", ":", "xyz:1", "1", "1:zz", "123456789:1"] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }
}
