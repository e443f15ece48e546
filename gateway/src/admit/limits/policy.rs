//! Rate-limit config as operators write it (YAML), its validation, and route matching.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;

use super::rate::Rate;
use super::shared::config::{OnUnavailable, SharedLimitsConfig, SharedMode};
use crate::config::invalid::Invalid;

pub const DEFAULT_IPV6_PREFIX: u8 = 64;
pub const DEFAULT_MAX_KEYS: usize = 100_000;
pub const MAX_BURST: u32 = 1_000_000;
pub const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The schema of a policy's `methods:` list.
fn methods_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "enum": KNOWN_METHODS }
    })
}
/// Field paths in errors are relative to this (where the lead mounts the section).
const ROOT: &str = "rate_limits";

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// IPv6 clients are grouped by this prefix length (one subscriber is usually a /64).
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: u8,
    /// Clients in these networks skip per-IP policies (not user or global ones).
    #[schemars(schema_with = "crate::config::field_schema::cidr_list")]
    pub exempt: Vec<ipnet::IpNet>,
    /// Per-policy cap on tracked keys.
    #[schemars(range(min = 1))]
    pub max_keys: usize,
    pub policies: Vec<PolicyConfig>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            exempt: Vec::new(),
            max_keys: DEFAULT_MAX_KEYS,
            policies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Metric label and RateLimit header token.
    #[schemars(regex(pattern = r"^[a-z0-9_-]{1,64}$"))]
    pub name: String,
    pub key: KeyKind,
    pub rate: Rate,
    /// Requests a new key may make at once.
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: u32,
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub mode: Mode,
    /// `sync` (default with `shared_limits`), `exact` or `local`.
    #[serde(default)]
    pub shared: Option<SharedMode>,
    /// Overrides `shared_limits.on_unavailable` for this policy.
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Client IP (IPv6 grouped by `ipv6_prefix`).
    Ip,
    /// Authenticated user; anonymous requests skip the policy.
    User,
    /// One bucket shared by every client.
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Evaluated and reported, never rejects.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Empty = any method.
    #[serde(default)]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Vec<String>,
    /// None = any path.
    #[serde(default)]
    #[schemars(regex(pattern = r#"^/[!"$->@-~]*$"#))]
    pub path_prefix: Option<String>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

impl RateLimitsConfig {
    /// Reports the first problem found, with the field path operators need to fix it.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err(err(
                format!("{ROOT}.ipv6_prefix"),
                format!("must be 1..=128, got {}", self.ipv6_prefix),
            ));
        }
        if self.max_keys == 0 {
            return Err(err(format!("{ROOT}.max_keys"), "must be at least 1"));
        }
        for (i, p) in self.policies.iter().enumerate() {
            let at = format!("{ROOT}.policies[{i}]");
            p.validate(&at)?;
            if let Some(j) = self.policies[..i].iter().position(|q| q.name == p.name) {
                return Err(err(
                    format!("{at}.name"),
                    format!("duplicate policy name {:?} (also policies[{j}])", p.name),
                ));
            }
        }
        Ok(())
    }
}

impl PolicyConfig {
    fn validate(&self, at: &str) -> Result<(), Invalid> {
        // Names become metric labels and quoted header tokens: keep them boring.
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if !name_ok {
            return Err(err(
                format!("{at}.name"),
                format!("{:?} must match ^[a-z0-9_-]{{1,64}}$", self.name),
            ));
        }
        validate_rate_burst(at, self.rate, self.burst)?;
        self.matcher.validate(&format!("{at}.match"))
    }
}

/// A `rate` + `burst` pair at `at` (policies and `limits.new_connections_per_client`).
pub fn validate_rate_burst(at: &str, rate: Rate, burst: u32) -> Result<(), Invalid> {
    if !(1..=MAX_BURST).contains(&burst) {
        return Err(err(
            format!("{at}.burst"),
            format!("must be 1..={MAX_BURST}, got {burst}"),
        ));
    }
    if rate.interval_error() > 0.01 {
        return Err(err(
            format!("{at}.rate"),
            format!(
                "{} is too fine to enforce within 1 % (interval {:?} per request); use a rate that divides the period into whole nanoseconds or a lower rate",
                rate,
                rate.emission_interval()
            ),
        ));
    }
    Ok(())
}

