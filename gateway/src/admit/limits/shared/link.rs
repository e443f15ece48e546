//! The one way the sync loop, `exact` and resets reach Redis: a `Link` gives a connection
//! to the current writable master (one server, or the master Sentinel names, verified
//! with `ROLE`), with the deployment's ACL user, password and TLS (a private CA or the
//! system roots; never cleartext when TLS is configured), or, on a Redis Cluster, the
//! `ClusterLink` and its routes. It reports master switches and is told of failed calls
//! so a `READONLY`, a redirect or a dead node means a fresh ask.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::cluster::slots::NodeAddr;
use super::cluster::{ClusterLink, Observer, Routes};
use super::config::HostPort;
use super::metrics::SharedMetrics;
use super::script::{EXACT_LUA, FLUSH_LUA, HEARTBEAT_LUA};
use super::{Connection, Target};

/// Budget of one flush, heartbeat or reset poll round trip, off the request path: a Redis
/// answering within 500 ms stays in sync; no reply for 1 s is the breaker's silence rule.
/// A timed-out flush is not retried (it probably ran).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Includes TCP, TLS and the pipelined handshake (AUTH/HELLO, SELECT): a Redis that
/// answers within 500 ms must connect; a SIGSTOP'd one accepts TCP but never answers.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Budget of one question to one sentinel (connect included).
pub const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the sentinels are asked whether the master moved (a promoted replica is
/// writable at once, the old master stays writable for ~10 s: errors alone come late).
pub const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Every command the gateway sends to a Redis node, the ones its Lua scripts call included
/// (Redis 7 checks those against the ACL too): the least-privilege ACL user gets exactly
/// these (`gateway/tests/shared_redis_auth.rs` checks that one fewer fails). `select` is
/// sent only when the URL names a database other than 0, `role` only with Sentinel.
pub const ACL_COMMANDS: &[&str] = &[
    // the sync loop and `exact`: scripts, loaded again after NOSCRIPT
    "evalsha",
    "script|load",
    // inside the Lua (script.rs)
    "time",
    "get",
    "set",
    "zadd",
    "zremrangebyscore",
    "pexpire",
    "zcard",
    // fleet resets (resets.rs): published in one MULTI (redis-rs sends INCR as INCRBY),
    // polled each tick
    "multi",
    "exec",
    "del",
    "lpush",
    "ltrim",
    "incrby",
    "lrange",
    // the handshake (db ≠ 0) and the Sentinel master check
    "select",
    "role",
];

/// What a Redis Cluster needs on top of `ACL_COMMANDS`: the slot map and `ASK` redirects
/// (`gateway/tests/shared_cluster_fleet.rs` runs its fleet as a user with exactly these).
pub const ACL_CLUSTER_COMMANDS: &[&str] = &["cluster|slots", "asking"];

/// The ACL rule of the gateway's user: `user <name> on ><password> <acl_rule(prefix)>`.
pub fn acl_rule(key_prefix: &str) -> String {
    let mut rule = format!("resetkeys ~{key_prefix}:* resetchannels -@all");
    for c in ACL_COMMANDS {
        rule.push_str(" +");
        rule.push_str(c);
    }
    rule
}

/// A connection the `Link` handed out: what the sync loop, `exact` and resets send their
/// commands on (cheap to clone, multiplexed).
#[derive(Clone)]
pub enum Conn {
    /// One Redis node: the server, or the master Sentinel named.
    Node(MultiplexedConnection),
    /// A cluster's open connections: each command goes to its key's master. A redirect is
    /// returned, not followed (the sync loop's `ClusterLink` follows them and publishes
    /// fresh routes); nothing here ever waits for a connection.
    Cluster(Routes),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(r) => match r.connection_for_cmd(cmd) {
                Some(mut c) => Box::pin(async move { c.req_packed_command(cmd).await }),
                None => Box::pin(async { Err(no_route()) }),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            // The caller keeps a pipeline's keys on one slot (a `MULTI` may not cross slots).
            Conn::Cluster(r) => match r.connection_for_pipeline(pipeline) {
                Some(mut c) => {
                    Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
                }
                None => Box::pin(async { Err(no_route()) }),
            },
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

impl Conn {
    /// The connection `cmd` goes to: itself, or on a cluster the open connection to the
    /// master of the command's first key (`None` when there is none).
    pub fn for_command(&self, cmd: &redis::Cmd) -> Option<Conn> {
        match self {
            Conn::Node(_) => Some(self.clone()),
            Conn::Cluster(r) => r.connection_for_cmd(cmd).map(Conn::Node),
        }
    }

    /// On a cluster, the open connection a `MOVED` error points at (a slot that moved
    /// before the routes learnt of it).
    pub fn moved_to(&self, e: &redis::RedisError) -> Option<Conn> {
        match self {
            Conn::Cluster(r) => r
                .connection_for_moved(e.code()?, e.detail())
                .map(Conn::Node),
            Conn::Node(_) => None,
        }
    }
}

fn no_route() -> redis::RedisError {
    io_error(
        std::io::ErrorKind::NotConnected,
        "no open connection to the slot's master yet",
    )
}

/// Where the sync loop's connections go.
pub enum Link {
    /// One server (`redis:`).
    Single(Box<Client>),
    /// The master Sentinel names (`sentinel:`).
    Sentinel(Box<SentinelLink>),
    /// A Redis Cluster (`cluster:`): the slot map and one connection per node.
    Cluster(Box<ClusterLink>),
}

/// A master change the link noticed, for the loop to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The sentinels name another master: drop the connection, connect again.
    MasterMoved { from: String, to: String },
}

impl Link {
    /// Builds clients only (no I/O).
    pub fn new(c: &Connection) -> Result<Link, String> {
        if c.tls.is_some() {
            // rustls needs a process-wide provider; a second install is a harmless no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match &c.target {
            Target::Single { url } => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| e.to_string())?;
                Ok(Link::Single(Box::new(client(
                    c,
                    info,
                    c.username.as_deref(),
                    c.password.as_deref(),
                )?)))
            }
            Target::Sentinel { master, nodes } => {
                let sentinels = nodes
                    .iter()
                    .map(|n| {
                        let info = addr(c, n)
                            .into_connection_info()
                            .map_err(|e| e.to_string())?;
                        client(c, info, None, c.sentinel_password.as_deref())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let (tx, rx) = tokio::sync::watch::channel(None);
                let asker = Asker {
                    master: master.clone(),
                    sentinels,
                    conns: vec![None; nodes.len()],
                    next: 0,
                };
                Ok(Link::Sentinel(Box::new(SentinelLink {
                    connection: c.clone(),
                    asker,
                    current: None,
                    announced: rx,
                    announce: Some(tx),
                    watcher: None,
                })))
            }
            Target::Cluster { nodes } => {
                let seeds = nodes
                    .iter()
                    .map(|n| NodeAddr {
                        host: n.host.clone(),
                        port: n.port,
                    })
                    .collect::<Vec<_>>();
                let first = seeds
                    .first()
                    .ok_or("shared_limits.cluster.nodes is empty")?;
                let info = addr(
                    c,
                    &HostPort {
                        host: first.host.clone(),
                        port: first.port,
                    },
                )
                .into_connection_info()
                .map_err(|e| e.to_string())?;
                // The template carries the ACL user, password, TCP settings and TLS roots.
                let template = client(c, info, c.username.as_deref(), c.password.as_deref())?
                    .get_connection_info()
                    .clone();
                let observer: Observer =
                    std::sync::Arc::new(|kind| SharedMetrics::get().topology_change(kind));
                Ok(Link::Cluster(Box::new(
                    ClusterLink::new(template, seeds)
                        .with_scripts(&[FLUSH_LUA, EXACT_LUA, HEARTBEAT_LUA])
                        .with_connect_timeout(CONNECT_TIMEOUT)
                        .with_observer(observer),
                )))
            }
        }
    }

    /// The cluster router, when the link is one.
    pub fn cluster(&mut self) -> Option<&mut ClusterLink> {
        match self {
            Link::Cluster(c) => Some(c),
            _ => None,
        }
    }

    /// A fresh connection to the current writable master.
    pub async fn connect(&mut self) -> redis::RedisResult<Conn> {
        match self {
            Link::Single(client) => connect(client).await.map(Conn::Node),
            Link::Sentinel(s) => s.connect().await.map(Conn::Node),
            Link::Cluster(c) => {
                let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
                c.refresh(deadline)
                    .await
                    .map_err(|e| io_error(std::io::ErrorKind::NotConnected, e))?;
                c.connect_masters(deadline).await;
                Ok(Conn::Cluster(c.routes()))
            }
        }
    }

    /// A call on the link's connection failed with `e`. The loop drops that connection;
    /// every `connect` asks the sentinels afresh, so a `READONLY` reply or a dead node
    /// leads to the new master (the last one that answered is kept only for when no
    /// sentinel answers).
    pub fn failed(&mut self, e: &redis::RedisError) {
        match self {
            Link::Sentinel(s) if is_readonly(e) => {
                tracing::debug!(target: "shared_limits", master = ?s.current, "READONLY: the master was demoted; asking the sentinels");
            }
            // A redirect or a dead node on the routes: the next run fetches the slot map.
            Link::Cluster(c) => c.schedule_refresh(),
            _ => {}
        }
    }

    /// Non-blocking: a master switch the sentinels announced since the last call.
    pub fn changed(&mut self) -> Option<Change> {
        match self {
            Link::Single(_) | Link::Cluster(_) => None,
            Link::Sentinel(s) => s.changed(),
        }
    }

    /// Where the connection goes, for logs.
    pub fn describe(&self) -> String {
        match self {
            Link::Single(c) => match c.get_connection_info().addr() {
                ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
                ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
                other => format!("{other:?}"),
            },
            Link::Sentinel(s) => match &s.current {
                Some(m) => format!("master {} at {m}", s.asker.master),
                None => format!("master {} (unknown yet)", s.asker.master),
            },
            Link::Cluster(c) => format!("cluster, masters {:?}", c.slot_map().masters()),
        }
    }
}

impl Drop for SentinelLink {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

pub struct SentinelLink {
    connection: Connection,
    asker: Asker,
    /// The master this link connects to (verified with ROLE), `host:port`.
    current: Option<String>,
    /// The master the watcher last heard of.
    announced: tokio::sync::watch::Receiver<Option<String>>,
    announce: Option<tokio::sync::watch::Sender<Option<String>>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl SentinelLink {
    async fn connect(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        self.start_watcher();
        // A fresh answer; with every sentinel down, the last master that answered.
        let master = match self.asker.ask().await {
            Ok(m) => m,
            Err(e) => match &self.current {
                Some(m) => {
                    tracing::debug!(target: "shared_limits", error = %e, master = %m, "no sentinel answers; keeping the last master");
                    m.clone()
                }
                None => return Err(io_error(std::io::ErrorKind::NotConnected, e)),
            },
        };
        let hp = super::config::parse_host_port(&master)
            .map_err(|e| io_error(std::io::ErrorKind::InvalidData, e))?;
        let info = addr(&self.connection, &hp).into_connection_info()?;
        let c = &self.connection;
        let client = client(c, info, c.username.as_deref(), c.password.as_deref())
            .map_err(|e| io_error(std::io::ErrorKind::InvalidInput, e))?;
        let mut conn = connect(&client).await?;
        verify_master(&mut conn).await?;
        if let Some(prev) = self.current.replace(master.clone()) {
            if prev != master {
                SharedMetrics::get().topology_change("master_switch");
                tracing::info!(target: "shared_limits", from = %prev, to = %master, master = %self.asker.master, "writing to a new Redis master");
            }
        }
        self.announced.mark_unchanged();
        Ok(conn)
    }

    fn start_watcher(&mut self) {
        let Some(tx) = self.announce.take() else {
            return;
        };
        let mut asker = self.asker.clone_fresh();
        self.watcher = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(SENTINEL_POLL).await;
                if let Ok(m) = asker.ask().await {
                    tx.send_if_modified(|cur| {
                        let changed = cur.as_ref() != Some(&m);
                        *cur = Some(m.clone());
                        changed
                    });
                }
            }
        }));
    }

    fn changed(&mut self) -> Option<Change> {
        if !self.announced.has_changed().unwrap_or(false) {
            return None;
        }
        let to = self.announced.borrow_and_update().clone()?;
        match &self.current {
            Some(from) if *from != to => Some(Change::MasterMoved {
                from: from.clone(),
                to,
            }),
            _ => None,
        }
    }
}

