//! The operators' cockpit on the admin port: `/limits` (open: config and policies, no
//! client data), `/limits/top`, `/limits/key` and `POST /limits/reset` (bearer token).
//!
//! Order of checks, so a caller without the token learns nothing: the token (401/403),
//! then the method (405), then the size of the body (413), then its parameters (400),
//! then the policy (404). Answers are JSON with `Cache-Control: no-store`; errors use the
//! gateway's `{"error":{"code","message"}}` contract.

pub mod cli;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admit::admin_token::Denied;
use crate::admit::limits::inspect::{LookupError, PolicyInfo};
use crate::admit::limits::shared::config::SharedMode;
use crate::admit::limits::shared::resets;
use crate::admit::limits::{KeyKind, Mode};
use crate::forward::errors::EdgeError;
use crate::state::Process;

/// Largest `POST /limits/reset` body.
pub const MAX_BODY: usize = 4096;
/// How long a reset waits for Redis before answering 503.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// `n` when `/limits/top` is not given one.
const DEFAULT_N: usize = 20;
/// Largest `n`: the most keys two half-window sketches of the largest `top_keys` hold.
const MAX_N: usize = 20_000;

crate::forward::errors::edge_errors! {
    UNAUTHORIZED = 401, "unauthorized", "A valid admin bearer token is required.";
    FORBIDDEN = 403, "forbidden", "No admin token is configured (admin.token_file): this endpoint is off.";
    METHOD = 405, "method_not_allowed", "Method not allowed here.";
    TOO_LARGE = 413, "payload_too_large", "The request body is over 4 KiB.";
    UNKNOWN_POLICY = 404, "unknown_policy", "No such rate-limit policy.";
    REDIS_DOWN = 503, "shared_state_unavailable", "Reset here, but Redis did not take it: other replicas still limit this key.";
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"code": "bad_request", "message": message}});
    reply(StatusCode::BAD_REQUEST, &body)
}