impl MatchConfig {
    fn validate(&self, at: &str) -> Result<(), Invalid> {
        for (i, m) in self.methods.iter().enumerate() {
            if !KNOWN_METHODS.contains(&m.as_str()) {
                return Err(err(
                    format!("{at}.methods[{i}]"),
                    format!("{m:?} is not one of {}", KNOWN_METHODS.join(" ")),
                ));
            }
        }
        if let Some(p) = &self.path_prefix {
            let field = format!("{at}.path_prefix");
            if !p.starts_with('/') {
                return Err(err(field, format!("{p:?} must start with '/'")));
            }
            if !p.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    field,
                    format!("{p:?} must be printable ASCII without spaces"),
                ));
            }
            if p.contains(['?', '#']) {
                return Err(err(field, format!("{p:?} must not contain '?' or '#'")));
            }
        }
        Ok(())
    }

    /// Whether a request is covered. `path` is the request target's path as routed
    /// (callers should pass the normalised path, since matching is on raw bytes); a
    /// query string, if present, is treated as the end of the path.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        method_ok
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| prefix_matches(prefix, path))
    }
}

/// Prefix match on a segment boundary: `/v1/docs` covers `/v1/docs` and `/v1/docs/x`,
/// not `/v1/docsX`; a prefix ending in `/` covers everything under it. Routes use it too.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with('/') || matches!(rest.bytes().next(), None | Some(b'/' | b'?'))
}

