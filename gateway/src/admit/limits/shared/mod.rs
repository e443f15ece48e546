//! Rate limits shared across gateway replicas through Redis, with no Redis round trip on
//! the hot path.
//!
//! - `policy`: the local state of one shared policy (pure, time injected). The local GCRA
//!   always decides; each replica may spend only 1/n of the free shared burst between
//!   replies (its lease) and queues the hits it admitted.
//! - `sync`: the background loop that flushes queued hits to Redis (one batch in flight,
//!   ≤ 64 keys per EVALSHA), corrects local state from the reply, counts live replicas and
//!   runs the breaker (degraded after 3 failed calls or 1 s without a good reply).
//! - `exact`: the one awaited call, for `shared: exact` policies.
//! - `link`: every Redis connection (one server, the Sentinel master or the cluster's
//!   routes; ACL user, TLS); `cluster`: the Redis Cluster router.
//! - `script`, `keys`, `config`, `metrics`: the Lua, the Redis key names, the YAML, the
//!   `gateway_shared_limits_*` metrics.

pub mod breaker;
pub mod cluster;
pub mod config;
pub mod exact;
pub mod keys;
pub mod link;
pub mod metrics;
pub mod policy;
pub mod resets;
pub mod script;
pub mod sync;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use config::{HostPort, OnUnavailable, SharedLimitsConfig};
use keys::ClusterSecret;

/// What identifies one Redis deployment; a reload that changes it reconnects.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    pub target: Target,
    /// Redis 6+ ACL user; `None` = the default user.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sentinels' own password (`sentinel:` only).
    pub sentinel_password: Option<String>,
    /// TLS to every node and sentinel; `None` = cleartext.
    pub tls: Option<Tls>,
    pub key_prefix: String,
}

/// Which Redis deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One server, as its URL.
    Single { url: String },
    /// The master Sentinel names.
    Sentinel {
        master: String,
        nodes: Vec<HostPort>,
    },
    /// A Redis Cluster from its seed nodes.
    Cluster { nodes: Vec<HostPort> },
}

/// TLS settings read at load.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tls {
    /// PEM of the private CA; `None` = the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Connection {
    /// One server without ACL user or TLS beyond what the URL says.
    pub fn single(url: &str, password: Option<String>, key_prefix: &str) -> Connection {
        Connection {
            target: Target::Single { url: url.into() },
            username: None,
            password,
            sentinel_password: None,
            tls: url.starts_with("rediss://").then(Tls::default),
            key_prefix: key_prefix.into(),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<set>"),
            )
            .field("tls", &self.tls.as_ref().map(|t| t.ca_pem.is_some()))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Process-wide shared-limits state read by the hot path and written by the sync loop.
pub struct Engine {
    pub connection: Connection,
    pub key_prefix: String,
    pub secret: ClusterSecret,
    pub on_unavailable: OnUnavailable,
    sync_interval_ns: AtomicU64,
    /// The last flush round trip (0 until the first): a slow Redis lengthens the lease.
    round_trip_ns: AtomicU64,
    healthy: AtomicBool,
    replicas: AtomicU32,
    /// Consecutive failed `exact` calls; at 3 they stop waiting until the loop resyncs.
    exact_failures: AtomicU32,
    /// An `exact` call met a cluster redirect: the loop fetches the slot map.
    routes_stale: AtomicBool,
    /// Wakes the sync loop early (a key used half its lease). Never blocks.
    pub flush_signal: Notify,
    /// The live connection, for `exact` calls; `None` while degraded or connecting.
    conn: Mutex<Option<link::Conn>>,
    /// This replica's member name in the replicas set.
    pub replica_id: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connection", &self.connection)
            .field("healthy", &self.is_healthy())
            .field("replicas", &self.replicas())
            .finish_non_exhaustive()
    }
}

/// Failed exact calls after which they stop waiting for Redis.
pub const EXACT_TRIP: u32 = 3;
/// Budget of one `exact` round trip.
pub const EXACT_TIMEOUT: Duration = Duration::from_millis(20);

