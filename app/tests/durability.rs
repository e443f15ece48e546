//! Crash durability: SIGKILL the real app while many uploads are streaming and
//! committing, restart it on the same data dir, and check what it lists. Every
//! acknowledged (201) upload must be listed with complete, identical bytes; an
//! unacknowledged one may be listed only if it is complete and identical too;
//! nothing partial, orphaned or temporary survives on disk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{files_in, free_port, get_blocking, users_yaml, wait_until, ChildGuard, TEST_KEYS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USERS: [(&str, &str, &str); 2] =
    [("alice", "u-alice", "alice-pw"), ("bob", "u-bob", "bob-pw")];
/// Kill/restart rounds (times `FAULTS_SCALE`); each starts a fresh batch of uploads.
const ROUNDS: usize = 3;
const UPLOADS_PER_ROUND: usize = 24;

struct App {
    /// Killed on drop, so a failing test leaves no process behind.
    guard: ChildGuard,
    addr: SocketAddr,
}

fn start_app(dir: &Path) -> App {
    let port = free_port();
    let config = dir.join("app.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nusers_file: {}\ntoken_key_file: {}\nmax_upload_bytes: 4194304\nshutdown_grace_seconds: 1\n",
            dir.join("data").display(),
            dir.join("users.yaml").display(),
            dir.join("keys.yaml").display()
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("app.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_app"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut app = App {
        guard: ChildGuard::new(child),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let healthy = || {
        if let Some(status) = app.guard.exited() {
            panic!(
                "app exited early ({status}): {}",
                std::fs::read_to_string(dir.join("app.log")).unwrap_or_default()
            );
        }
        get_blocking(app.addr, "/healthz").is_ok_and(|r| r.status == 200)
    };
    assert!(
        wait_until(Duration::from_secs(10), healthy),
        "app not healthy within 10 s"
    );
    app
}

/// One request on a fresh connection; returns (status, body). Bounded.
async fn request(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    read_response(&mut s).await
}

async fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&buf[..text_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut body = buf[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut r: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = r.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&r[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&r[eol + 2..eol + 2 + size]);
        r = &r[eol + 2 + size + 2..];
    }
    out
}

async fn token(addr: SocketAddr, user: usize) -> String {
    let (name, _, pw) = USERS[user];
    let body = format!(r#"{{"username":"{name}","password":"{pw}"}}"#);
    let head = format!(
        "POST /v1/auth/token HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, resp) = request(addr, &head, body.as_bytes()).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// Deterministic content for an upload name: a verifier can rebuild it from the name.
fn content(name: &str) -> Vec<u8> {
    let size: usize = name.rsplit('-').next().unwrap().parse().unwrap();
    let mut x: u64 = name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 201 with this id.
    Acked(String),
    /// No answer before the crash (or a 5xx while dying).
    Unknown,
}

/// Streams one upload in pieces (so the kill finds it mid-body or mid-commit).
async fn upload(addr: SocketAddr, token: String, name: String, chunked: bool) -> Outcome {
    let data = content(&name);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", data.len())
    };
    let head = format!(
        "POST /v1/documents?name={name} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n"
    );
    let run = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(head.as_bytes()).await?;
        for piece in data.chunks(32 * 1024) {
            if chunked {
                s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                s.write_all(piece).await?;
                s.write_all(b"\r\n").await?;
            } else {
                s.write_all(piece).await?;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        if chunked {
            s.write_all(b"0\r\n\r\n").await?;
        }
        read_response(&mut s).await
    };
    match run.await {
        Ok((201, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["name"], name.as_str());
            assert_eq!(v["size"].as_u64(), Some(data.len() as u64));
            Outcome::Acked(v["id"].as_str().unwrap().to_string())
        }
        Ok((status, body)) if status >= 500 => {
            eprintln!("{name}: {status} {}", String::from_utf8_lossy(&body));
            Outcome::Unknown
        }
        Ok((status, body)) => panic!(
            "{name}: unexpected {status}: {}",
            String::from_utf8_lossy(&body)
        ),
        Err(_) => Outcome::Unknown,
    }
}

async fn list_all(addr: SocketAddr, token: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let q = match &cursor {
            Some(c) => format!("?limit=7&cursor={c}"),
            None => "?limit=7".to_string(),
        };
        let head = format!(
            "GET /v1/documents{q} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let (status, body) = request(addr, &head, b"").await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let page: Value = serde_json::from_slice(&body).unwrap();
        all.extend(page["documents"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
    panic!("listing did not terminate");
}

async fn fetch(addr: SocketAddr, token: &str, id: &str) -> (u16, Vec<u8>) {
    let head = format!(
        "GET /v1/documents/{id} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    request(addr, &head, b"").await.unwrap()
}

/// After a restart: the listing holds every acked upload, only complete ones, and
/// disk holds exactly one .bin + .json pair per listed document.
async fn verify(
    addr: SocketAddr,
    tokens: &[String],
    data: &Path,
    acked: &HashMap<String, String>,
) -> usize {
    let mut listed_total = 0;
    for (u, token) in tokens.iter().enumerate() {
        let docs = list_all(addr, token).await;
        let mut ids = Vec::new();
        for d in &docs {
            let name = d["name"].as_str().unwrap();
            let id = d["id"].as_str().unwrap();
            ids.push(id.to_string());
            let want = content(name);
            assert_eq!(
                d["size"].as_u64(),
                Some(want.len() as u64),
                "{name}: listed size"
            );
            let (status, bytes) = fetch(addr, token, id).await;
            assert_eq!(status, 200, "{name}: listed but not readable");
            assert!(
                bytes == want,
                "{name}: content differs ({} of {} bytes)",
                bytes.len(),
                want.len()
            );
        }
        for (name, id) in acked.iter().filter(|(n, _)| n.starts_with(USERS[u].1)) {
            assert!(
                ids.contains(id),
                "acknowledged upload {name} ({id}) lost in the crash"
            );
        }
        // Disk: exactly the listed pairs, nothing temporary or orphaned.
        let mut want_files: Vec<String> = ids
            .iter()
            .flat_map(|id| [format!("{id}.bin"), format!("{id}.json")])
            .collect();
        want_files.sort();
        let dir = data.join(USERS[u].1);
        assert_eq!(files_in(&dir), want_files, "files in {}", dir.display());
        listed_total += docs.len();
    }
    listed_total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_uploads_leaves_only_complete_documents() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), users_yaml(&USERS)).unwrap();
    std::fs::write(dir.path().join("keys.yaml"), TEST_KEYS).unwrap();
    let data = dir.path().join("data");
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut unknown = 0;
    let mut survived_unacked = 0;
    let mut app = start_app(dir.path());
    let mut tokens = Vec::new();
    for u in 0..USERS.len() {
        tokens.push(token(app.addr, u).await);
    }
    let mut listed = 0;
    let rounds = ROUNDS
        * std::env::var("FAULTS_SCALE")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(1);
    for round in 0..rounds {
        let done = Arc::new(Mutex::new(0usize));
        let mut tasks = Vec::new();
        for i in 0..UPLOADS_PER_ROUND {
            let u = i % USERS.len();
            // 4 KiB .. ~2.5 MiB; sizes differ so a mix is mid-body, mid-commit and done.
            let size = 4096 + (i * 7919 % 23) * 110_000;
            let name = format!("{}-r{round}-n{i}-{size}", USERS[u].1);
            let (addr, token, done) = (app.addr, tokens[u].clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                // Stagger starts so uploads overlap at every stage.
                tokio::time::sleep(Duration::from_millis(i as u64 * 15)).await;
                let out = upload(addr, token, name.clone(), i % 3 == 0).await;
                *done.lock().unwrap() += 1;
                (name, out)
            }));
        }
        // Kill once about a third have finished: the rest are in flight.
        let deadline = Instant::now() + Duration::from_secs(30);
        while *done.lock().unwrap() < UPLOADS_PER_ROUND / 3 {
            assert!(Instant::now() < deadline, "uploads did not progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        app.guard.kill();
        let mut round_unacked = Vec::new();
        for t in tasks {
            let (name, out) = t.await.unwrap();
            match out {
                Outcome::Acked(id) => {
                    acked.insert(name, id);
                }
                Outcome::Unknown => round_unacked.push(name),
            }
        }
        unknown += round_unacked.len();
        assert!(
            !round_unacked.is_empty(),
            "round {round}: the kill found no upload in flight"
        );
        drop(app);
        app = start_app(dir.path());
        listed = verify(app.addr, &tokens, &data, &acked).await;
        survived_unacked = listed - acked.len();
        eprintln!(
            "durability round {round}: {} acked so far, {} unacknowledged this round, {listed} listed, {survived_unacked} unacked-but-complete survivors",
            acked.len(),
            round_unacked.len()
        );
    }
    assert!(!acked.is_empty());
    eprintln!(
        "durability: {rounds} kill -9 rounds, {} uploads, {} acked (all listed intact), {unknown} cut off, {listed} listed, {survived_unacked} unacked survivors (complete)",
        rounds * UPLOADS_PER_ROUND,
        acked.len()
    );
}
