//! Redis Cluster for the sync loop: `ClusterLink` keeps the slot map and one multiplexed
//! connection per node, and runs a batch of calls (each tagged with its slot) as one
//! pipeline per node, concurrently across nodes, within one deadline. It follows `MOVED`
//! (map updated, refresh scheduled) and `ASK` (`ASKING` at the target), refreshes and
//! retries once on `TRYAGAIN`/`CLUSTERDOWN`/`READONLY`, loads scripts on `NOSCRIPT`, and
//! reports each call's own result, so the caller applies or requeues per call. Redirects
//! it followed are not errors; it counts them (`moved`, `ask`, `slots_refresh`).
//!
//! Plain per-node connections rather than redis-rs's cluster client: that one retries and
//! redirects inside its own timeouts and does not say how often, and we need both.

pub mod slots;

#[cfg(test)]
mod router_tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use slots::{Action, NodeAddr, SlotMap};

/// Most redirects one call follows in one run (a slot that moved twice mid-migration).
const MAX_HOPS: u8 = 5;
/// Pause before the one retry after `TRYAGAIN`/`CLUSTERDOWN`/`READONLY`.
const LATER_WAIT: Duration = Duration::from_millis(50);
/// Budget for one node's `CLUSTER SLOTS` during a refresh (connect included).
const REFRESH_TRY: Duration = Duration::from_millis(300);

/// One call of a batch: a command whose keys all hash to `slot`.
#[derive(Clone, Debug)]
pub struct Call {
    pub slot: u16,
    pub cmd: redis::Cmd,
}

/// Why one call of a batch failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// An error reply the router does not follow (script error, `NOPERM`, `CROSSSLOT`),
    /// or a redirect past the retry budget. The call did not run (or failed as a whole).
    Server { code: String, detail: String },
    /// Sent, no answer by the deadline: it may have run.
    Timeout,
    /// Never sent: the deadline passed first (e.g. spent following redirects).
    NotSent,
    /// The node could not be reached (never sent) or the connection broke after sending
    /// (it may have run).
    Connection { error: String, sent: bool },
    /// No known node serves the slot (no slot map yet, or a slot no master owns).
    NoRoute,
}

impl CallError {
    /// The `gateway_shared_limits_sync_errors_total{kind}` label.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout | CallError::NotSent => "timeout",
            CallError::Connection { .. } | CallError::NoRoute => "connect",
            CallError::Server { code, .. } if code == "NOSCRIPT" => "noscript",
            CallError::Server { .. } => "other",
        }
    }

    /// Whether the call may have been executed: a flush must then not be sent again (its
    /// hits would count twice); otherwise it can be requeued.
    pub fn may_have_run(&self) -> bool {
        matches!(
            self,
            CallError::Timeout | CallError::Connection { sent: true, .. }
        )
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Server { code, detail } => write!(f, "{code} {detail}"),
            CallError::Timeout => f.write_str("no reply before the deadline"),
            CallError::NotSent => f.write_str("deadline passed before sending"),
            CallError::Connection { error, .. } => write!(f, "connection: {error}"),
            CallError::NoRoute => f.write_str("no node serves the slot"),
        }
    }
}

/// For callers that handle every Redis error alike: a server error keeps its code (so
/// `NOPERM`, `NOSCRIPT` … are still recognised), the rest become I/O errors.
impl From<CallError> for redis::RedisError {
    fn from(e: CallError) -> redis::RedisError {
        use std::io::{Error, ErrorKind};
        match e {
            CallError::Timeout | CallError::NotSent => {
                Error::new(ErrorKind::TimedOut, e.to_string()).into()
            }
            CallError::Connection { .. } => {
                Error::new(ErrorKind::ConnectionReset, e.to_string()).into()
            }
            CallError::NoRoute => Error::new(ErrorKind::NotConnected, e.to_string()).into(),
            CallError::Server { code, detail } => {
                // redis-rs builds server errors only from the wire; so does this.
                let line = format!("-{code} {detail}\r\n").replace(['\r', '\n'], " ");
                let line = format!("{}\r\n", line.trim_end());
                match redis::parse_redis_value(line.as_bytes()) {
                    Ok(Value::ServerError(se)) => se.into(),
                    _ => redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "server error",
                        format!("{code} {detail}"),
                    )),
                }
            }
        }
    }
}

