//! Redis Cluster's routing rules, pure: CRC16 hash slots and hash tags, `CLUSTER SLOTS`
//! replies into a slot → master map, redirect errors (`MOVED`, `ASK`, `TRYAGAIN`, …) into
//! what the router does next, and calls grouped by node.

use std::collections::BTreeMap;
use std::fmt;

use redis::Value;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, init 0), the checksum Redis hashes keys with.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of a key Redis hashes: what lies between the first `{` and the first `}` after
/// it, when that is not empty; else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

pub fn slot_of(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The key a command is routed by: the first of `EVAL`/`EVALSHA`'s keys, nothing for
/// commands without keys (`MULTI`, `EXEC`, `ASKING`, `SCRIPT`, `PING`), else the first
/// argument. Covers the commands the gateway sends; not a general command table.
pub fn first_key(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    let name = args.next()??;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()??;
        let numkeys = std::str::from_utf8(args.next()??).ok()?;
        if numkeys.parse::<u32>().ok()? == 0 {
            return None;
        }
        return args.next()?;
    }
    const KEYLESS: [&[u8]; 9] = [
        b"MULTI", b"EXEC", b"DISCARD", b"ASKING", b"SCRIPT", b"PING", b"CLUSTER", b"ROLE",
        b"SELECT",
    ];
    if KEYLESS.iter().any(|k| name.eq_ignore_ascii_case(k)) {
        return None;
    }
    args.next()?
}

/// A cluster node as the cluster names it (`host:port`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::config::host_port::write_host_port(f, &self.host, self.port)
    }
}

/// An empty host or `?` is Redis's "unknown endpoint": the host the reply came from.
fn host_or_asked(host: &str, asked: &NodeAddr) -> String {
    if host.is_empty() || host == "?" {
        asked.host.clone()
    } else {
        host.to_string()
    }
}

fn port(s: &str) -> Option<u16> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Some(p),
        _ => None,
    }
}

impl NodeAddr {
    /// `host:port`, `[v6]:port` or Redis's unbracketed `v6:port` (the port is after the
    /// last colon). `asked` stands in for an empty host.
    pub fn parse(s: &str, asked: &NodeAddr) -> Option<NodeAddr> {
        let s = s.trim();
        let (host, p) = if let Some(rest) = s.strip_prefix('[') {
            let (host, tail) = rest.split_once(']')?;
            (host, tail.strip_prefix(':')?)
        } else {
            s.rsplit_once(':')?
        };
        if host.contains(|c: char| c.is_whitespace() || c == '[' || c == ']') {
            return None;
        }
        Some(NodeAddr {
            host: host_or_asked(host, asked),
            port: port(p)?,
        })
    }

    /// A seed from config: `host:port`, `[v6]:port`; the port defaults to 6379.
    pub fn seed(s: &str) -> Option<NodeAddr> {
        let none = NodeAddr {
            host: String::new(),
            port: 0,
        };
        match NodeAddr::parse(s, &none) {
            Some(a) if !a.host.is_empty() => Some(a),
            Some(_) => None,
            None if !s.is_empty() && !s.contains([':', '[', ']', ' ']) => Some(NodeAddr {
                host: s.to_string(),
                port: 6379,
            }),
            None => None,
        }
    }
}

const NO_OWNER: u16 = u16::MAX;

/// Which master serves each slot, and every node the cluster told of (for refreshes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    owner: Vec<u16>,
    masters: Vec<NodeAddr>,
    replicas: Vec<NodeAddr>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap::empty()
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_text(other)?.parse().ok(),
    }
}

/// One `[host, port, id, …]` node entry. A nil host is the unknown endpoint too.
fn node_entry(v: &Value, asked: &NodeAddr) -> Result<NodeAddr, String> {
    let Value::Array(parts) = v else {
        return Err("node entry is not an array".into());
    };
    if parts.len() < 2 {
        return Err(format!("node entry has {} fields", parts.len()));
    }
    let host = match &parts[0] {
        Value::Nil => String::new(),
        h => as_text(h).ok_or("node host is not a string")?,
    };
    let port = as_int(&parts[1])
        .filter(|p| (1..=65535).contains(p))
        .ok_or("node port out of range")? as u16;
    Ok(NodeAddr {
        host: host_or_asked(&host, asked),
        port,
    })
}

