//! The gateway's one typed config schema: parsed from YAML, validated at load,
//! with errors that name the file, line and field.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::admit::blocklist::BlockConfig;
use crate::admit::client_ip::ForwardedHeader;
use crate::admit::limits::shared::config::SharedLimitsConfig;
use crate::admit::limits::RateLimitsConfig;
use crate::config::invalid::Invalid;

pub mod admin;
pub mod field_schema;
pub mod host_port;
pub mod invalid;
pub mod schema;
mod yaml_path;
pub use yaml_path::locate_field;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Edge gateway config (config/gateway.yaml)")]
pub struct Config {
    /// Public listener.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Admin listener: /metrics, /healthz, /readyz, /limits. Never publish it.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: SocketAddr,
    /// The admin port's token and the `/limits/top` view (README "Rate limits: the cockpit").
    #[serde(default)]
    pub admin: admin::AdminConfig,
    /// host:port of the app; a name is resolved asynchronously and re-resolved in the background.
    pub upstream: Upstream,
    /// Peers whose forwarded headers are believed. Empty = trust no one.
    #[serde(default)]
    #[schemars(schema_with = "field_schema::cidr_list")]
    pub trusted_proxies: Vec<IpNet>,
    /// Which forwarded headers to read from a trusted peer, in order of preference.
    #[serde(default = "defaults::forwarded_headers")]
    pub forwarded_headers: Vec<ForwardedHeader>,
    /// Cap on forwarded-header entries walked per request.
    #[serde(default = "defaults::max_forwarded_hops")]
    #[schemars(range(min = 1, max = 64))]
    pub max_forwarded_hops: usize,
    /// Path prefixes forwarded to the app; everything else is a 404 at the edge.
    #[serde(default = "defaults::routes")]
    #[schemars(length(min = 1))]
    pub routes: Vec<RoutePrefix>,
    /// Key file shared with the app (HS256 keys by `kid`) for verifying bearer tokens.
    pub token_key_file: PathBuf,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: SizeLimits,
    #[serde(default)]
    pub security_headers: SecurityHeaders,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Worker threads for the proxy runtime (default: one per core).
    #[serde(default)]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<usize>,
    /// Idle upstream connections kept for reuse.
    #[serde(default = "defaults::upstream_pool_size")]
    pub upstream_pool_size: usize,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Rate-limit state shared across replicas through Redis; absent = per-replica limits.
    #[serde(default)]
    pub shared_limits: Option<SharedLimitsConfig>,
    /// Client CIDRs and user ids refused with 403 (RUNBOOK.md "Block an abusive client").
    #[serde(default)]
    pub block: BlockConfig,
    /// TLS on the public listener (HTTP/1.1 and HTTP/2 by ALPN); absent = cleartext HTTP/1.1.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// HTTP/2 limits (used only with `tls`: h2 is negotiated by ALPN).
    #[serde(default)]
    pub http2: Http2Config,
    /// PROXY protocol (v1/v2) from L4 load balancers; absent or `from: []` = off.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolConfig,
}