/// Counters since the link was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `MOVED` redirects followed.
    pub moved: u64,
    /// `ASK` redirects followed.
    pub ask: u64,
    /// Slot maps fetched and installed.
    pub slots_refresh: u64,
    /// Calls retried after `TRYAGAIN`/`CLUSTERDOWN`/`MASTERDOWN`/`LOADING`/`READONLY`.
    pub later: u64,
    /// `SCRIPT LOAD`s after `NOSCRIPT`.
    pub script_loads: u64,
}

/// Told of each topology change: `"moved"`, `"ask"` or `"slots_refresh"` (the
/// `gateway_shared_limits_topology_changes_total{kind}` labels).
pub type Observer = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Read-only routing for the request path: which open connection serves a key's slot.
/// A redirect there is not followed: the caller falls back and the sync loop, which
/// follows it on its next run, publishes fresh routes.
#[derive(Clone, Default)]
pub struct Routes {
    map: Arc<SlotMap>,
    conns: Arc<HashMap<NodeAddr, MultiplexedConnection>>,
}

impl Routes {
    pub fn connection_for_key(&self, key: &[u8]) -> Option<MultiplexedConnection> {
        self.connection_for_slot(slots::slot_of(key))
    }

    pub fn connection_for_slot(&self, slot: u16) -> Option<MultiplexedConnection> {
        self.conns.get(self.map.master_of(slot)?).cloned()
    }

    /// The node a `MOVED` reply (`code`, `detail`) names, when a connection to it is open.
    pub fn connection_for_moved(
        &self,
        code: &str,
        detail: Option<&str>,
    ) -> Option<MultiplexedConnection> {
        // An empty host ("the node you asked") finds no connection: the caller falls back.
        let unknown = NodeAddr {
            host: String::new(),
            port: 0,
        };
        match slots::classify(code, detail, &unknown) {
            Action::Moved { to, .. } => self.conns.get(&to).cloned(),
            _ => None,
        }
    }

    /// Where a command goes: its first key's master (`None`: no key, or no connection).
    pub fn connection_for_cmd(&self, cmd: &redis::Cmd) -> Option<MultiplexedConnection> {
        self.connection_for_key(slots::first_key(cmd)?)
    }

    /// Where a pipeline goes: the master of the first key in it; the caller keeps all its
    /// keys on one slot.
    pub fn connection_for_pipeline(&self, pipe: &redis::Pipeline) -> Option<MultiplexedConnection> {
        let key = pipe.cmd_iter().find_map(slots::first_key)?;
        self.connection_for_key(key)
    }
}