impl SlotMap {
    pub fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NO_OWNER; usize::from(SLOTS)],
            masters: Vec::new(),
            replicas: Vec::new(),
        }
    }

    fn master_index(&mut self, addr: &NodeAddr) -> u16 {
        match self.masters.iter().position(|m| m == addr) {
            Some(i) => i as u16,
            None => {
                self.masters.push(addr.clone());
                (self.masters.len() - 1) as u16
            }
        }
    }

    /// A `CLUSTER SLOTS` reply from node `asked`: `[[start, end, master, replica…], …]`.
    /// Refused whole (so another node is asked) when any range is malformed or overlaps.
    pub fn from_cluster_slots(reply: &Value, asked: &NodeAddr) -> Result<SlotMap, String> {
        let Value::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS reply is not an array".into());
        };
        if ranges.is_empty() {
            return Err("the cluster has no slots assigned".into());
        }
        let mut map = SlotMap::empty();
        for r in ranges {
            let Value::Array(fields) = r else {
                return Err("slot range is not an array".into());
            };
            if fields.len() < 3 {
                return Err(format!("slot range has {} fields", fields.len()));
            }
            let (Some(start), Some(end)) = (as_int(&fields[0]), as_int(&fields[1])) else {
                return Err("slot bounds are not integers".into());
            };
            if start < 0 || end < start || end >= i64::from(SLOTS) {
                return Err(format!("bad slot range {start}-{end}"));
            }
            let master = node_entry(&fields[2], asked)?;
            let idx = map.master_index(&master);
            for slot in start as usize..=end as usize {
                if map.owner[slot] != NO_OWNER {
                    return Err(format!("slot {slot} listed twice"));
                }
                map.owner[slot] = idx;
            }
            for rep in &fields[3..] {
                let rep = node_entry(rep, asked)?;
                if !map.replicas.contains(&rep) {
                    map.replicas.push(rep);
                }
            }
        }
        map.replicas.retain(|r| !map.masters.contains(r));
        Ok(map)
    }

    pub fn master_of(&self, slot: u16) -> Option<&NodeAddr> {
        let i = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(i))
    }

    /// After `MOVED`: the slot now lives at `addr`.
    pub fn set_master(&mut self, slot: u16, addr: &NodeAddr) {
        if slot < SLOTS {
            let i = self.master_index(addr);
            self.owner[usize::from(slot)] = i;
            self.replicas.retain(|r| r != addr);
        }
    }

    /// Slots with a known master.
    pub fn covered(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NO_OWNER).count()
    }

    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    /// Masters first (they answer `CLUSTER SLOTS` as well as replicas do), then replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeAddr> {
        self.masters.iter().chain(self.replicas.iter())
    }

    /// Masters that own at least one slot.
    pub fn masters(&self) -> Vec<&NodeAddr> {
        let mut used = vec![false; self.masters.len()];
        for &o in &self.owner {
            if o != NO_OWNER {
                used[usize::from(o)] = true;
            }
        }
        self.masters
            .iter()
            .zip(used)
            .filter_map(|(m, u)| u.then_some(m))
            .collect()
    }
}

/// What an error reply asks of the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The slot lives elsewhere for good: update the map, refresh it, retry there.
    Moved { slot: u16, to: NodeAddr },
    /// The slot is migrating: retry this one call at `to` after `ASKING`, map unchanged.
    Ask { slot: u16, to: NodeAddr },
    /// `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY` (a demoted master):
    /// refresh the map and retry once, a little later.
    Later(&'static str),
    /// The script is not loaded on this node: `SCRIPT LOAD` there and retry.
    NoScript,
    /// A real error: the call failed.
    Fail,
}

/// Classifies an error reply `code detail` from node `asked`.
pub fn classify(code: &str, detail: Option<&str>, asked: &NodeAddr) -> Action {
    let redirect = |ask: bool| {
        let mut it = detail.unwrap_or("").split_ascii_whitespace();
        let slot = it.next()?.parse::<u16>().ok().filter(|s| *s < SLOTS)?;
        let to = NodeAddr::parse(it.next()?, asked)?;
        if it.next().is_some() {
            return None;
        }
        Some(if ask {
            Action::Ask { slot, to }
        } else {
            Action::Moved { slot, to }
        })
    };
    match code {
        "MOVED" => redirect(false).unwrap_or(Action::Fail),
        "ASK" => redirect(true).unwrap_or(Action::Fail),
        "TRYAGAIN" => Action::Later("tryagain"),
        "CLUSTERDOWN" => Action::Later("clusterdown"),
        "MASTERDOWN" => Action::Later("masterdown"),
        "LOADING" => Action::Later("loading"),
        "READONLY" => Action::Later("readonly"),
        "NOSCRIPT" => Action::NoScript,
        _ => Action::Fail,
    }
}

