//! Route-level tests, in-process: each builds the service on its own temp data dir,
//! users and keys and calls `app::handle` with a `Request` (no socket, no binary).
//! Process-level behaviour (signals, crashes, restarts, logs, raw sockets) is in
//! `http_api.rs` and `durability.rs`.

mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn login_good_password_bad_password_and_unknown_user() {
    let env = Env::new();
    let app = env.in_process();

    let resp = app.login("alice", "alice-test-pw").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(app.get(token, "/v1/documents").await.status(), 200);

    let wrong = app.login("alice", "bob-test-pw").await;
    let unknown = app.login("mallory", "alice-test-pw").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(
        wrong, unknown,
        "wrong password and unknown user look the same"
    );
    assert_eq!(wrong["error"]["code"], "invalid_credentials");
    assert_eq!(app.login("", "").await.status(), 401);
}

#[tokio::test]
async fn upload_list_get_delete_round_trip() {
    let env = Env::new();
    let app = env.in_process();
    let token = app.token(0).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let name = "Quarterly report (final) é.pdf";

    let resp = app
        .upload(&token, name, Some("application/pdf"), bytes.clone())
        .await;
    assert_eq!(resp.status(), 201);
    let doc: Value = resp.json().await.unwrap();
    let id = doc["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(doc["name"], name);
    assert_eq!(doc["size"], 100_000);
    assert_eq!(doc["content_type"], "application/pdf");
    let created = doc["created_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");

    let listed = app.list(&token, "").await;
    assert_eq!(listed["documents"], json!([doc.clone()]));
    assert_eq!(listed["next_cursor"], Value::Null);

    let resp = app.get(&token, &doc_path(&doc)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[..]);

    // No (or a nonsense) Content-Type is stored as application/octet-stream.
    let plain = app.upload(&token, "raw", None, b"x".to_vec()).await;
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["content_type"], "application/octet-stream");
    let odd = app
        .upload(&token, "odd", Some("not a type"), b"x".to_vec())
        .await;
    let odd: Value = odd.json().await.unwrap();
    assert_eq!(odd["content_type"], "application/octet-stream");
    let resp = app.get(&token, &doc_path(&odd)).await;
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");

    let resp = app.delete(&token, &doc_path(&doc)).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(app.get(&token, &doc_path(&doc)).await.status(), 404);
    assert_eq!(app.delete(&token, &doc_path(&doc)).await.status(), 404);
    assert_eq!(
        names(app.list(&token, "").await["documents"].as_array().unwrap()),
        ["odd", "raw"]
    );
    assert!(!env.user_dir("u-alice").join(format!("{id}.bin")).exists());
    assert!(!env.user_dir("u-alice").join(format!("{id}.json")).exists());
}

