//! The `gateway_shared_limits_*` metrics. Process-wide, so counters survive a reload that
//! rebuilds the engine; registered with the gateway's registry only while
//! `shared_limits` is configured (so `gateway_shared_limits_up` exists only then).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Round trips to a Redis on the same network: fine below 10 ms; a slow Redis up to the
/// 1 s timeout.
const SYNC_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub const ERROR_KINDS: [&str; 4] = ["timeout", "connect", "noscript", "other"];
pub const DROP_REASONS: [&str; 3] = ["down", "timeout", "evicted"];
pub const FALLBACK_REASONS: [&str; 3] = ["timeout", "error", "down"];
/// `master_switch`: writing to a new Sentinel master; `moved` / `ask`: a Cluster redirect
/// followed; `slots_refresh`: the Cluster slot map read again.
pub const TOPOLOGY_KINDS: [&str; 4] = ["master_switch", "moved", "ask", "slots_refresh"];

pub struct SharedMetrics {
    pub up: IntGauge,
    pub sync_duration: Histogram,
    pub sync_errors: IntCounterVec,
    pub dropped_hits: IntCounterVec,
    pub synced_keys: IntCounter,
    pub replicas: IntGauge,
    pub lag_seconds: prometheus::Gauge,
    pub degraded_decisions: IntCounterVec,
    pub exact_fallbacks: IntCounterVec,
    pub topology_changes: IntCounterVec,
    exported: AtomicBool,
}

impl SharedMetrics {
    pub fn get() -> &'static SharedMetrics {
        static METRICS: OnceLock<SharedMetrics> = OnceLock::new();
        METRICS.get_or_init(SharedMetrics::new)
    }

    fn new() -> SharedMetrics {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let m = SharedMetrics {
            up: IntGauge::new(
                "gateway_shared_limits_up",
                "1 while this replica's shared limits are in sync with Redis, 0 while degraded.",
            )
            .expect("valid metric"),
            sync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "gateway_shared_limits_sync_duration_seconds",
                    "Round trip of one Redis call of the sync loop (flush batch or heartbeat).",
                )
                .buckets(SYNC_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            sync_errors: counter_vec(
                "gateway_shared_limits_sync_errors_total",
                "Failed Redis calls of the sync loop by kind (timeout, connect, noscript, other).",
                &["kind"],
            ),
            dropped_hits: counter_vec(
                "gateway_shared_limits_dropped_hits_total",
                "Admitted hits never charged in Redis: down (degraded), timeout (flush timed out), evicted (local key dropped).",
                &["reason"],
            ),
            synced_keys: IntCounter::new(
                "gateway_shared_limits_synced_keys_total",
                "Key updates sent to Redis.",
            )
            .expect("valid metric"),
            replicas: IntGauge::new(
                "gateway_shared_limits_replicas",
                "Live gateway replicas seen in Redis (last known while degraded).",
            )
            .expect("valid metric"),
            lag_seconds: prometheus::Gauge::new(
                "gateway_shared_limits_lag_seconds",
                "Age of the last good reply from Redis.",
            )
            .expect("valid metric"),
            degraded_decisions: counter_vec(
                "gateway_shared_limits_degraded_decisions_total",
                "Decisions taken locally by shared policies while degraded, by policy and decision (allowed, rejected).",
                &["policy", "decision"],
            ),
            exact_fallbacks: counter_vec(
                "gateway_shared_limits_exact_fallbacks_total",
                "`shared: exact` checks that fell back to on_unavailable, by policy and reason (timeout, error, down).",
                &["policy", "reason"],
            ),
            topology_changes: counter_vec(
                "gateway_shared_limits_topology_changes_total",
                "Redis topology changes followed, by kind (master_switch, moved, ask, slots_refresh).",
                &["kind"],
            ),
            exported: AtomicBool::new(false),
        };
        for k in TOPOLOGY_KINDS {
            m.topology_changes.with_label_values(&[k]);
        }
        for k in ERROR_KINDS {
            m.sync_errors.with_label_values(&[k]);
        }
        for r in DROP_REASONS {
            m.dropped_hits.with_label_values(&[r]);
        }
        m
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.up.clone()),
            Box::new(self.sync_duration.clone()),
            Box::new(self.sync_errors.clone()),
            Box::new(self.dropped_hits.clone()),
            Box::new(self.synced_keys.clone()),
            Box::new(self.replicas.clone()),
            Box::new(self.lag_seconds.clone()),
            Box::new(self.degraded_decisions.clone()),
            Box::new(self.exact_fallbacks.clone()),
            Box::new(self.topology_changes.clone()),
        ]
    }

    /// Adds the metrics to (or removes them from) the gateway's registry. Idempotent.
    pub fn export(&self, registry: &Registry, on: bool) {
        if self.exported.swap(on, Ordering::AcqRel) == on {
            return;
        }
        for c in self.collectors() {
            if on {
                let _ = registry.register(c);
            } else {
                let _ = registry.unregister(c);
            }
        }
    }

    pub fn dropped(&self, reason: &'static str, hits: u64) {
        if hits > 0 {
            self.dropped_hits.with_label_values(&[reason]).inc_by(hits);
        }
    }

    /// One of `TOPOLOGY_KINDS`.
    pub fn topology_change(&self, kind: &'static str) {
        debug_assert!(TOPOLOGY_KINDS.contains(&kind), "{kind}");
        self.topology_changes.with_label_values(&[kind]).inc();
    }

    pub fn sync_error(&self, kind: &'static str) {
        self.sync_errors.with_label_values(&[kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn topology_kinds_are_the_listed_labels() {
        assert_eq!(
            super::TOPOLOGY_KINDS,
            crate::observe::labels::SHARED_TOPOLOGY_CHANGES
        );
    }
}