/// README "Behind a load balancer". Read per connection: a reload applies to new ones.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    /// Peers (L4 load balancers, only they) whose connections must open with a PROXY v1
    /// or v2 header; its source address is then the client. Empty = off.
    #[serde(default)]
    #[schemars(schema_with = "field_schema::cidr_list")]
    pub from: Vec<IpNet>,
    /// A connection from `from` without a complete header by then is closed.
    #[serde(default = "defaults::proxy_header", deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub header_timeout: Duration,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        ProxyProtocolConfig {
            from: Vec::new(),
            header_timeout: defaults::proxy_header(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Re-read on change and on SIGHUP.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the leaf.
    pub key_file: PathBuf,
    /// A TLS handshake must complete within this; else the connection is closed and counted.
    #[serde(default = "defaults::tls_handshake", deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: open streams per connection.
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE, the hard cap the h2 codec enforces (RFC 9113 size:
    /// name + value + 32 per field). Requests between `limits.max_request_header_bytes` and
    /// this get our JSON 431; above it the codec answers a bare 431.
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_header_list_bytes: u32,
    /// Response bytes buffered per stream before the writer waits for the client.
    #[schemars(range(min = 16384, max = 16777216))]
    pub max_send_buffer_bytes: usize,
    /// Streams the client may reset before we accept them (h2's rapid-reset guard).
    #[schemars(range(min = 1, max = 1000))]
    pub max_pending_accept_reset_streams: usize,
    /// Streams we may reset for the client's protocol errors before closing the connection.
    #[schemars(range(min = 1, max = 10000))]
    pub max_local_error_reset_streams: usize,
    /// RST_STREAM frames a client may send per `flood_window` (rapid reset, CVE-2023-44487).
    #[schemars(range(min = 1))]
    pub max_client_resets: u32,
    /// PING + SETTINGS frames a client may send per `flood_window`.
    #[schemars(range(min = 1))]
    pub max_control_frames: u32,
    /// CONTINUATION frames allowed in one header block (CONTINUATION flood).
    #[schemars(range(min = 1, max = 1000))]
    pub max_continuation_frames: u32,
    /// The window the two frame budgets above are counted in.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub flood_window: Duration,
    /// A stream's header block (HEADERS to END_HEADERS) and a new connection's first
    /// request must arrive within this; else the connection is closed.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub header_timeout: Duration,
    /// A connection with no open stream for this long is closed.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub idle_timeout: Duration,
    /// How often we PING the client.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub keepalive_timeout: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            max_header_list_bytes: 64 * 1024,
            max_send_buffer_bytes: 256 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 64,
            max_client_resets: 200,
            max_control_frames: 100,
            max_continuation_frames: 32,
            flood_window: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Whole request head (line + headers) must arrive within this; else 408.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub request_header: Duration,
    /// Longest gap between two reads of a request body; else 408.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub downstream_read: Duration,
    /// Longest a write to the client may stall.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub downstream_write: Duration,
    /// Idle time allowed between requests on a keep-alive connection.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub keepalive_idle: Duration,
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub upstream_connect: Duration,
    /// Longest gap between two reads from the app; else 504.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub upstream_read: Duration,
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub upstream_write: Duration,
    /// Idle pooled upstream connections are closed after this.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub upstream_idle: Duration,
    /// After SIGTERM: /readyz fails at once, but requests are still served (and connections
    /// accepted) for this long, the time load balancers and endpoint lists take to stop
    /// sending traffic; then the drain (`shutdown_grace`) starts. 0s: drain at once. At most 60s.
    #[serde(deserialize_with = "wait")]
    #[schemars(schema_with = "field_schema::duration")]
    pub shutdown_delay: Duration,
    /// After `shutdown_delay`: time for in-flight requests to finish before exit. The
    /// container's stop grace period must cover both (compose: 25 s).
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub shutdown_grace: Duration,
    /// How often the upstream name is re-resolved and probed.
    #[serde(deserialize_with = "duration")]
    #[schemars(schema_with = "field_schema::duration")]
    pub upstream_refresh: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_header: Duration::from_secs(10),
            downstream_read: Duration::from_secs(30),
            downstream_write: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(2),
            upstream_read: Duration::from_secs(30),
            upstream_write: Duration::from_secs(30),
            upstream_idle: Duration::from_secs(60),
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(15),
            upstream_refresh: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SizeLimits {
    /// Request bodies above this get 413.
    pub max_request_body_bytes: u64,
    /// Request heads (request line + headers) above this get 431.
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_request_header_bytes: usize,
    /// More header fields than this get 431.
    #[schemars(range(min = 8, max = 256))]
    pub max_request_headers: usize,
    /// Concurrent client connections; more are closed at accept.
    #[schemars(range(min = 1))]
    pub max_connections: usize,
    /// Requests one client (IP, IPv6 grouped by `rate_limits.ipv6_prefix`) may have in
    /// flight; more get 429 `too_many_in_flight`. `rate_limits.exempt` is not counted.
    pub max_in_flight_per_client: usize,
    /// Connections one client (the socket peer; IPv6 grouped by `rate_limits.ipv6_prefix`)
    /// may hold open; more are closed at accept, before any TLS handshake (cleartext gets a
    /// JSON 429 `too_many_connections`). 0: no per-client cap. Peers in `trusted_proxies` or
    /// `rate_limits.exempt` are not counted (a load balancer carries many clients).
    pub max_connections_per_client: usize,
    /// New connections one client may open: `rate` with `burst` at once, checked at accept
    /// like `max_connections_per_client` (what bounds handshakes per client). Absent: the
    /// default (10/s, burst 200); `null`: no per-client rate.
    pub new_connections_per_client: Option<ConnectionRate>,
}

/// `limits.new_connections_per_client`, spelled like a rate-limit policy's `rate`/`burst`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRate {
    pub rate: crate::admit::limits::Rate,
    /// New connections a client may open at once.
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: u32,
}

impl Default for ConnectionRate {
    /// Far above a browser (≤ 6 connections per host, kept alive) or a NAT of a few dozen
    /// of them loading pages at once; an unpaced reconnecting client gets 10 handshakes a
    /// second (the paced flood in RELIABILITY.md did not move others' p99).
    fn default() -> Self {
        ConnectionRate {
            rate: crate::admit::limits::Rate {
                count: 10,
                period: Duration::from_secs(1),
            },
            burst: 200,
        }
    }
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits {
            // The app's own cap is 10 MiB; leave headroom so the app's 413 is the one users see.
            max_request_body_bytes: 10 * 1024 * 1024 + 64 * 1024,
            max_request_header_bytes: 16 * 1024,
            max_request_headers: 100,
            max_connections: 10_000,
            max_in_flight_per_client: crate::admit::inflight::DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            // A few dozen browsers behind one NAT (6 connections each) fit.
            max_connections_per_client: 256,
            new_connections_per_client: Some(ConnectionRate::default()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeaders {
    /// `Strict-Transport-Security` value. Absent: `max-age=31536000` when `tls` is set, none
    /// without it (set one when a TLS terminator sits in front). `"off"`: never sent.
    pub hsts: Option<String>,
    pub content_security_policy: String,
}

/// HSTS when `tls` is set and no value is configured: one year, no `includeSubDomains`
/// (that commits sibling hosts the gateway knows nothing about).
pub const DEFAULT_HSTS: &str = "max-age=31536000";

impl SecurityHeaders {
    /// The `Strict-Transport-Security` value to send, if any.
    pub fn effective_hsts(&self, tls: bool) -> Option<&str> {
        match self.hsts.as_deref() {
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => Some(v),
            None if tls => Some(DEFAULT_HSTS),
            None => None,
        }
    }
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders {
            hsts: None,
            // A JSON API renders nothing: forbid every fetch, framing and form target.
            content_security_policy:
                "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
                    .into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Log the query string too. Off by default: queries may carry personal data.
    pub include_query: bool,
}

/// A route prefix such as `/v1/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePrefix(pub String);

impl<'de> Deserialize<'de> for RoutePrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.starts_with('/')
            && s.len() <= 256
            && s.bytes().all(|b| b.is_ascii_graphic())
            && !s.contains("..")
            && !s.contains("//");
        if ok {
            Ok(RoutePrefix(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "route {s:?} must start with '/', be printable ASCII without '..' or '//'"
            )))
        }
    }
}

impl RoutePrefix {
    /// Segment-aware match: `/v1` matches `/v1` and `/v1/x`, never `/v1x`.
    pub fn matches(&self, path: &str) -> bool {
        crate::admit::limits::policy::prefix_matches(&self.0, path)
    }
}

/// `host:port` of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        host_port::write_host_port(f, &self.host, self.port)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_upstream(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let (host, port) = host_port::parse_host_port(s).map_err(|e| format!("upstream {e}"))?;
    Ok(Upstream { host, port })
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = wait(d)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom(
            "a timeout of 0 would disable it; set a real bound",
        ));
    }
    Ok(v)
}