/// Calls (by index) per node that serves their slot, and the calls no known node serves.
pub fn group_by_node(
    slots: impl IntoIterator<Item = (usize, u16)>,
    map: &SlotMap,
) -> (BTreeMap<NodeAddr, Vec<usize>>, Vec<usize>) {
    let mut by_node: BTreeMap<NodeAddr, Vec<usize>> = BTreeMap::new();
    let mut unrouted = Vec::new();
    for (i, slot) in slots {
        match map.master_of(slot) {
            Some(n) => by_node.entry(n.clone()).or_default().push(i),
            None => unrouted.push(i),
        }
    }
    (by_node, unrouted)
}

/// Items grouped by slot (ascending), each group cut into calls of at most `max` items.
pub fn group_by_slot<T>(
    items: impl IntoIterator<Item = T>,
    slot: impl Fn(&T) -> u16,
    max: usize,
) -> Vec<(u16, Vec<T>)> {
    let max = max.max(1);
    let mut by_slot: BTreeMap<u16, Vec<T>> = BTreeMap::new();
    for it in items {
        by_slot.entry(slot(&it)).or_default().push(it);
    }
    let mut out = Vec::new();
    for (s, mut group) in by_slot {
        while group.len() > max {
            let rest = group.split_off(max);
            out.push((s, group));
            group = rest;
        }
        out.push((s, group));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_route_by_their_first_key() {
        let evalsha = |n: usize, keys: &[&str]| {
            let mut c = redis::cmd("EVALSHA");
            c.arg("abc").arg(n);
            for k in keys {
                c.arg(*k);
            }
            c.arg("argv1");
            c
        };
        let mut incr = redis::cmd("INCRBY");
        incr.arg("edge:rl:{resets}:seq").arg(1);
        let mut lrange = redis::cmd("lrange");
        lrange.arg("edge:rl:{resets}").arg(0).arg(-1);
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        let cases: Vec<(redis::Cmd, Option<&str>)> = vec![
            (evalsha(2, &["k1", "k2"]), Some("k1")),
            (evalsha(0, &[]), None),
            (redis::cmd("EVALSHA"), None),
            (redis::cmd("EVAL").arg("s").arg("x").clone(), None), // numkeys not a number
            (redis::cmd("GET").arg("edge:x").clone(), Some("edge:x")),
            (redis::cmd("GET"), None),
            (incr, Some("edge:rl:{resets}:seq")),
            (lrange, Some("edge:rl:{resets}")),
            (redis::cmd("MULTI"), None),
            (redis::cmd("exec"), None),
            (redis::cmd("ASKING"), None),
            (load, None),
            (redis::cmd("CLUSTER").arg("SLOTS").clone(), None),
            (redis::cmd(""), None),
        ];
        for (cmd, want) in cases {
            let got = first_key(&cmd).map(|k| String::from_utf8_lossy(k).into_owned());
            assert_eq!(got.as_deref(), want, "{:?}", cmd.args_iter().count());
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut v = vec![Value::Int(start), Value::Int(end)];
        v.extend(nodes);
        Value::Array(v)
    }

    fn addr(h: &str, p: u16) -> NodeAddr {
        NodeAddr {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.15.
        for (key, slot) in [
            ("", 0),
            ("foo", 12182),
            ("bar", 5061),
            ("123456789", 12739),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("{}", 15257),
            ("a{", 14311),
        ] {
            assert_eq!(slot_of(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(crc16(b"123456789"), 0x31c3, "XMODEM check value");
        assert_eq!(hash_tag(b"x{}y"), b"x{}y");
        assert_eq!(hash_tag(b"x{ab}y{cd}"), b"ab");
        assert_eq!(hash_tag(b"{{a}"), b"{a");
    }

    #[test]
    fn node_addresses() {
        let asked = addr("10.0.0.9", 7000);
        for (s, want) in [
            ("127.0.0.1:7001", Some(addr("127.0.0.1", 7001))),
            ("redis-1:6379", Some(addr("redis-1", 6379))),
            ("::1:7002", Some(addr("::1", 7002))),
            ("[::1]:7002", Some(addr("::1", 7002))),
            ("2001:db8::5:30001", Some(addr("2001:db8::5", 30001))),
            (":7003", Some(addr("10.0.0.9", 7003))),
            ("?:7003", Some(addr("10.0.0.9", 7003))),
            ("host:0", None),
            ("host:65536", None),
            ("host:+80", None),
            ("host:-1", None),
            ("host:", None),
            ("host", None),
            ("", None),
            ("[::1]7002", None),
            ("[::1:7002", None),
            ("a b:1", None),
        ] {
            assert_eq!(NodeAddr::parse(s, &asked), want, "{s:?}");
        }
        assert_eq!(addr("::1", 1).to_string(), "[::1]:1");
        assert_eq!(addr("h", 1).to_string(), "h:1");
        assert_eq!(NodeAddr::seed("redis-1"), Some(addr("redis-1", 6379)));
        assert_eq!(NodeAddr::seed("[::1]:7000"), Some(addr("::1", 7000)));
        assert_eq!(NodeAddr::seed(":7000"), None);
        assert_eq!(NodeAddr::seed(""), None);
    }

    #[test]
    fn cluster_slots_replies() {
        let asked = addr("127.0.0.1", 7000);
        let good = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7000), node("127.0.0.1", 7003)],
            ),
            range(5461, 10922, vec![node("", 7001), node("127.0.0.1", 7004)]),
            range(10923, 16383, vec![node("::1", 7002)]),
        ]);
        let m = SlotMap::from_cluster_slots(&good, &asked).unwrap();
        assert_eq!(m.master_of(0), Some(&addr("127.0.0.1", 7000)));
        assert_eq!(
            m.master_of(5461),
            Some(&addr("127.0.0.1", 7001)),
            "empty host"
        );
        assert_eq!(m.master_of(16383), Some(&addr("::1", 7002)));
        assert_eq!(m.master_of(16384), None);
        assert_eq!(m.covered(), 16384);
        assert_eq!(m.nodes().count(), 5);
        assert_eq!(m.masters().len(), 3);

        // A nil host (unknown endpoint), ports as strings, a partial map.
        let partial = Value::Array(vec![range(
            100,
            199,
            vec![Value::Array(vec![Value::Nil, bulk("7005")])],
        )]);
        let m = SlotMap::from_cluster_slots(&partial, &asked).unwrap();
        assert_eq!(m.master_of(150), Some(&addr("127.0.0.1", 7005)));
        assert_eq!(m.master_of(99), None);
        assert_eq!(m.covered(), 100);

        let hostile: Vec<(&str, Value)> = vec![
            ("not an array", bulk("x")),
            ("empty", Value::Array(vec![])),
            ("range not array", Value::Array(vec![Value::Int(1)])),
            (
                "short range",
                Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(1)])]),
            ),
            (
                "reversed",
                Value::Array(vec![range(10, 5, vec![node("h", 1)])]),
            ),
            (
                "past the last slot",
                Value::Array(vec![range(0, 16384, vec![node("h", 1)])]),
            ),
            (
                "negative",
                Value::Array(vec![range(-1, 5, vec![node("h", 1)])]),
            ),
            (
                "overlap",
                Value::Array(vec![
                    range(0, 100, vec![node("h", 1)]),
                    range(100, 200, vec![node("h", 2)]),
                ]),
            ),
            (
                "port 0",
                Value::Array(vec![range(0, 1, vec![node("h", 0)])]),
            ),
            (
                "port too big",
                Value::Array(vec![range(0, 1, vec![node("h", 70000)])]),
            ),
            (
                "node too short",
                Value::Array(vec![range(0, 1, vec![Value::Array(vec![bulk("h")])])]),
            ),
            (
                "node not array",
                Value::Array(vec![range(0, 1, vec![bulk("h:1")])]),
            ),
            (
                "host not text",
                Value::Array(vec![range(
                    0,
                    1,
                    vec![Value::Array(vec![Value::Int(1), Value::Int(1)])],
                )]),
            ),
            (
                "bad replica",
                Value::Array(vec![range(0, 1, vec![node("h", 1), node("h", 0)])]),
            ),
            (
                "bounds not ints",
                Value::Array(vec![Value::Array(vec![bulk("a"), bulk("b"), node("h", 1)])]),
            ),
        ];
        for (what, v) in hostile {
            assert!(SlotMap::from_cluster_slots(&v, &asked).is_err(), "{what}");
        }
    }

    #[test]
    fn moved_updates_one_slot() {
        let asked = addr("127.0.0.1", 7000);
        let v = Value::Array(vec![range(0, 16383, vec![node("127.0.0.1", 7000)])]);
        let mut m = SlotMap::from_cluster_slots(&v, &asked).unwrap();
        m.set_master(42, &addr("127.0.0.1", 7001));
        assert_eq!(m.master_of(42), Some(&addr("127.0.0.1", 7001)));
        assert_eq!(m.master_of(43), Some(&addr("127.0.0.1", 7000)));
        m.set_master(SLOTS, &addr("x", 1));
        assert_eq!(m.masters().len(), 2);
    }

    #[test]
    fn error_replies() {
        let asked = addr("10.1.1.1", 7000);
        for (code, detail, want) in [
            (
                "MOVED",
                Some("3999 127.0.0.1:6381"),
                Action::Moved {
                    slot: 3999,
                    to: addr("127.0.0.1", 6381),
                },
            ),
            (
                "ASK",
                Some("3999 ::1:6381"),
                Action::Ask {
                    slot: 3999,
                    to: addr("::1", 6381),
                },
            ),
            (
                "MOVED",
                Some("7 :6381"),
                Action::Moved {
                    slot: 7,
                    to: addr("10.1.1.1", 6381),
                },
            ),
            ("MOVED", Some("16384 h:1"), Action::Fail),
            ("MOVED", Some("x h:1"), Action::Fail),
            ("MOVED", Some("1"), Action::Fail),
            ("MOVED", None, Action::Fail),
            ("MOVED", Some("1 h:1 extra"), Action::Fail),
            ("ASK", Some("1 h:0"), Action::Fail),
            (
                "TRYAGAIN",
                Some("Multiple keys request during rehashing of slot"),
                Action::Later("tryagain"),
            ),
            (
                "CLUSTERDOWN",
                Some("The cluster is down"),
                Action::Later("clusterdown"),
            ),
            (
                "READONLY",
                Some("You can't write against a read only replica."),
                Action::Later("readonly"),
            ),
            ("MASTERDOWN", None, Action::Later("masterdown")),
            ("LOADING", None, Action::Later("loading")),
            ("NOSCRIPT", Some("No matching script."), Action::NoScript),
            (
                "CROSSSLOT",
                Some("Keys in request don't hash to the same slot"),
                Action::Fail,
            ),
            ("ERR", Some("user_script:1: oops"), Action::Fail),
            ("NOPERM", None, Action::Fail),
        ] {
            assert_eq!(classify(code, detail, &asked), want, "{code} {detail:?}");
        }
    }

    #[test]
    fn grouping() {
        let asked = addr("h", 1);
        let v = Value::Array(vec![
            range(0, 99, vec![node("a", 1)]),
            range(100, 199, vec![node("b", 1)]),
        ]);
        let m = SlotMap::from_cluster_slots(&v, &asked).unwrap();
        let (by_node, unrouted) = group_by_node([(0, 5), (1, 150), (2, 99), (3, 500)], &m);
        assert_eq!(by_node[&addr("a", 1)], vec![0, 2]);
        assert_eq!(by_node[&addr("b", 1)], vec![1]);
        assert_eq!(unrouted, vec![3]);

        let items: Vec<u32> = (0..150).collect();
        let groups = group_by_slot(items, |i| (*i % 2) as u16, 64);
        let sizes: Vec<(u16, usize)> = groups.iter().map(|(s, g)| (*s, g.len())).collect();
        assert_eq!(sizes, vec![(0, 64), (0, 11), (1, 64), (1, 11)]);
        assert!(groups
            .iter()
            .all(|(s, g)| g.iter().all(|i| (*i % 2) as u16 == *s)));
        assert!(group_by_slot(Vec::<u32>::new(), |_| 0, 64).is_empty());
        assert_eq!(group_by_slot([1u8, 2], |_| 3, 0).len(), 2, "max 0 is 1");
    }
}