/// Asks the sentinels, one after another, for the master's address.
struct Asker {
    master: String,
    sentinels: Vec<Client>,
    conns: Vec<Option<MultiplexedConnection>>,
    /// The sentinel that answered last is asked first.
    next: usize,
}

impl Asker {
    fn clone_fresh(&self) -> Asker {
        Asker {
            master: self.master.clone(),
            sentinels: self.sentinels.clone(),
            conns: vec![None; self.sentinels.len()],
            next: 0,
        }
    }

    async fn ask(&mut self) -> Result<String, String> {
        let n = self.sentinels.len();
        let mut last = String::from("no sentinel configured");
        for k in 0..n {
            let i = (self.next + k) % n;
            match tokio::time::timeout(SENTINEL_TIMEOUT, self.ask_one(i)).await {
                Ok(Ok(addr)) => {
                    self.next = i;
                    return Ok(addr);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out".into(),
            }
            self.conns[i] = None;
        }
        Err(format!("no sentinel named the master: {last}"))
    }

    async fn ask_one(&mut self, i: usize) -> Result<String, String> {
        let mut conn = match self.conns[i].clone() {
            Some(c) => c,
            None => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                    .set_response_timeout(Some(SENTINEL_TIMEOUT));
                let c = self.sentinels[i]
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                self.conns[i] = Some(c.clone());
                c
            }
        };
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let (host, port) =
            reply.ok_or_else(|| format!("sentinel does not know master {:?}", self.master))?;
        Ok(HostPort { host, port }.to_string())
    }
}