/// A duration that may be 0 (a wait, not a bound: 0 means no wait).
fn wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"10s\" or \"500ms\": {e}"
        ))
    })?;
    if v > Duration::from_secs(24 * 3600) {
        return Err(serde::de::Error::custom(
            "timeouts above 24h are not accepted",
        ));
    }
    Ok(v)
}

mod defaults {
    use super::*;

    pub fn listen() -> SocketAddr {
        "0.0.0.0:8080".parse().expect("valid literal")
    }
    pub fn admin_listen() -> SocketAddr {
        "127.0.0.1:9901".parse().expect("valid literal")
    }
    pub fn forwarded_headers() -> Vec<ForwardedHeader> {
        vec![ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded]
    }
    pub fn max_forwarded_hops() -> usize {
        20
    }
    pub fn routes() -> Vec<RoutePrefix> {
        vec![RoutePrefix("/v1/".into())]
    }
    pub fn upstream_pool_size() -> usize {
        128
    }
    pub fn tls_handshake() -> Duration {
        TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT
    }
    pub fn proxy_header() -> Duration {
        Duration::from_secs(5)
    }
}

/// A config error located in its file: `file:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": field `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it
    /// (`token_key_file`) are resolved against the process working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let location = inner.location();
            // serde_yaml appends " at line L column C"; we print the location ourselves.
            let mut message = inner.to_string();
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            ConfigError {
                file: file.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                field: if field == "." { String::new() } else { field },
                message,
            }
        })?;
        config
            .validate()
            .map_err(|Invalid { field, message }| ConfigError {
                file: file.to_string(),
                line: locate_field(text, &field),
                column: None,
                field,
                message,
            })?;
        Ok(config)
    }

    /// Cross-field checks that a single field's parser cannot make.
    fn validate(&self) -> Result<(), Invalid> {
        let err = |field: &str, message: &str| Err(Invalid::new(field, message));
        // Port 0 (the OS picks one) is fine on both: tests start several replicas from one file.
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return err("admin_listen", "must differ from listen");
        }
        if self.routes.is_empty() {
            return err("routes", "at least one route prefix is needed");
        }
        if self.forwarded_headers.is_empty() && !self.trusted_proxies.is_empty() {
            return err(
                "forwarded_headers",
                "trusted_proxies is set but no forwarded header is read",
            );
        }
        if !(1..=64).contains(&self.max_forwarded_hops) {
            return err("max_forwarded_hops", "must be 1 to 64");
        }
        if let Some(t) = self.threads {
            if !(1..=256).contains(&t) {
                return err("threads", "must be 1 to 256");
            }
        }
        let l = &self.limits;
        if !(1024..=1024 * 1024).contains(&l.max_request_header_bytes) {
            return err("limits.max_request_header_bytes", "must be 1 KiB to 1 MiB");
        }
        if !(8..=256).contains(&l.max_request_headers) {
            // pingora's parser stops at 256 header fields.
            return err("limits.max_request_headers", "must be 8 to 256");
        }
        if l.max_connections == 0 {
            return err("limits.max_connections", "must be at least 1");
        }
        if l.max_in_flight_per_client == 0 {
            return err("limits.max_in_flight_per_client", "must be at least 1");
        }
        if let Some(c) = &l.new_connections_per_client {
            crate::admit::limits::policy::validate_rate_burst(
                "limits.new_connections_per_client",
                c.rate,
                c.burst,
            )?;
        }
        if let Some(h) = &self.security_headers.hsts {
            if http::HeaderValue::from_str(h).is_err() {
                return err("security_headers.hsts", "is not a valid header value");
            }
        }
        if http::HeaderValue::from_str(&self.security_headers.content_security_policy).is_err() {
            return err(
                "security_headers.content_security_policy",
                "is not a valid header value",
            );
        }
        self.validate_http2()?;
        if self.timeouts.shutdown_grace > Duration::from_secs(300) {
            return err("timeouts.shutdown_grace", "must be at most 300s");
        }
        if self.timeouts.shutdown_delay > Duration::from_secs(60) {
            return err("timeouts.shutdown_delay", "must be at most 60s");
        }
        self.rate_limits.validate()?;
        self.admin.validate()?;
        crate::admit::limits::policy::validate_policies(
            self.shared_limits.as_ref(),
            &self.rate_limits.policies,
        )?;
        crate::admit::blocklist::validate(&self.block)?;
        Ok(())
    }

    fn validate_http2(&self) -> Result<(), Invalid> {
        let err = |field: &str, message: &str| Err(Invalid::new(field, message));
        let h = &self.http2;
        if !(1..=1000).contains(&h.max_concurrent_streams) {
            return err("http2.max_concurrent_streams", "must be 1 to 1000");
        }
        if !(1024..=1024 * 1024).contains(&h.max_header_list_bytes) {
            return err("http2.max_header_list_bytes", "must be 1 KiB to 1 MiB");
        }
        if (h.max_header_list_bytes as usize) < self.limits.max_request_header_bytes {
            return err(
                "http2.max_header_list_bytes",
                "must be at least limits.max_request_header_bytes (below it a client gets the codec's bare 431, not ours)",
            );
        }
        if !(16 * 1024..=16 * 1024 * 1024).contains(&h.max_send_buffer_bytes) {
            return err("http2.max_send_buffer_bytes", "must be 16 KiB to 16 MiB");
        }
        if !(1..=1000).contains(&h.max_pending_accept_reset_streams) {
            return err(
                "http2.max_pending_accept_reset_streams",
                "must be 1 to 1000",
            );
        }
        if !(1..=10_000).contains(&h.max_local_error_reset_streams) {
            return err("http2.max_local_error_reset_streams", "must be 1 to 10000");
        }
        if h.max_client_resets == 0 || h.max_control_frames == 0 {
            return err(
                "http2",
                "max_client_resets and max_control_frames must be at least 1",
            );
        }
        if !(1..=1000).contains(&h.max_continuation_frames) {
            return err("http2.max_continuation_frames", "must be 1 to 1000");
        }
        if h.keepalive_timeout >= h.keepalive_interval {
            return err(
                "http2.keepalive_timeout",
                "must be shorter than http2.keepalive_interval",
            );
        }
        if let Some(v) = &self.security_headers.hsts {
            if !v.eq_ignore_ascii_case("off") && !v.trim_start().starts_with("max-age=") {
                return err(
                    "security_headers.hsts",
                    "must be \"off\" or start with max-age=",
                );
            }
        }
        Ok(())
    }

    /// The files the config names (`token_key_file`, `admin.token_file`) must load; an error is located at
    /// the field's line like any other: `config/gateway.yaml:6: field \`token_key_file\`: …`.
    pub fn check_referenced_files(&self, path: &Path) -> Result<(), ConfigError> {
        let located = |field: &str, message: String| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            ConfigError {
                file: path.display().to_string(),
                line: locate_field(&text, field),
                column: None,
                field: field.into(),
                message,
            }
        };
        keyring::Keyring::load(&self.token_key_file)
            .map_err(|e| located("token_key_file", e.to_string()))?;
        self.admin
            .read_token()
            .map_err(|message| located("admin.token_file", message))?;
        if let Some(s) = &self.shared_limits {
            s.read_ca()
                .map_err(|message| located("shared_limits.tls.ca_file", message))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "upstream: 127.0.0.1:8081\ntoken_key_file: keys.yaml\n";

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::parse("g.yaml", MINIMAL).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9901");
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.routes, vec![RoutePrefix("/v1/".into())]);
        assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(15));
        assert_eq!(c.timeouts.shutdown_delay, Duration::from_secs(5));
        // A delay may be 0 (drain at once); a timeout may not.
        let now = format!("{MINIMAL}timeouts:\n  shutdown_delay: 0s\n");
        let c = Config::parse("g.yaml", &now).unwrap();
        assert_eq!(c.timeouts.shutdown_delay, Duration::ZERO);
        assert_eq!(c.timeouts.keepalive_idle, Duration::from_secs(60));
        assert_eq!(c.limits.max_connections_per_client, 256);
        assert_eq!(
            c.limits.new_connections_per_client,
            Some(ConnectionRate::default())
        );
        // `null` turns the per-client rate off; 0 the open cap.
        let off = format!("{MINIMAL}limits:\n  max_connections_per_client: 0\n  new_connections_per_client: null\n");
        let c = Config::parse("g.yaml", &off).unwrap();
        assert_eq!(c.limits.max_connections_per_client, 0);
        assert_eq!(c.limits.new_connections_per_client, None);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases: &[(&str, &str, Option<usize>, &str)] = &[
            ("unknown key", "upstream: a:1\ntoken_key_file: k\nlisten_port: 1\n", Some(3), "listen_port"),
            ("bad cidr", "upstream: a:1\ntoken_key_file: k\ntrusted_proxies:\n  - 10.0.0.0/33\n", Some(4), "trusted_proxies[0]"),
            ("bad duration", "upstream: a:1\ntoken_key_file: k\ntimeouts:\n  upstream_read: forever\n", Some(4), "timeouts.upstream_read"),
            ("zero duration", "upstream: a:1\ntoken_key_file: k\ntimeouts:\n  upstream_read: 0s\n", Some(4), "timeouts.upstream_read"),
            ("long shutdown delay", "upstream: a:1\ntoken_key_file: k\ntimeouts:\n  shutdown_delay: 61s\n", Some(4), "timeouts.shutdown_delay"),
            ("bad shutdown delay", "upstream: a:1\ntoken_key_file: k\ntimeouts:\n  shutdown_delay: soon\n", Some(4), "timeouts.shutdown_delay"),
            ("bad route", "upstream: a:1\ntoken_key_file: k\nroutes: [\"v1\"]\n", Some(3), "routes[0]"),
            ("traversal route", "upstream: a:1\ntoken_key_file: k\nroutes: [\"/v1/../admin\"]\n", Some(3), "routes[0]"),
            ("bad upstream", "upstream: \"no port\"\ntoken_key_file: k\n", Some(1), "upstream"),
            ("missing upstream", "token_key_file: k\n", None, ""),
            ("bad header name", "upstream: a:1\ntoken_key_file: k\nforwarded_headers: [x-client-ip]\n", Some(3), "forwarded_headers[0]"),
            ("same ports", "upstream: a:1\ntoken_key_file: k\nlisten: 127.0.0.1:1\nadmin_listen: 127.0.0.1:1\n", Some(4), "admin_listen"),
            ("header cap", "upstream: a:1\ntoken_key_file: k\nlimits:\n  max_request_headers: 1000\n", Some(4), "limits.max_request_headers"),
            ("conn burst", "upstream: a:1\ntoken_key_file: k\nlimits:\n  new_connections_per_client:\n    rate: 10/s\n    burst: 0\n", Some(6), "limits.new_connections_per_client.burst"),
            ("conn rate", "upstream: a:1\ntoken_key_file: k\nlimits:\n  new_connections_per_client:\n    rate: ten\n    burst: 5\n", Some(5), "limits.new_connections_per_client.rate"),
            ("unterminated string", "token_key_file: k\nupstream: \"unterminated\n", Some(3), "upstream"),
        ];
        for (name, text, line, field) in cases {
            let e = Config::parse("g.yaml", text).expect_err(name);
            assert_eq!(e.file, "g.yaml", "{name}");
            if line.is_some() {
                assert_eq!(e.line, *line, "{name}: {e}");
            }
            assert_eq!(e.field, *field, "{name}: {e}");
            assert!(e.to_string().starts_with("g.yaml"), "{name}: {e}");
        }
    }

    #[test]
    fn proxy_protocol_block() {
        let c = Config::parse("g.yaml", MINIMAL).unwrap();
        assert!(c.proxy_protocol.from.is_empty(), "absent = off");
        assert_eq!(c.proxy_protocol.header_timeout, Duration::from_secs(5));
        let on = format!("{MINIMAL}proxy_protocol:\n  from: [\"10.0.0.0/8\", \"2001:db8::/32\"]\n");
        let c = Config::parse("g.yaml", &on).unwrap();
        assert_eq!(c.proxy_protocol.from.len(), 2);
        assert_eq!(c.proxy_protocol.header_timeout, Duration::from_secs(5));
        // (YAML, field named)
        let bad: &[(&str, &str)] = &[
            (
                "proxy_protocol:\n  from: [10.0.0.1]\n",
                "proxy_protocol.from[0]",
            ),
            (
                "proxy_protocol:\n  from: [10.0.0.0/33]\n",
                "proxy_protocol.from[0]",
            ),
            (
                "proxy_protocol:\n  header_timeout: 0s\n",
                "proxy_protocol.header_timeout",
            ),
            (
                "proxy_protocol:\n  header_timeout: 5\n",
                "proxy_protocol.header_timeout",
            ),
            (
                "proxy_protocol:\n  from: []\n  versions: [2]\n",
                "proxy_protocol.versions",
            ),
        ];
        for (yaml, field) in bad {
            let e = Config::parse("g.yaml", &format!("{MINIMAL}{yaml}")).unwrap_err();
            assert_eq!(e.field, *field, "{yaml}: {e}");
        }
    }

    #[test]
    fn tls_and_http2_blocks() {
        let c = Config::parse("g.yaml", MINIMAL).unwrap();
        assert!(c.tls.is_none(), "absent = cleartext");
        assert_eq!(c.http2.max_concurrent_streams, 100);
        let tls = format!("{MINIMAL}tls:\n  cert_file: /run/secrets/tls_cert\n  key_file: k.pem\n");
        let c = Config::parse("g.yaml", &tls).unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!(t.cert_file, Path::new("/run/secrets/tls_cert"));
        assert_eq!(t.handshake_timeout, Duration::from_secs(10));
        let bad: &[(&str, &str)] = &[
            ("tls:\n  cert_file: c\n", "tls"),
            (
                "tls:\n  cert_file: c\n  key_file: k\n  ciphers: all\n",
                "tls.ciphers",
            ),
            (
                "tls:\n  cert_file: c\n  key_file: k\n  handshake_timeout: 0s\n",
                "tls.handshake_timeout",
            ),
            (
                "http2:\n  max_concurrent_streams: 0\n",
                "http2.max_concurrent_streams",
            ),
            (
                "http2:\n  max_concurrent_streams: 5000\n",
                "http2.max_concurrent_streams",
            ),
            (
                "http2:\n  max_header_list_bytes: 8192\n",
                "http2.max_header_list_bytes",
            ),
            (
                "http2:\n  keepalive_interval: 5s\n  keepalive_timeout: 5s\n",
                "http2.keepalive_timeout",
            ),
            (
                "http2:\n  max_continuation_frames: 0\n",
                "http2.max_continuation_frames",
            ),
            ("http2:\n  idle_timeout: never\n", "http2.idle_timeout"),
            (
                "security_headers:\n  hsts: includeSubDomains\n",
                "security_headers.hsts",
            ),
        ];
        for (extra, field) in bad {
            let e = Config::parse("g.yaml", &format!("{MINIMAL}{extra}")).expect_err(extra);
            assert_eq!(e.field, *field, "{extra}: {e}");
        }
    }

    #[test]
    fn hsts_defaults_on_with_tls_only() {
        let h = |v: Option<&str>| SecurityHeaders {
            hsts: v.map(str::to_string),
            ..Default::default()
        };
        let cases = [
            (None, false, None),
            (None, true, Some(DEFAULT_HSTS)),
            (Some("off"), true, None),
            (Some("OFF"), false, None),
            (Some("max-age=60"), true, Some("max-age=60")),
            (Some("max-age=60"), false, Some("max-age=60")),
        ];
        for (set, tls, want) in cases {
            assert_eq!(h(set).effective_hsts(tls), want, "{set:?} tls={tls}");
        }
    }

    #[test]
    fn upstream_forms() {
        let ok = [
            ("127.0.0.1:8081", "127.0.0.1", 8081),
            ("[::1]:8081", "::1", 8081),
            ("app:8081", "app", 8081),
            ("App.Internal:80", "app.internal", 80),
        ];
        for (s, host, port) in ok {
            let u = parse_upstream(s).unwrap();
            assert_eq!((u.host.as_str(), u.port), (host, port), "{s}");
        }
        for bad in [
            "app",
            "app:",
            ":80",
            "app:0",
            "app:99999",
            "a b:80",
            "app_x:80",
            "-:80x",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_prefix_matches_on_segment_boundaries() {
        let cases = [
            ("/v1/", "/v1/documents", true),
            ("/v1/", "/v1", false),
            ("/v1/", "/v1x/a", false),
            ("/v1", "/v1", true),
            ("/v1", "/v1/a", true),
            ("/v1", "/v10", false),
            ("/v1/", "/metrics", false),
            ("/v1/", "/V1/documents", false),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(
                RoutePrefix(prefix.into()).matches(path),
                want,
                "{prefix} {path}"
            );
        }
    }

    #[test]
    fn locate_field_walks_nested_paths() {
        let text = "a: 1\nrate_limits:\n  policies:\n    - name: x\n      burst: 1\n    - name: y\n      burst: 0\n";
        assert_eq!(locate_field(text, "rate_limits"), Some(2));
        assert_eq!(locate_field(text, "rate_limits.policies[1]"), Some(6));
        assert_eq!(locate_field(text, "rate_limits.policies[1].burst"), Some(7));
        assert_eq!(locate_field(text, "rate_limits.policies[0].name"), Some(4));
        assert_eq!(locate_field(text, "nope"), None);
    }
}

#[cfg(test)]
mod shared_limits_file_tests {
    use super::Config;
    use crate::admit::limits::shared::config::OnUnavailable;

    const BASE: &str = "upstream: 127.0.0.1:8081\ntoken_key_file: keys.yaml\n";

    #[test]
    fn errors_name_file_line_and_field() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, usize, &str)] = &[
            ("sync without shared_limits",
             "rate_limits:\n  policies:\n    - name: a\n      key: ip\n      rate: 1/s\n      burst: 1\n      shared: sync\n",
             7, "rate_limits.policies[0].shared"),
            ("exact without shared_limits",
             "rate_limits:\n  policies:\n    - {name: a, key: ip, rate: 1/s, burst: 1}\n    - name: b\n      key: ip\n      rate: 1/s\n      burst: 1\n      shared: exact\n",
             8, "rate_limits.policies[1].shared"),
            ("override without shared_limits",
             "rate_limits:\n  policies:\n    - name: a\n      key: ip\n      rate: 1/s\n      burst: 1\n      on_unavailable: deny\n",
             7, "rate_limits.policies[0].on_unavailable"),
            ("password in url",
             "shared_limits:\n  redis: redis://:pw@redis:6379/0\n",
             2, "shared_limits.redis"),
            ("interval out of range",
             "shared_limits:\n  redis: redis://redis\n  sync_interval: 10ms\n",
             3, "shared_limits.sync_interval"),
            ("bad mode",
             "shared_limits:\n  redis: redis://redis\nrate_limits:\n  policies:\n    - name: a\n      key: ip\n      rate: 1/s\n      burst: 1\n      shared: global\n",
             9, "rate_limits.policies[0].shared"),
            ("bad prefix",
             "shared_limits:\n  redis: redis://redis\n  key_prefix: 'a b'\n",
             3, "shared_limits.key_prefix"),
            ("unknown key",
             "shared_limits:\n  redis: redis://redis\n  replicas: 3\n",
             3, "shared_limits.replicas"),
            ("two topologies",
             "shared_limits:\n  redis: redis://redis\n  sentinel:\n    master: m\n    nodes: ['s:26379']\n",
             3, "shared_limits.sentinel"),
            ("sentinel without nodes",
             "shared_limits:\n  sentinel:\n    master: m\n    nodes: []\n",
             4, "shared_limits.sentinel.nodes"),
        ];
        for (name, extra, line, field) in cases {
            let e = Config::parse("g.yaml", &format!("{BASE}{extra}")).expect_err(name);
            assert_eq!(e.field, *field, "{name}: {e}");
            // Validation errors point at the field's line; serde_yaml places errors inside
            // an optional section at the section's first line.
            let got = e.line.unwrap_or(0);
            assert!((3..=line + 2).contains(&got), "{name}: {e}");
            if field.starts_with("rate_limits") {
                assert_eq!(got, line + 2, "{name}: {e}");
            }
            assert!(e.to_string().starts_with("g.yaml:"), "{name}: {e}");
        }
    }

    #[test]
    fn an_unreadable_ca_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dev-token-keys.yaml");
        let good_ca = dir.path().join("ca.pem");
        std::fs::write(
            &good_ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (ca, ok) in [
            (good_ca.display().to_string(), true),
            ("/nonexistent/ca.pem".to_string(), false),
            (keys.to_string(), false),
        ] {
            let text = format!(
                "upstream: 127.0.0.1:8081\ntoken_key_file: {keys}\nshared_limits:\n  redis: redis://redis\n  tls:\n    ca_file: {ca}\n"
            );
            let path = dir.path().join("g.yaml");
            std::fs::write(&path, &text).unwrap();
            let c = Config::parse("g.yaml", &text).expect("the file itself is valid");
            match c.check_referenced_files(&path) {
                Ok(()) => assert!(ok, "{ca}"),
                Err(e) => {
                    assert!(!ok, "{ca}: {e}");
                    assert_eq!(e.field, "shared_limits.tls.ca_file", "{e}");
                    assert_eq!(e.line, Some(6), "{e}");
                }
            }
        }
    }

    #[test]
    fn local_policies_need_nothing_and_modes_default_to_sync() {
        let c = Config::parse(
            "g.yaml",
            &format!("{BASE}rate_limits:\n  policies:\n    - {{name: a, key: ip, rate: 1/s, burst: 1, shared: local}}\n"),
        )
        .unwrap();
        assert!(c.shared_limits.is_none());
        let c = Config::parse(
            "g.yaml",
            &format!("{BASE}shared_limits:\n  redis: rediss://redis:6380/1\n  on_unavailable: full\nrate_limits:\n  policies:\n    - {{name: a, key: ip, rate: 1/s, burst: 1}}\n    - {{name: b, key: user, rate: 1/s, burst: 1, shared: exact, on_unavailable: deny}}\n"),
        )
        .unwrap();
        let s = c.shared_limits.unwrap();
        assert!(s.redis.as_ref().unwrap().tls && s.uses_tls());
        assert_eq!(s.on_unavailable, OnUnavailable::Full);
        assert_eq!(c.rate_limits.policies[0].shared, None);
        assert_eq!(
            c.rate_limits.policies[1].on_unavailable,
            Some(OnUnavailable::Deny)
        );
    }
}