/// The cluster as the sync loop sees it. Not shared: one owner drives it:
///
/// ```text
/// link = ClusterLink::new(template, seeds).with_scripts(..).with_observer(metric)
/// flush: for (slot, items) in keys::flush_calls(batch, id, MAX_KEYS_PER_CALL)
///            calls.push(Call { slot, cmd: EVALSHA of items })
///        for each result of link.run(calls, now + flush deadline):
///            Ok(v)                      -> apply the replies of those items
///            Err(e) if e.may_have_run() -> forget them (dropped, never sent twice)
///            Err(e)                     -> requeue them; sync_errors{e.kind()}
///        the breaker hears "good" if any call was Ok, else the first error
/// heartbeat, resets: link.call(slot_of(key), cmd, deadline)
/// after each run: publish link.routes() for the request path
/// ```
pub struct ClusterLink {
    template: ConnectionInfo,
    seeds: Vec<NodeAddr>,
    map: SlotMap,
    conns: HashMap<NodeAddr, MultiplexedConnection>,
    /// Nodes whose last connection attempt failed: asked last for the slot map.
    failed: HashSet<NodeAddr>,
    refresh_due: bool,
    /// Loaded on every new node connection: Redis does not replicate `SCRIPT LOAD`, so a
    /// promoted replica starts without them (and the request path cannot load them).
    scripts: Arc<Vec<String>>,
    connect_timeout: Duration,
    stats: Stats,
    observer: Option<Observer>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("seeds", &self.seeds)
            .field("masters", &self.map.masters())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// One call waiting to be sent.
#[derive(Clone, Debug)]
struct Pending {
    idx: usize,
    /// Set by `ASK`: send to this node after `ASKING`, once.
    ask: Option<NodeAddr>,
    hops: u8,
    later_used: bool,
}

enum NodeResult {
    ConnectFailed(String),
    Timeout,
    Broken(String),
    Replies(Vec<Value>),
}

struct NodeOutcome {
    node: NodeAddr,
    conn: Option<MultiplexedConnection>,
    scripts_loaded: bool,
    result: NodeResult,
}

impl ClusterLink {
    /// `template` carries everything but the address (ACL user, password, TLS, RESP
    /// version, TCP settings); each node's connection is the template at that node's
    /// address. Its database is forced to 0: a cluster has no other (`SELECT` fails).
    pub fn new(template: ConnectionInfo, seeds: Vec<NodeAddr>) -> ClusterLink {
        let db0 = template.redis_settings().clone().set_db(0);
        ClusterLink {
            template: template.set_redis_settings(db0),
            seeds,
            map: SlotMap::empty(),
            conns: HashMap::new(),
            failed: HashSet::new(),
            refresh_due: true,
            scripts: Arc::new(Vec::new()),
            connect_timeout: Duration::from_millis(300),
            stats: Stats::default(),
            observer: None,
        }
    }