/// Per-policy sharing asked for without `shared_limits:` is an error: the operator meant
/// to share and would silently get N× the limit.
pub fn validate_policies(
    shared: Option<&SharedLimitsConfig>,
    policies: &[PolicyConfig],
) -> Result<(), Invalid> {
    if let Some(s) = shared {
        s.validate()?;
    }
    for (i, p) in policies.iter().enumerate() {
        let at = format!("rate_limits.policies[{i}]");
        if shared.is_none() {
            if matches!(p.shared, Some(SharedMode::Sync | SharedMode::Exact)) {
                return Err(Invalid::new(
                    format!("{at}.shared"),
                    "needs a top-level shared_limits section (or use `local`)",
                ));
            }
            if p.on_unavailable.is_some() {
                return Err(Invalid::new(
                    format!("{at}.on_unavailable"),
                    "only applies with a top-level shared_limits section",
                ));
            }
        } else if p.shared == Some(SharedMode::Local) && p.on_unavailable.is_some() {
            return Err(Invalid::new(
                format!("{at}.on_unavailable"),
                "has no effect on a `shared: local` policy",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(methods: &[&str], prefix: Option<&str>) -> MatchConfig {
        MatchConfig {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path_prefix: prefix.map(str::to_owned),
        }
    }

    #[test]
    fn matching_table() {
        let docs = matcher(&[], Some("/v1/documents"));
        let docs_slash = matcher(&[], Some("/v1/documents/"));
        let root = matcher(&[], Some("/"));
        let posts = matcher(&["POST", "PUT"], Some("/v1/documents"));
        let any = matcher(&[], None);
        #[rustfmt::skip]
        let cases: &[(&MatchConfig, &str, &str, bool)] = &[
            (&docs, "GET", "/v1/documents", true),
            (&docs, "GET", "/v1/documents/abc", true),
            (&docs, "GET", "/v1/documents/", true),
            (&docs, "GET", "/v1/documents?x=1", true),
            (&docs, "GET", "/v1/documentsX", false),
            (&docs, "GET", "/v1/documents.json", false),
            (&docs, "GET", "/v1/document", false),
            (&docs, "GET", "/v1", false),
            (&docs, "GET", "", false),
            (&docs, "GET", "*", false),
            (&docs, "GET", "/V1/documents", false),      // paths are case-sensitive
            (&docs, "GET", "//v1/documents", false),     // caller normalises first
            (&docs, "GET", "/v1/%64ocuments", false),    // caller decodes first
            (&docs, "GET", "/v1/documents/../../admin", true),
            (&docs_slash, "GET", "/v1/documents/abc", true),
            (&docs_slash, "GET", "/v1/documents/", true),
            (&docs_slash, "GET", "/v1/documents", false),
            (&root, "GET", "/", true),
            (&root, "GET", "/anything/at/all", true),
            (&root, "GET", "", false),
            (&posts, "POST", "/v1/documents/1", true),
            (&posts, "PUT", "/v1/documents", true),
            (&posts, "GET", "/v1/documents", false),
            (&posts, "post", "/v1/documents", false),    // methods are case-sensitive
            (&posts, "POSTX", "/v1/documents", false),
            (&posts, "", "/v1/documents", false),
            (&posts, "POST", "/v2/documents", false),
            (&any, "BREW", "", true),
            (&any, "GET", "/whatever", true),
        ];
        for (m, method, path, want) in cases {
            assert_eq!(m.matches(method, path), *want, "{m:?} {method} {path:?}");
        }
    }

    fn parse(yaml: &str) -> RateLimitsConfig {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn parses_full_config_with_defaults() {
        let cfg = parse(
            r#"
exempt: [10.0.0.0/8, "2001:db8::/32"]
policies:
  - name: per-ip
    key: ip
    rate: 100/min
    burst: 20
  - name: uploads
    key: user
    rate: 10/hour
    burst: 5
    match: { methods: [POST, PUT], path_prefix: /v1/documents }
    mode: shadow
"#,
        );
        cfg.validate().unwrap();
        assert_eq!(cfg.ipv6_prefix, 64);
        assert_eq!(cfg.max_keys, 100_000);
        assert_eq!(cfg.exempt.len(), 2);
        assert_eq!(cfg.policies[0].mode, Mode::Enforce);
        assert_eq!(cfg.policies[0].matcher, MatchConfig::default());
        assert_eq!(cfg.policies[1].key, KeyKind::User);
        assert_eq!(cfg.policies[1].mode, Mode::Shadow);
        assert_eq!(cfg.policies[1].rate.count, 10);
        assert_eq!(parse("{}"), RateLimitsConfig::default());
        RateLimitsConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_parse_errors() {
        for yaml in [
            "polices: []",
            "policies: [{name: a, key: ip, rate: 1/s, burst: 1, brust: 2}]",
            "policies: [{name: a, key: ip, rate: 1/s, burst: 1, match: {path: /x}}]",
            "policies: [{name: a, key: session, rate: 1/s, burst: 1}]",
            "policies: [{name: a, key: ip, rate: 1/s, burst: 1, mode: dry-run}]",
            "policies: [{name: a, key: ip, rate: 0/s, burst: 1}]",
            "policies: [{name: a, key: ip, rate: 1/s, burst: -1}]",
            "policies: [{name: a, key: ip, rate: 1/s}]",
            "exempt: [not-a-cidr]",
            "ipv6_prefix: 300",
        ] {
            assert!(
                serde_yaml::from_str::<RateLimitsConfig>(yaml).is_err(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn validation_table() {
        let ok = "{name: ok, key: ip, rate: 1/s, burst: 1}";
        #[rustfmt::skip]
        let cases = [
            (format!("policies: [{ok}, {ok}]"), "rate_limits.policies[1].name", "duplicate"),
            ("policies: [{name: Per-IP, key: ip, rate: 1/s, burst: 1}]".into(), "rate_limits.policies[0].name", "^[a-z0-9_-]"),
            ("policies: [{name: '', key: ip, rate: 1/s, burst: 1}]".into(), "rate_limits.policies[0].name", "must match"),
            ("policies: [{name: 'a b', key: ip, rate: 1/s, burst: 1}]".into(), "rate_limits.policies[0].name", "must match"),
            (format!("policies: [{{name: {}, key: ip, rate: 1/s, burst: 1}}]", "a".repeat(65)), "rate_limits.policies[0].name", "must match"),
            (format!("policies: [{ok}, {{name: x, key: ip, rate: 1/s, burst: 1, match: {{methods: [get]}}}}]"), "rate_limits.policies[1].match.methods[0]", "not one of"),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 1, match: {methods: [GET, TRACE]}}]".into(), "rate_limits.policies[0].match.methods[1]", "not one of"),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 1, match: {path_prefix: v1/docs}}]".into(), "rate_limits.policies[0].match.path_prefix", "start with '/'"),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 1, match: {path_prefix: '/a b'}}]".into(), "rate_limits.policies[0].match.path_prefix", "printable"),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 1, match: {path_prefix: \"/caf\u{e9}\"}}]".into(), "rate_limits.policies[0].match.path_prefix", "printable"),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 1, match: {path_prefix: '/a?b'}}]".into(), "rate_limits.policies[0].match.path_prefix", "'?'"),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 0}]".into(), "rate_limits.policies[0].burst", "1..="),
            ("policies: [{name: x, key: ip, rate: 1/s, burst: 1000001}]".into(), "rate_limits.policies[0].burst", "1..="),
            ("policies: [{name: x, key: global, rate: 700000000/s, burst: 1}]".into(), "rate_limits.policies[0].rate", "within 1 %"),
            ("ipv6_prefix: 0".into(), "rate_limits.ipv6_prefix", "1..=128"),
            ("ipv6_prefix: 129".into(), "rate_limits.ipv6_prefix", "1..=128"),
            ("max_keys: 0".into(), "rate_limits.max_keys", "at least 1"),
        ];
        for (yaml, field, msg) in cases {
            let e = parse(&yaml).validate().expect_err(&yaml);
            assert_eq!(e.field, field, "{yaml}: {e}");
            assert!(e.message.contains(msg), "{yaml}: {e}");
        }
    }
}
