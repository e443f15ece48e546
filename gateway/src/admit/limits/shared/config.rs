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
pub struct SharedLimitsConfig {
    /// `redis://host:port/db` or `rediss://…`; never with a password in it.
    pub redis: RedisUrl,
    /// File holding the Redis password (a compose/k8s secret); trailing newline ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
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
        Ok(())
    }

    /// The password from `password_file` (blocking read: config load only).
    pub fn read_password(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "shared_limits.password_file {}: cannot read: {e}",
                path.display()
            )
        })?;
        let pw = text.trim_end_matches(['\r', '\n']);
        if pw.is_empty() {
            return Err(format!(
                "shared_limits.password_file {}: is empty",
                path.display()
            ));
        }
        Ok(Some(pw.to_string()))
    }
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
            assert!(parse(bad).is_err(), "{bad}");
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