    /// Scripts to `SCRIPT LOAD` on a node that answers `NOSCRIPT`.
    pub fn with_scripts(mut self, scripts: &[&str]) -> ClusterLink {
        self.scripts = Arc::new(scripts.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Budget of one connection's setup (TCP, TLS, AUTH, HELLO), within the run's deadline.
    pub fn with_connect_timeout(mut self, t: Duration) -> ClusterLink {
        self.connect_timeout = t;
        self
    }

    pub fn with_observer(mut self, observer: Observer) -> ClusterLink {
        self.observer = Some(observer);
        self
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn slot_map(&self) -> &SlotMap {
        &self.map
    }

    /// A redirect, a connection error or a `TRYAGAIN` asked for a fresh slot map; the next
    /// `run` fetches it first.
    pub fn refresh_due(&self) -> bool {
        self.refresh_due
    }

    /// The open connection to the master of `slot`, if any (never connects).
    pub fn connection_for_slot(&self, slot: u16) -> Option<MultiplexedConnection> {
        self.conns.get(self.map.master_of(slot)?).cloned()
    }

    /// A snapshot of the slot map and open connections for callers that must not wait on
    /// the link (the request path's one `exact` call): the owner publishes it after each
    /// run. Copies the map (32 KiB); cheap to clone afterwards.
    pub fn routes(&self) -> Routes {
        Routes {
            map: Arc::new(self.map.clone()),
            conns: Arc::new(self.conns.clone()),
        }
    }

    /// A caller met a redirect or a dead node outside `run`: fetch the map first next time.
    pub fn schedule_refresh(&mut self) {
        self.refresh_due = true;
    }

    /// Opens a connection to every master that has none (concurrently, within `deadline`),
    /// so the request path's routes reach every slot before the first flush does.
    pub async fn connect_masters(&mut self, deadline: Instant) {
        let mut tasks = JoinSet::new();
        for node in self.map.masters() {
            if self.conns.contains_key(node) {
                continue;
            }
            let (node, info, t) = (node.clone(), self.node_info(node), self.connect_timeout);
            let scripts = self.scripts.clone();
            tasks.spawn(async move { (connect(info, t, deadline, scripts).await, node) });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((Ok((c, loaded)), node)) => {
                    self.stats.script_loads += u64::from(loaded);
                    self.failed.remove(&node);
                    self.conns.insert(node, c);
                }
                Ok((Err(_), node)) => {
                    self.failed.insert(node);
                }
                Err(_) => {}
            }
        }
    }

    /// Drops every connection (after a hung socket, or to follow new credentials).
    pub fn reset_connections(&mut self) {
        self.conns.clear();
        self.refresh_due = true;
    }

    fn note(&mut self, kind: &'static str) {
        match kind {
            "moved" => self.stats.moved += 1,
            "ask" => self.stats.ask += 1,
            "slots_refresh" => self.stats.slots_refresh += 1,
            _ => {}
        }
        if let Some(o) = &self.observer {
            o(kind);
        }
    }

    fn node_info(&self, node: &NodeAddr) -> ConnectionInfo {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
        };
        self.template.clone().set_addr(addr)
    }

    /// Fetches the slot map from the first node that gives a valid one: known nodes
    /// (masters, then replicas), then the seeds; nodes that failed lately last.
    pub async fn refresh(&mut self, deadline: Instant) -> Result<(), String> {
        let mut candidates: Vec<NodeAddr> = self.map.nodes().cloned().collect();
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        candidates.sort_by_key(|n| self.failed.contains(n));
        let mut last = String::from("no node to ask");
        for node in candidates {
            let now = Instant::now();
            if now >= deadline {
                last = format!("deadline passed; last error: {last}");
                break;
            }
            let until = deadline.min(now + REFRESH_TRY);
            match self.ask_slots(&node, until).await {
                Ok(map) => {
                    self.map = map;
                    self.refresh_due = false;
                    let keep: HashSet<NodeAddr> =
                        self.map.nodes().chain(self.seeds.iter()).cloned().collect();
                    self.conns.retain(|n, _| keep.contains(n));
                    self.note("slots_refresh");
                    return Ok(());
                }
                Err(e) => last = format!("{node}: {e}"),
            }
        }
        Err(last)
    }

    async fn ask_slots(&mut self, node: &NodeAddr, until: Instant) -> Result<SlotMap, String> {
        let mut conn = match self.conns.get(node) {
            Some(c) => c.clone(),
            None => {
                let info = self.node_info(node);
                let c = connect(info, self.connect_timeout, until, self.scripts.clone()).await;
                match c {
                    Ok((c, loaded)) => {
                        self.stats.script_loads += u64::from(loaded);
                        self.failed.remove(node);
                        self.conns.insert(node.clone(), c.clone());
                        c
                    }
                    Err(e) => {
                        self.failed.insert(node.clone());
                        return Err(e);
                    }
                }
            }
        };
        let reply = tokio::time::timeout_at(
            until,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(v)) => SlotMap::from_cluster_slots(&v, node),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() {
                    self.conns.remove(node);
                    self.failed.insert(node.clone());
                }
                Err(e.to_string())
            }
            Err(_) => {
                // A socket that timed out may be hung: never reuse it.
                self.conns.remove(node);
                self.failed.insert(node.clone());
                Err("CLUSTER SLOTS timed out".into())
            }
        }
    }

    /// Runs one call; see `run`.
    pub async fn call(
        &mut self,
        slot: u16,
        cmd: redis::Cmd,
        deadline: Instant,
    ) -> Result<Value, CallError> {
        self.run(vec![Call { slot, cmd }], deadline)
            .await
            .pop()
            .unwrap_or(Err(CallError::NotSent))
    }

