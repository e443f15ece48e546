//! `shared_limits:` and the per-policy `shared:` / `on_unavailable:` keys, as operators
//! write them, and their validation.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::invalid::Invalid;

pub const DEFAULT_KEY_PREFIX: &str = "edge";
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(250);
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(50);
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["redis"]},
    {"required": ["sentinel"]},
    {"required": ["cluster"]}
]))]
pub struct SharedLimitsConfig {
    /// One server: `redis://host:port/db` or `rediss://…` (TLS); never with a password in
    /// it. Exactly one of `redis`, `sentinel`, `cluster`.
    #[serde(default)]
    pub redis: Option<RedisUrl>,
    /// Redis Sentinel: the master is asked from the sentinels and followed on failover.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster: seed nodes, the rest is discovered.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Redis 6+ ACL user (its password is `password_file`); absent = the default user.
    #[serde(default)]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[!-~]+$"))]
    pub username: Option<String>,
    /// File holding the Redis password (a compose/k8s secret); trailing newline ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to every Redis node and sentinel; never falls back to cleartext.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Every Redis key starts with `{key_prefix}:`; one prefix per fleet.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How often local hits are flushed to Redis: 50ms to 5s (default 250ms).
    #[serde(default = "default_sync_interval", deserialize_with = "sync_interval")]
    #[schemars(schema_with = "crate::config::field_schema::duration")]
    pub sync_interval: Duration,
    /// Fleet default while Redis is unavailable; a policy may override it.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// `sentinel:`: where to ask for the current master.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name in Sentinel (`sentinel monitor <name> ...`).
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[!-~]+$"))]
    pub master: String,
    /// Sentinels as `host:port`; any reachable one is asked.
    #[schemars(length(min = 1))]
    pub nodes: Vec<HostPort>,
    /// File holding the sentinels' own password (`requirepass` of the sentinels), if any.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `cluster:`: seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Seed nodes as `host:port`; the rest of the cluster is discovered from them.
    #[schemars(length(min = 1))]
    pub nodes: Vec<HostPort>,
}

/// `tls:`: verification of the Redis servers' certificates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the servers' certificates (a private CA); absent =
    /// the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `host:port`, `v4:port` or `[v6]:port`.
pub const HOST_PORT_PATTERN: &str =
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*):[0-9]{1,5}$";

/// One Redis node or sentinel address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::config::host_port::write_host_port(f, &self.host, self.port)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_host_port(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for HostPort {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HostPort".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": HOST_PORT_PATTERN,
            "description": "host:port of a Redis node or sentinel: a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535.",
            "examples": ["sentinel-1:26379", "10.0.0.5:6379"]
        })
    }
}

pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let (host, port) = crate::config::host_port::parse_host_port(s)?;
    Ok(HostPort { host, port })
}

/// The Redis deployment the config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyKind {
    Redis,
    Sentinel,
    Cluster,
}

/// How a policy's state is shared across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SharedMode {
    /// Decide locally, report hits to Redis every `sync_interval` (the default).
    Sync,
    /// Decide locally first, then confirm with one awaited Redis call.
    Exact,
    /// Per-replica state only.
    Local,
}

/// What a shared policy enforces while Redis is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Rate and burst divided by the last known replica count.
    #[default]
    Share,
    /// The whole limit on each replica (n× overall).
    Full,
    /// Reject every request the policy covers (fail closed).
    Deny,
}

impl OnUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Share => "share",
            OnUnavailable::Full => "full",
            OnUnavailable::Deny => "deny",
        }
    }
}

/// A parsed `redis://` / `rediss://` URL without credentials in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub url: String,
    pub tls: bool,
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_redis_url(&s).map_err(serde::de::Error::custom)
    }
}

pub fn parse_redis_url(s: &str) -> Result<RedisUrl, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("rediss://") {
        (true, r)
    } else {
        return Err(format!("{s:?} must start with redis:// or rediss://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(
                "must not contain a password; put it in shared_limits.password_file".into(),
            );
        }
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err(format!("{s:?} has no host"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{s:?} must be printable ASCII without spaces"));
    }
    // redis-rs is the authority on the rest (port, db number, query).
    redis::parse_redis_url(s).ok_or_else(|| format!("{s:?} is not a valid Redis URL"))?;
    let info = redis::IntoConnectionInfo::into_connection_info(s)
        .map_err(|e| format!("{s:?} is not a valid Redis URL: {e}"))?;
    if info.redis_settings().password().is_some() {
        return Err("must not contain a password; put it in shared_limits.password_file".into());
    }
    Ok(RedisUrl {
        url: s.to_string(),
        tls,
    })
}

fn default_prefix() -> String {
    DEFAULT_KEY_PREFIX.into()
}

fn default_sync_interval() -> Duration {
    DEFAULT_SYNC_INTERVAL
}

fn sync_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("{s:?} is not a duration like \"250ms\": {e}"))
    })?;
    if !(MIN_SYNC_INTERVAL..=MAX_SYNC_INTERVAL).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{s} is outside 50ms..=5s"
        )));
    }
    Ok(v)
}

