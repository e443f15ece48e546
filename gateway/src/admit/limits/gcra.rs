//! GCRA (generic cell rate algorithm) over injected time: one u64 of state per key.
//!
//! State is the theoretical arrival time (TAT, ns from a monotonic origin). A TAT at or
//! before `now` means a full bucket, so `0` doubles as "unknown key" and stores may forget
//! such entries without changing any future decision.

use std::time::Duration;

use super::rate::Rate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval T in ns (>= 1).
    interval: u64,
    /// Burst tolerance: burst × T; a request fits if its new TAT is at most this far ahead.
    tolerance: u64,
    burst: u32,
}

/// Outcome of one request against one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could be made right now (after this one, if it was allowed).
    pub remaining: u32,
    /// Wait until the next request would be allowed; zero when this one was allowed.
    pub retry_after: Duration,
    /// Wait until the bucket is full again.
    pub reset_after: Duration,
    /// Wait until one more request fits than `remaining` says (zero when the bucket is full):
    /// the RateLimit header's `t` (draft-10: "seconds until additional quota … is made
    /// available"). For a rejected request it equals `retry_after`.
    pub next_after: Duration,
}

impl Gcra {
    /// `burst` is clamped to >= 1 so a bucket can never be permanently empty.
    pub fn new(rate: Rate, burst: u32) -> Gcra {
        let interval = (rate.emission_interval().as_nanos() as u64).max(1);
        let burst = burst.max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            burst,
        }
    }

    /// A bucket from an emission interval in ns (degraded shares divide the rate).
    pub fn from_interval(interval_ns: u64, burst: u32) -> Gcra {
        let interval = interval_ns.max(1);
        let burst = burst.max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            burst,
        }
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval
    }

    /// burst × T in ns.
    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance
    }

    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time for an empty bucket to refill completely (burst × T).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.tolerance)
    }

    /// Decide one request at `now` given the stored `tat` (0 for an unknown key).
    /// Returns the TAT to store, or `None` when rejected: rejections never change state.
    /// Time going backwards only makes the check stricter (`now` earlier ⇒ TAT further ahead).
    pub fn check(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        self.check_within(tat, now, self.tolerance)
    }

    /// `check` against a smaller tolerance (a shared policy's lease, `<= tolerance_ns()`);
    /// `remaining` still counts against the whole burst, and is 0 on a rejection.
    pub fn check_within(&self, tat: u64, now: u64, tolerance: u64) -> (Decision, Option<u64>) {
        let new_tat = tat.max(now).saturating_add(self.interval);
        // Earliest instant at which this request fits within the tolerance.
        let allow_at = new_tat.saturating_sub(tolerance);
        if now >= allow_at {
            let ahead = new_tat - now;
            let decision = Decision {
                allowed: true,
                remaining: self.remaining(ahead),
                retry_after: Duration::ZERO,
                reset_after: Duration::from_nanos(ahead),
                next_after: self.next_after(ahead),
            };
            (decision, Some(new_tat))
        } else {
            let ahead = tat.saturating_sub(now);
            let decision = Decision {
                allowed: false,
                remaining: if tolerance < self.tolerance {
                    0
                } else {
                    self.remaining(ahead)
                },
                retry_after: Duration::from_nanos(allow_at - now),
                reset_after: Duration::from_nanos(ahead),
                next_after: self.next_after(ahead),
            };
            (decision, None)
        }
    }

    /// Time until `remaining(ahead)` goes up by one; zero when the bucket is full.
    pub fn next_after(&self, ahead: u64) -> Duration {
        let remaining = self.remaining(ahead);
        if remaining >= self.burst {
            return Duration::ZERO;
        }
        let free = self.tolerance.saturating_sub(ahead);
        let want = (u64::from(remaining) + 1).saturating_mul(self.interval);
        Duration::from_nanos(want.saturating_sub(free))
    }

    /// Whole requests that still fit when the TAT is `ahead` ns past now.
    fn remaining(&self, ahead: u64) -> u32 {
        let free = self.tolerance.saturating_sub(ahead) / self.interval;
        free.min(u64::from(self.burst)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn gcra(rate: &str, burst: u32) -> Gcra {
        Gcra::new(rate.parse().unwrap(), burst)
    }

    /// Applies a request to `tat` like a store would.
    fn hit(g: &Gcra, tat: &mut u64, now: u64) -> Decision {
        let (d, new) = g.check(*tat, now);
        if let Some(t) = new {
            *tat = t;
        }
        d
    }

    #[test]
    fn next_after_is_the_wait_for_one_more_request() {
        // 10/min burst 10: one request every 6 s. (requests spent at `now`, then one more
        // request `at` seconds later) → that request's (remaining, next_after seconds).
        let g = gcra("10/min", 10);
        let now = 1_000 * SEC;
        let cases: [(u32, u64, u32, u64); 5] = [
            (1, 0, 8, 6),  // two spent: the first is back after one interval
            (10, 0, 0, 6), // empty: rejected, the next fits in 6 s (not 60 s to full)
            (10, 4, 0, 2), // 4 s later: 2 s to go
            (10, 6, 0, 6), // exactly one back: allowed; r=0 again, next in 6 s
            (3, 60, 9, 6), // long after: full before this request, this one spends one
        ];
        for (spent, at, want_r, want_t) in cases {
            let mut tat = 0;
            for _ in 0..spent {
                assert!(hit(&g, &mut tat, now).allowed);
            }
            let d = hit(&g, &mut tat, now + at * SEC);
            assert_eq!(
                (d.remaining, d.next_after),
                (want_r, Duration::from_secs(want_t)),
                "{spent} spent, checked {at} s later"
            );
            if !d.allowed {
                assert_eq!(
                    d.next_after, d.retry_after,
                    "on a rejection t is the retry wait"
                );
            }
        }
        // A full bucket has nothing more to make available.
        let g = gcra("1/s", 1);
        let (d, _) = g.check(0, now);
        assert!(d.allowed);
        let (d, _) = g.check(0, now); // state not stored: still full before, spends one
        assert_eq!(d.next_after, Duration::from_secs(1));
        assert_eq!(g.next_after(0), Duration::ZERO);
    }

    #[test]
    fn fresh_key_gets_exactly_burst_then_rejection() {
        let g = gcra("60/min", 5);
        let now = 1_000 * SEC;
        let mut tat = 0;
        for i in 0..5 {
            let d = hit(&g, &mut tat, now);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.retry_after, Duration::ZERO);
            assert_eq!(d.reset_after, Duration::from_secs(u64::from(i) + 1));
        }
        let d = hit(&g, &mut tat, now);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset_after, Duration::from_secs(5));
    }

    #[test]
    fn works_at_time_zero() {
        let g = gcra("1/s", 1);
        let mut tat = 0;
        assert!(hit(&g, &mut tat, 0).allowed);
        assert!(!hit(&g, &mut tat, 0).allowed);
        assert!(hit(&g, &mut tat, SEC).allowed);
    }

    #[test]
    fn steady_state_one_per_interval_and_exact_retry_after() {
        let g = gcra("10/s", 3);
        let t = SEC / 10;
        let mut tat = 0;
        let start = 50 * SEC;
        for _ in 0..3 {
            assert!(hit(&g, &mut tat, start).allowed);
        }
        let mut now = start;
        for _ in 0..100 {
            let d = hit(&g, &mut tat, now);
            assert!(!d.allowed);
            assert_eq!(d.retry_after, Duration::from_nanos(t));
            // One nanosecond early is still too early; exactly retry_after later fits.
            assert!(!hit(&g, &mut tat, now + t - 1).allowed);
            now += t;
            let d = hit(&g, &mut tat, now);
            assert!(d.allowed);
            assert_eq!(d.remaining, 0);
        }
        // Partial wait: retry_after counts down exactly.
        let d = hit(&g, &mut tat, now + t / 4);
        assert_eq!(d.retry_after, Duration::from_nanos(t - t / 4));
    }

    #[test]
    fn idle_bucket_refills_to_burst_and_no_further() {
        let g = gcra("1/s", 4);
        let mut tat = 0;
        for _ in 0..4 {
            assert!(hit(&g, &mut tat, 10 * SEC).allowed);
        }
        // A long idle period refills to `burst`, not more.
        let now = 1_000 * SEC;
        let mut n = 0;
        while hit(&g, &mut tat, now).allowed {
            n += 1;
        }
        assert_eq!(n, 4);
        // Half refilled after 2 s.
        let d = hit(&g, &mut tat, now + 2 * SEC);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn rejected_requests_do_not_move_state() {
        let g = gcra("1/s", 2);
        let mut tat = 0;
        let now = 5 * SEC;
        hit(&g, &mut tat, now);
        hit(&g, &mut tat, now);
        let before = tat;
        for i in 0..1_000 {
            let (d, new) = g.check(tat, now + i);
            assert!(!d.allowed);
            assert_eq!(new, None);
        }
        assert_eq!(tat, before);
        // Hammering did not push the next allowed time out.
        assert!(hit(&g, &mut tat, now + SEC).allowed);
    }

    #[test]
    fn time_going_backwards_never_grants_extra() {
        let g = gcra("1/s", 2);
        let mut tat = 0;
        let now = 100 * SEC;
        assert!(hit(&g, &mut tat, now).allowed);
        assert!(hit(&g, &mut tat, now).allowed);
        for back in [1, SEC, 50 * SEC, now, u64::MAX] {
            let earlier = now.saturating_sub(back);
            let d = hit(&g, &mut tat, earlier);
            assert!(!d.allowed, "went back {back}");
        }
        // A clock that jumps back from a fresh key is still capped at burst.
        let mut tat = 0;
        let allowed = [now, now - SEC, now - 2 * SEC, 0, 0]
            .into_iter()
            .filter(|&t| hit(&g, &mut tat, t).allowed)
            .count();
        assert!(allowed <= 2, "{allowed}");
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let g = gcra("1/day", 1_000_000);
        let mut tat = 0;
        for now in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            hit(&g, &mut tat, now);
        }
        let g = gcra("1000000000/s", 1);
        let mut tat = 0;
        for now in [u64::MAX, u64::MAX, 0] {
            hit(&g, &mut tat, now);
        }
    }

    /// Sends `factor` × the rate for 600 simulated seconds; counts allowed.
    fn overload(rate: &str, burst: u32, factor: u64) -> (u64, f64) {
        let g = gcra(rate, burst);
        let r: Rate = rate.parse().unwrap();
        // Rounded up so `factor` steps never fall short of one interval: with burst 1 there
        // is no slack, and a sender arriving 1 ns early waits a whole extra step.
        let step = g.interval.div_ceil(factor);
        let start = 7 * SEC;
        let end = start + 600 * SEC;
        let mut tat = 0;
        let mut allowed = 0u64;
        let mut now = start;
        while now <= end {
            if hit(&g, &mut tat, now).allowed {
                allowed += 1;
            }
            now += step;
        }
        let expected = f64::from(burst) + f64::from(r.count) * 600.0 / r.period.as_secs_f64();
        (allowed, expected)
    }

    #[test]
    fn overload_is_held_to_rate_within_one_percent() {
        for rate in ["100/min", "7/s", "3600/hour", "1000/s"] {
            for burst in [1, 10, 100] {
                for factor in [2, 10] {
                    let (allowed, expected) = overload(rate, burst, factor);
                    let err = (allowed as f64 - expected).abs() / expected;
                    assert!(
                        err <= 0.01,
                        "{rate} burst {burst} ×{factor}: {allowed} vs {expected}"
                    );
                }
            }
        }
    }
}