    /// Runs `calls` (one pipeline per node, nodes concurrently) until each has a result or
    /// the deadline passes. Results are in the order of `calls`. Calls that share a node go
    /// in one pipeline in their given order; no order holds across nodes.
    pub async fn run(
        &mut self,
        calls: Vec<Call>,
        deadline: Instant,
    ) -> Vec<Result<Value, CallError>> {
        let mut out: Vec<Option<Result<Value, CallError>>> = vec![None; calls.len()];
        let mut pending: Vec<Pending> = (0..calls.len())
            .map(|idx| Pending {
                idx,
                ask: None,
                hops: 0,
                later_used: false,
            })
            .collect();
        let mut refresh_now = self.refresh_due;
        let mut moved_now: Vec<(u16, NodeAddr)> = Vec::new();
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                break;
            }
            // Refresh before the first round when due, and again only after a round that
            // met a dead node or `TRYAGAIN`/`CLUSTERDOWN`/`READONLY`. Not after `MOVED`: the
            // redirect is the newest word, and a node that has not heard of the move yet
            // would undo it (seen: calls bounced between two owners until out of hops).
            if refresh_now || self.map.is_empty() {
                // A failed refresh leaves the old map; unroutable calls fail below.
                if self.refresh(deadline).await.is_ok() {
                    for (slot, to) in &moved_now {
                        self.map.set_master(*slot, to);
                    }
                }
                refresh_now = false;
            }
            // Group by target node: the ASK target, else the slot's master.
            let mut groups: BTreeMap<NodeAddr, Vec<Pending>> = BTreeMap::new();
            for p in pending.drain(..) {
                let target = p
                    .ask
                    .clone()
                    .or_else(|| self.map.master_of(calls[p.idx].slot).cloned());
                match target {
                    Some(n) => groups.entry(n).or_default().push(p),
                    None => out[p.idx] = Some(Err(CallError::NoRoute)),
                }
            }
            let mut tasks = JoinSet::new();
            let mut sent: HashMap<NodeAddr, Vec<Pending>> = HashMap::new();
            for (node, group) in groups {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for p in &group {
                    if p.ask.is_some() {
                        pipe.cmd("ASKING").ignore();
                    }
                    pipe.add_command(calls[p.idx].cmd.clone());
                }
                let conn = self.conns.get(&node).cloned();
                let info = self.node_info(&node);
                let connect_timeout = self.connect_timeout;
                let n = node.clone();
                let scripts = self.scripts.clone();
                tasks.spawn(async move {
                    run_on_node(n, conn, info, connect_timeout, scripts, pipe, deadline).await
                });
                sent.insert(node, group);
            }
            let mut later: Vec<Pending> = Vec::new();
            let mut noscript: Vec<NodeAddr> = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                let Ok(outcome) = joined else {
                    continue; // a panicked task: its calls stay unanswered (NotSent below)
                };
                let node = outcome.node;
                let group = sent.remove(&node).unwrap_or_default();
                match outcome.result {
                    NodeResult::ConnectFailed(error) => {
                        self.failed.insert(node.clone());
                        self.conns.remove(&node);
                        self.refresh_due = true;
                        for p in group {
                            out[p.idx] = Some(Err(CallError::Connection {
                                error: error.clone(),
                                sent: false,
                            }));
                        }
                    }
                    NodeResult::Timeout => {
                        self.conns.remove(&node);
                        self.refresh_due = true;
                        for p in group {
                            out[p.idx] = Some(Err(CallError::Timeout));
                        }
                    }
                    NodeResult::Broken(error) => {
                        self.conns.remove(&node);
                        self.failed.insert(node.clone());
                        self.refresh_due = true;
                        for p in group {
                            out[p.idx] = Some(Err(CallError::Connection {
                                error: error.clone(),
                                sent: true,
                            }));
                        }
                    }
                    NodeResult::Replies(values) => {
                        self.stats.script_loads += u64::from(outcome.scripts_loaded);
                        self.failed.remove(&node);
                        if let Some(c) = outcome.conn {
                            self.conns.insert(node.clone(), c);
                        }
                        if values.len() != group.len() {
                            let detail =
                                format!("{} replies for {} calls", values.len(), group.len());
                            for p in group {
                                out[p.idx] = Some(Err(CallError::Server {
                                    code: "ERR".into(),
                                    detail: detail.clone(),
                                }));
                            }
                            continue;
                        }
                        for (mut p, v) in group.into_iter().zip(values) {
                            let Value::ServerError(e) = v else {
                                out[p.idx] = Some(Ok(v));
                                continue;
                            };
                            let fail = |e: &redis::ServerError| {
                                Some(Err(CallError::Server {
                                    code: e.code().to_string(),
                                    detail: e.details().unwrap_or("").to_string(),
                                }))
                            };
                            if p.hops >= MAX_HOPS {
                                out[p.idx] = fail(&e);
                                continue;
                            }
                            p.hops += 1;
                            match slots::classify(e.code(), e.details(), &node) {
                                Action::Moved { slot, to } => {
                                    self.note("moved");
                                    self.map.set_master(slot, &to);
                                    moved_now.push((slot, to));
                                    self.refresh_due = true;
                                    p.ask = None;
                                    pending.push(p);
                                }
                                Action::Ask { to, .. } => {
                                    self.note("ask");
                                    p.ask = Some(to);
                                    pending.push(p);
                                }
                                Action::Later(_) if !p.later_used => {
                                    self.stats.later += 1;
                                    self.refresh_due = true;
                                    refresh_now = true;
                                    p.later_used = true;
                                    p.ask = None;
                                    later.push(p);
                                }
                                Action::NoScript if !self.scripts.is_empty() => {
                                    if !noscript.contains(&node) {
                                        noscript.push(node.clone());
                                    }
                                    pending.push(p);
                                }
                                _ => out[p.idx] = fail(&e),
                            }
                        }
                    }
                }
            }
            for node in noscript {
                self.load_scripts(&node, deadline).await;
            }
            if !later.is_empty() {
                let wake = deadline.min(Instant::now() + LATER_WAIT);
                tokio::time::sleep_until(wake).await;
                pending.append(&mut later);
            }
        }
        for p in pending {
            out[p.idx] = Some(Err(CallError::NotSent));
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(CallError::NotSent)))
            .collect()
    }

    async fn load_scripts(&mut self, node: &NodeAddr, deadline: Instant) {
        let Some(mut conn) = self.conns.get(node).cloned() else {
            return;
        };
        if load_scripts_on(&mut conn, &self.scripts, deadline).await {
            self.stats.script_loads += 1;
        }
    }
}

