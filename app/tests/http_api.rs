//! End-to-end tests: each starts the real `app` binary on a loopback port with its own
//! temp data dir, config, users and keys, and drives it over HTTP.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEYS: &str = "signing_kid: test-1\nkeys:\n  - kid: test-1\n    secret: \"test-only-secret-0123456789abcdef0123456789\"\n";
/// Same kid, different secret: what a forger without our key would produce.
const OTHER_KEYS: &str = "signing_kid: test-1\nkeys:\n  - kid: test-1\n    secret: \"attacker-secret-0123456789abcdef0123456789xx\"\n";

/// (username, user_id, password)
const USERS: [(&str, &str, &str); 3] = [
    ("alice", "u-alice", "alice-test-pw"),
    ("bob", "u-bob", "bob-test-pw"),
    ("carol", "u-carol", "carol-test-pw"),
];

/// Hashed once per test binary, with cheap argon2 params (the PHC string carries them).
fn users_yaml() -> &'static str {
    static YAML: OnceLock<String> = OnceLock::new();
    YAML.get_or_init(|| {
        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        );
        let mut out = String::from("users:\n");
        for (i, (name, id, pw)) in USERS.iter().enumerate() {
            let salt = SaltString::encode_b64(&[i as u8 + 1; 16]).unwrap();
            let hash = argon.hash_password(pw.as_bytes(), &salt).unwrap();
            out.push_str(&format!(
                "  - username: {name}\n    user_id: {id}\n    password_hash: \"{hash}\"\n"
            ));
        }
        out
    })
}

/// A test's private world: temp dir with data, users, keys, config and logs.
struct Env {
    dir: tempfile::TempDir,
    max_upload: u64,
    grace: u64,
}

impl Env {
    fn new() -> Env {
        Env::with_limit(1024 * 1024)
    }

    fn with_limit(max_upload: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.yaml"), users_yaml()).unwrap();
        std::fs::write(dir.path().join("keys.yaml"), KEYS).unwrap();
        Env {
            dir,
            max_upload,
            grace: 10,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn user_dir(&self, user_id: &str) -> PathBuf {
        self.path("data").join(user_id)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("stdout.log")).unwrap_or_default()
    }

    fn write_config(&self, port: u16) -> PathBuf {
        let config = format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nusers_file: {}\ntoken_key_file: {}\n\
             token_ttl_seconds: 600\nmax_upload_bytes: {}\nshutdown_grace_seconds: {}\n",
            self.path("data").display(),
            self.path("users.yaml").display(),
            self.path("keys.yaml").display(),
            self.max_upload,
            self.grace,
        );
        let path = self.path("app.yaml");
        std::fs::write(&path, config).unwrap();
        path
    }

    fn spawn(&self, config: &Path) -> Child {
        let log = |name| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(name))
                .unwrap()
        };
        Command::new(env!("CARGO_BIN_EXE_app"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap()
    }

    /// Starts the binary on a free port and waits (bounded) until /healthz answers.
    async fn start(&self) -> App {
        let port = free_port();
        let child = self.spawn(&self.write_config(port));
        let mut app = App {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = app.child.try_wait().unwrap() {
                panic!(
                    "app exited early ({status}): {}",
                    std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
                );
            }
            if let Ok(r) = app.http.get(app.url("/healthz")).send().await {
                if r.status() == 200 {
                    return app;
                }
            }
            assert!(Instant::now() < deadline, "app not healthy within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server; killed when dropped so failing tests leave no processes behind.
struct App {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "app did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM and require a clean exit.
    async fn stop(mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0));
    }

    async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/auth/token"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    async fn token(&self, user: usize) -> String {
        let (name, _, pw) = USERS[user];
        let resp = self.login(name, pw).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn upload(
        &self,
        token: &str,
        name: &str,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/documents?name={}", pct(name))))
            .bearer_auth(token)
            .body(bytes);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.unwrap()
    }

    async fn upload_ok(&self, token: &str, name: &str, bytes: Vec<u8>) -> Value {
        let resp = self.upload(token, name, Some("text/plain"), bytes).await;
        assert_eq!(resp.status(), 201);
        resp.json().await.unwrap()
    }

    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn delete(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn list(&self, token: &str, query: &str) -> Value {
        let resp = self.get(token, &format!("/v1/documents{query}")).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Every document of the user, following cursors.
    async fn list_all(&self, token: &str, limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let query = match &cursor {
                Some(c) => format!("?limit={limit}&cursor={c}"),
                None => format!("?limit={limit}"),
            };
            let page = self.list(token, &query).await;
            let docs = page["documents"].as_array().unwrap();
            assert!(docs.len() <= limit);
            all.extend(docs.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return all,
            }
        }
        panic!("pagination did not terminate");
    }

    /// Sends raw bytes and returns whatever the server answers before closing.
    async fn raw(&self, parts: &[&[u8]]) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        for part in parts {
            // The server may stop reading (e.g. after a 413); keep going to read its answer.
            if stream.write_all(part).await.is_err() {
                break;
            }
        }
        read_response(&mut stream).await
    }
}

async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

async fn error_code(resp: reqwest::Response) -> String {
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/json");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap().to_owned()
}

fn doc_path(doc: &Value) -> String {
    format!("/v1/documents/{}", doc["id"].as_str().unwrap())
}

fn names(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Temp files are removed in the background after an aborted upload: poll briefly.
async fn assert_no_temp_files(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tmp: Vec<_> = files_in(dir)
            .into_iter()
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        if tmp.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "temp files left: {tmp:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn login_good_password_bad_password_and_unknown_user() {
    let env = Env::new();
    let app = env.start().await;

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
    let app = env.start().await;
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
    let app = env.start().await;
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
            .http
            .post(app.url(&format!("/v1/documents{query}")))
            .bearer_auth(&token)
            .body("x")
            .send()
            .await
            .unwrap();
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
async fn cross_user_access_is_404() {
    let env = Env::new();
    let app = env.start().await;
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
async fn expired_forged_and_missing_tokens_are_401() {
    let env = Env::new();
    let app = env.start().await;
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
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {header:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            assert_eq!(error_code(resp).await, "unauthorized");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_by_several_users() {
    let env = Env::new();
    let app = std::sync::Arc::new(env.start().await);
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
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("app_documents_stored 30"), "{metrics}");
}

#[tokio::test]
async fn pagination_covers_all_documents_once_newest_first() {
    let env = Env::new();
    let app = env.start().await;
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
    let app = env.start().await;

    let resp = app.http.get(app.url("/nope")).send().await.unwrap();
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
            .http
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
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
            .http
            .post(app.url("/v1/auth/token"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(error_code(resp).await, "invalid_json");
    }
    let huge = format!(
        r#"{{"username":"alice","password":"{}"}}"#,
        "p".repeat(70 * 1024)
    );
    let resp = app
        .http
        .post(app.url("/v1/auth/token"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
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
async fn health_ready_and_metrics() {
    let env = Env::new();
    let app = env.start().await;
    let token = app.token(0).await;
    let resp = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.upload_ok(&token, "m", vec![1; 1234]).await;
    app.http
        .get(app.url("/some/raw/path-12345"))
        .send()
        .await
        .unwrap();
    app.get(&token, "/v1/documents/0123456789abcdef0123456789abcdef")
        .await;

    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let resp = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(error_code(resp).await, "not_ready");
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
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
        app.child.try_wait().unwrap().is_none(),
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
    app.child.kill().unwrap();
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