fn error(e: EdgeError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = respond(status, e.body(None));
    match e.status {
        401 => {
            resp.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static(r#"Bearer realm="gateway-admin""#),
            );
        }
        405 => {
            resp.headers_mut()
                .insert("allow", http::HeaderValue::from_static("GET, HEAD, POST"));
        }
        _ => {}
    }
    resp
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    respond(status, body.to_string())
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Whether this module answers `path`.
pub fn handles(path: &str) -> bool {
    path == "/limits" || path.starts_with("/limits/")
}

pub async fn handle(shared: &Process, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == "/limits" {
        return if read {
            reply(StatusCode::OK, &overview(shared))
        } else {
            error(METHOD)
        };
    }
    if !matches!(
        path.as_str(),
        "/limits/top" | "/limits/key" | "/limits/reset"
    ) {
        return error(crate::forward::errors::NOT_FOUND);
    }
    let live = shared.live.load();
    let authorization = req.headers().get(http::header::AUTHORIZATION);
    let token = match crate::admit::admin_token::check(
        live.admin_token.as_ref(),
        authorization.map(|v| v.as_bytes()),
    ) {
        Ok(t) => t.id().to_owned(),
        Err(Denied::NotConfigured) => return error(FORBIDDEN),
        Err(Denied::Unauthorized) => return error(UNAUTHORIZED),
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    match path.as_str() {
        "/limits/top" if read => top(shared, &query),
        "/limits/key" if read => key(shared, &query),
        "/limits/reset" if req.method() == Method::POST => reset(shared, req, &token).await,
        _ => error(METHOD),
    }
}

/// Query parameters; a repeated one is a 400 (which one was meant is ambiguous).
fn params(query: &str, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !known.contains(&k.as_ref()) {
            return Err(format!("unknown parameter {k:?}"));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("parameter {k:?} given twice"));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn unix_of_mono(mono: u64, now_mono: u64, now: SystemTime) -> SystemTime {
    now.checked_sub(Duration::from_nanos(now_mono.saturating_sub(mono)))
        .unwrap_or(now)
}

const fn key_str(k: KeyKind) -> &'static str {
    match k {
        KeyKind::Ip => "ip",
        KeyKind::User => "user",
        KeyKind::Global => "global",
    }
}

const fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

const fn shared_str(m: SharedMode) -> &'static str {
    match m {
        SharedMode::Local => "local",
        SharedMode::Sync => "sync",
        SharedMode::Exact => "exact",
    }
}

fn policy_json(p: &PolicyInfo) -> Value {
    json!({
        "name": &*p.name,
        "key": key_str(p.key),
        "rate": p.rate.to_string(),
        "burst": p.burst,
        "mode": mode_str(p.mode),
        "shared": shared_str(p.shared),
        "tracked_keys": p.tracked_keys,
    })
}

fn overview(shared: &Process) -> Value {
    let live = shared.live.load();
    let s = shared.status.snapshot();
    let last = s
        .last_reload
        .map(|r| json!({"result": r.result, "at": rfc3339(r.at), "error": r.error}));
    json!({
        "config": {
            "path": shared.config_path.display().to_string(),
            "sha256": s.sha256,
            "loaded_at": rfc3339(s.loaded_at),
        },
        "last_reload": last,
        "policies": live.limiter.describe().iter().map(policy_json).collect::<Vec<_>>(),
    })
}

fn top(shared: &Process, query: &str) -> Response<Full<Bytes>> {
    let ps = match params(query, &["policy", "n"]) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let live = shared.live.load();
    // More than the sketch holds just lists what it holds.
    let n = match param(&ps, "n").map(str::parse::<usize>) {
        None => DEFAULT_N,
        Some(Ok(n)) if (1..=MAX_N).contains(&n) => n,
        Some(_) => return bad_request(&format!("n must be 1 to {MAX_N}")),
    };
    let limiter = &live.limiter;
    let names: Vec<String> = match param(&ps, "policy") {
        Some(p) if limiter.has_policy(p) => vec![p.to_owned()],
        Some(_) => return error(UNKNOWN_POLICY),
        None => limiter
            .describe()
            .iter()
            .map(|p| p.name.to_string())
            .collect(),
    };
    let (now_mono, now) = (crate::admit::Now::mono_ns(), SystemTime::now());
    let prefix = limiter.ipv6_prefix();
    let policies: Vec<Value> = names
        .iter()
        .map(|name| {
            let top = limiter.top(name, n, now_mono).unwrap_or_default();
            let keys: Vec<Value> = top
                .iter()
                .map(|e| {
                    json!({
                        "key": e.key.render(prefix),
                        "refused": e.refused,
                        "admitted": e.admitted,
                        "last_refused": rfc3339(unix_of_mono(e.last_refused_ns, now_mono, now)),
                    })
                })
                .collect();
            json!({"policy": name, "top": keys})
        })
        .collect();
    reply(
        StatusCode::OK,
        &json!({
            "window_seconds": live.config.admin.top_window.as_secs(),
            "policies": policies,
        }),
    )
}

fn lookup_error(e: LookupError) -> Response<Full<Bytes>> {
    match e {
        LookupError::UnknownPolicy => error(UNKNOWN_POLICY),
        LookupError::BadKey(why) => bad_request(why),
    }
}

fn key(shared: &Process, query: &str) -> Response<Full<Bytes>> {
    let ps = match params(query, &["policy", "key"]) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let (Some(policy), Some(value)) = (param(&ps, "policy"), param(&ps, "key")) else {
        return bad_request("policy and key are required");
    };
    let live = shared.live.load();
    let now = crate::admit::Now::mono_ns();
    let state = match live.limiter.key_state(policy, value, now) {
        Ok(s) => s,
        Err(e) => return lookup_error(e),
    };
    let mut body = json!({
        "policy": policy,
        "key": value,
        "remaining": state.remaining,
        "reset_after_seconds": state.reset_after.as_secs_f64(),
        "retry_after_seconds": state.retry_after.as_secs_f64(),
    });
    if let Some(info) = live.limiter.describe().iter().find(|p| &*p.name == policy) {
        if info.shared != SharedMode::Local {
            let heard = state.shared.filter(|v| v.heard_at != 0);
            body["redis"] = json!({
                "heard_seconds_ago": heard.map(|v| Duration::from_nanos(now.saturating_sub(v.heard_at)).as_secs_f64()),
                "reset_after_seconds": heard.map(|v| Duration::from_nanos(v.heard_tat.saturating_sub(now)).as_secs_f64()),
            });
        }
    }
    reply(StatusCode::OK, &body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    policy: String,
    key: String,
}

async fn reset(shared: &Process, req: Request<Incoming>, token_id: &str) -> Response<Full<Bytes>> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(TOO_LARGE);
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return error(TOO_LARGE),
        Err(_) => return bad_request("could not read the body"),
    };
    let body: ResetBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("body must be {{\"policy\":…,\"key\":…}}: {e}")),
    };
    let live = shared.live.load();
    let now = crate::admit::Now::mono_ns();
    let done = match live.limiter.reset(&body.policy, &body.key, now) {
        Ok(d) => d,
        Err(e) => return lookup_error(e),
    };
    shared
        .status
        .resets
        .with_label_values(&[&body.policy])
        .inc();
    let scope = if done.shared.is_some() {
        "fleet"
    } else {
        "replica"
    };
    tracing::warn!(
        target: "audit",
        policy = %body.policy,
        key = %body.key,
        token = token_id,
        scope,
        "limit reset"
    );
    if let Some((policy, id)) = done.shared {
        let published = match policy.engine.connection_handle() {
            Some(mut conn) => {
                tokio::time::timeout(REDIS_TIMEOUT, resets::publish(&mut conn, &policy, id))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            None => false,
        };
        if !published {
            return error(REDIS_DOWN);
        }
    }
    reply(
        StatusCode::OK,
        &json!({"policy": body.policy, "key": body.key, "reset": scope}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query, expected pairs or a piece of the error.
    type Case = (
        &'static str,
        Result<&'static [(&'static str, &'static str)], &'static str>,
    );

    #[test]
    fn params_table() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("", Ok(&[])),
            ("policy=per-ip&n=5", Ok(&[("policy", "per-ip"), ("n", "5")])),
            ("policy=a%20b", Ok(&[("policy", "a b")])),
            ("policy=x&policy=y", Err("twice")),
            ("nope=1", Err("unknown")),
        ];
        for (q, want) in cases {
            let got = params(q, &["policy", "n"]);
            match (got, want) {
                (Ok(g), Ok(w)) => {
                    let w: Vec<(String, String)> = w
                        .iter()
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .collect();
                    assert_eq!(g, w, "{q}");
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{q}: {e}"),
                (g, _) => panic!("{q}: {g:?}"),
            }
        }
    }

    #[test]
    fn errors_keep_the_contract() {
        let r = error(UNAUTHORIZED);
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(r.headers()["cache-control"], "no-store");
        for e in [FORBIDDEN, METHOD, TOO_LARGE, UNKNOWN_POLICY, REDIS_DOWN] {
            let v: Value = serde_json::from_str(&e.body(None)).unwrap();
            assert_eq!(v["error"]["code"], e.code);
        }
        assert!(handles("/limits") && handles("/limits/top") && !handles("/limitsx"));
    }
}