impl Engine {
    /// Reads the password file (blocking: config load only).
    pub fn from_config(cfg: &SharedLimitsConfig) -> Result<Engine, String> {
        let password = cfg.read_password()?;
        let target = match (&cfg.redis, &cfg.sentinel, &cfg.cluster) {
            (Some(r), _, _) => Target::Single { url: r.url.clone() },
            (_, Some(s), _) => Target::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
            },
            (_, _, Some(c)) => Target::Cluster {
                nodes: c.nodes.clone(),
            },
            _ => return Err("shared_limits: needs one of redis, sentinel or cluster".into()),
        };
        let tls = if cfg.uses_tls() {
            Some(Tls {
                ca_pem: cfg
                    .read_ca()
                    .map_err(|e| format!("shared_limits.tls.ca_file {e}"))?,
            })
        } else {
            None
        };
        Ok(Engine::new(
            Connection {
                target,
                username: cfg.username.clone(),
                password,
                sentinel_password: cfg.read_sentinel_password()?,
                tls,
                key_prefix: cfg.key_prefix.clone(),
            },
            cfg.sync_interval,
            cfg.on_unavailable,
        ))
    }

    pub fn new(connection: Connection, sync_interval: Duration, on: OnUnavailable) -> Engine {
        let secret = ClusterSecret::derive(connection.password.as_deref(), &connection.key_prefix);
        Engine {
            key_prefix: connection.key_prefix.clone(),
            connection,
            secret,
            on_unavailable: on,
            sync_interval_ns: AtomicU64::new(sync_interval.as_nanos() as u64),
            round_trip_ns: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            replicas: AtomicU32::new(1),
            exact_failures: AtomicU32::new(0),
            routes_stale: AtomicBool::new(false),
            flush_signal: Notify::new(),
            conn: Mutex::new(None),
            replica_id: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// The engine to use after a reload: the previous one when Redis and the fleet-wide
    /// defaults are the same (state, connection and counters carry over), else a new one.
    /// A new one starts from the previous fleet size: the fleet did not shrink because this
    /// replica reconnects, and starting from 1 would let every replica spend the whole burst
    /// until its first sync (seen: 46 of 60 admitted against a burst of 24 on 3 replicas).
    pub fn for_reload(
        cfg: &SharedLimitsConfig,
        previous: Option<&std::sync::Arc<Engine>>,
    ) -> Result<std::sync::Arc<Engine>, String> {
        let fresh = Engine::from_config(cfg)?;
        if let Some(prev) = previous {
            if prev.connection == fresh.connection && prev.on_unavailable == fresh.on_unavailable {
                prev.set_sync_interval(cfg.sync_interval);
                return Ok(prev.clone());
            }
            fresh.set_replicas(prev.replicas());
        }
        Ok(std::sync::Arc::new(fresh))
    }

    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
        if up {
            self.exact_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn sync_interval(&self) -> Duration {
        Duration::from_nanos(self.sync_interval_ns.load(Ordering::Relaxed))
    }

    pub fn set_sync_interval(&self, d: Duration) {
        self.sync_interval_ns
            .store(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A lease older than two sync intervals (plus 100 ms, plus two round trips: a loop
    /// cycle also waits for a heartbeat and the reset poll) is stale: the replica takes a
    /// new 1/n share from its own view instead.
    pub fn lease_ttl_ns(&self) -> u64 {
        2 * self.sync_interval_ns.load(Ordering::Relaxed)
            + 100_000_000
            + 2 * self.round_trip_ns.load(Ordering::Relaxed)
    }

    /// Records a flush round trip (capped at the call budget).
    pub fn set_round_trip(&self, d: std::time::Duration) {
        let ns = d.min(link::CALL_TIMEOUT).as_nanos() as u64;
        self.round_trip_ns.store(ns, Ordering::Relaxed);
    }

    pub fn exact_tripped(&self) -> bool {
        self.exact_failures.load(Ordering::Relaxed) >= EXACT_TRIP
    }

    pub fn exact_failed(&self) {
        self.exact_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn exact_succeeded(&self) {
        self.exact_failures.store(0, Ordering::Relaxed);
    }

    /// A cluster slot moved under the request path's routes (never blocks).
    pub fn mark_routes_stale(&self) {
        self.routes_stale.store(true, Ordering::Relaxed);
    }

    pub fn take_routes_stale(&self) -> bool {
        self.routes_stale.swap(false, Ordering::Relaxed)
    }

    pub fn connection_handle(&self) -> Option<link::Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_connection_handle(&self, c: Option<link::Conn>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

/// Monotonic nanoseconds: the clock of every limiter decision and of the sync loop's
/// corrections (they must agree).
pub fn monotonic_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at 1 s so that 0 can keep meaning "never".
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1_000_000_000
}
