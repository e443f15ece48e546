//! App-specific test layer on top of `testkit`: a private world (data dir, users, keys,
//! config) and one client API that drives either the real binary over loopback or the
//! service in-process (`app::handle`, no socket), so route tests and process tests share it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
pub use testkit::files_in;
use testkit::{free_port, ChildGuard};
use tokio::io::AsyncWriteExt;

pub const KEYS: &str = testkit::TEST_KEYS;
/// Same kid, different secret: what a forger without our key would produce.
pub const OTHER_KEYS: &str = "signing_kid: test-1\nkeys:\n  - kid: test-1\n    secret: \"attacker-secret-0123456789abcdef0123456789xx\"\n";

/// (username, user_id, password)
pub const USERS: [(&str, &str, &str); 3] = [
    ("alice", "u-alice", "alice-test-pw"),
    ("bob", "u-bob", "bob-test-pw"),
    ("carol", "u-carol", "carol-test-pw"),
];

const TOKEN_TTL: Duration = Duration::from_secs(600);

/// A test's private world: temp dir with data, users, keys, config and logs.
pub struct Env {
    dir: tempfile::TempDir,
    max_upload: u64,
    grace: u64,
}

impl Env {
    pub fn new() -> Env {
        Env::with_limit(1024 * 1024)
    }

    pub fn with_limit(max_upload: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.yaml"), testkit::users_yaml(&USERS)).unwrap();
        std::fs::write(dir.path().join("keys.yaml"), KEYS).unwrap();
        Env {
            dir,
            max_upload,
            grace: 10,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn user_dir(&self, user_id: &str) -> PathBuf {
        self.path("data").join(user_id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("stdout.log")).unwrap_or_default()
    }

    pub fn write_config(&self, port: u16) -> PathBuf {
        let config = format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nusers_file: {}\ntoken_key_file: {}\n\
             token_ttl_seconds: {}\nmax_upload_bytes: {}\nshutdown_grace_seconds: {}\n",
            self.path("data").display(),
            self.path("users.yaml").display(),
            self.path("keys.yaml").display(),
            TOKEN_TTL.as_secs(),
            self.max_upload,
            self.grace,
        );
        let path = self.path("app.yaml");
        std::fs::write(&path, config).unwrap();
        path
    }

    fn spawn(&self, config: &Path) -> ChildGuard {
        let log = |name| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(name))
                .unwrap()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_app"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap();
        ChildGuard::new(child)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// Starts the binary on a free port and waits (bounded) until /healthz answers.
    pub async fn start(&self) -> App {
        let port = free_port();
        let guard = self.spawn(&self.write_config(port));
        let mut app = App {
            http: Env::client(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            transport: Transport::Process(guard),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = app.process().exited() {
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

    /// The same service on the same files, called in-process: no socket, no binary.
    pub fn in_process(&self) -> App {
        let (store, _) = app::store::Store::open(&self.path("data")).unwrap();
        let users = app::users::Users::load(&self.path("users.yaml")).unwrap();
        let keyring = keyring::Keyring::load(&self.path("keys.yaml")).unwrap();
        let state = app::AppState::new(users, keyring, store, TOKEN_TTL, self.max_upload);
        App {
            http: Env::client(),
            // Requests are built with this authority but never leave the process.
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            transport: Transport::InProcess(Arc::new(state)),
        }
    }
}

enum Transport {
    /// The real binary; killed when dropped so failing tests leave no processes behind.
    Process(ChildGuard),
    InProcess(Arc<app::AppState>),
}

/// A running service and a client for it.
pub struct App {
    pub http: reqwest::Client,
    pub addr: SocketAddr,
    transport: Transport,
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The child process; panics for an in-process app.
    pub fn process(&mut self) -> &mut ChildGuard {
        match &mut self.transport {
            Transport::Process(guard) => guard,
            Transport::InProcess(_) => panic!("in-process app has no process"),
        }
    }

    /// Sends a request built with `self.http`: over loopback, or straight into `app::handle`.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let state = match &self.transport {
            Transport::Process(_) => return req.send().await.unwrap(),
            Transport::InProcess(state) => state.clone(),
        };
        let req: http::Request<reqwest::Body> = req.build().unwrap().try_into().unwrap();
        let (parts, body) = req.into_parts();
        let body = Full::new(Bytes::copy_from_slice(body.as_bytes().unwrap_or_default()));
        let resp = app::handle(state, http::Request::from_parts(parts, body))
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        http::Response::from_parts(parts, bytes).into()
    }

    pub fn sigterm(&mut self) {
        self.process().signal("-TERM");
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.process().wait_exit_async(limit).await {
            Some((_, status)) => status,
            None => panic!("app did not exit within {limit:?}"),
        }
    }

    /// SIGTERM and require a clean exit.
    pub async fn stop(mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0));
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.send(
            self.http
                .post(self.url("/v1/auth/token"))
                .json(&json!({"username": username, "password": password})),
        )
        .await
    }

    pub async fn token(&self, user: usize) -> String {
        let (name, _, pw) = USERS[user];
        let resp = self.login(name, pw).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn upload(
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
        self.send(req).await
    }

    pub async fn upload_ok(&self, token: &str, name: &str, bytes: Vec<u8>) -> Value {
        let resp = self.upload(token, name, Some("text/plain"), bytes).await;
        assert_eq!(resp.status(), 201);
        resp.json().await.unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn delete(&self, token: &str, path: &str) -> reqwest::Response {
        self.send(self.http.delete(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn list(&self, token: &str, query: &str) -> Value {
        let resp = self.get(token, &format!("/v1/documents{query}")).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// The /metrics exposition text.
    pub async fn metrics_text(&self) -> String {
        let resp = self.send(self.http.get(self.url("/metrics"))).await;
        resp.text().await.unwrap()
    }

    /// Every document of the user, following cursors.
    pub async fn list_all(&self, token: &str, limit: usize) -> Vec<Value> {
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
    pub async fn raw(&self, parts: &[&[u8]]) -> String {
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

pub async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let raw = testkit::read_until_close(stream, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&raw).into_owned()
}

pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn b64url(data: &[u8]) -> String {
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

pub async fn error_code(resp: reqwest::Response) -> String {
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/json");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap().to_owned()
}

pub fn doc_path(doc: &Value) -> String {
    format!("/v1/documents/{}", doc["id"].as_str().unwrap())
}

pub fn names(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Temp files are removed in the background after an aborted upload: poll briefly.
pub async fn assert_no_temp_files(dir: &Path) {
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
