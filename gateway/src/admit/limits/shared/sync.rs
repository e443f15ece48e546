//! The background sync loop: one per process, never on the request path. Flushes queued
//! hits (one flush in flight, ≤ 64 keys per EVALSHA, all batches in one pipeline),
//! corrects local state from the replies, heartbeats the replica count every second and
//! runs the breaker. While degraded it drops unsent hits (never replayed) and probes Redis
//! once a second on a fresh connection: redis-rs keeps a hung socket after a timeout.
//! Slow is not down: a call may take up to `CALL_TIMEOUT` (1 s) off the request path;
//! only a Redis that does not answer for 1 s (or fails 3 calls in a row) degrades. Every
//! connection comes from the `Link` (one server, the Sentinel master, or a cluster: there
//! flushes go out per slot through the `ClusterLink`, redirects followed, and one good call
//! is enough to stay in sync while another master fails over).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Value;

use super::breaker::{Breaker, Transition};
use super::cluster::{slots, Call, CallError};
use super::link::{Change, Conn, Link};
use super::metrics::SharedMetrics;
use super::policy::{FlushItem, SharedPolicy};
use super::script::{self, MAX_KEYS_PER_CALL};
use super::{keys, monotonic_ns, Engine};

pub use super::link::{CALL_TIMEOUT, CONNECT_TIMEOUT};
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica missing from the set for this long no longer counts.
pub const REPLICA_WINDOW_MS: u64 = 5_000;
/// Most keys in one flush (16 calls of 64); the rest stay queued for the next one.
const MAX_KEYS_PER_FLUSH: usize = 16 * MAX_KEYS_PER_CALL;
const PURGE_EVERY_NS: u64 = 1_000_000_000;
/// Budget for opening connections to a new slot map's masters: short, since a node that
/// does not answer must not hold up the loop (a flush to it connects on its own).
const MASTERS_CONNECT: Duration = Duration::from_millis(250);

/// What the loop syncs right now: the live engine and its shared policies.
pub struct Snapshot {
    pub engine: Arc<Engine>,
    pub policies: Vec<Arc<SharedPolicy>>,
}