/// `SCRIPT LOAD` of every script on one node by `deadline`; true when they all loaded.
async fn load_scripts_on(
    conn: &mut MultiplexedConnection,
    scripts: &[String],
    deadline: Instant,
) -> bool {
    if scripts.is_empty() {
        return false;
    }
    let mut pipe = redis::pipe();
    for code in scripts {
        pipe.cmd("SCRIPT").arg("LOAD").arg(code);
    }
    let r = tokio::time::timeout_at(deadline, pipe.query_async::<Vec<String>>(conn)).await;
    matches!(r, Ok(Ok(_)))
}

/// A new node connection, with the scripts loaded on it (best effort: a `NOSCRIPT` later
/// loads them again); true when they were.
async fn connect(
    info: ConnectionInfo,
    connect_timeout: Duration,
    deadline: Instant,
    scripts: Arc<Vec<String>>,
) -> Result<(MultiplexedConnection, bool), String> {
    let client = Client::open(info).map_err(|e| e.to_string())?;
    let cfg = AsyncConnectionConfig::new().set_connection_timeout(Some(connect_timeout));
    let until = deadline.min(Instant::now() + connect_timeout);
    match tokio::time::timeout_at(
        until,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    {
        Ok(Ok(mut c)) => {
            let loaded = load_scripts_on(&mut c, &scripts, deadline).await;
            Ok((c, loaded))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

async fn run_on_node(
    node: NodeAddr,
    conn: Option<MultiplexedConnection>,
    info: ConnectionInfo,
    connect_timeout: Duration,
    scripts: Arc<Vec<String>>,
    pipe: redis::Pipeline,
    deadline: Instant,
) -> NodeOutcome {
    let (mut conn, scripts_loaded) = match conn {
        Some(c) => (c, false),
        None => match connect(info, connect_timeout, deadline, scripts).await {
            Ok(c) => c,
            Err(e) => {
                return NodeOutcome {
                    node,
                    conn: None,
                    scripts_loaded: false,
                    result: NodeResult::ConnectFailed(e),
                }
            }
        },
    };
    let result =
        match tokio::time::timeout_at(deadline, pipe.query_async::<Vec<Value>>(&mut conn)).await {
            Ok(Ok(values)) => NodeResult::Replies(values),
            Ok(Err(e)) if e.is_timeout() => NodeResult::Timeout,
            Ok(Err(e)) => NodeResult::Broken(e.to_string()),
            Err(_) => NodeResult::Timeout,
        };
    NodeOutcome {
        node,
        conn: Some(conn),
        scripts_loaded,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_and_rerun_safety() {
        let server = |code: &str| CallError::Server {
            code: code.into(),
            detail: String::new(),
        };
        for (e, kind, may_have_run) in [
            (CallError::Timeout, "timeout", true),
            (CallError::NotSent, "timeout", false),
            (
                CallError::Connection {
                    error: "refused".into(),
                    sent: false,
                },
                "connect",
                false,
            ),
            (
                CallError::Connection {
                    error: "reset".into(),
                    sent: true,
                },
                "connect",
                true,
            ),
            (CallError::NoRoute, "connect", false),
            (server("NOSCRIPT"), "noscript", false),
            (server("ERR"), "other", false),
        ] {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.may_have_run(), may_have_run, "{e}");
        }
    }

    #[test]
    fn the_template_keeps_credentials_and_tls_but_not_the_database() {
        let t = redis::IntoConnectionInfo::into_connection_info("rediss://edge:pw@seed:6380/3")
            .unwrap();
        let l = ClusterLink::new(t, vec![]);
        let n = l.node_info(&NodeAddr {
            host: "10.0.0.7".into(),
            port: 7001,
        });
        assert_eq!(n.redis_settings().db(), 0);
        assert_eq!(n.redis_settings().username(), Some("edge"));
        assert_eq!(n.redis_settings().password(), Some("pw"));
        assert!(matches!(
            n.addr(),
            ConnectionAddr::TcpTls { host, port: 7001, insecure: false, .. } if host == "10.0.0.7"
        ));
        let plain = redis::IntoConnectionInfo::into_connection_info("redis://seed").unwrap();
        let n = ClusterLink::new(plain, vec![]).node_info(&NodeAddr {
            host: "::1".into(),
            port: 7002,
        });
        assert!(matches!(n.addr(), ConnectionAddr::Tcp(h, 7002) if h == "::1"));
    }

    #[tokio::test]
    async fn nothing_reachable_fails_every_call_by_the_deadline() {
        // Port 1 on loopback refuses at once.
        let template =
            redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1:1").unwrap();
        let mut link = ClusterLink::new(
            template,
            vec![NodeAddr {
                host: "127.0.0.1".into(),
                port: 1,
            }],
        );
        let started = std::time::Instant::now();
        let deadline = Instant::now() + Duration::from_millis(200);
        let calls = (0..3)
            .map(|i| Call {
                slot: i,
                cmd: redis::cmd("PING"),
            })
            .collect();
        let r = link.run(calls, deadline).await;
        assert_eq!(r, vec![Err(CallError::NoRoute); 3]);
        assert!(started.elapsed() < Duration::from_millis(400));
        assert!(link.refresh_due());
        assert_eq!(link.stats().slots_refresh, 0);
    }
}
