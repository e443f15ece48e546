//! The config's JSON Schema (`gateway schema`, shipped as `config/gateway.schema.json`):
//! derived from the typed config by `schemars`, plus the schemas of the values our own parsers
//! read (durations, rates, CIDRs, `upstream`, route prefixes), kept next to tests that hold
//! each pattern to what its parser accepts.

use schemars::{generate::SchemaSettings, json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::admit::limits::rate::Rate;
use crate::admit::limits::shared::config::RedisUrl;
use crate::config::{Config, RoutePrefix, Upstream};

/// `N/unit` with N >= 1 (the parser also caps N at 10^9).
pub const RATE_PATTERN: &str = r"^\s*0*[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)\s*$";
/// `host:port`, `v4:port` or `[v6]:port`.
pub const UPSTREAM_PATTERN: &str =
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*):[0-9]{1,5}$";
/// Route prefixes: `/` then printable ASCII (and neither `..` nor `//`, see `route_prefix`).
pub const ROUTE_PATTERN: &str = r"^/[!-~]*$";
pub const ROUTE_FORBIDDEN: &str = r"\.\.|//";

/// The schema as `gateway schema` prints it (draft-07: what editors' YAML plugins read).
pub fn generate() -> Schema {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Config>();
    schema.insert(
        "$id".into(),
        "https://edge-gateway.invalid/config/gateway.schema.json".into(),
    );
    schema
}

/// Pretty JSON with a trailing newline: the exact bytes of `config/gateway.schema.json`.
pub fn generate_json() -> String {
    let mut s = serde_json::to_string_pretty(&generate()).expect("a schema serializes");
    s.push('\n');
    s
}

