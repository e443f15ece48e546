//! The observability configs checked against the real services.
//!
//! Every metric that an alert (prometheus/alerts.yml) or a dashboard panel
//! (grafana/dashboards/*.json) queries must exist on a live gateway's or app's
//! /metrics, with the label values the query selects. The test starts the real app
//! and two real gateways (one in front of the app, one in front of a dead port),
//! drives the traffic that makes each labeled series appear, scrapes both, and
//! checks every selector. The `gateway_shared_limits_*` series come from a third gateway
//! with `shared_limits` against a real redis-server (skipped loudly without one). A panel querying a renamed or invented metric fails here.
//! It also checks the alert annotations, the dashboard datasources, Loki's config
//! and the labels Alloy ships.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// Series Prometheus makes itself rather than scraping them. Keep this tiny: anything
/// added here is no longer checked against the services.
const PROMETHEUS_GENERATED: &[&str] = &["up"];

/// Alerts that must exist (RUNBOOK has a section for each).
const REQUIRED_ALERTS: &[&str] = &[
    "GatewayHighErrorRate",
    "GatewayHighLatency",
    "UpstreamDown",
    "RateLimitRejectionsSpike",
    "ForwardedHeaderSpoofSpike",
    "ConfigReloadFailed",
    "SharedLimitsDegraded",
    "SharedLimitsRedisMasterFlapping",
    "TlsCertificateExpiringSoon",
    "TlsCertificateExpiryCritical",
    "TlsCertificateReloadFailed",
    "TargetDown",
];

/// The only stream labels Alloy may ship (see loki/config.alloy).
const LOKI_LABELS: &[&str] = &["service", "level"];

// ---------------------------------------------------------------------------
// PromQL: the metric selectors an expression uses.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

impl Selector {
    fn equal(&self, label: &str) -> Option<&str> {
        self.matchers
            .iter()
            .find(|m| m.label == label && m.op == "=")
            .map(|m| m.value.as_str())
    }
}