/// Runs forever. `source` returns the current config's engine and policies (it changes
/// on reload); `export` adds or removes the metrics from `/metrics`.
pub async fn run(source: impl Fn() -> Option<Snapshot>, export: impl Fn(bool)) {
    let mut driver: Option<Driver> = None;
    loop {
        let Some(snap) = source() else {
            if let Some(d) = driver.take() {
                d.shutdown();
            }
            export(false);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if driver
            .as_ref()
            .is_none_or(|d| !Arc::ptr_eq(&d.engine, &snap.engine))
        {
            if let Some(d) = driver.take() {
                tracing::info!(target: "shared_limits", "shared_limits changed; reconnecting");
                d.shutdown();
            }
            match Driver::new(snap.engine.clone()) {
                Ok(d) => driver = Some(d),
                Err(e) => {
                    // Validated at load, so this is unexpected; keep enforcing locally.
                    tracing::error!(target: "shared_limits", error = %e, "cannot use the Redis URL");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        export(true);
        let d = driver.as_mut().expect("set above");
        d.step(&snap.policies).await;
    }
}

struct Driver {
    engine: Arc<Engine>,
    link: Link,
    conn: Option<Conn>,
    breaker: Breaker,
    next_flush: u64,
    next_heartbeat: u64,
    next_probe: u64,
    next_purge: u64,
    replicas_key: String,
    warned_at_start: bool,
    /// A refusal (ACL, password, TLS) was logged since the last good reply.
    refusal_logged: bool,
    /// The cluster slot maps fetched when the routes were last published.
    published_refreshes: u64,
    resets: super::resets::Feed,
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

fn error_kind(e: &redis::RedisError) -> &'static str {
    if is_noscript(e) {
        "noscript"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "connect"
    } else {
        "other"
    }
}

/// A refusal the operator must fix (ACL, password, TLS), logged once per state change
/// with its cause; everything else is logged at debug.
fn is_refusal(e: &redis::RedisError) -> bool {
    if matches!(e.code(), Some("NOPERM" | "NOAUTH" | "WRONGPASS"))
        || e.kind() == redis::ErrorKind::AuthenticationFailed
    {
        return true;
    }
    // A script calling a command the ACL denies; a TLS peer that cannot be verified.
    let text = e.to_string().to_ascii_lowercase();
    text.contains("no permissions")
        || text.contains("can't run this command")
        || text.contains("certificate")
        || text.contains("noperm")
        || text.contains("wrongpass")
        || text.contains("noauth")
}

/// Spreads probes and first flushes so a fleet does not hit Redis in lockstep.
fn jitter(max_ns: u64) -> u64 {
    if max_ns == 0 {
        0
    } else {
        rand::random::<u64>() % max_ns
    }
}

impl Driver {
    fn new(engine: Arc<Engine>) -> Result<Driver, String> {
        let link = Link::new(&engine.connection)?;
        let now = monotonic_ns();
        Ok(Driver {
            replicas_key: keys::replicas_key(&engine.key_prefix),
            engine,
            link,
            conn: None,
            breaker: Breaker::new(now),
            next_flush: now,
            next_heartbeat: now,
            next_probe: now,
            next_purge: now,
            warned_at_start: false,
            refusal_logged: false,
            published_refreshes: 0,
            resets: Default::default(),
        })
    }

    fn shutdown(self) {
        self.engine.set_healthy(false);
        self.engine.set_connection_handle(None);
    }

    async fn connect(&mut self) -> Result<Conn, redis::RedisError> {
        self.link.connect().await
    }

    async fn step(&mut self, policies: &[Arc<SharedPolicy>]) {
        let now = monotonic_ns();
        let wake = if self.breaker.is_up() {
            self.next_flush.min(self.next_heartbeat)
        } else {
            self.next_probe
        };
        let wait = Duration::from_nanos(wake.saturating_sub(now)).min(Duration::from_millis(250));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.engine.flush_signal.notified(), if self.breaker.is_up() => {
                self.next_flush = self.next_flush.min(monotonic_ns());
            }
        }
        if self.engine.take_routes_stale() {
            if let Some(c) = self.link.cluster() {
                c.schedule_refresh();
            }
        }
        if let Some(Change::MasterMoved { from, to }) = self.link.changed() {
            // The sentinels promoted another node: stop writing to the old one now (it
            // stays writable for a while), the next call connects to the new one.
            tracing::info!(target: "shared_limits", %from, %to, "the sentinels name a new master; reconnecting");
            self.drop_conn();
        }
        let now = monotonic_ns();
        if self.breaker.is_up() {
            if now >= self.next_heartbeat {
                self.heartbeat().await;
            }
            let now = monotonic_ns();
            if self.breaker.is_up() && now >= self.next_flush {
                self.next_flush = now + self.engine.sync_interval().as_nanos() as u64;
                // Before the flush, so hits a reset cleared are not sent.
                if self.poll_resets(policies).await {
                    self.flush(policies).await;
                }
            }
        } else {
            // Degraded: drop what accumulated (never replayed), probe now and then.
            let dropped: u64 = policies.iter().map(|p| p.drop_pending()).sum();
            self.breaker.dropped_in_outage += dropped;
            SharedMetrics::get().dropped("down", dropped);
            if now >= self.next_probe {
                self.next_probe = now + 900_000_000 + jitter(200_000_000);
                self.probe().await;
            }
        }
        let now = monotonic_ns();
        if let Some(t) = self.breaker.on_tick(now) {
            self.transition(t, policies);
        }
        if self.breaker.reminder_due(now) {
            tracing::warn!(
                target: "shared_limits",
                down_for_s = self.breaker.down_for(now) / 1_000_000_000,
                dropped_hits = self.breaker.dropped_in_outage,
                "shared limits still degraded: Redis unavailable, enforcing locally"
            );
        }
        if now >= self.next_purge {
            self.next_purge = now + PURGE_EVERY_NS;
            for p in policies {
                p.purge(now);
            }
        }
        let m = SharedMetrics::get();
        m.up.set(i64::from(self.breaker.is_up()));
        m.replicas.set(i64::from(self.engine.replicas()));
        if let Some(g) = self.breaker.last_good() {
            m.lag_seconds.set(now.saturating_sub(g) as f64 / 1e9);
        }
    }

    fn transition(&mut self, t: Transition, policies: &[Arc<SharedPolicy>]) {
        match t {
            Transition::InSync => {
                self.engine.set_healthy(true);
                // A fleet started together must not flush in lockstep.
                let t = self.engine.sync_interval().as_nanos() as u64;
                self.next_flush = monotonic_ns() + jitter(t);
                tracing::info!(
                    target: "shared_limits",
                    replicas = self.engine.replicas(),
                    "shared limits in sync with Redis"
                );
            }
            Transition::Recovered {
                outage_ns,
                dropped_hits,
            } => {
                self.engine.set_healthy(true);
                // Stagger the first flush over one interval.
                let t = self.engine.sync_interval().as_nanos() as u64;
                self.next_flush = monotonic_ns() + jitter(t);
                tracing::info!(
                    target: "shared_limits",
                    outage_ms = outage_ns / 1_000_000,
                    dropped_hits,
                    replicas = self.engine.replicas(),
                    "shared limits back in sync with Redis"
                );
            }
            Transition::Degraded { reason } => {
                self.engine.set_healthy(false);
                self.engine.set_connection_handle(None);
                self.conn = None;
                let dropped: u64 = policies.iter().map(|p| p.drop_pending()).sum();
                self.breaker.dropped_in_outage += dropped;
                SharedMetrics::get().dropped("down", dropped);
                self.next_probe = monotonic_ns() + 900_000_000 + jitter(200_000_000);
                tracing::warn!(
                    target: "shared_limits",
                    %reason,
                    replicas = self.engine.replicas(),
                    "shared limits degraded: Redis unavailable, enforcing locally per on_unavailable"
                );
            }
        }
    }

    fn drop_conn(&mut self) {
        self.conn = None;
        self.engine.set_connection_handle(None);
    }

    /// A call sent at `sent` failed: no reply since then counts as silence.
    fn fail(
        &mut self,
        kind: &'static str,
        e: &redis::RedisError,
        sent: u64,
        policies: &[Arc<SharedPolicy>],
    ) {
        SharedMetrics::get().sync_error(kind);
        tracing::debug!(target: "shared_limits", kind, error = %e, "Redis call failed");
        if kind != "noscript" {
            // A timed-out socket may be hung (SIGSTOP, blackhole): never reuse it.
            self.drop_conn();
        }
        self.breaker.trouble(sent);
        if let Some(t) = self
            .breaker
            .on_failure(monotonic_ns(), &format!("{kind}: {e}"))
        {
            self.transition(t, policies);
        }
        self.link.failed(e);
        if is_refusal(e) {
            self.refused(e);
        }
    }

    /// Logs a refusal (ACL, password, TLS) once until the next good reply.
    fn refused(&mut self, e: &redis::RedisError) {
        if !self.refusal_logged {
            self.refusal_logged = true;
            tracing::error!(
                target: "shared_limits",
                error = %e,
                to = %self.link.describe(),
                "Redis refuses this gateway (check shared_limits.username, password_file, the ACL and tls.ca_file); enforcing locally per on_unavailable"
            );
        }
    }

    async fn ensure_conn(&mut self) -> Option<Conn> {
        if let Some(c) = &self.conn {
            return Some(c.clone());
        }
        let started = monotonic_ns();
        match self.connect().await {
            Ok(c) => {
                self.conn = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                self.fail("connect", &e, started, &[]);
                None
            }
        }
    }

    /// Applies resets other replicas published. False when the call failed: it counts as a
    /// failed call (a hung Redis must not cost a second timeout in the flush after it).
    async fn poll_resets(&mut self, policies: &[Arc<SharedPolicy>]) -> bool {
        let Some(mut conn) = self.conn.clone() else {
            return true;
        };
        let prefix = self.engine.key_prefix.clone();
        let sent = monotonic_ns();
        let r = tokio::time::timeout(CALL_TIMEOUT, self.resets.poll(&mut conn, &prefix, policies))
            .await
            .unwrap_or_else(|_| Err(timeout_error()));
        match r {
            Ok(_) => true,
            Err(e) if self.link.cluster().is_some() => {
                // One slot's master may be failing over while the others answer: the flush's
                // own replies decide the state. The routes are refreshed for the next poll.
                SharedMetrics::get().sync_error(error_kind(&e));
                tracing::debug!(target: "shared_limits", error = %e, "reading resets failed");
                self.link.failed(&e);
                true
            }
            Err(e) => {
                self.fail(error_kind(&e), &e, sent, policies);
                false
            }
        }
    }

    /// One heartbeat: this replica is alive, and how many are.
    async fn heartbeat(&mut self) {
        self.next_heartbeat = monotonic_ns() + HEARTBEAT_EVERY.as_nanos() as u64;
        let Some(mut conn) = self.ensure_conn().await else {
            return;
        };
        let sent = monotonic_ns();
        match self.heartbeat_call(&mut conn).await {
            Ok(n) => {
                self.engine.set_replicas(n);
                self.publish(conn).await;
                self.good();
            }
            Err(e) => self.fail(error_kind(&e), &e, sent, &[]),
        }
    }

    /// The connection `exact`, resets and the next poll use; on a cluster, the routes as
    /// the last run left them (redirects followed, nodes reconnected). After a new slot map
    /// the masters it names get a connection (scripts loaded), so `exact` reaches a promoted
    /// replica even when no flush goes there.
    async fn publish(&mut self, conn: Conn) {
        let conn = match self.link.cluster() {
            Some(c) => {
                let refreshes = c.stats().slots_refresh;
                if refreshes != self.published_refreshes {
                    self.published_refreshes = refreshes;
                    c.connect_masters(tokio::time::Instant::now() + MASTERS_CONNECT)
                        .await;
                }
                Conn::Cluster(c.routes())
            }
            None => conn,
        };
        self.conn = Some(conn.clone());
        self.engine.set_connection_handle(Some(conn));
    }

    async fn heartbeat_call(&mut self, conn: &mut Conn) -> redis::RedisResult<u32> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script::HEARTBEAT.get_hash())
            .arg(1)
            .arg(&self.replicas_key)
            .arg(&self.engine.replica_id)
            .arg(REPLICA_WINDOW_MS);
        let started = std::time::Instant::now();
        let slot = slots::slot_of(self.replicas_key.as_bytes());
        let r = match self.link.cluster() {
            Some(c) => {
                let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
                c.call(slot, cmd, deadline)
                    .await
                    .map_err(redis::RedisError::from)
            }
            None => call_reloading(conn, &cmd, CALL_TIMEOUT).await,
        };
        SharedMetrics::get()
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        let n: i64 = redis::from_redis_value(r?)?;
        Ok(n.clamp(1, i64::from(u32::MAX)) as u32)
    }

    fn good(&mut self) {
        // Redis answers again: `exact` calls may wait for it again.
        self.engine.exact_succeeded();
        self.refusal_logged = false;
        if let Some(t) = self.breaker.on_good(monotonic_ns()) {
            self.transition(t, &[]);
        }
    }

    /// Degraded: try a fresh connection; healthy again on the first good reply.
    async fn probe(&mut self) {
        self.conn = None;
        let conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                SharedMetrics::get().sync_error("connect");
                self.link.failed(&e);
                self.probe_failed(&e);
                return;
            }
        };
        let mut c = conn.clone();
        match self.heartbeat_call(&mut c).await {
            Ok(n) => {
                self.engine.set_replicas(n);
                self.publish(conn).await;
                self.next_heartbeat = monotonic_ns() + HEARTBEAT_EVERY.as_nanos() as u64;
                self.good();
            }
            Err(e) => {
                SharedMetrics::get().sync_error(error_kind(&e));
                self.link.failed(&e);
                self.probe_failed(&e);
            }
        }
    }

    fn probe_failed(&mut self, e: &redis::RedisError) {
        if is_refusal(e) {
            self.refused(e);
        }
        if self.breaker.never_up() && !self.warned_at_start {
            // Never in sync since start: that state change deserves its WARN too.
            self.warned_at_start = true;
            tracing::warn!(
                target: "shared_limits",
                reason = %format!("{}: {e}", error_kind(e)),
                "shared limits not in sync: Redis unavailable since start, enforcing locally per on_unavailable"
            );
        } else {
            tracing::debug!(target: "shared_limits", error = %e, "probe failed");
        }
    }

    async fn flush(&mut self, policies: &[Arc<SharedPolicy>]) {
        // (policy, item) pairs, at most MAX_KEYS_PER_FLUSH.
        let mut batch: Vec<(&Arc<SharedPolicy>, FlushItem)> = Vec::new();
        for p in policies {
            let room = MAX_KEYS_PER_FLUSH - batch.len();
            if room == 0 {
                break;
            }
            batch.extend(p.take_dirty(room).into_iter().map(|i| (p, i)));
        }
        if batch.is_empty() {
            return;
        }
        let Some(mut conn) = self.ensure_conn().await else {
            for (p, i) in &batch {
                p.requeue(i);
            }
            return;
        };
        if self.link.cluster().is_some() {
            self.flush_cluster(batch, conn, policies).await;
            return;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for chunk in batch.chunks(MAX_KEYS_PER_CALL) {
            pipe.add_command(flush_cmd(chunk));
        }
        let m = SharedMetrics::get();
        let sent = std::time::Instant::now();
        let t_send = monotonic_ns();
        let mut result =
            tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<Vec<Value>>(&mut conn))
                .await
                .map_err(|_| timeout_error());
        // NOSCRIPT (Redis restarted or SCRIPT FLUSH): load and retry once. Nothing ran.
        if let Ok(Ok(values)) = &result {
            if values
                .iter()
                .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
            {
                m.sync_error("noscript");
                if load_scripts(&mut conn).await.is_ok() {
                    result = tokio::time::timeout(
                        CALL_TIMEOUT,
                        pipe.query_async::<Vec<Value>>(&mut conn),
                    )
                    .await
                    .map_err(|_| timeout_error());
                }
            }
        }
        let t_reply = monotonic_ns();
        m.sync_duration.observe(sent.elapsed().as_secs_f64());
        self.engine.set_round_trip(sent.elapsed());
        let values = match result {
            Ok(Ok(v)) => v,
            Ok(Err(e)) | Err(e) => {
                let kind = error_kind(&e);
                if kind == "timeout" {
                    // Probably ran: charging again would count the hits twice.
                    let hits: u64 = batch.iter().map(|(_, i)| u64::from(i.hits)).sum();
                    m.dropped("timeout", hits);
                    for (p, i) in &batch {
                        p.forget_inflight(i);
                    }
                } else {
                    for (p, i) in &batch {
                        p.requeue(i);
                    }
                }
                self.fail(kind, &e, t_send, policies);
                return;
            }
        };
        let t_exec = t_send + (t_reply - t_send) / 2;
        let mut again = false;
        let mut failed: Option<redis::RedisError> = None;
        for (chunk, value) in batch.chunks(MAX_KEYS_PER_CALL).zip(values) {
            if let Value::ServerError(e) = &value {
                if matches!(e.code(), "READONLY" | "NOPERM" | "NOAUTH") {
                    // Refused before the script ran (a demoted master, the ACL): nothing
                    // was charged, so the hits go out again with the next flush.
                    for (p, i) in chunk {
                        p.requeue(i);
                    }
                    failed = Some(redis::RedisError::from(e.clone()));
                    continue;
                }
            }
            match redis::from_redis_value::<Vec<i64>>(value) {
                Ok(aheads) if aheads.len() == chunk.len() => {
                    again |= apply_replies(chunk, &aheads, t_exec);
                }
                other => {
                    let hits: u64 = chunk.iter().map(|(_, i)| u64::from(i.hits)).sum();
                    m.dropped("down", hits);
                    for (p, i) in chunk {
                        p.forget_inflight(i);
                    }
                    failed = Some(match other {
                        Err(e) => e.into(),
                        Ok(v) => redis::RedisError::from((
                            redis::ErrorKind::UnexpectedReturnType,
                            "flush reply",
                            format!("{} replies for {} keys", v.len(), chunk.len()),
                        )),
                    });
                }
            }
        }
        match failed {
            Some(e) => self.fail("other", &e, t_send, policies),
            None => {
                self.publish(conn).await;
                self.good();
            }
        }
        if again {
            // A lease already half used by hits that arrived during the round trip.
            self.next_flush = monotonic_ns();
        }
    }

    /// A flush on a cluster: one call per slot (≤ 64 keys, never across slots), a pipeline
    /// per node, redirects followed by the router. Each call's keys are applied, requeued
    /// (never sent, or refused before the script ran) or forgotten (may have run) on their
    /// own; one good call keeps the replica in sync.
    async fn flush_cluster(
        &mut self,
        batch: Vec<(&Arc<SharedPolicy>, FlushItem)>,
        conn: Conn,
        policies: &[Arc<SharedPolicy>],
    ) {
        let groups = keys::flush_calls(batch, |(_, i)| i.id, MAX_KEYS_PER_CALL);
        let calls = groups
            .iter()
            .map(|(slot, chunk)| Call {
                slot: *slot,
                cmd: flush_cmd(chunk),
            })
            .collect();
        let m = SharedMetrics::get();
        let sent = std::time::Instant::now();
        let t_send = monotonic_ns();
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let cluster = self.link.cluster().expect("checked by the caller");
        let results = cluster.run(calls, deadline).await;
        let t_reply = monotonic_ns();
        m.sync_duration.observe(sent.elapsed().as_secs_f64());
        self.engine.set_round_trip(sent.elapsed());
        let t_exec = t_send + (t_reply - t_send) / 2;
        let (mut again, mut good) = (false, false);
        let mut first_error: Option<CallError> = None;
        for ((_, chunk), result) in groups.iter().zip(results) {
            let hits = || chunk.iter().map(|(_, i)| u64::from(i.hits)).sum::<u64>();
            let error = match result.map(redis::from_redis_value::<Vec<i64>>) {
                Ok(Ok(aheads)) if aheads.len() == chunk.len() => {
                    good = true;
                    again |= apply_replies(chunk, &aheads, t_exec);
                    continue;
                }
                Ok(other) => {
                    m.dropped("down", hits());
                    chunk.iter().for_each(|(p, i)| p.forget_inflight(i));
                    CallError::Server {
                        code: "ERR".into(),
                        detail: match other {
                            Err(e) => e.to_string(),
                            Ok(v) => format!("{} replies for {} keys", v.len(), chunk.len()),
                        },
                    }
                }
                Err(e) if e.may_have_run() => {
                    // Probably ran: charging again would count the hits twice.
                    m.dropped("timeout", hits());
                    chunk.iter().for_each(|(p, i)| p.forget_inflight(i));
                    e
                }
                Err(e) => {
                    chunk.iter().for_each(|(p, i)| p.requeue(i));
                    e
                }
            };
            // Every failed call is counted; the first one below, with the breaker's verdict.
            match first_error {
                None => first_error = Some(error),
                Some(_) => m.sync_error(error.kind()),
            }
        }
        if good {
            if let Some(e) = &first_error {
                m.sync_error(e.kind());
                tracing::debug!(target: "shared_limits", error = %e, "some cluster calls failed; the rest synced");
            }
            self.publish(conn).await;
            self.good();
        } else if let Some(e) = first_error {
            let kind = e.kind();
            self.fail(kind, &e.into(), t_send, policies);
        }
        if again {
            self.next_flush = monotonic_ns();
        }
    }
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis call timed out",
    ))
}