/// `ROLE` must say master: a sentinel's answer can be stale, a demoted master is
/// readable but refuses writes.
pub async fn verify_master<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
) -> redis::RedisResult<()> {
    let role: Vec<redis::Value> =
        tokio::time::timeout(CALL_TIMEOUT, redis::cmd("ROLE").query_async(conn))
            .await
            .map_err(|_| io_error(std::io::ErrorKind::TimedOut, "ROLE timed out"))??;
    let first: Option<String> = role
        .first()
        .and_then(|v| redis::from_redis_value_ref(v).ok());
    if first.as_deref() == Some("master") {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the node the sentinels named is not a master",
            format!("ROLE says {first:?}"),
        )))
    }
}

pub fn is_readonly(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY")
}

fn addr(c: &Connection, n: &HostPort) -> ConnectionAddr {
    if c.tls.is_some() {
        ConnectionAddr::TcpTls {
            host: n.host.clone(),
            port: n.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(n.host.clone(), n.port)
    }
}

/// A client with this deployment's credentials, TCP settings and TLS. With TLS configured
/// a `redis://` address is upgraded: there is no cleartext fallback.
fn client(
    c: &Connection,
    info: ConnectionInfo,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Client, String> {
    let mut settings = info.redis_settings().clone();
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    if let Some(pw) = password {
        settings = settings.set_password(pw);
    }
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1));
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(2));
    let mut info = info.set_redis_settings(settings).set_tcp_settings(tcp);
    let Some(tls) = &c.tls else {
        return Client::open(info).map_err(|e| e.to_string());
    };
    if let ConnectionAddr::Tcp(host, port) = info.addr().clone() {
        info = info.set_addr(ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        });
    }
    Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: tls.ca_pem.clone(),
        },
    )
    .map_err(|e| e.to_string())
}

