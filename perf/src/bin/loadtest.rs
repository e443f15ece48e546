//! The user-scenario load test (goose): people logging in, listing their documents,
//! reading one and uploading a small one, through the gateway in front of the app.
//!
//! Every goose option works (`--users`, `--run-time`, `--throttle-requests`,
//! `--report-file`, `--threshold`, ...). Defaults: host http://127.0.0.1:8080 and the
//! SLO gate `p95<200ms`, `p99<500ms`, `error-rate<1%`; any `--threshold` given replaces
//! all three. A failed threshold makes the process exit non-zero.
//!
//! Environment:
//! - `LOADTEST_CREDENTIALS`: `user:password,user:password` (default: the dev users).
//! - `LOADTEST_UPLOAD_BYTES`: size of each uploaded document (default 512).
//!
//! Each goose user sends `X-Forwarded-For` with its own address from 198.18.0.0/15
//! (RFC 2544 benchmarking range; header text only, no traffic goes there), so a gateway
//! that trusts the load generator sees distinct clients, as behind a real load balancer.

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use goose::prelude::*;
use goose::GooseError;

const DEFAULT_CREDENTIALS: &str = "alice:alice-dev-password,bob:bob-dev-password";
const SLO_THRESHOLDS: [&str; 3] = ["p95<200ms", "p99<500ms", "error-rate<1%"];

/// Per goose user: what it learned from the app.
#[derive(Clone)]
struct Session {
    docs: Vec<String>,
}

fn credentials() -> &'static [(String, String)] {
    static CREDS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CREDS.get_or_init(|| {
        let raw = std::env::var("LOADTEST_CREDENTIALS")
            .unwrap_or_else(|_| DEFAULT_CREDENTIALS.to_owned());
        let creds: Vec<(String, String)> = raw
            .split(',')
            .filter_map(|pair| {
                let (u, p) = pair.trim().split_once(':')?;
                Some((u.to_owned(), p.to_owned()))
            })
            .collect();
        assert!(
            !creds.is_empty(),
            "LOADTEST_CREDENTIALS holds no user:password pair"
        );
        creds
    })
}

fn upload_body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let n = std::env::var("LOADTEST_UPLOAD_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512usize);
        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
    })
}

/// The goose user's own client address (198.18.0.0/15 has 131 070 usable hosts).
fn client_ip(user: &GooseUser) -> String {
    let i = user.weighted_users_index % 131_070 + 1;
    format!("198.{}.{}.{}", 18 + i / 65_536, (i / 256) % 256, i % 256)
}

/// Rebuilds the user's HTTP client so every request carries its client address and,
/// once logged in, its bearer token.
async fn configure_client(user: &mut GooseUser, token: Option<&str>) -> TransactionResult {
    let mut headers = reqwest::header::HeaderMap::new();
    let ip = client_ip(user);
    headers.insert(
        "x-forwarded-for",
        ip.parse().map_err(|e| fail(format!("xff header: {e}")))?,
    );
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}")
                .parse()
                .map_err(|e| fail(format!("authorization header: {e}")))?,
        );
    }
    let builder = reqwest::Client::builder()
        .default_headers(headers)
        .user_agent("perf-loadtest")
        .timeout(Duration::from_secs(30));
    user.set_client_builder(builder).await?;
    Ok(())
}

fn fail(message: String) -> Box<TransactionError> {
    Box::new(TransactionError::from(message))
}

/// POST /v1/auth/token; returns the access token.
async fn login(user: &mut GooseUser) -> Result<String, Box<TransactionError>> {
    let creds = credentials();
    let (name, password) = &creds[user.weighted_users_index % creds.len()];
    let body = serde_json::json!({ "username": name, "password": password });
    let mut goose = user.post_json("/v1/auth/token", &body).await?;
    let response = match goose.response {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            user.set_failure(&format!("login: {status}"), &mut goose.request, None, None)?;
            return Err(fail(format!("login: {status}")));
        }
        Err(e) => return Err(e.into()),
    };
    let v: serde_json::Value = response.json().await?;
    match v["access_token"].as_str() {
        Some(t) => Ok(t.to_owned()),
        None => {
            user.set_failure("login: no access_token", &mut goose.request, None, None)?;
            Err(fail("login: no access_token".into()))
        }
    }
}