#[tokio::test]
async fn upload_validation_rejects_bad_names() {
    let env = Env::new();
    let app = env.in_process();
    let token = app.token(0).await;
    let long = "n".repeat(256);
    for query in [
        String::new(),
        "?name=".into(),
        "?other=x".into(),
        "?name=a%00b".into(),
        "?name=line%0Abreak".into(),
        "?name=%ZZ".into(),
        "?name=%FF".into(),
        "?name=a&name=b".into(),
        format!("?name={long}"),
    ] {
        let resp = app
            .send(
                app.http
                    .post(app.url(&format!("/v1/documents{query}")))
                    .bearer_auth(&token)
                    .body("x"),
            )
            .await;
        assert_eq!(resp.status(), 400, "{query}");
        assert_eq!(error_code(resp).await, "invalid_name");
    }
    // Path-like names are just labels; storage never uses them.
    let doc = app
        .upload_ok(&token, "../../etc/passwd", b"x".to_vec())
        .await;
    assert_eq!(doc["name"], "../../etc/passwd");
    assert_eq!(doc["id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn cross_user_access_is_404() {
    let env = Env::new();
    let app = env.in_process();
    let alice = app.token(0).await;
    let bob = app.token(1).await;
    let doc = app
        .upload_ok(&alice, "secret.txt", b"alice only".to_vec())
        .await;

    let missing = app
        .get(&bob, "/v1/documents/00000000000000000000000000000000")
        .await;
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();

    let get = app.get(&bob, &doc_path(&doc)).await;
    assert_eq!(get.status(), 404);
    assert_eq!(
        get.json::<Value>().await.unwrap(),
        missing,
        "indistinguishable from missing"
    );
    let del = app.delete(&bob, &doc_path(&doc)).await;
    assert_eq!(del.status(), 404);
    assert_eq!(del.json::<Value>().await.unwrap(), missing);
    for malformed in [
        "/v1/documents/..",
        "/v1/documents/%2e%2e",
        "/v1/documents/ABC",
        "/v1/documents/x.json",
    ] {
        let resp = app.get(&alice, malformed).await;
        assert_eq!(resp.status(), 404, "{malformed}");
        assert_eq!(resp.json::<Value>().await.unwrap(), missing);
    }
    assert!(app.list(&bob, "").await["documents"]
        .as_array()
        .unwrap()
        .is_empty());

    let resp = app.get(&alice, &doc_path(&doc)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"alice only");
}

#[tokio::test]
async fn expired_forged_and_missing_tokens_are_401() {
    let env = Env::new();
    let app = env.in_process();
    let ours = keyring::Keyring::from_yaml(KEYS).unwrap();
    let theirs = keyring::Keyring::from_yaml(OTHER_KEYS).unwrap();
    let now = SystemTime::now();
    let expired = ours.sign(
        "u-alice",
        Duration::from_secs(60),
        now - Duration::from_secs(3600),
    );
    let forged = theirs.sign("u-alice", Duration::from_secs(600), now);
    let exp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT","kid":"test-1"}"#),
        b64url(format!(r#"{{"sub":"u-alice","exp":{exp},"iat":0}}"#).as_bytes())
    );
    // Correctly signed but with a subject that would be a path: refused anyway.
    let traversal = ours.sign("../u-alice", Duration::from_secs(600), now);
    let valid = ours.sign("u-alice", Duration::from_secs(600), now);
    assert_eq!(app.get(&valid, "/v1/documents").await.status(), 200);

    let headers = [
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {alg_none}")),
        Some(format!("Bearer {traversal}")),
        Some("Bearer not.a.token".into()),
        Some(format!("Basic {}", b64url(b"alice:alice-test-pw"))),
        Some("Bearer ".into()),
        None,
    ];
    let id_path = "/v1/documents/00000000000000000000000000000000";
    for header in headers {
        for (method, path) in [
            ("GET", "/v1/documents"),
            ("POST", "/v1/documents?name=x"),
            ("GET", id_path),
            ("DELETE", id_path),
        ] {
            let mut req = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .header("x-user-id", "u-alice");
            if let Some(h) = &header {
                req = req.header("authorization", h);
            }
            let resp = app.send(req).await;
            assert_eq!(resp.status(), 401, "{method} {path} with {header:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            assert_eq!(error_code(resp).await, "unauthorized");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_by_several_users() {
    let env = Env::new();
    let app = std::sync::Arc::new(env.in_process());
    let mut tokens = Vec::new();
    for user in 0..3 {
        tokens.push(app.token(user).await);
    }
    let mut tasks = Vec::new();
    for (user, token) in tokens.iter().enumerate() {
        for i in 0..10 {
            let app = app.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("{}-{i}", USERS[user].0);
                let body = name.repeat(1000).into_bytes();
                app.upload_ok(&token, &name, body).await
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    for (user, token) in tokens.iter().enumerate() {
        let docs = app.list_all(token, 1000).await;
        let got: HashSet<String> = names(&docs).into_iter().collect();
        let want: HashSet<String> = (0..10).map(|i| format!("{}-{i}", USERS[user].0)).collect();
        assert_eq!(docs.len(), 10);
        assert_eq!(got, want);
        let resp = app.get(token, &doc_path(&docs[0])).await;
        let name = docs[0]["name"].as_str().unwrap();
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            name.repeat(1000).as_bytes()
        );
    }
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("app_documents_stored 30"), "{metrics}");
}

#[tokio::test]
async fn pagination_covers_all_documents_once_newest_first() {
    let env = Env::new();
    let app = env.in_process();
    let token = app.token(0).await;
    let mut ids = Vec::new();
    for i in 0..23 {
        let doc = app
            .upload_ok(&token, &format!("doc-{i:02}"), vec![b'x'; i])
            .await;
        ids.push(doc["id"].as_str().unwrap().to_owned());
    }
    ids.reverse(); // newest first
    for limit in [1, 7, 23, 50] {
        let docs = app.list_all(&token, limit).await;
        let got: Vec<String> = docs
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, ids, "limit {limit}");
        let times: Vec<&str> = docs
            .iter()
            .map(|d| d["created_at"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    }
    let default_page = app.list(&token, "").await;
    assert_eq!(default_page["documents"].as_array().unwrap().len(), 23);

    // A page boundary stays stable when the document under the cursor is deleted.
    let first = app.list(&token, "?limit=5").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        app.delete(&token, &format!("/v1/documents/{}", ids[4]))
            .await
            .status(),
        204
    );
    let second = app.list(&token, &format!("?limit=5&cursor={cursor}")).await;
    assert_eq!(second["documents"][0]["id"], ids[5]);

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=abc",
        "?limit=-1",
        "?limit=",
        "?limit=1&limit=2",
    ] {
        let resp = app.get(&token, &format!("/v1/documents{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(error_code(resp).await, "invalid_limit");
    }
    for bad in [
        "?cursor=",
        "?cursor=abc",
        "?cursor=..%2F..%2Fetc",
        "?cursor=%00",
        &format!("?cursor={}", "f".repeat(5000)),
    ] {
        let resp = app.get(&token, &format!("/v1/documents{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(error_code(resp).await, "invalid_cursor");
    }
}

#[tokio::test]
async fn unknown_route_wrong_method_and_malformed_json() {
    let env = Env::new();
    let app = env.in_process();

    let resp = app.send(app.http.get(app.url("/nope"))).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "not_found");

    for (method, path, allow) in [
        ("PUT", "/v1/documents", "GET, POST"),
        (
            "PATCH",
            "/v1/documents/00000000000000000000000000000000",
            "GET, DELETE",
        ),
        ("GET", "/v1/auth/token", "POST"),
        ("POST", "/healthz", "GET"),
    ] {
        let resp = app
            .send(app.http.request(method.parse().unwrap(), app.url(path)))
            .await;
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow);
        assert_eq!(error_code(resp).await, "method_not_allowed");
    }

    for body in [
        "{not json",
        "",
        "[]",
        r#"{"username":1,"password":"x"}"#,
        r#"{"username":"alice"}"#,
    ] {
        let resp = app
            .send(
                app.http
                    .post(app.url("/v1/auth/token"))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(error_code(resp).await, "invalid_json");
    }
    let huge = format!(
        r#"{{"username":"alice","password":"{}"}}"#,
        "p".repeat(70 * 1024)
    );
    let resp = app
        .send(app.http.post(app.url("/v1/auth/token")).body(huge))
        .await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let env = Env::new();
    let app = env.in_process();
    let token = app.token(0).await;
    let resp = app.send(app.http.get(app.url("/healthz"))).await;
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    assert_eq!(
        app.send(app.http.get(app.url("/readyz"))).await.status(),
        200
    );
    app.upload_ok(&token, "m", vec![1; 1234]).await;
    app.send(app.http.get(app.url("/some/raw/path-12345")))
        .await;
    app.get(&token, "/v1/documents/0123456789abcdef0123456789abcdef")
        .await;

    let metrics = app.metrics_text().await;
    for want in [
        // Count varies: the harness polls /healthz until the app is up.
        r#"http_requests_total{method="GET",route="/healthz",status="200"} "#,
        r#"http_requests_total{method="POST",route="/v1/documents",status="201"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="/v1/documents/{id}",status="404"} 1"#,
        r#"http_request_duration_seconds_bucket{method="POST",route="/v1/auth/token""#,
        "app_documents_stored 1",
        "app_documents_bytes 1234",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    assert!(!metrics.contains("path-12345"));
    assert!(!metrics.contains("0123456789abcdef"));

    // Make data_dir unusable: readiness fails while liveness stays green.
    std::fs::rename(env.path("data"), env.path("data-moved")).unwrap();
    std::fs::write(env.path("data"), b"not a directory").unwrap();
    let resp = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(error_code(resp).await, "not_ready");
    assert_eq!(
        app.send(app.http.get(app.url("/healthz"))).await.status(),
        200
    );
}