impl SharedLimitsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let p = &self.key_prefix;
        let ok = (1..=32).contains(&p.len())
            && p.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.'));
        if !ok {
            return Err(Invalid::new(
                "shared_limits.key_prefix",
                format!("{p:?} must match ^[A-Za-z0-9_.-]{{1,32}}$"),
            ));
        }
        self.topology()?;
        if let Some(s) = &self.sentinel {
            if s.nodes.is_empty() {
                return Err(Invalid::new(
                    "shared_limits.sentinel.nodes",
                    "must list at least one sentinel (host:port)",
                ));
            }
            if !printable_name(&s.master) {
                return Err(Invalid::new(
                    "shared_limits.sentinel.master",
                    "must be 1 to 128 printable ASCII characters without spaces",
                ));
            }
        }
        if let Some(c) = &self.cluster {
            if c.nodes.is_empty() {
                return Err(Invalid::new(
                    "shared_limits.cluster.nodes",
                    "must list at least one seed node (host:port)",
                ));
            }
        }
        if let Some(u) = &self.username {
            if !printable_name(u) {
                return Err(Invalid::new(
                    "shared_limits.username",
                    "must be 1 to 128 printable ASCII characters without spaces",
                ));
            }
            if self.password_file.is_none() {
                return Err(Invalid::new(
                    "shared_limits.username",
                    "an ACL user needs its password in shared_limits.password_file",
                ));
            }
        }
        // The CA file itself is read with the other referenced files (check-config,
        // start) and again when the engine is built (reload).
        Ok(())
    }

    /// Which deployment: exactly one of `redis`, `sentinel`, `cluster`.
    pub fn topology(&self) -> Result<TopologyKind, Invalid> {
        let set = [
            (self.redis.is_some(), TopologyKind::Redis, "redis"),
            (self.sentinel.is_some(), TopologyKind::Sentinel, "sentinel"),
            (self.cluster.is_some(), TopologyKind::Cluster, "cluster"),
        ];
        let mut chosen = set.iter().filter(|(on, _, _)| *on);
        let Some((_, kind, _)) = chosen.next() else {
            return Err(Invalid::new(
                "shared_limits",
                "needs one of redis, sentinel or cluster",
            ));
        };
        if let Some((_, _, second)) = chosen.next() {
            return Err(Invalid::new(
                format!("shared_limits.{second}"),
                "exactly one of redis, sentinel or cluster may be set",
            ));
        }
        Ok(*kind)
    }

    /// TLS to every node: a `tls:` block, or `rediss://` alone.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some() || self.redis.as_ref().is_some_and(|r| r.tls)
    }

    /// The CA file's PEM text, checked to hold at least one certificate (blocking read:
    /// config load only). `None` without `tls.ca_file`.
    pub fn read_ca(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = self.tls.as_ref().and_then(|t| t.ca_file.as_ref()) else {
            return Ok(None);
        };
        let pem =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&pem);
        let certs = text.matches("-----BEGIN CERTIFICATE-----").count();
        if certs == 0 {
            return Err(format!(
                "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Some(pem))
    }

    /// The password from `password_file` (blocking read: config load only).
    pub fn read_password(&self) -> Result<Option<String>, String> {
        read_secret("shared_limits.password_file", self.password_file.as_deref())
    }

    /// The sentinels' own password, if `sentinel.password_file` is set.
    pub fn read_sentinel_password(&self) -> Result<Option<String>, String> {
        let path = self
            .sentinel
            .as_ref()
            .and_then(|s| s.password_file.as_deref());
        read_secret("shared_limits.sentinel.password_file", path)
    }
}

fn printable_name(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

fn read_secret(field: &str, path: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{field} {}: cannot read: {e}", path.display()))?;
    let pw = text.trim_end_matches(['\r', '\n']);
    if pw.is_empty() {
        return Err(format!("{field} {}: is empty", path.display()));
    }
    Ok(Some(pw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Result<bool, &str>)] = &[
            ("redis://redis:6379/0", Ok(false)),
            ("redis://127.0.0.1:6379", Ok(false)),
            ("redis://[::1]:6379/2", Ok(false)),
            ("rediss://redis.internal:6380/0", Ok(true)),
            ("redis://gateway@redis:6379/0", Ok(false)),
            ("redis://:secret@redis:6379/0", Err("password")),
            ("redis://user:secret@redis:6379/0", Err("password")),
            ("rediss://u:p@redis/0", Err("password")),
            ("http://redis:6379", Err("redis://")),
            ("redis:/redis:6379", Err("redis://")),
            ("", Err("redis://")),
            ("redis://", Err("no host")),
            ("redis://:6379", Err("no host")),
            ("redis://redis:6379/0 x", Err("")),
            ("redis://redis:notaport/0", Err("")),
            ("unix:///tmp/redis.sock", Err("redis://")),
        ];
        for (url, want) in cases {
            match (parse_redis_url(url), want) {
                (Ok(u), Ok(tls)) => assert_eq!(u.tls, *tls, "{url}"),
                (Err(e), Err(msg)) => assert!(e.contains(msg), "{url}: {e}"),
                (got, _) => panic!("{url}: {got:?}, want {want:?}"),
            }
        }
    }

    fn parse(yaml: &str) -> Result<SharedLimitsConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    /// Parsed, validated and its CA file read, as a start does; the error names the field.
    fn load(yaml: &str) -> Result<SharedLimitsConfig, String> {
        let c = parse(yaml)?;
        c.validate()
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        c.read_ca()
            .map_err(|e| format!("shared_limits.tls.ca_file: {e}"))?;
        Ok(c)
    }

    #[test]
    fn host_port_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("sentinel-1:26379", Some(("sentinel-1", 26379))),
            ("Redis.Internal:6379", Some(("redis.internal", 6379))),
            ("10.0.0.5:6379", Some(("10.0.0.5", 6379))),
            ("[::1]:26379", Some(("::1", 26379))),
            ("redis", None),
            ("redis:0", None),
            ("redis:65536", None),
            (":6379", None),
            ("redis:-1", None),
            ("re dis:6379", None),
            ("redis://r:6379", None),
            ("a..b:1", None),
            ("::1:6379", None),
            ("", None),
            ("r:6379\n", None),
        ];
        for (input, want) in cases {
            match (parse_host_port(input), want) {
                (Ok(h), Some((host, port))) => {
                    assert_eq!((h.host.as_str(), h.port), (*host, *port), "{input}");
                    assert_eq!(parse_host_port(&h.to_string()).unwrap(), h, "{input}");
                }
                (Err(_), None) => {}
                (got, _) => panic!("{input:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn topologies_auth_and_tls_table() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let (ca, not_pem) = (ca.display(), not_pem.display());
        let missing = dir.path().join("missing.pem");
        let missing = missing.display();
        let sentinel = "sentinel: {master: edge-limits, nodes: ['s1:26379', 's2:26379']}";
        #[rustfmt::skip]
        type Want = Result<(TopologyKind, bool), &'static str>;
        let cases: Vec<(String, Want)> = vec![
            ("redis: redis://r".into(), Ok((TopologyKind::Redis, false))),
            ("redis: rediss://r".into(), Ok((TopologyKind::Redis, true))),
            (
                format!("{{redis: 'redis://r', tls: {{ca_file: {ca}}}}}"),
                Ok((TopologyKind::Redis, true)),
            ),
            (
                "{redis: 'redis://r', tls: {}}".into(),
                Ok((TopologyKind::Redis, true)),
            ),
            (
                format!("{{{sentinel}}}"),
                Ok((TopologyKind::Sentinel, false)),
            ),
            (
                format!(
                    "{{{sentinel}, username: edge, password_file: /pw, tls: {{ca_file: {ca}}}}}"
                ),
                Ok((TopologyKind::Sentinel, true)),
            ),
            (
                "{sentinel: {master: m, nodes: ['s:1'], password_file: /spw}}".into(),
                Ok((TopologyKind::Sentinel, false)),
            ),
            (
                "{key_prefix: edge}".into(),
                Err("shared_limits: needs one of"),
            ),
            (
                format!("{{redis: 'redis://r', {sentinel}}}"),
                Err("shared_limits.sentinel: exactly one"),
            ),
            (
                "{redis: 'redis://r', cluster: {nodes: ['c:1']}}".into(),
                Err("shared_limits.cluster: exactly one"),
            ),
            (
                "{sentinel: {master: m, nodes: []}}".into(),
                Err("shared_limits.sentinel.nodes: must list"),
            ),
            (
                "{sentinel: {master: m}}".into(),
                Err("missing field `nodes`"),
            ),
            (
                "{sentinel: {nodes: ['s:1']}}".into(),
                Err("missing field `master`"),
            ),
            (
                "{sentinel: {master: 'a b', nodes: ['s:1']}}".into(),
                Err("shared_limits.sentinel.master"),
            ),
            (
                "{sentinel: {master: m, nodes: ['s']}}".into(),
                Err("host:port"),
            ),
            (
                "{sentinel: {master: m, nodes: ['s:1'], extra: 1}}".into(),
                Err("unknown field"),
            ),
            (
                "{cluster: {nodes: []}}".into(),
                Err("shared_limits.cluster.nodes: must list"),
            ),
            (
                "{cluster: {nodes: ['c:1']}}".into(),
                Ok((TopologyKind::Cluster, false)),
            ),
            ("{cluster: {nodes: ['c']}}".into(), Err("host:port")),
            (
                "{redis: 'redis://r', username: edge}".into(),
                Err("shared_limits.username: an ACL user needs"),
            ),
            (
                "{redis: 'redis://r', username: 'a b', password_file: /pw}".into(),
                Err("shared_limits.username: must be"),
            ),
            (
                "{redis: 'redis://r', username: '', password_file: /pw}".into(),
                Err("shared_limits.username: must be"),
            ),
            (
                format!("{{redis: 'redis://r', tls: {{ca_file: {missing}}}}}"),
                Err("shared_limits.tls.ca_file: "),
            ),
            (
                format!("{{redis: 'redis://r', tls: {{ca_file: {not_pem}}}}}"),
                Err("shared_limits.tls.ca_file: "),
            ),
            (
                "{redis: 'redis://r', tls: {ca: x}}".into(),
                Err("unknown field"),
            ),
        ];
        for (yaml, want) in &cases {
            match (load(yaml), want) {
                (Ok(c), Ok((kind, tls))) => {
                    assert_eq!(c.topology().unwrap(), *kind, "{yaml}");
                    assert_eq!(c.uses_tls(), *tls, "{yaml}");
                }
                (Err(e), Err(msg)) => assert!(e.contains(msg), "{yaml}: {e}"),
                (got, _) => panic!("{yaml}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn defaults_and_ranges() {
        let c = parse("redis: redis://r:6379/0").unwrap();
        assert_eq!(c.key_prefix, "edge");
        assert_eq!(c.sync_interval, Duration::from_millis(250));
        assert_eq!(c.on_unavailable, OnUnavailable::Share);
        assert_eq!(c.password_file, None);
        c.validate().unwrap();
        let c = parse("{redis: 'redis://r', sync_interval: 50ms, on_unavailable: deny}").unwrap();
        assert_eq!(c.sync_interval, Duration::from_millis(50));
        assert_eq!(c.on_unavailable, OnUnavailable::Deny);
        for bad in [
            "{redis: 'redis://r', sync_interval: 49ms}",
            "{redis: 'redis://r', sync_interval: 6s}",
            "{redis: 'redis://r', sync_interval: soon}",
            "{redis: 'redis://r', on_unavailable: open}",
            "{redis: 'redis://r', passwrd_file: /x}",
            "{redis: 'redis://:pw@r'}",
            "{key_prefix: edge}",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
        for bad in ["", "a b", "a:b", "{x}", &"p".repeat(33)] {
            let mut c = parse("redis: redis://r").unwrap();
            c.key_prefix = bad.to_string();
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, "shared_limits.key_prefix", "{bad:?}");
        }
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut c = parse("redis: redis://r").unwrap();
        assert_eq!(c.read_password().unwrap(), None);
        c.password_file = Some(path.clone());
        assert_eq!(c.read_password().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(c.read_password().unwrap_err().contains("empty"));
        c.password_file = Some(dir.path().join("missing"));
        assert!(c.read_password().unwrap_err().contains("cannot read"));
    }
}
