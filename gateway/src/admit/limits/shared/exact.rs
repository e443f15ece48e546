//! `shared: exact`: the one Redis round trip on the request path. The pure limiter
//! allowed the request locally and asked for confirmation (`Verdict::confirm`); the proxy
//! adapter awaits `confirm`, which asks Redis within 20 ms. Any failure falls back to the
//! policy's `on_unavailable`, and after 3 failures in a row calls stop waiting at all
//! until the sync loop hears from Redis again.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::policy::SharedPolicy;
use super::sync::call_reloading;
use super::{monotonic_ns, script, EXACT_TIMEOUT};
use crate::admit::limits::gcra::Decision as BucketDecision;
use crate::admit::limits::{Decision, Mode, Verdict};

/// A request the limiter allowed locally that Redis must confirm.
#[derive(Clone)]
pub struct Confirm {
    /// Index into `Verdict::outcomes`.
    pub outcome: usize,
    pub policy: Arc<SharedPolicy>,
    pub mode: Mode,
    pub hash: u64,
    pub id: u128,
    /// The local pre-check's decision (allowed, charged at the whole limit).
    pub local: BucketDecision,
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirm")
            .field("outcome", &self.outcome)
            .field("policy", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Confirm {
    fn eq(&self, other: &Self) -> bool {
        self.outcome == other.outcome
            && Arc::ptr_eq(&self.policy, &other.policy)
            && self.hash == other.hash
    }
}

impl Eq for Confirm {}

/// Asks Redis for every pending confirmation and folds the answers into `verdict`.
/// Stops at the first rejection (later policies are left as the local check said).
pub async fn confirm(verdict: &mut Verdict) {
    for c in std::mem::take(&mut verdict.confirm) {
        if verdict.is_rejected() {
            break;
        }
        let d = check(&c).await;
        let o = &mut verdict.outcomes[c.outcome];
        o.remaining = d.remaining;
        o.reset_after = d.reset_after;
        o.retry_after = d.retry_after;
        o.decision = match (d.allowed, c.mode) {
            (true, _) => Decision::Allowed,
            (false, Mode::Enforce) => Decision::Rejected,
            (false, Mode::Shadow) => Decision::ShadowRejected,
        };
        if o.decision == Decision::Rejected {
            verdict.rejected_by = Some(c.outcome);
        }
    }
    verdict.recompute_report();
}

async fn check(c: &Confirm) -> BucketDecision {
    let engine = &c.policy.engine;
    let conn = if engine.is_healthy() && !engine.exact_tripped() {
        engine.connection_handle()
    } else {
        None
    };
    let Some(conn) = conn else {
        return fall_back(c, "down");
    };
    let g = &c.policy.gcra;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script::EXACT.get_hash())
        .arg(1)
        .arg(c.policy.redis_key(c.id))
        .arg(script::interval_us_arg(g.interval_ns()))
        .arg(g.tolerance_ns() / 1_000);
    // On a cluster: the key's master, so that a NOSCRIPT reloads the scripts there.
    let Some(mut node) = conn.for_command(&cmd) else {
        // No open connection to that slot's master (it just moved): the loop opens one.
        engine.mark_routes_stale();
        return fall_back(c, "down");
    };
    let deadline = tokio::time::Instant::now() + EXACT_TIMEOUT;
    let mut reply =
        tokio::time::timeout_at(deadline, call_reloading(&mut node, &cmd, EXACT_TIMEOUT)).await;
    // A slot that moved before the routes learnt of it (resharding): follow the MOVED once,
    // within the same budget, as a cluster client does; the loop fetches the new map.
    if let Ok(Err(e)) = &reply {
        if let Some(mut moved) = conn.moved_to(e) {
            engine.mark_routes_stale();
            reply =
                tokio::time::timeout_at(deadline, call_reloading(&mut moved, &cmd, EXACT_TIMEOUT))
                    .await;
        }
    }
    let reply = match reply {
        Ok(Ok(v)) => v,
        Ok(Err(e)) if is_redirect(&e) => {
            // The slot moved (cluster failover or resharding): not a failure of Redis. The
            // loop follows the move; this request is decided per `on_unavailable`.
            engine.mark_routes_stale();
            return fall_back(c, "error");
        }
        Ok(Err(e)) => {
            engine.exact_failed();
            if e.is_io_error() || e.is_connection_dropped() {
                // On a cluster, a dead master: the loop fetches the slot map.
                engine.mark_routes_stale();
            }
            let reason = if e.is_timeout() { "timeout" } else { "error" };
            return fall_back(c, reason);
        }
        Err(_) => {
            engine.exact_failed();
            return fall_back(c, "timeout");
        }
    };
    match parse(&reply) {
        Some((allowed, ahead_us)) => {
            engine.exact_succeeded();
            decision(g, allowed, ahead_us.saturating_mul(1_000))
        }
        None => {
            engine.exact_failed();
            fall_back(c, "error")
        }
    }
}

fn is_redirect(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
    )
}

fn parse(v: &Value) -> Option<(bool, u64)> {
    let pair: Vec<i64> = redis::from_redis_value_ref(v).ok()?;
    match pair.as_slice() {
        [allowed, ahead] => Some((*allowed == 1, (*ahead).max(0) as u64)),
        _ => None,
    }
}

/// Redis's answer as a bucket decision: `ahead` is the TAT past now after the charge
/// (allowed) or before it (rejected).
pub fn decision(g: &crate::admit::limits::gcra::Gcra, allowed: bool, ahead: u64) -> BucketDecision {
    let t_e = g.interval_ns();
    let tau = g.tolerance_ns();
    if allowed {
        BucketDecision {
            allowed: true,
            remaining: (tau.saturating_sub(ahead) / t_e).min(u64::from(g.burst())) as u32,
            retry_after: Duration::ZERO,
            reset_after: Duration::from_nanos(ahead),
            next_after: g.next_after(ahead),
        }
    } else {
        let retry_after = Duration::from_nanos((ahead + t_e).saturating_sub(tau).max(1));
        BucketDecision {
            allowed: false,
            remaining: 0,
            retry_after,
            reset_after: Duration::from_nanos(ahead),
            next_after: retry_after,
        }
    }
}

fn fall_back(c: &Confirm, reason: &'static str) -> BucketDecision {
    c.policy.fallback(c.hash, monotonic_ns(), c.local, reason)
}
