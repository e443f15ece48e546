//! The Lua run inside Redis. Plain Redis 2.6+ Lua (no `table.maxn`, no modules), on
//! Redis's own clock (`TIME`), integers in µs (exact in a double until about 2255).
//! `#[cfg(test)] model` is the same arithmetic in Rust for the model test.

use std::sync::LazyLock;

/// Flush: charge `hits` × `interval` µs to each key (debt allowed: admitted hits are always
/// charged, so the long-run rate is exact), expire the key when its bucket is full again,
/// and return each key's TAT ahead of now in µs.
/// KEYS = bucket keys; ARGV = interval_us_1, hits_1, interval_us_2, hits_2, …
pub const FLUSH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local hits = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  tat = tat + hits * interval
  local ahead = math.floor(tat - now)
  if ahead > 0 then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil(ahead / 1000) + 1)
  end
  out[i] = ahead
end
return out
"#;

/// `shared: exact`: one GCRA decision of cost 1 against the whole (rate, burst).
/// KEYS[1] = bucket key; ARGV = interval_us, tolerance_us. Returns {allowed 0|1, ahead_us}
/// with `ahead` after the charge when allowed, before it when rejected.
pub const EXACT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new = tat + interval
if new - now > tolerance then
  return {0, math.floor(tat - now)}
end
local ahead = math.floor(new - now)
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil(ahead / 1000) + 1)
return {1, ahead}
"#;

/// Heartbeat: this replica is alive now; members older than `window` ms are gone.
/// KEYS[1] = replicas sorted set; ARGV = replica id, window_ms. Returns the live count.
pub const HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window * 2)
return redis.call('ZCARD', KEYS[1])
"#;

pub static FLUSH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FLUSH_LUA));
pub static EXACT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(EXACT_LUA));
pub static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(HEARTBEAT_LUA));

/// Largest batch per EVALSHA: ~64 keys keep one call near 0.3 ms of Redis time.
pub const MAX_KEYS_PER_CALL: usize = 64;

/// Emission interval as the script's decimal µs (sub-µs rates keep their fraction).
pub fn interval_us_arg(interval_ns: u64) -> String {
    format!("{}.{:03}", interval_ns / 1000, interval_ns % 1000)
}

/// The scripts' arithmetic in Rust, for the model test: a map of key → (TAT µs, expiry µs).
#[cfg(test)]
pub mod model {
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct Redis {
        keys: HashMap<String, (f64, u64)>,
    }

    impl Redis {
        fn get(&mut self, key: &str, now: u64) -> Option<f64> {
            match self.keys.get(key) {
                Some((tat, exp)) if *exp > now => Some(*tat),
                Some(_) => {
                    self.keys.remove(key);
                    None
                }
                None => None,
            }
        }

        fn set(&mut self, key: &str, tat: f64, now: u64, ahead: u64) {
            let px_ms = ahead.div_ceil(1000) + 1;
            self.keys
                .insert(key.to_string(), (tat.round(), now + px_ms * 1000));
        }

        /// FLUSH_LUA at Redis time `now` µs.
        pub fn flush(&mut self, now: u64, items: &[(String, f64, u32)]) -> Vec<u64> {
            items
                .iter()
                .map(|(key, interval, hits)| {
                    let nowf = now as f64;
                    let tat = self.get(key, now).unwrap_or(nowf).max(nowf);
                    let tat = tat + f64::from(*hits) * interval;
                    let ahead = (tat - nowf).floor() as u64;
                    if ahead > 0 {
                        self.set(key, tat, now, ahead);
                    }
                    ahead
                })
                .collect()
        }

        pub fn live_keys(&mut self, now: u64) -> usize {
            self.keys.retain(|_, (_, exp)| *exp > now);
            self.keys.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_arg_keeps_fractions() {
        assert_eq!(interval_us_arg(1_000_000_000), "1000000.000");
        assert_eq!(interval_us_arg(600_000_000), "600000.000");
        assert_eq!(interval_us_arg(1_500), "1.500");
        assert_eq!(interval_us_arg(1), "0.001");
    }

    #[test]
    fn model_charges_with_debt_and_expires_at_refill() {
        let mut r = model::Redis::default();
        let k = "edge:rl:x:y".to_string();
        let t0 = 1_700_000_000_000_000u64;
        // 1 hit per second interval, 5 hits: 5 s ahead.
        assert_eq!(r.flush(t0, &[(k.clone(), 1e6, 5)]), vec![5_000_000]);
        // 1 s later, 3 more: 4 + 3 = 7 s ahead (debt beyond any burst is allowed).
        assert_eq!(
            r.flush(t0 + 1_000_000, &[(k.clone(), 1e6, 3)]),
            vec![7_000_000]
        );
        assert_eq!(r.live_keys(t0 + 1_000_000), 1);
        assert_eq!(r.live_keys(t0 + 8_000_000 + 1_001), 0, "gone once refilled");
        assert_eq!(r.flush(t0 + 9_000_000, &[(k, 1e6, 0)]), vec![0]);
    }
}