/// Corrects each key of one flush call from Redis's reply (its TAT ahead of Redis's now,
/// in µs). True when a lease is already half used again.
fn apply_replies(chunk: &[(&Arc<SharedPolicy>, FlushItem)], aheads: &[i64], t_exec: u64) -> bool {
    SharedMetrics::get().synced_keys.inc_by(chunk.len() as u64);
    let mut again = false;
    for ((p, item), ahead_us) in chunk.iter().zip(aheads) {
        let ahead = ((*ahead_us).max(0) as u64).saturating_mul(1_000);
        again |= p.apply_reply(item, ahead, t_exec);
    }
    again
}

fn flush_cmd(chunk: &[(&Arc<SharedPolicy>, FlushItem)]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script::FLUSH.get_hash()).arg(chunk.len());
    for (p, item) in chunk {
        cmd.arg(p.redis_key(item.id));
    }
    for (p, item) in chunk {
        cmd.arg(script::interval_us_arg(p.gcra.interval_ns()))
            .arg(item.hits);
    }
    cmd
}

/// Loads every script (after NOSCRIPT: Redis restarted, failed over or `SCRIPT FLUSH`).
pub async fn load_scripts<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for code in [script::FLUSH_LUA, script::EXACT_LUA, script::HEARTBEAT_LUA] {
        pipe.cmd("SCRIPT").arg("LOAD").arg(code);
    }
    tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<Vec<String>>(conn))
        .await
        .map_err(|_| timeout_error())?
        .map(|_| ())
}

/// One EVALSHA within `budget`; on NOSCRIPT, `SCRIPT LOAD` and one retry.
pub async fn call_reloading<C: ConnectionLike + Send>(
    conn: &mut C,
    cmd: &redis::Cmd,
    budget: Duration,
) -> redis::RedisResult<Value> {
    let first = tokio::time::timeout(budget, cmd.query_async::<Value>(conn))
        .await
        .map_err(|_| timeout_error())?;
    match first {
        Err(e) if is_noscript(&e) => {
            SharedMetrics::get().sync_error("noscript");
            load_scripts(conn).await?;
            tokio::time::timeout(budget, cmd.query_async::<Value>(conn))
                .await
                .map_err(|_| timeout_error())?
        }
        r => r,
    }
}
