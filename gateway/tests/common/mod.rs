//! Test harness: real gateway and app processes on loopback, a stub upstream
//! that echoes what it received, and a raw HTTP/1.1 client that can bind a
//! chosen 127.x source address to play a trusted proxy or an untrusted client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

pub const DEV_KEYS: &str = "signing_kid: test-1\nkeys:\n  - kid: test-1\n    secret: \"integration-test-secret-0123456789abcdef\"\n";

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    /// Kills the process (as a crash would) and keeps its directory for a restart.
    pub fn kill_keep_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Access-log lines as JSON values.
    pub fn access_logs(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access_log")
            .collect()
    }
    /// Waits (bounded) for the process to exit; returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(Duration, std::process::ExitStatus)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((start.elapsed(), status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

pub struct GatewayProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

/// Config body with the listen/admin/key lines filled in; `extra` is appended.
pub fn gateway_yaml(
    addr: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    key_file: &Path,
    extra: &str,
) -> String {
    format!(
        "listen: {addr}\nadmin_listen: {admin}\nupstream: {upstream}\ntoken_key_file: {}\n{extra}",
        key_file.display()
    )
}

impl GatewayProc {
    /// Starts the gateway in front of `upstream` with `extra` YAML appended to the base config.
    pub fn start(upstream: SocketAddr, extra: &str) -> GatewayProc {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("keys.yaml");
        std::fs::write(&key_file, DEV_KEYS).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(
            &config_path,
            gateway_yaml(addr, admin, upstream, &key_file, extra),
        )
        .unwrap();
        let log = dir.path().join("gateway.log");
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let gw = GatewayProc {
            proc: Proc { child, log, dir },
            addr,
            admin,
            config_path,
        };
        gw.wait_healthy();
        gw
    }

    pub fn key_file(&self) -> PathBuf {
        self.proc.dir.path().join("keys.yaml")
    }

    fn wait_healthy(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(r) = get_blocking(self.admin, "/healthz") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway did not become healthy: {}", self.proc.log_text());
    }

    /// Waits (bounded) until /readyz answers `want`.
    pub fn wait_ready(&self, want: u16) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if get_blocking(self.admin, "/readyz").map(|r| r.status).ok() == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("/readyz never answered {want}");
    }

    pub fn metrics(&self) -> String {
        get_blocking(self.admin, "/metrics").unwrap().text()
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The real document app on a free loopback port.
pub struct AppProc {
    pub proc: Proc,
    pub addr: SocketAddr,
}

pub const TEST_USERS: &[(&str, &str, &str)] =
    &[("alice", "u-alice", "alice-pw"), ("bob", "u-bob", "bob-pw")];

impl AppProc {
    pub fn start(key_file: &Path) -> AppProc {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_in(dir, addr, key_file)
    }

    pub fn start_in(dir: tempfile::TempDir, addr: SocketAddr, key_file: &Path) -> AppProc {
        let users = dir.path().join("users.yaml");
        if !users.exists() {
            let mut text = String::from("users:\n");
            for (name, id, pw) in TEST_USERS {
                let hash = hash_password(pw);
                text.push_str(&format!(
                    "  - username: {name}\n    user_id: {id}\n    password_hash: \"{hash}\"\n"
                ));
            }
            std::fs::write(&users, text).unwrap();
        }
        let config = dir.path().join("app.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: {addr}\ndata_dir: {}\nusers_file: {}\ntoken_key_file: {}\nshutdown_grace_seconds: 2\n",
                dir.path().join("data").display(),
                users.display(),
                key_file.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("app.log");
        let child = Command::new(app_binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let app = AppProc {
            proc: Proc { child, log, dir },
            addr,
        };
        let start = Instant::now();
        while get_blocking(addr, "/healthz").map(|r| r.status).ok() != Some(200) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "app did not start: {}",
                app.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        app
    }
}

/// The app binary sits next to ours in the target dir (built by `cargo test --workspace`).
pub fn app_binary() -> PathBuf {
    let gw = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let app = gw.with_file_name("app");
    if !app.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "app", "--bin", "app"])
            .current_dir(workspace_root())
            .status()
            .unwrap();
        assert!(status.success(), "building app failed");
    }
    app
}

/// argon2id hash through the app's own CLI, so the test uses the real format.
pub fn hash_password(pw: &str) -> String {
    let mut child = Command::new(app_binary())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pw}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Parses one response from raw bytes (Content-Length, chunked, or until EOF).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let status = resp.code?;
    let rest = &raw[n..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut r = rest;
        loop {
            let line_end = r.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&r[..line_end]).ok()?.trim(), 16).ok()?;
            r = &r[line_end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(r.get(..size)?);
            r = r.get(size + 2..)?;
        }
        body
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes from `local` (a 127.x address) and reads the response until
/// the server closes or a complete response arrived. Bounded by `limit`.
pub async fn raw_request(
    local: IpAddr,
    server: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> std::io::Result<Response> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_response(&buf) {
                let complete =
                    r.header("content-length").is_some() || r.header("transfer-encoding").is_some();
                if complete {
                    return Ok::<_, std::io::Error>(Some(r));
                }
            }
        }
        Ok(None)
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => parse_response(&buf).ok_or_else(|| {
            std::io::Error::other(format!("no response: {:?}", String::from_utf8_lossy(&buf)))
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "response timed out",
        )),
    }
}

/// A GET with extra header lines, sent from `local`.
pub async fn get_from(
    local: &str,
    server: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> Response {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(
        local.parse().unwrap(),
        server,
        req.as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// Blocking GET for readiness polling from sync code.
pub fn get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf).ok_or_else(|| std::io::Error::other("bad response"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StubMode {
    /// Answer 200 with the received request as JSON.
    Echo,
    /// Read the request, never answer.
    Stall,
    /// Answer after a delay.
    Slow(Duration),
}

/// A stub upstream that records what reached it.
pub struct Stub {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    pub async fn start(mode: StubMode) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (reqs, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read one request head + Content-Length body.
                        let (head_len, headers, method, path) = loop {
                            let mut hs = [httparse::EMPTY_HEADER; 128];
                            let mut req = httparse::Request::new(&mut hs);
                            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                                let headers: Vec<(String, String)> = req
                                    .headers
                                    .iter()
                                    .map(|h| {
                                        (
                                            h.name.to_ascii_lowercase(),
                                            String::from_utf8_lossy(h.value).into_owned(),
                                        )
                                    })
                                    .collect();
                                break (
                                    n,
                                    headers,
                                    req.method.unwrap().to_string(),
                                    req.path.unwrap().to_string(),
                                );
                            }
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let body_len: usize = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_len + body_len {
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_len + body_len);
                        let record = serde_json::json!({
                            "method": method, "path": path, "headers": headers, "body_len": body_len,
                        });
                        reqs.lock().unwrap().push(record.clone());
                        match mode {
                            StubMode::Stall => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            StubMode::Slow(d) => tokio::time::sleep(d).await,
                            StubMode::Echo => {}
                        }
                        let body = record.to_string();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                            body.len(),
                            body
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Stub {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// Headers of the last request the stub saw, lower-cased names, every line kept.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        let reqs = self.requests.lock().unwrap();
        let last = reqs.last().expect("stub saw no request");
        last["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Reads one line of the child's log for debugging in failures.
pub fn tail(path: &Path, lines: usize) -> String {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
