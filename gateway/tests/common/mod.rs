//! Gateway-specific test layer on top of `testkit`: start a real gateway (and the real
//! app) on loopback with a given config, and read their logs and metrics.
// Each test binary uses a different subset of this layer and of its re-exports.
#![allow(dead_code, unused_imports)]

pub mod fleet;
pub mod redis_cluster;
pub mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use testkit::{
    assert_all_passed, free_port, get_blocking, header_values, mint_token, mint_token_with_header,
    parse_response, raw_request, record_headers, wait_until, ChildGuard, Response, Stub, StubMode,
    TEST_KEYS as DEV_KEYS,
};

/// A temp dir holding `keys.yaml` with `DEV_KEYS`; keep the dir alive while the file is used.
pub fn dev_key_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, DEV_KEYS).unwrap();
    (dir, keys)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A child process (killed on drop) with its log file and private directory.
pub struct Proc {
    pub guard: ChildGuard,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
    pub fn signal(&self, sig: &str) {
        self.guard.signal(sig)
    }
    /// Kills the process (as a crash would) and keeps its directory for a restart.
    pub fn kill_keep_dir(mut self) -> tempfile::TempDir {
        self.guard.kill();
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
        self.guard.wait_exit(limit)
    }
}

pub struct GatewayProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

/// Replaces the gateway's config file atomically (temp file in the same dir, then rename).
pub fn write_config(gw: &GatewayProc, upstream: SocketAddr, extra: &str) {
    let text = gateway_yaml(gw.addr, gw.admin, upstream, &gw.key_file(), extra);
    let tmp = gw.config_path.with_extension("yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &gw.config_path).unwrap();
}

/// Rewrites the config and waits (bounded) for exactly one reload with `result`.
pub async fn reload(gw: &GatewayProc, upstream: SocketAddr, extra: &str, result: &str) {
    const RELOADS: &str = "gateway_config_reloads_total";
    let labels = [("result", result)];
    let before = gw.metric_sum(RELOADS, &labels);
    write_config(gw, upstream, extra);
    let after = gw
        .wait_metric_above(RELOADS, &labels, before, Duration::from_secs(10))
        .await;
    assert_eq!(after, before + 1.0, "one reload attempt per rewrite");
}

/// Per-client connection caps off, for tests that drive one address far past a browser (a
/// connection per request as fast as they can, or a thousand slow clients) and measure
/// another defence on its own; inflight.rs and tls.rs test the caps.
#[allow(dead_code)]
pub const NO_CONN_CAPS: &str =
    "limits:\n  max_connections_per_client: 0\n  new_connections_per_client: null\n";

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
        let yaml = gateway_yaml(addr, admin, upstream, &key_file, extra);
        std::fs::write(&config_path, &yaml).unwrap();
        // scripts/test.sh collects every config a test runs a gateway with, for the schema
        // check (scripts/check-schema.sh validates them with Python's jsonschema).
        if let Some(dump) = std::env::var_os("GATEWAY_CONFIG_DUMP") {
            let _ = std::fs::create_dir_all(&dump);
            let _ = std::fs::write(
                Path::new(&dump).join(format!("gateway-{}.yaml", addr.port())),
                &yaml,
            );
        }
        Self::start_at(dir, config_path, addr, admin)
    }

    /// Starts the gateway on `config_path` (which names `addr` and `admin`); logs go to `dir`.
    pub fn start_at(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> GatewayProc {
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
            proc: Proc {
                guard: ChildGuard::new(child),
                log,
                dir,
            },
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
        let healthy = || get_blocking(self.admin, "/healthz").is_ok_and(|r| r.status == 200);
        if !wait_until(Duration::from_secs(10), healthy) {
            panic!("gateway did not become healthy: {}", self.proc.log_text());
        }
    }

    /// Waits (bounded) until /readyz answers `want`.
    pub fn wait_ready(&self, want: u16) {
        let ready = || get_blocking(self.admin, "/readyz").is_ok_and(|r| r.status == want);
        assert!(
            wait_until(Duration::from_secs(10), ready),
            "/readyz never answered {want}"
        );
    }

    pub fn metrics(&self) -> String {
        get_blocking(self.admin, "/metrics").unwrap().text()
    }

    /// Polls /metrics (bounded) until the metric exceeds `before`; returns the new value.
    pub async fn wait_metric_above(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        before: f64,
        limit: Duration,
    ) -> f64 {
        let start = std::time::Instant::now();
        loop {
            let now = self.metric_sum(name, labels);
            if now > before {
                return now;
            }
            assert!(
                start.elapsed() < limit,
                "{name}{labels:?} stayed at {now} for {limit:?}; log:\n{}",
                tail(&self.proc.log, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// True, with a loud SKIPPED line, when `program arg` does not run: a tool the test needs
/// (e.g. `redis-server --version`) is not installed. `.ci/run` installs every one of them.
pub fn missing(program: &str, arg: &str) -> bool {
    let ok = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: {program} is not installed (apt-get install {program})");
    }
    !ok
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
            // Cheap argon2 params; the app's own hash-password CLI is tested in app/tests.
            std::fs::write(&users, testkit::users_yaml(TEST_USERS)).unwrap();
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
            proc: Proc {
                guard: ChildGuard::new(child),
                log,
                dir,
            },
            addr,
        };
        let healthy = || get_blocking(addr, "/healthz").is_ok_and(|r| r.status == 200);
        assert!(
            wait_until(Duration::from_secs(10), healthy),
            "app did not start: {}",
            app.proc.log_text()
        );
        app
    }
}

/// Runs the gateway binary with `args` to completion; it must succeed (stderr shown if not).
pub fn run_gateway_ok<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_ok(Command::new(env!("CARGO_BIN_EXE_gateway")).args(args))
}

/// Runs `cmd` to completion; it must succeed (its stdout and stderr shown if not).
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
    send_from(local, server, req.as_bytes()).await
}

/// Raw request bytes sent from `local` (a 127.x address); panics on no answer within 10 s.
pub async fn send_from(local: &str, server: SocketAddr, request: &[u8]) -> Response {
    raw_request(
        local.parse().unwrap(),
        server,
        request,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
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

/// A directory laid out and updated the way the kubelet does a ConfigMap or Secret volume:
/// each file is a symlink `name -> ..data/name`, `..data` a symlink to a timestamped
/// directory holding the real files. An update writes a new timestamped directory, points a
/// new symlink `..data_tmp` at it, renames that over `..data` (the one atomic step), and then
/// deletes the old directory.
pub struct KubeletVolume {
    pub dir: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
}

impl KubeletVolume {
    /// Publishes `files` (name, content) in `dir` (created if missing).
    pub fn new(dir: &Path, files: &[(&str, &[u8])]) -> KubeletVolume {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = KubeletVolume {
            dir: dir.to_path_buf(),
            generation: 0,
            current: None,
        };
        v.update(files);
        v
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// One kubelet update: every file of the volume at once, as the new `files`.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let stamp = format!("..2026_12_06_04_00_00.{:09}", self.generation);
        let new = self.dir.join(&stamp);
        std::fs::create_dir(&new).unwrap();
        for (name, content) in files {
            std::fs::write(new.join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(new) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}
