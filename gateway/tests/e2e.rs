//! The real app behind the real gateway: a user logs in and round-trips a
//! document through the public port; the app's own admin routes stay private.

mod common;

use std::time::Duration;

use common::*;

/// The real app on the dev keys with a ready gateway in front (keep the guards alive).
fn app_behind_gateway() -> (tempfile::TempDir, AppProc, GatewayProc) {
    let (keys_dir, keys) = dev_key_file();
    let app = AppProc::start(&keys);
    let gw = GatewayProc::start(app.addr, "");
    gw.wait_ready(200);
    (keys_dir, app, gw)
}

/// A bodyless request with a bearer token.
async fn authed(gw: std::net::SocketAddr, method: &str, path: &str, token: &str) -> Response {
    send(gw, method, path, Some(token), "text/plain", b"").await
}

async fn send(
    gw: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Response {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: {content_type}\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(t) = token {
        req.extend_from_slice(format!("Authorization: Bearer {t}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    raw_request(
        "127.0.0.5".parse().unwrap(),
        gw,
        &req,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn login_and_round_trip_a_document_through_the_gateway() {
    // The gateway's port is needed for the app's key file only; start the app first on the gateway's keys.
    let (_keys_dir, app, gw) = app_behind_gateway();

    let login = send(
        gw.addr,
        "POST",
        "/v1/auth/token",
        None,
        "application/json",
        br#"{"username":"alice","password":"alice-pw"}"#,
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["access_token"].as_str().unwrap().to_string();
    let bad = send(
        gw.addr,
        "POST",
        "/v1/auth/token",
        None,
        "application/json",
        br#"{"username":"alice","password":"nope"}"#,
    )
    .await;
    assert_eq!(bad.status, 401);

    let body = b"hello through the gateway \x00\xff";
    let up = send(
        gw.addr,
        "POST",
        "/v1/documents?name=note.bin",
        Some(&token),
        "application/octet-stream",
        body,
    )
    .await;
    assert_eq!(up.status, 201, "{}", up.text());
    let id = up.json()["id"].as_str().unwrap().to_string();

    let list = authed(gw.addr, "GET", "/v1/documents", &token).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["documents"][0]["id"], id.as_str());

    let got = authed(gw.addr, "GET", &format!("/v1/documents/{id}"), &token).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, body);
    assert_eq!(got.header("x-frame-options"), Some("DENY"));

    let del = authed(gw.addr, "DELETE", &format!("/v1/documents/{id}"), &token).await;
    assert_eq!(del.status, 204);
    let gone = authed(gw.addr, "GET", &format!("/v1/documents/{id}"), &token).await;
    assert_eq!(gone.status, 404);

    // The app's metrics and readiness are never public.
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(
            send(gw.addr, "GET", path, None, "text/plain", b"")
                .await
                .status,
            404,
            "{path}"
        );
    }

    // The access log names the user, never the token or password.
    let log = gw.proc.log_text();
    assert!(!log.contains(&token), "token leaked into the gateway log");
    assert!(
        !log.contains("alice-pw"),
        "password leaked into the gateway log"
    );
    let lines = gw.proc.access_logs();
    assert!(lines
        .iter()
        .any(|l| l["user_id"] == "u-alice" && l["status"] == 204));
    assert!(lines.iter().all(|l| l.get("authorization").is_none()));
    let app_log = app.proc.log_text();
    assert!(!app_log.contains(&token), "token leaked into the app log");
}

#[tokio::test]
async fn app_stopped_gives_502_and_recovers_when_it_returns() {
    let (_keys_dir, keys) = dev_key_file();
    let app = AppProc::start(&keys);
    let addr = app.addr;
    let gw = GatewayProc::start(addr, "timeouts:\n  upstream_refresh: 200ms\n");
    gw.wait_ready(200);
    // Keep the app's directory (its users file and data) for the restart.
    let dir = app.proc.kill_keep_dir();
    let resp = send(gw.addr, "GET", "/v1/documents", None, "text/plain", b"").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "bad_gateway");
    gw.wait_ready(503);
    let _app = AppProc::start_in(dir, addr, &keys);
    gw.wait_ready(200);
    let resp = send(gw.addr, "GET", "/v1/documents", None, "text/plain", b"").await;
    assert_eq!(resp.status, 401, "app answers again (no token)");
}

#[tokio::test]
async fn one_401_vocabulary_whether_the_gateway_or_the_app_answers() {
    let (_keys_dir, _app, gw) = app_behind_gateway();
    // No token: the gateway forwards the anonymous request and the app answers.
    let missing = send(gw.addr, "GET", "/v1/documents", None, "text/plain", b"").await;
    // A token that does not verify: the gateway answers itself.
    let bad = authed(gw.addr, "GET", "/v1/documents", "not.a.token").await;
    for (what, resp, code) in [
        ("no token", &missing, "missing_token"),
        ("bad token", &bad, "invalid_token"),
    ] {
        assert_eq!(resp.status, 401, "{what}: {}", resp.text());
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{what}");
        assert_eq!(resp.json()["error"]["code"], code, "{what}");
    }
}
