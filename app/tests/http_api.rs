//! Process-level tests: each starts the real `app` binary on a loopback port with its
//! own temp data dir, config, users and keys, and drives it over HTTP and raw sockets
//! (restarts, signals, crashes, logs, startup errors). Route behaviour is tested
//! in-process in `routes.rs`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use argon2::Argon2;
use serde_json::Value;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn oversized_upload_with_content_length_is_413() {
    let env = Env::with_limit(64 * 1024);
    let app = env.start().await;
    let token = app.token(0).await;

    let at_limit = app.upload(&token, "exact", None, vec![7; 64 * 1024]).await;
    assert_eq!(at_limit.status(), 201);

    let resp = app.upload(&token, "big", None, vec![7; 100 * 1024]).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(error_code(resp).await, "payload_too_large");

    // A huge announced length is refused from the headers alone, before any body arrives.
    let head = format!(
        "POST /v1/documents?name=huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 1000000000000\r\n\r\n"
    );
    let started = Instant::now();
    let answer = app.raw(&[head.as_bytes()]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    assert_no_temp_files(&env.user_dir("u-alice")).await;
    assert_eq!(
        names(app.list(&token, "").await["documents"].as_array().unwrap()),
        ["exact"]
    );
}

#[tokio::test]
async fn oversized_chunked_upload_is_413_while_streaming() {
    let env = Env::with_limit(64 * 1024);
    let app = env.start().await;
    let token = app.token(0).await;
    let head = format!(
        "POST /v1/documents?name=chunked HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = format!("2000\r\n{}\r\n", "z".repeat(0x2000)); // 8 KiB
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(std::iter::repeat_n(chunk.as_bytes(), 9)); // 72 KiB > 64 KiB
                                                            // No terminating zero-length chunk: the server must decide without seeing the end.
    let answer = app.raw(&parts).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A chunked upload within the limit works.
    let ok = format!("{head}5\r\nhello\r\n0\r\n\r\n")
        .replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n");
    let answer = app.raw(&[ok.as_bytes()]).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    assert_no_temp_files(&env.user_dir("u-alice")).await;
    let docs = app.list(&token, "").await;
    assert_eq!(names(docs["documents"].as_array().unwrap()), ["chunked"]);
    assert_eq!(docs["documents"][0]["size"], 5);
}

#[tokio::test]
async fn documents_survive_restart() {
    let env = Env::new();
    let app = env.start().await;
    let token = app.token(0).await;
    let mut uploaded = Vec::new();
    for i in 0..3 {
        uploaded.push(
            app.upload_ok(
                &token,
                &format!("doc-{i}"),
                format!("body {i}").into_bytes(),
            )
            .await,
        );
    }
    let before = app.list(&token, "").await;
    app.stop().await;

    let app = env.start().await;
    // Tokens are stateless and the keys are unchanged, so the old token still works.
    assert_eq!(app.list(&token, "").await, before);
    for (i, doc) in uploaded.iter().enumerate() {
        let resp = app.get(&token, &doc_path(doc)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            format!("body {i}").as_bytes()
        );
    }
}

#[tokio::test]
async fn request_id_is_echoed_and_logs_hold_no_secrets() {
    let env = Env::new();
    let app = env.start().await;
    let token = app.token(0).await;

    let resp = app
        .http
        .get(app.url("/v1/documents"))
        .bearer_auth(&token)
        .header("x-request-id", "trace-abc.123:x_y")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc.123:x_y");

    for bad in ["has spaces", &"r".repeat(65), "semi;colon"] {
        let resp = app
            .http
            .get(app.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(echoed, bad);
        assert!(!echoed.is_empty() && echoed.len() <= 64);
    }
    let resp = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(!resp.headers()["x-request-id"].is_empty());

    let secret_body = "SECRET-DOCUMENT-BODY-4711";
    let doc = app
        .upload_ok(&token, "private name", secret_body.as_bytes().to_vec())
        .await;
    let resp = app
        .http
        .get(app.url(&doc_path(&doc)))
        .bearer_auth(&token)
        .header("x-request-id", "dl-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp.bytes().await.unwrap());
    app.stop().await;

    let log = env.log();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["request_id"] == "dl-1" && v["message"] == "request")
        .unwrap_or_else(|| panic!("no access log line for dl-1 in:\n{log}"));
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], doc_path(&doc));
    assert_eq!(line["route"], "/v1/documents/{id}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["user_id"], "u-alice");
    assert_eq!(line["bytes_out"], secret_body.len());
    assert!(line["duration_ms"].is_number());
    for secret in [
        token.as_str(),
        "alice-test-pw",
        secret_body,
        "Bearer",
        "private name",
        "private+name",
    ] {
        assert!(!log.contains(secret), "log leaks {secret:?}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_upload_finish_then_exits_zero() {
    let env = Env::new();
    let mut app = env.start().await;
    let token = app.token(0).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/documents?name=slow.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the request is now in flight

    app.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        app.process().exited().is_none(),
        "must wait for the in-flight upload"
    );
    // New connections are refused once shutdown started.
    assert!(app.http.get(app.url("/healthz")).send().await.is_err());

    stream.write_all(b"world").await.unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = app.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    drop(app);

    let app = env.start().await;
    let docs = app.list(&token, "").await;
    assert_eq!(docs["documents"][0]["name"], "slow.txt");
    let resp = app.get(&token, &doc_path(&docs["documents"][0])).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"helloworld");
}

#[tokio::test]
async fn sigterm_when_idle_exits_zero_promptly() {
    let env = Env::new();
    let mut app = env.start().await;
    // Leave an idle keep-alive connection open: shutdown must not wait for it.
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let started = Instant::now();
    app.sigterm();
    let status = app.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn crash_leftovers_are_removed_on_restart() {
    let env = Env::new();
    let mut app = env.start().await;
    let token = app.token(0).await;
    let kept = [
        app.upload_ok(&token, "one", b"1".to_vec()).await,
        app.upload_ok(&token, "two", b"22".to_vec()).await,
    ];
    // A real crash mid-upload: half a body streamed, then SIGKILL.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/documents?name=partial HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 100000\r\n\r\n{}",
        "p".repeat(50_000)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.process().kill();
    app.wait_exit(Duration::from_secs(5)).await;
    drop(app);

    let dir = env.user_dir("u-alice");
    let orphan = "ffffffffffffffffffffffffffffffff.bin";
    std::fs::write(dir.join(orphan), b"data whose metadata never landed").unwrap();
    std::fs::write(dir.join(".tmp-x"), b"half an upload").unwrap();

    let app = env.start().await;
    let docs = app.list(&token, "").await;
    assert_eq!(names(docs["documents"].as_array().unwrap()), ["two", "one"]);
    let mut want: Vec<String> = kept
        .iter()
        .flat_map(|d| {
            let id = d["id"].as_str().unwrap();
            [format!("{id}.bin"), format!("{id}.json")]
        })
        .collect();
    want.sort();
    assert_eq!(files_in(&dir), want, "orphans and temp files are gone");
}

#[tokio::test]
async fn bad_config_exits_nonzero_with_clear_message() {
    let env = Env::new();
    let cases = [
        (
            "unknown key",
            format!(
                "{}colour: blue\n",
                std::fs::read_to_string(env.write_config(1)).unwrap()
            ),
            "unknown field",
        ),
        (
            "missing users file",
            std::fs::read_to_string(env.write_config(1))
                .unwrap()
                .replace("users.yaml", "missing.yaml"),
            "users file",
        ),
        ("bad yaml", "listen: [".into(), "invalid config file"),
    ];
    for (name, text, expect) in cases {
        let path = env.path("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_app"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{name}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_app"))
        .arg("--config")
        .arg(env.path("does-not-exist.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_app"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pw\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim_end();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let parsed = PasswordHash::new(hash).unwrap();
    assert!(Argon2::default()
        .verify_password(b"s3cret pw", &parsed)
        .is_ok());
    assert!(Argon2::default()
        .verify_password(b"s3cret pw\n", &parsed)
        .is_err());
}