/// Scenario "login": a user signing in again and again (token refresh, new devices).
async fn login_only(user: &mut GooseUser) -> TransactionResult {
    login(user).await?;
    Ok(())
}

/// On start of the document scenarios: client address, log in once, keep the token.
async fn start_session(user: &mut GooseUser) -> TransactionResult {
    configure_client(user, None).await?;
    let token = login(user).await?;
    configure_client(user, Some(&token)).await?;
    user.set_session_data(Session { docs: Vec::new() });
    Ok(())
}

/// On start of the login scenario: just the client address.
async fn start_anonymous(user: &mut GooseUser) -> TransactionResult {
    configure_client(user, None).await
}

async fn upload(user: &mut GooseUser) -> TransactionResult {
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/v1/documents?name=loadtest.txt")
        .name("/v1/documents")
        .set_request_builder(
            user.get_request_builder(&GooseMethod::Post, "/v1/documents?name=loadtest.txt")?
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(upload_body()),
        )
        .expect_status_code(201)
        .build();
    let mut goose = user.request(request).await?;
    if let Ok(r) = goose.response {
        let id = r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        match id {
            Some(id) => remember(user, id),
            None => {
                return user.set_failure("upload: no id", &mut goose.request, None, None);
            }
        }
    }
    Ok(())
}

/// Keeps the newest few ids, so gets hit documents that exist.
fn remember(user: &mut GooseUser, id: String) {
    if let Some(s) = user.get_session_data_mut::<Session>() {
        s.docs.push(id);
        if s.docs.len() > 32 {
            s.docs.remove(0);
        }
    }
}

async fn list(user: &mut GooseUser) -> TransactionResult {
    let goose = user.get("/v1/documents?limit=20").await?;
    if let Ok(r) = goose.response {
        if let Ok(v) = r.json::<serde_json::Value>().await {
            let ids: Vec<String> = v["documents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["id"].as_str().map(str::to_owned))
                .take(8)
                .collect();
            for id in ids {
                remember(user, id);
            }
        }
    }
    Ok(())
}

async fn get_document(user: &mut GooseUser) -> TransactionResult {
    let pick = user.get_session_data::<Session>().and_then(|s| {
        (!s.docs.is_empty()).then(|| s.docs[rand::random_range(0..s.docs.len())].clone())
    });
    let Some(id) = pick else {
        // Nothing known yet: make one, as a new user would.
        return upload(user).await;
    };
    let path = format!("/v1/documents/{id}");
    let request = GooseRequest::builder()
        .path(path.as_str())
        .name("/v1/documents/{id}")
        .build();
    let goose = user.request(request).await?;
    // Drain the body so the connection is reused.
    if let Ok(r) = goose.response {
        let _ = r.bytes().await;
    }
    Ok(())
}

/// A scenario of logged-in users: each logs in once when it starts.
fn session(name: &str, weight: usize) -> Result<Scenario, GooseError> {
    Ok(Scenario::new(name)
        .set_weight(weight)?
        .register_transaction(transaction!(start_session).set_on_start()))
}

fn scenarios() -> Result<Vec<Scenario>, GooseError> {
    Ok(vec![
        // Logging in is argon2 on the app: rare and paced, as real users are.
        scenario!("login")
            .set_weight(1)?
            .set_wait_time(Duration::from_millis(500), Duration::from_millis(1500))?
            .register_transaction(transaction!(start_anonymous).set_on_start())
            .register_transaction(transaction!(login_only).set_name("log in")),
        session("list documents", 4)?.register_transaction(transaction!(list).set_name("list")),
        session("get a document", 6)?
            .register_transaction(transaction!(upload).set_on_start())
            .register_transaction(transaction!(get_document).set_name("get")),
        session("upload a small document", 2)?
            .register_transaction(transaction!(upload).set_name("upload")),
    ])
}

async fn run() -> Result<GooseMetrics, GooseError> {
    let mut attack = GooseAttack::initialize()?;
    for s in scenarios()? {
        attack = attack.register_scenario(s);
    }
    attack = *attack.set_default(GooseDefault::Host, "http://127.0.0.1:8080")?;
    for t in SLO_THRESHOLDS {
        attack = *attack.set_default(GooseDefault::Threshold, t)?;
    }
    attack.execute().await
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest failed: {e}");
            ExitCode::FAILURE
        }
    }
}
