//! Response header values per draft-ietf-httpapi-ratelimit-headers-10, plus Retry-After.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use super::PolicyOutcome;

pub const RATELIMIT_POLICY: &str = "RateLimit-Policy";
pub const RATELIMIT: &str = "RateLimit";
pub const RETRY_AFTER: &str = "Retry-After";

/// Seconds, rounded up: clients that wait this long are guaranteed to be past the instant.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Window advertised for a quota: time for an empty bucket to refill (burst × interval),
/// rounded up, at least 1 s.
pub fn window_secs(burst: u32, emission_interval: Duration) -> u64 {
    ceil_secs(emission_interval.saturating_mul(burst)).max(1)
}

/// `"per-ip";q=100;w=60`. `name` is a validated policy name (no quotes or backslashes).
pub fn policy_value(name: &str, quota: u32, window_secs: u64) -> String {
    format!("\"{name}\";q={quota};w={window_secs}")
}

/// `"per-ip";r=0;t=6`: remaining requests and `t`, draft-10's "seconds until additional
/// quota … is made available": for GCRA the time until one more request fits, rounded up
/// (0 when the bucket is full). On a 429 that is Retry-After without its jitter; it is not
/// the time until the bucket is full again (which would tell a client to wait far too long).
pub fn ratelimit_value(name: &str, remaining: u32, next_after: Duration) -> String {
    String::from_utf8_lossy(&ratelimit_bytes(name, remaining, next_after)).into_owned()
}

/// `ratelimit_value` as bytes, written without `core::fmt` (it is on every response).
fn ratelimit_bytes(name: &str, remaining: u32, next_after: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 32);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\";r=");
    out.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
    out.extend_from_slice(b";t=");
    out.extend_from_slice(itoa::Buffer::new().format(ceil_secs(next_after)).as_bytes());
    out
}

/// `policy_value` as a header value. Policy names are validated to `[a-z0-9_-]`, so the
/// value is always valid; an invalid one would be refused at load, never here.
pub fn policy_header_value(name: &str, quota: u32, window_secs: u64) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(policy_value(name, quota, window_secs)))
        .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

/// Retry-After in whole seconds: rounded up, plus 0 or 1 s of jitter picked by
/// `jitter_source` (any random or request-derived value) so rejected clients do not all
/// return in the same second; never 0.
pub fn retry_after_secs(retry_after: Duration, jitter_source: u64) -> u64 {
    (ceil_secs(retry_after) + (jitter_source & 1)).max(1)
}

impl PolicyOutcome {
    pub fn policy_header(&self) -> String {
        policy_value(&self.policy, self.limit, self.window_secs)
    }

    pub fn ratelimit_header(&self) -> String {
        ratelimit_value(&self.policy, self.remaining, self.next_after)
    }

    /// `RateLimit`'s value with one allocation (no copy into the header value).
    pub fn ratelimit_header_value(&self) -> HeaderValue {
        let raw = ratelimit_bytes(&self.policy, self.remaining, self.next_after);
        HeaderValue::from_maybe_shared(Bytes::from(raw))
            .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn an_invalid_name_cannot_make_an_invalid_header() {
        // Names are validated at load; the value builder still never panics.
        for name in ["bad\nname", "nul\u{0}", "del\u{7f}"] {
            assert_eq!(policy_header_value(name, 1, 1), "\"invalid\"", "{name:?}");
        }
        assert_eq!(
            policy_header_value("per-ip", 100, 60),
            "\"per-ip\";q=100;w=60"
        );
    }

    #[test]
    fn policy_formatting_table() {
        let cases = [
            ("per-ip", 100, MS(600), "\"per-ip\";q=100;w=60"),
            ("a", 1, MS(1), "\"a\";q=1;w=1"), // sub-second windows round up to 1
            ("a", 10, MS(150), "\"a\";q=10;w=2"), // 1.5 s -> 2
            (
                "day_quota",
                1000,
                Duration::from_secs(86_400),
                "\"day_quota\";q=1000;w=86400000",
            ),
            ("x", 3, Duration::from_nanos(333_333_333), "\"x\";q=3;w=1"),
        ];
        for (name, burst, interval, want) in cases {
            assert_eq!(
                policy_value(name, burst, window_secs(burst, interval)),
                want
            );
        }
    }

    #[test]
    fn ratelimit_formatting_table() {
        let cases = [
            ("per-ip", 0, Duration::from_secs(12), "\"per-ip\";r=0;t=12"),
            ("per-ip", 5, MS(11_001), "\"per-ip\";r=5;t=12"),
            ("g", 99, Duration::ZERO, "\"g\";r=99;t=0"),
            ("g", 0, Duration::from_nanos(1), "\"g\";r=0;t=1"),
        ];
        for (name, r, reset, want) in cases {
            assert_eq!(ratelimit_value(name, r, reset), want);
        }
    }

    #[test]
    fn retry_after_table() {
        let cases = [
            (Duration::ZERO, 0, 1),
            (Duration::ZERO, 1, 1),
            (Duration::from_nanos(1), 0, 1),
            (Duration::from_nanos(1), 1, 2),
            (Duration::from_secs(1), 0, 1),
            (MS(1_001), 0, 2),
            (MS(1_001), 7, 3),
            (Duration::from_secs(59), u64::MAX, 60),
        ];
        for (d, jitter, want) in cases {
            assert_eq!(retry_after_secs(d, jitter), want, "{d:?} {jitter}");
        }
    }
}
