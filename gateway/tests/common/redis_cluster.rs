//! A throwaway Redis Cluster on loopback for tests: N masters with one replica each
//! (`cluster-node-timeout 1000`), made with `redis-cli --cluster create`, then waited on
//! until every live node says `cluster_state:ok`; and the faults the tests inject
//! (`kill -9` of a node, `CLUSTER FAILOVER`, slot moves). Needs `redis-server` and
//! `redis-cli` (Debian's redis-server package ships both).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, wait_until, ChildGuard};

use super::redis_server::{create_cluster, spawn_server};

pub struct Node {
    pub port: u16,
    pub id: String,
    child: Option<ChildGuard>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

/// `redis-cli -p port args…`, its stdout (empty when it fails to run).
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_with(&[], port, args)
}

/// `cli` with client options first (e.g. `--tls --cacert ca.pem`).
pub fn cli_with(client: &[&str], port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(client)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl RedisCluster {
    /// Starts `masters` × 2 nodes and builds the cluster (`--cluster-replicas 1`).
    pub fn start(masters: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let port = free_port();
            let bus = free_port();
            let (port_arg, bus_arg) = (port.to_string(), bus.to_string());
            let conf = format!("nodes-{port}.conf");
            let dir_arg = dir.path().display().to_string();
            #[rustfmt::skip]
            let args = [
                "--port", &port_arg, "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-port", &bus_arg,
                "--cluster-config-file", &conf, "--cluster-node-timeout", "1000",
                // A replica may take over however long it was cut off (tests kill masters).
                "--cluster-replica-validity-factor", "0",
                // Replicas in sync at once (the default waits 5 s for more of them).
                "--repl-diskless-sync-delay", "0",
                "--save", "", "--appendonly", "no", "--dir", &dir_arg,
            ];
            let child = spawn_server(&args, &dir.path().join(format!("{port}.log")));
            nodes.push(Node {
                port,
                id: String::new(),
                child: Some(child),
            });
        }
        for n in &mut nodes {
            assert!(
                wait_until(Duration::from_secs(10), || cli(n.port, &["PING"])
                    .starts_with("PONG")),
                "redis-server on {} did not start",
                n.port
            );
            n.id = cli(n.port, &["CLUSTER", "MYID"]).trim().to_string();
        }
        let addrs: Vec<String> = nodes.iter().map(Node::addr).collect();
        create_cluster(&[], &addrs, 1);
        let c = RedisCluster { nodes, dir };
        assert!(
            c.wait_ok(Duration::from_secs(20)),
            "cluster not ok within 20 s"
        );
        assert!(
            wait_until(Duration::from_secs(20), || c.replicas_in_sync()),
            "replicas not in sync within 20 s"
        );
        c
    }

    /// Every live replica's link to its master is up.
    pub fn replicas_in_sync(&self) -> bool {
        self.nodes.iter().filter(|n| n.alive()).all(|n| {
            let info = cli(n.port, &["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        })
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Node::addr).collect()
    }

    /// Every live node says `cluster_state:ok` with all slots served, and every live node
    /// lists the same masters for its slots.
    pub fn is_ok(&self) -> bool {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.alive()).collect();
        let mut maps = Vec::new();
        for n in &live {
            let info = cli(n.port, &["CLUSTER", "INFO"]);
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return false;
            }
            maps.push(self.slot_owners(n.port));
        }
        maps.windows(2).all(|w| w[0] == w[1])
    }

    /// Each live node's view, for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.iter().filter(|n| n.alive()) {
            let info = cli(n.port, &["CLUSTER", "INFO"]);
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("?")
                    .trim()
                    .to_string()
            };
            out.push_str(&format!(
                "{}: {} state {} slots_ok {} owners {:?}\n",
                n.port,
                cli(n.port, &["ROLE"]).lines().next().unwrap_or("?"),
                field("cluster_state:"),
                field("cluster_slots_ok:"),
                self.slot_owners(n.port)
            ));
            if !info.contains("cluster_state:ok") {
                out.push_str(&cli(n.port, &["CLUSTER", "NODES"]));
            }
        }
        out
    }

    pub fn wait_ok(&self, limit: Duration) -> bool {
        wait_until(limit, || self.is_ok())
    }

    /// `(first slot, last slot, master port)` as node `port` sees them, sorted.
    pub fn slot_owners(&self, port: u16) -> Vec<(u16, u16, u16)> {
        let mut out = Vec::new();
        for line in cli(port, &["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let Some(p) = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            for r in &f[8..] {
                if r.starts_with('[') {
                    continue; // a slot being migrated or imported
                }
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    out.push((a, b, p));
                }
            }
        }
        out.sort();
        out
    }

    /// Port of the master serving `slot`, as the first live node sees it.
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        let any = self.nodes.iter().find(|n| n.alive())?;
        self.slot_owners(any.port)
            .into_iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, p)| p)
    }

    /// Says `ROLE` on `port` is master.
    pub fn is_master(&self, port: u16) -> bool {
        cli(port, &["ROLE"]).lines().next() == Some("master")
    }

    /// A live replica of the master at `port`.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        let master = self.node(port).id.clone();
        let any = self.nodes.iter().find(|n| n.alive() && n.port != port)?;
        cli(any.port, &["CLUSTER", "NODES"])
            .lines()
            .find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 4
                    && f[2].contains("slave")
                    && !f[2].contains("fail")
                    && f[3] == master
                {
                    let p = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
                    self.nodes
                        .iter()
                        .any(|n| n.port == p && n.alive())
                        .then_some(p)
                } else {
                    None
                }
            })
    }

    pub fn node(&self, port: u16) -> &Node {
        self.nodes.iter().find(|n| n.port == port).expect("a node")
    }

    /// `kill -9`, as a crash would.
    pub fn kill9(&mut self, port: u16) {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node");
        n.child.take().expect("running").kill();
    }

    /// Sends `sig` (e.g. "-STOP", "-CONT") to the node at `port`.
    pub fn signal(&self, port: u16, sig: &str) {
        let n = self.nodes.iter().find(|n| n.port == port).expect("a node");
        n.child.as_ref().expect("running").signal(sig);
    }

    /// `CLUSTER FAILOVER` on a replica; true once it says it is master (within `limit`).
    pub fn failover(&self, replica: u16, limit: Duration) -> bool {
        assert!(cli(replica, &["CLUSTER", "FAILOVER"]).starts_with("OK"));
        wait_until(limit, || self.is_master(replica))
    }

    /// Moves `count` slots from one master to another with `redis-cli --cluster reshard`.
    pub fn reshard(&self, from: u16, to: u16, count: usize) -> (bool, Duration) {
        let started = Instant::now();
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &self.node(from).addr()])
            .args(["--cluster-from", &self.node(from).id])
            .args(["--cluster-to", &self.node(to).id])
            .args(["--cluster-slots", &count.to_string()])
            .args(["--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        (out.success(), started.elapsed())
    }

    /// The slow way, to be seen mid-way: `slot` IMPORTING on `to`, MIGRATING on `from`,
    /// every key MIGRATEd, then `hold` with the slot still migrating (clients get `ASK`),
    /// then the slot given to `to` on every master.
    pub fn migrate_slot_slowly(&self, slot: u16, from: u16, to: u16, hold: Duration) {
        let s = slot.to_string();
        let (from_id, to_id) = (self.node(from).id.clone(), self.node(to).id.clone());
        assert!(cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).starts_with("OK"));
        assert!(cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).starts_with("OK"));
        let move_keys = || {
            for _ in 0..100 {
                let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "1000"]);
                let keys: Vec<&str> = keys.split_whitespace().collect();
                if keys.is_empty() {
                    return;
                }
                let port = to.to_string();
                let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
                args.extend(keys);
                cli(from, &args);
            }
        };
        move_keys();
        std::thread::sleep(hold);
        move_keys();
        // The target first, then the source, then the other masters.
        let mut order = vec![to, from];
        order.extend(
            self.nodes
                .iter()
                .filter(|n| n.alive() && n.port != to && n.port != from)
                .map(|n| n.port)
                .filter(|&p| self.is_master(p)),
        );
        for p in order {
            cli(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
    }

    pub fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{port}.log"))).unwrap_or_default()
    }
}