/// Aggregation operators: like functions, but a `by (…)` may sit between name and `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords whose parenthesised list holds label names, not metrics.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Binary operators, modifiers and literals spelled as words.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Index just past the string literal that starts at `i` (quote char at `b[i]`).
fn skip_string(b: &[u8], mut i: usize) -> usize {
    let quote = b[i];
    i += 1;
    while i < b.len() && b[i] != quote {
        if b[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index just past the bracket group opened at `i`, skipping string literals.
fn skip_group(b: &[u8], mut i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `label op "value", …` (the inside of `{…}`).
fn parse_matchers(inner: &str) -> Vec<Matcher> {
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return out;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let label = inner[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = inner[op_start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        assert!(
            !label.is_empty() && !op.is_empty() && i < b.len(),
            "cannot parse matchers {inner:?}"
        );
        let end = skip_string(b, i);
        let value = unescape(&inner[i + 1..end - 1]);
        out.push(Matcher { label, op, value });
        i = end;
    }
}

/// Every metric selector in a PromQL expression: identifiers that are not
/// functions, aggregations, keywords, label names, Grafana variables or numbers.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            // Range and subquery durations, including Grafana's [$__rate_interval].
            b'[' => i = skip_group(b, i, b'[', b']'),
            b'{' => {
                // A bare selector: only `{__name__="x"}` names a metric.
                let end = skip_group(b, i, b'{', b'}');
                let matchers = parse_matchers(&expr[i + 1..end - 1]);
                if let Some(m) = matchers
                    .iter()
                    .find(|m| m.label == "__name__" && m.op == "=")
                {
                    out.push(Selector {
                        metric: m.value.clone(),
                        matchers: matchers
                            .iter()
                            .filter(|m| m.label != "__name__")
                            .cloned()
                            .collect(),
                    });
                }
                i = end;
            }
            // Grafana variables: $var, ${var}, $__interval.
            b'$' => {
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    i = skip_group(b, i, b'{', b'}');
                } else {
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                }
            }
            // Numbers and durations: 0.95, 1e-9, 0x1f, 5m, 1h30m.
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                // A sign belongs to the number only right after an exponent's `e`.
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || (matches!(b[i], b'+' | b'-') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let ident = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let next = b.get(j).copied();
                let lower = ident.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if next == Some(b'(') {
                        i = skip_group(b, j, b'(', b')');
                    }
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&ident)
                    || next == Some(b'(')
                {
                    // A keyword, an aggregation or a function call.
                } else {
                    let mut matchers = Vec::new();
                    if next == Some(b'{') {
                        let end = skip_group(b, j, b'{', b'}');
                        matchers = parse_matchers(&expr[j + 1..end - 1]);
                        i = end;
                    }
                    out.push(Selector {
                        metric: ident.to_string(),
                        matchers,
                    });
                }
            }
            _ => i += 1,
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The configs.
// ---------------------------------------------------------------------------

fn repo_file(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn str_of<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

/// (alert name, rule) for every alerting rule.
fn alert_rules() -> Vec<(String, Yaml)> {
    let doc = yaml("prometheus/alerts.yml");
    let groups = doc["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter_map(|r| str_of(r, "alert").map(|name| (name.to_string(), r.clone())))
        .collect()
}

fn dashboards() -> Vec<(PathBuf, Json)> {
    let dir = repo_file("grafana/dashboards");
    let mut out: Vec<(PathBuf, Json)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

/// Panels, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for inner in p["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// (panel title, datasource uid, expression) of every query target; a target without
/// its own datasource uses its panel's.
fn dashboard_queries(dashboard: &Json) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            let uid = t["datasource"]["uid"]
                .as_str()
                .or(p["datasource"]["uid"].as_str())
                .unwrap_or_else(|| panic!("panel {title:?}: a target without datasource uid"));
            if let Some(expr) = t["expr"].as_str() {
                out.push((title.clone(), uid.to_string(), expr.to_string()));
            }
        }
    }
    // Template variables query too.
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let uid = v["datasource"]["uid"].as_str().unwrap_or("prometheus");
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(expr) = q.and_then(variable_expr) {
            let name = format!("variable {}", v["name"].as_str().unwrap_or("?"));
            out.push((name, uid.to_string(), expr));
        }
    }
    out
}

/// The PromQL inside a Grafana variable query: `label_values(EXPR, label)` and
/// `query_result(EXPR)` hold one; `label_values(label)` and `metrics(re)` hold none.
fn variable_expr(q: &str) -> Option<String> {
    let q = q.trim();
    if let Some(inner) = q.strip_prefix("query_result(") {
        return Some(inner.strip_suffix(')')?.to_string());
    }
    let args = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (expr, _label) = args.rsplit_once(',')?;
    Some(expr.to_string())
}

/// Every Prometheus selector used by alerts and dashboards, with where it came from.
fn all_prometheus_selectors() -> Vec<(String, Selector)> {
    let mut out = Vec::new();
    for (name, rule) in alert_rules() {
        let expr = str_of(&rule, "expr").unwrap_or_else(|| panic!("{name}: no expr"));
        for s in selectors(expr) {
            out.push((format!("alert {name}"), s));
        }
    }
    for (path, d) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (panel, uid, expr) in dashboard_queries(&d) {
            if uid == "prometheus" {
                for s in selectors(&expr) {
                    out.push((format!("{file} panel {panel:?}"), s));
                }
            }
        }
    }
    out
}

/// Job name → targets from prometheus/prometheus.yml.
fn scrape_jobs() -> BTreeMap<String, Vec<String>> {
    let doc = yaml("prometheus/prometheus.yml");
    doc["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|j| {
            let name = str_of(j, "job_name").expect("job_name").to_string();
            let targets = j["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|s| s["targets"].as_sequence().into_iter().flatten())
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
            (name, targets)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The exposition format.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → TYPE.
    types: BTreeMap<String, String>,
    /// (sample name, labels).
    samples: Vec<(String, BTreeMap<String, String>)>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                e.types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let b = line.as_bytes();
            let end = skip_group(b, name_end, b'{', b'}');
            for m in parse_matchers(&line[name_end + 1..end - 1]) {
                labels.insert(m.label, m.value);
            }
        }
        e.samples.push((name, labels));
    }
    e
}

impl Exposition {
    fn merge(parts: &[&Exposition]) -> Exposition {
        let mut e = Exposition::default();
        for p in parts {
            e.types.extend(p.types.clone());
            e.samples.extend(p.samples.iter().cloned());
        }
        e
    }

    /// Whether a query name names series here: a plain family, or a classic
    /// histogram's (summary's) `_bucket`/`_sum`/`_count` series.
    fn has_series_name(&self, name: &str) -> bool {
        let kind = |n: &str| self.types.get(n).map(String::as_str);
        let plain = matches!(kind(name), Some(k) if k != "histogram" && k != "summary");
        let derived = [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ]
        .iter()
        .any(|(suffix, kinds)| {
            name.strip_suffix(suffix)
                .and_then(kind)
                .is_some_and(|k| kinds.contains(&k))
        });
        (plain || derived) && self.samples.iter().any(|(n, _)| n == name)
    }

    /// Samples of `name` matching every positive matcher (job and instance are target
    /// labels Prometheus adds, not the service's).
    fn matching(&self, s: &Selector) -> usize {
        let positive: Vec<(&Matcher, Option<regex::Regex>)> = s
            .matchers
            .iter()
            .filter(|m| m.label != "job" && m.label != "instance")
            .filter(|m| m.op == "=" || m.op == "=~")
            .map(|m| {
                let re = (m.op == "=~").then(|| {
                    // PromQL regexes are fully anchored RE2.
                    regex::Regex::new(&format!("^(?:{})$", m.value))
                        .unwrap_or_else(|e| panic!("bad regex in {s:?}: {e}"))
                });
                (m, re)
            })
            .collect();
        self.samples
            .iter()
            .filter(|(n, _)| *n == s.metric)
            .filter(|(_, labels)| {
                positive.iter().all(|(m, re)| {
                    let v = labels.get(&m.label).map(String::as_str).unwrap_or("");
                    match re {
                        Some(re) => re.is_match(v),
                        None => v == m.value,
                    }
                })
            })
            .count()
    }
}

// ---------------------------------------------------------------------------
// Driving the services.
// ---------------------------------------------------------------------------

const ENFORCE: &str = "obs-enforce";
const SHADOW: &str = "obs-shadow";

/// A spoof-detecting, rate-limited gateway config; both policies cover /v1/documents.
fn gateway_extra() -> String {
    format!(
        "trusted_proxies: [127.0.0.2/32]\nrate_limits:\n  policies:\n    \
         - {{name: {ENFORCE}, key: ip, rate: 1/hour, burst: 2, match: {{path_prefix: /v1/documents}}}}\n    \
         - {{name: {SHADOW}, key: ip, rate: 1/hour, burst: 1, mode: shadow, match: {{path_prefix: /v1/documents}}}}\n"
    )
}

async fn send(gw: SocketAddr, from: &str, head: &str, body: &str) -> Response {
    let req = format!(
        "{head}\r\nHost: gw\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send_from(from, gw, req.as_bytes()).await
}

const SHARED_SYNC: &str = "obs-shared";
const SHARED_EXACT: &str = "obs-exact";

/// A redis-server on a free loopback port, killed on drop.
struct RedisProc {
    child: std::process::Child,
    port: u16,
}

impl RedisProc {
    /// None when Debian's `redis-server` is not installed (.ci/run installs it).
    fn start() -> Option<RedisProc> {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let r = RedisProc { child, port };
        let listening = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "redis-server did not listen on {port}");
        Some(r)
    }
}

impl RedisProc {
    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} redis-server");
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `gateway_shared_limits_*` series exist only on a gateway with `shared_limits`: one in
/// front of the app against a real redis-server, driven through a sync flush and an exact
/// check, then Redis stopped (SIGSTOP) so an exact fallback and degraded decisions appear.
/// None, loudly, without redis-server; the caller then skips only those metrics.
async fn scrape_shared_gateway(upstream: SocketAddr) -> Option<Exposition> {
    let Some(redis) = RedisProc::start() else {
        eprintln!(
            "\n########################################################\n\
             #  SKIPPED: gateway_shared_limits_* queries — no redis-server here\n\
             #  (apt-get install redis-server; .ci/run installs it).\n\
             ########################################################\n"
        );
        return None;
    };
    let extra = format!(
        "shared_limits:\n  redis: redis://127.0.0.1:{}/0\n  sync_interval: 50ms\n\
         rate_limits:\n  policies:\n    \
         - {{name: {SHARED_SYNC}, key: ip, rate: 1/hour, burst: 2, match: {{path_prefix: /v1/documents}}}}\n    \
         - {{name: {SHARED_EXACT}, key: ip, rate: 1/hour, burst: 5, shared: exact, match: {{path_prefix: /v1/auth}}}}\n",
        redis.port
    );
    let gw = GatewayProc::start(upstream, &extra);
    let up = |gw: &GatewayProc| gw.metric_sum("gateway_shared_limits_up", &[]);
    let wait_up = |want: f64| {
        assert!(
            wait_until(Duration::from_secs(10), || up(&gw) == want),
            "gateway_shared_limits_up never {want}; log:\n{}",
            tail(&gw.proc.log, 20)
        );
    };
    wait_up(1.0);
    // The exact policy covers /v1/auth: a GET there is cheap for the app (no password hash).
    let exact = "GET /v1/auth/probe HTTP/1.1";
    // In sync: a flushed key (synced_keys, sync round trips) and one exact check.
    send(gw.addr, "127.0.0.31", "GET /v1/documents HTTP/1.1", "").await;
    send(gw.addr, "127.0.0.31", exact, "").await;
    gw.wait_metric_above(
        "gateway_shared_limits_synced_keys_total",
        &[],
        0.0,
        Duration::from_secs(10),
    )
    .await;
    // Redis hung (SIGSTOP): an exact check times out (20 ms) and falls back before the
    // breaker opens (~1 s); a fresh client each round, bounded rounds.
    let fallbacks = "gateway_shared_limits_exact_fallbacks_total";
    for round in 0..5u8 {
        redis.signal("-STOP");
        send(gw.addr, &format!("127.0.1.{round}"), exact, "").await;
        if gw.metric_sum(fallbacks, &[("policy", SHARED_EXACT)]) > 0.0 {
            break;
        }
        redis.signal("-CONT");
        wait_up(1.0);
    }
    assert!(
        gw.metric_sum(fallbacks, &[("policy", SHARED_EXACT)]) > 0.0,
        "no exact fallback while Redis was stopped; log:\n{}",
        tail(&gw.proc.log, 20)
    );
    // Degraded: the replica decides alone (burst 2 → allowed, allowed, rejected).
    wait_up(0.0);
    for _ in 0..3 {
        send(gw.addr, "127.0.0.32", "GET /v1/documents HTTP/1.1", "").await;
    }
    let decisions = "gateway_shared_limits_degraded_decisions_total";
    for decision in ["allowed", "rejected"] {
        gw.wait_metric_above(
            decisions,
            &[("policy", SHARED_SYNC), ("decision", decision)],
            0.0,
            Duration::from_secs(10),
        )
        .await;
    }
    Some(parse_exposition(&gw.metrics()))
}

/// Starts the app and gateways, drives traffic that makes every labeled series the
/// configs select appear, and returns job name → exposition, as Prometheus would see it.
async fn scrape_live_stack() -> BTreeMap<String, Exposition> {
    let (_keys_dir, keys) = dev_key_file();
    let app = AppProc::start(&keys);
    let extra = gateway_extra();
    let gw = GatewayProc::start(app.addr, &extra);
    gw.wait_ready(200);

    // A real login and list through the gateway: request and latency series on both.
    let login = send(
        gw.addr,
        "127.0.0.21",
        "POST /v1/auth/token HTTP/1.1\r\nContent-Type: application/json",
        r#"{"username":"alice","password":"alice-pw"}"#,
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["access_token"].as_str().unwrap().to_string();
    let list = format!("GET /v1/documents HTTP/1.1\r\nAuthorization: Bearer {token}");

    // Enforce burst 2, shadow burst 1: allowed, shadow_rejected, then a real 429.
    let statuses = [
        send(gw.addr, "127.0.0.21", &list, "").await.status,
        send(gw.addr, "127.0.0.21", &list, "").await.status,
        send(gw.addr, "127.0.0.21", &list, "").await.status,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    let decisions = "gateway_rate_limit_decisions_total";
    assert_eq!(
        gw.metric_sum(decisions, &[("policy", ENFORCE), ("decision", "rejected")]),
        1.0
    );
    assert!(
        gw.metric_sum(
            decisions,
            &[("policy", SHADOW), ("decision", "shadow_rejected")]
        ) >= 1.0
    );

    // A forwarded header from a peer that is not a trusted proxy (its status does not
    // matter here, the counter does).
    send(
        gw.addr,
        "127.0.0.22",
        "GET /v1/documents HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9",
        "",
    )
    .await;
    assert_eq!(
        gw.metric_sum(
            "gateway_forwarded_header_rejections_total",
            &[("reason", "untrusted_peer")]
        ),
        1.0
    );

    // A forged token (401 at the edge) and an oversized head (431).
    let forged = send(
        gw.addr,
        "127.0.0.23",
        "GET /v1/documents HTTP/1.1\r\nAuthorization: Bearer not-a-token",
        "",
    )
    .await;
    assert_eq!(forged.status, 401);
    let big = format!(
        "GET /v1/documents HTTP/1.1\r\nX-Big: {}",
        "a".repeat(20_000)
    );
    assert_eq!(send(gw.addr, "127.0.0.24", &big, "").await.status, 431);

    // A rejected reload, then a good one.
    reload(&gw, app.addr, "rate_limits: [not, a, map\n", "error").await;
    reload(&gw, app.addr, &extra, "ok").await;

    // A second gateway in front of a dead port: upstream errors, 502, upstream_up 0.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw_dead = GatewayProc::start(dead, "");
    let resp = send(gw_dead.addr, "127.0.0.25", "GET /v1/documents HTTP/1.1", "").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(gw_dead.metric_sum("gateway_upstream_errors_total", &[("kind", "connect")]) >= 1.0);

    // A third gateway with shared_limits against a real Redis (when there is one).
    let shared = scrape_shared_gateway(app.addr).await;

    // A TLS gateway: the certificate expiry gauge exists only with `tls`.
    let tls_dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let (cert, key_file) = (tls_dir.path().join("c.pem"), tls_dir.path().join("k.pem"));
    std::fs::write(&cert, params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key_file.display()
    );
    let gw_tls = GatewayProc::start(app.addr, &tls);

    let app_text = get_blocking(app.addr, "/metrics").unwrap().text();
    let mut parts = vec![
        parse_exposition(&gw.metrics()),
        parse_exposition(&gw_dead.metrics()),
        parse_exposition(&gw_tls.metrics()),
    ];
    parts.extend(shared);
    let gateway = Exposition::merge(&parts.iter().collect::<Vec<_>>());
    BTreeMap::from([
        ("gateway".to_string(), gateway),
        ("app".to_string(), parse_exposition(&app_text)),
    ])
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_queried_metric_exists_on_the_live_services() {
    let jobs = scrape_jobs();
    for (job, target) in [("gateway", "gateway:9901"), ("app", "app:8081")] {
        assert_eq!(
            jobs.get(job),
            Some(&vec![target.to_string()]),
            "prometheus.yml job {job}"
        );
    }
    let used = all_prometheus_selectors();
    assert!(used.len() > 20, "too few selectors found: {used:?}");

    let scraped = scrape_live_stack().await;
    // Without redis-server (skipped loudly above) only the shared-limits metrics go unchecked.
    let shared_scraped = scraped["gateway"].has_series_name("gateway_shared_limits_up");
    assert!(
        shared_scraped
            || std::process::Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err(),
        "redis-server is installed but no gateway_shared_limits_up was scraped"
    );
    let mut problems = BTreeSet::new();
    for (origin, s) in &used {
        if PROMETHEUS_GENERATED.contains(&s.metric.as_str()) {
            continue;
        }
        if !shared_scraped && s.metric.starts_with("gateway_shared_limits_") {
            continue;
        }
        let wanted: Vec<&str> = match s.equal("job") {
            Some(job) => vec![job],
            None => scraped.keys().map(String::as_str).collect(),
        };
        for job in &wanted {
            if !jobs.contains_key(*job) {
                problems.insert(format!("{origin}: job {job:?} is not in prometheus.yml"));
            } else if !scraped.contains_key(*job) {
                problems.insert(format!("{origin}: job {job:?} is not run by this test"));
            }
        }
        let exps: Vec<&Exposition> = wanted.iter().filter_map(|j| scraped.get(*j)).collect();
        if !exps.iter().any(|e| e.has_series_name(&s.metric)) {
            problems.insert(format!("{origin}: no metric {} on {wanted:?}", s.metric));
        } else if exps.iter().all(|e| e.matching(s) == 0) {
            problems.insert(format!(
                "{origin}: {} has no series matching {:?}",
                s.metric, s.matchers
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "queries that match nothing on the live services:\n  {}",
        problems.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn selectors_are_found_and_functions_labels_and_variables_are_not() {
    let names = |e: &str| -> Vec<String> { selectors(e).into_iter().map(|s| s.metric).collect() };
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (route, le) (rate(http_request_duration_seconds_bucket{job="gateway"}[$__rate_interval])))"#
        ),
        ["http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m])) / sum(rate(b_total [5m])) > 1e-3 and on (policy) c > 0.5"),
        ["a_total", "b_total", "c"]
    );
    assert_eq!(
        names("up == 0 unless ignoring(instance) group_left(x) max without (le) (d)"),
        ["up", "d"]
    );
    assert_eq!(
        names(r#"sum(x) by (le) offset 5m + count_values("v", y) + {__name__="z", a="1"}"#),
        ["x", "y", "z"]
    );
    assert_eq!(
        names(r#"label_replace(m, "dst", "$1", "src", "(.*)")"#),
        ["m"]
    );
    assert_eq!(names("rate(q[1h:5m]) @ start()"), ["q"]);
    assert_eq!(
        variable_expr(r#"label_values(http_requests_total{job="app"}, route)"#).as_deref(),
        Some(r#"http_requests_total{job="app"}"#)
    );
    assert_eq!(variable_expr("label_values(route)"), None);
    assert_eq!(variable_expr("query_result(up)").as_deref(), Some("up"));
    let s = &selectors(r#"f{decision=~"rejected|shadow_rejected", job="gateway",k!="v\"q"}"#)[0];
    assert_eq!(s.equal("job"), Some("gateway"));
    assert_eq!(
        s.matchers
            .iter()
            .map(|m| (m.label.as_str(), m.op.as_str(), m.value.as_str()))
            .collect::<Vec<_>>(),
        [
            ("decision", "=~", "rejected|shadow_rejected"),
            ("job", "=", "gateway"),
            ("k", "!=", "v\"q"),
        ]
    );
}

#[test]
fn exposition_matching_respects_types_suffixes_and_labels() {
    let e = parse_exposition(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n\
         # TYPE c_total counter\nc_total{decision=\"rejected\",policy=\"p\"} 1\n\
         # TYPE g_count gauge\ng_count 3\n",
    );
    for ok in ["h_bucket", "h_sum", "h_count", "c_total", "g_count"] {
        assert!(e.has_series_name(ok), "{ok}");
    }
    for missing in ["h", "c", "g", "h_total", "c_total_bucket"] {
        assert!(!e.has_series_name(missing), "{missing}");
    }
    let sel = |e: &str| selectors(e).remove(0);
    assert_eq!(
        e.matching(&sel(r#"c_total{decision="rejected",job="x"}"#)),
        1
    );
    assert_eq!(e.matching(&sel(r#"c_total{decision=~"rej.*|shadow"}"#)), 1);
    assert_eq!(e.matching(&sel(r#"c_total{decision=~"rej"}"#)), 0);
    assert_eq!(e.matching(&sel(r#"c_total{decision="shadow"}"#)), 0);
    assert_eq!(e.matching(&sel(r#"c_total{decision!="shadow"}"#)), 1);
}

#[test]
fn every_alert_has_severity_and_annotations_with_its_runbook_anchor() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for required in REQUIRED_ALERTS {
        assert!(names.contains(required), "alert {required} missing");
    }
    assert_eq!(names.len(), rules.len(), "duplicate alert names");
    for (name, rule) in &rules {
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        let ann = &rule["annotations"];
        for key in ["summary", "description"] {
            let text = ann[key].as_str().unwrap_or("");
            assert!(!text.trim().is_empty(), "{name}: annotation {key} missing");
        }
        // The base is prometheus.yml's external label runbook_base_url (the operator's copy of
        // RUNBOOK.md); without it, as in promtool's unit tests, the relative RUNBOOK.md.
        assert_eq!(
            ann["runbook_url"].as_str(),
            Some(
                format!(
                    "{{{{ with $externalLabels.runbook_base_url }}}}{{{{ . }}}}{{{{ else }}}}RUNBOOK.md{{{{ end }}}}#{}",
                    name.to_lowercase()
                )
                .as_str()
            ),
            "{name}: runbook_url"
        );
    }
}

#[test]
fn every_alert_has_its_runbook_section() {
    let runbook = read("RUNBOOK.md");
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::trim)
        .collect();
    for (name, _) in alert_rules() {
        assert!(
            headings.contains(name.as_str()),
            "RUNBOOK.md has no heading \"### {name}\""
        );
    }
}

#[test]
fn dashboards_use_the_provisioned_datasources_and_loki_labels_alloy_ships() {
    let ds = yaml("grafana/provisioning/datasources/datasources.yaml");
    let provisioned: BTreeMap<String, String> = ds["datasources"]
        .as_sequence()
        .expect("datasources")
        .iter()
        .map(|d| {
            (
                str_of(d, "uid").expect("fixed uid").to_string(),
                str_of(d, "type").expect("type").to_string(),
            )
        })
        .collect();
    assert_eq!(
        provisioned.get("prometheus").map(String::as_str),
        Some("prometheus")
    );
    assert_eq!(provisioned.get("loki").map(String::as_str), Some("loki"));

    let providers = yaml("grafana/provisioning/dashboards/dashboards.yaml");
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );

    let mut uids = BTreeSet::new();
    let mut gateway_logs = false;
    for (path, d) in dashboards() {
        let file = path.display().to_string();
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no fixed uid"));
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel without id"));
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            for ds in std::iter::once(&p["datasource"]).chain(
                p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            ) {
                if let Some(uid) = ds["uid"].as_str() {
                    assert!(
                        provisioned.contains_key(uid),
                        "{file}: datasource uid {uid} is not provisioned"
                    );
                }
            }
        }
        for (panel, uid, expr) in dashboard_queries(&d) {
            if uid != "loki" {
                continue;
            }
            let end = expr.find('}').unwrap_or_else(|| panic!("{panel}: {expr}"));
            let stream = parse_matchers(&expr[expr.find('{').unwrap() + 1..end]);
            for m in &stream {
                assert!(
                    LOKI_LABELS.contains(&m.label.as_str()),
                    "{file} panel {panel:?}: Loki label {} is not shipped by Alloy",
                    m.label
                );
            }
            gateway_logs |= stream
                .iter()
                .any(|m| m.label == "service" && m.op == "=" && m.value == "gateway");
        }
    }
    assert!(uids.contains("gateway-overview"));
    assert!(gateway_logs, "no Loki panel for {{service=\"gateway\"}}");

    // Alloy keeps exactly the labels the dashboards may use.
    let alloy = read("loki/config.alloy");
    let keep = alloy
        .split("stage.label_keep")
        .nth(1)
        .and_then(|s| s.split('[').nth(1))
        .and_then(|s| s.split(']').next())
        .expect("stage.label_keep { values = [...] } in config.alloy");
    let kept: BTreeSet<&str> = keep
        .split(',')
        .map(|v| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
        .collect();
    assert_eq!(kept, LOKI_LABELS.iter().copied().collect::<BTreeSet<_>>());
    assert!(
        !alloy.contains("docker.sock"),
        "Alloy must read log files, not the Docker socket"
    );
}

#[test]
fn loki_keeps_its_data_under_loki_with_retention() {
    let l = yaml("loki/loki.yaml");
    assert_eq!(l["auth_enabled"].as_bool(), Some(false));
    assert_eq!(l["compactor"]["retention_enabled"].as_bool(), Some(true));
    assert!(str_of(&l["compactor"], "delete_request_store").is_some());
    let period = str_of(&l["limits_config"], "retention_period").expect("retention_period");
    assert!(period.ends_with('h') || period.ends_with('d'), "{period}");
    let schemas = l["schema_config"]["configs"].as_sequence().unwrap();
    let last = schemas.last().unwrap();
    assert_eq!(str_of(last, "store"), Some("tsdb"));
    assert_eq!(str_of(last, "schema"), Some("v13"));
    assert_eq!(str_of(last, "object_store"), Some("filesystem"));
    assert_eq!(last["index"]["period"].as_str(), Some("24h"));

    // Every directory Loki writes must be on the /loki volume: the rootfs is read-only.
    fn paths<'a>(v: &'a Yaml, key: &str, out: &mut Vec<(String, &'a str)>) {
        match v {
            Yaml::Mapping(m) => {
                for (k, v) in m {
                    paths(v, k.as_str().unwrap_or(""), out);
                }
            }
            Yaml::Sequence(s) => s.iter().for_each(|v| paths(v, key, out)),
            Yaml::String(s) if key.ends_with("directory") || key.ends_with("path_prefix") => {
                out.push((key.to_string(), s.as_str()))
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    paths(&l, "", &mut found);
    assert!(found.len() >= 3, "{found:?}");
    for (key, p) in found {
        assert!(
            Path::new(p).starts_with("/loki"),
            "{key}: {p} is outside /loki"
        );
    }
}
