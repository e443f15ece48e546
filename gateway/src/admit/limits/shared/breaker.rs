//! The sync loop's circuit breaker, pure over injected time (ns). Degraded after
//! `FAILURES` failed calls in a row or `SILENCE` without a good reply once trouble
//! started; healthy again on the first good reply. It only reports transitions: the loop
//! logs them and flips the engine's flag.

pub const FAILURES: u32 = 3;
pub const SILENCE_NS: u64 = 1_000_000_000;
pub const REMINDER_NS: u64 = 60_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// First good reply since start.
    InSync,
    Degraded {
        reason: String,
    },
    Recovered {
        outage_ns: u64,
        dropped_hits: u64,
    },
}

#[derive(Debug)]
pub struct Breaker {
    up: bool,
    ever_up: bool,
    failures: u32,
    /// First failure (or call without a connection) since the last good reply.
    trouble_since: Option<u64>,
    last_good: Option<u64>,
    down_since: u64,
    last_reminder: u64,
    /// Hits dropped since degraded (for the recovery log line).
    pub dropped_in_outage: u64,
}

impl Breaker {
    pub fn new(now: u64) -> Breaker {
        Breaker {
            up: false,
            ever_up: false,
            failures: 0,
            trouble_since: Some(now),
            last_good: None,
            down_since: now,
            last_reminder: now,
            dropped_in_outage: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Never had a good reply since start.
    pub fn never_up(&self) -> bool {
        !self.ever_up
    }

    pub fn last_good(&self) -> Option<u64> {
        self.last_good
    }

    pub fn on_good(&mut self, now: u64) -> Option<Transition> {
        self.failures = 0;
        self.trouble_since = None;
        self.last_good = Some(now);
        if self.up {
            return None;
        }
        self.up = true;
        if !self.ever_up {
            self.ever_up = true;
            self.dropped_in_outage = 0;
            return Some(Transition::InSync);
        }
        let t = Transition::Recovered {
            outage_ns: now.saturating_sub(self.down_since),
            dropped_hits: self.dropped_in_outage,
        };
        self.dropped_in_outage = 0;
        Some(t)
    }

    pub fn on_failure(&mut self, now: u64, reason: &str) -> Option<Transition> {
        self.failures += 1;
        let since = *self.trouble_since.get_or_insert(now);
        if !self.up {
            return None;
        }
        if self.failures >= FAILURES || now.saturating_sub(since) >= SILENCE_NS {
            return Some(self.degrade(now, format!("{reason} ({} failed calls)", self.failures)));
        }
        None
    }

    /// A periodic check: trouble that lasted `SILENCE` degrades even without 3 failures
    /// (a connect attempt that hangs, say).
    pub fn on_tick(&mut self, now: u64) -> Option<Transition> {
        match self.trouble_since {
            Some(since) if self.up && now.saturating_sub(since) >= SILENCE_NS => {
                Some(self.degrade(now, "no good reply for 1s".into()))
            }
            _ => None,
        }
    }

    /// Marks trouble without counting a failure (e.g. no connection yet).
    pub fn trouble(&mut self, now: u64) {
        self.trouble_since.get_or_insert(now);
    }

    fn degrade(&mut self, now: u64, reason: String) -> Transition {
        self.up = false;
        self.down_since = now;
        self.last_reminder = now;
        self.dropped_in_outage = 0;
        Transition::Degraded { reason }
    }

    /// True once a minute while degraded (or not yet in sync since start).
    pub fn reminder_due(&mut self, now: u64) -> bool {
        if self.up || now.saturating_sub(self.last_reminder) < REMINDER_NS {
            return false;
        }
        self.last_reminder = now;
        true
    }

    pub fn down_for(&self, now: u64) -> u64 {
        if self.up {
            0
        } else {
            now.saturating_sub(self.down_since)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn transitions_table() {
        let mut b = Breaker::new(0);
        assert!(!b.is_up());
        assert_eq!(b.on_failure(10 * MS, "connect"), None, "never up: no WARN");
        assert_eq!(b.on_good(20 * MS), Some(Transition::InSync));
        assert_eq!(b.on_good(30 * MS), None);
        // Two failures then a good reply: still up, counter reset.
        assert_eq!(b.on_failure(40 * MS, "timeout"), None);
        assert_eq!(b.on_failure(50 * MS, "timeout"), None);
        assert_eq!(b.on_good(60 * MS), None);
        assert_eq!(b.on_failure(70 * MS, "timeout"), None);
        assert_eq!(b.on_failure(80 * MS, "timeout"), None);
        match b.on_failure(90 * MS, "timeout") {
            Some(Transition::Degraded { reason }) => {
                assert!(reason.contains("timeout"), "{reason}")
            }
            t => panic!("{t:?}"),
        }
        assert!(!b.is_up());
        assert_eq!(
            b.on_failure(100 * MS, "timeout"),
            None,
            "one WARN per change"
        );
        b.dropped_in_outage = 7;
        assert!(!b.reminder_due(1_000 * MS));
        assert!(b.reminder_due(61_000 * MS));
        assert!(!b.reminder_due(62_000 * MS));
        assert_eq!(
            b.on_good(90 * MS + 5_000 * MS),
            Some(Transition::Recovered {
                outage_ns: 5_000 * MS,
                dropped_hits: 7
            })
        );
    }

    #[test]
    fn silence_degrades_without_three_failures() {
        let mut b = Breaker::new(0);
        b.on_good(0);
        assert_eq!(b.on_tick(2_000 * MS), None, "no trouble, no degrade");
        assert_eq!(b.on_failure(100 * MS, "connect"), None);
        assert_eq!(b.on_tick(900 * MS), None);
        assert!(matches!(
            b.on_tick(1_100 * MS),
            Some(Transition::Degraded { .. })
        ));
        let mut b = Breaker::new(0);
        b.on_good(0);
        b.trouble(10 * MS);
        assert!(matches!(
            b.on_failure(1_200 * MS, "connect"),
            Some(Transition::Degraded { .. })
        ));
    }
}