async fn connect(client: &Client) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT));
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_millis(100),
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io_error(std::io::ErrorKind::TimedOut, "connect timed out")),
    }
}

fn io_error(kind: std::io::ErrorKind, msg: impl Into<String>) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(kind, msg.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_configured_is_never_cleartext() {
        #[rustfmt::skip]
        let cases: &[(&str, bool, &str)] = &[
            ("redis://r:6379/0", false, "r:6379"),
            ("redis://r:6379/0", true, "r:6379 (TLS)"),
            ("rediss://r:6380/0", false, "r:6380 (TLS)"),
            ("rediss://r:6380/0", true, "r:6380 (TLS)"),
        ];
        for (url, tls_block, want) in cases {
            let mut c = Connection::single(url, Some("pw".into()), "edge");
            if *tls_block {
                c.tls = Some(crate::admit::limits::shared::Tls::default());
            }
            let link = Link::new(&c).unwrap();
            assert_eq!(link.describe(), *want, "{url} tls={tls_block}");
        }
    }

    #[test]
    fn the_shipped_acl_rule_is_the_code_list() {
        let shipped = include_str!("../../../../../redis/edge-user.acl");
        let rules: Vec<&str> = shipped
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(rules, vec![acl_rule("edge").as_str()]);
        for c in ACL_COMMANDS {
            assert!(!c.starts_with('@') && *c == c.to_lowercase(), "{c}");
        }
    }
}