/// A type our own parser reads from one YAML string, with the schema that describes it.
macro_rules! string_schema {
    ($ty:ident, $schema:tt) => {
        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

string_schema!(Rate, {
    "type": "string",
    "pattern": RATE_PATTERN,
    "description": "Requests per period: N/s, N/min, N/h or N/d (also sec/second, m/minute, hour, day); 1 <= N <= 1000000000.",
    "examples": ["100/min", "10/s"]
});

/// `redis://` or `rediss://`, printable ASCII, no `user:password@` (the password goes in a file).
pub const REDIS_URL_PATTERN: &str = r"^rediss?://([^:@/\s]+@)?[!-~]+$";
pub const REDIS_URL_FORBIDDEN: &str = r"^rediss?://[^/@]*:[^/@]*@";

string_schema!(RedisUrl, {
    "type": "string",
    "pattern": REDIS_URL_PATTERN,
    "not": { "pattern": REDIS_URL_FORBIDDEN },
    "description": "redis://host:port/db or rediss://… without a password in it (shared_limits.password_file).",
    "examples": ["redis://redis:6379/0"]
});

string_schema!(Upstream, {
    "type": "string",
    "pattern": UPSTREAM_PATTERN,
    "description": "host:port of the app: a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535.",
    "examples": ["app:8081", "127.0.0.1:8081"]
});

string_schema!(RoutePrefix, {
    "type": "string",
    "pattern": ROUTE_PATTERN,
    "maxLength": 256,
    "not": { "pattern": ROUTE_FORBIDDEN },
    "description": "A path prefix forwarded to the app (segment-aware), e.g. \"/v1/\": starts with '/', printable ASCII, no '..' or '//'."
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::field_schema::{CIDR_PATTERN, DURATION_PATTERN};

    fn matches(pattern: &str, s: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(s)
    }

    fn yaml_str(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// The shipped file is exactly what the typed config generates; regenerate with
    /// `cargo run -p gateway -- schema > config/gateway.schema.json`.
    #[test]
    fn shipped_schema_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/gateway.schema.json");
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            shipped == generate_json(),
            "config/gateway.schema.json is stale: run `cargo run -p gateway -- schema > config/gateway.schema.json`"
        );
    }

    #[test]
    fn schema_covers_every_section_and_forbids_unknown_keys() {
        let s = serde_json::to_value(generate()).unwrap();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(s["additionalProperties"], false);
        let props = s["properties"].as_object().unwrap();
        for key in [
            "listen",
            "admin_listen",
            "upstream",
            "token_key_file",
            "trusted_proxies",
            "forwarded_headers",
            "routes",
            "timeouts",
            "limits",
            "security_headers",
            "access_log",
            "rate_limits",
            "block",
        ] {
            assert!(props.contains_key(key), "schema lacks {key}");
        }
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, ["upstream", "token_key_file"]);
    }

    // Each pattern against its parser: (input, parser accepts). Where only the parser's range
    // check rejects (zero, > 24 h, N > 10^9), the row says so and the schema may accept.
    #[test]
    fn duration_pattern_agrees_with_the_parser() {
        let cases = [
            ("10s", true, true),
            ("500ms", true, true),
            ("2m", true, true),
            ("1h 30m", true, true),
            ("1min", true, true),
            ("  5 s ", true, true),
            ("10", false, false),
            ("", false, false),
            ("10 parsecs", false, false),
            ("s", false, false),
            ("-1s", false, false),
            ("1.5s", true, true),
            ("1.5.5s", false, false),
            ("0s", true, false),  // pattern ok, parser: a zero timeout
            ("25h", true, false), // pattern ok, parser: above 24h
        ];
        for (input, schema_ok, parser_ok) in cases {
            assert_eq!(
                matches(DURATION_PATTERN, input),
                schema_ok,
                "pattern {input:?}"
            );
            let yaml = format!(
                "upstream: a:1\ntoken_key_file: k\ntimeouts: {{ request_header: {} }}\n",
                yaml_str(input)
            );
            assert_eq!(
                Config::parse("t", &yaml).is_ok(),
                parser_ok,
                "parser {input:?}"
            );
        }
    }

    #[test]
    fn rate_pattern_agrees_with_the_parser() {
        let cases = [
            ("100/min", true, true),
            ("10/s", true, true),
            ("1/h", true, true),
            ("5/day", true, true),
            ("3/second", true, true),
            (" 7/d ", true, true),
            ("0/s", false, false),
            ("1/fortnight", false, false),
            ("/s", false, false),
            ("10", false, false),
            ("1.5/s", false, false),
            ("-1/s", false, false),
            ("10/min/extra", false, false),
            ("2000000000/s", true, false), // pattern ok, parser: above 10^9
        ];
        for (input, schema_ok, parser_ok) in cases {
            assert_eq!(matches(RATE_PATTERN, input), schema_ok, "pattern {input:?}");
            assert_eq!(input.parse::<Rate>().is_ok(), parser_ok, "parser {input:?}");
        }
    }

    #[test]
    fn redis_url_pattern_agrees_with_the_parser() {
        let cases = [
            ("redis://redis:6379/0", true),
            ("rediss://cache.example:6380", true),
            ("redis://127.0.0.1:6379", true),
            ("http://redis:6379", false),
            ("redis://", false),
            ("redis://user:secret@redis:6379", false),
            ("redis://:secret@redis:6379", false),
            ("redis://red is:6379", false),
        ];
        for (input, ok) in cases {
            let schema_ok =
                matches(REDIS_URL_PATTERN, input) && !matches(REDIS_URL_FORBIDDEN, input);
            assert_eq!(schema_ok, ok, "pattern {input:?}");
            assert_eq!(
                crate::admit::limits::shared::config::parse_redis_url(input).is_ok(),
                ok,
                "parser {input:?}"
            );
        }
    }

    #[test]
    fn upstream_route_and_cidr_patterns_agree_with_the_parsers() {
        let upstreams = [
            ("app:8081", true),
            ("127.0.0.1:8081", true),
            ("[::1]:8081", true),
            ("a.b-c.example:443", true),
            ("app", false),
            ("app:", false),
            (":8081", false),
            ("app:port", false),
            ("a b:1", false),
            ("app_1:80", false),
        ];
        for (input, ok) in upstreams {
            assert_eq!(matches(UPSTREAM_PATTERN, input), ok, "pattern {input:?}");
            let yaml = format!("upstream: {}\ntoken_key_file: k\n", yaml_str(input));
            assert_eq!(Config::parse("t", &yaml).is_ok(), ok, "parser {input:?}");
        }
        let routes = [
            ("/v1/", true),
            ("/", true),
            ("/a-b_c.d/", true),
            ("v1/", false),
            ("/v1/../x", false),
            ("//v1", false),
            ("/v 1", false),
            ("/ü", false),
        ];
        for (input, ok) in routes {
            let schema_ok = matches(ROUTE_PATTERN, input) && !matches(ROUTE_FORBIDDEN, input);
            assert_eq!(schema_ok, ok, "pattern {input:?}");
            let yaml = format!(
                "upstream: a:1\ntoken_key_file: k\nroutes: [{}]\n",
                yaml_str(input)
            );
            assert_eq!(Config::parse("t", &yaml).is_ok(), ok, "parser {input:?}");
        }
        let cidrs = [
            ("10.0.0.0/8", true),
            ("192.168.1.7/32", true),
            ("2001:db8::/32", true),
            ("::ffff:203.0.113.7/128", true),
            ("10.0.0.0", false),
            ("10.0.0.0/33", false),
            ("256.0.0.0/8", false),
            ("10.0.0.0/33x", false),
            ("2001:db8::/129", false),
            ("example.com/8", false),
        ];
        for (input, ok) in cidrs {
            assert_eq!(matches(CIDR_PATTERN, input), ok, "pattern {input:?}");
            let yaml = format!(
                "upstream: a:1\ntoken_key_file: k\ntrusted_proxies: [{}]\n",
                yaml_str(input)
            );
            assert_eq!(Config::parse("t", &yaml).is_ok(), ok, "parser {input:?}");
        }
    }
}
