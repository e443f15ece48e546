//! The operators' cockpit on a real gateway's admin port: `/limits` (open), `/limits/top`,
//! `/limits/key`, `POST /limits/reset` (bearer token): auth refusals, the error contract,
//! the audit line, the config metrics, token rotation by file and a rejected reload.
//! The shared (Redis) reset across 3 replicas is in shared_limits.rs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "cockpit-test-token-0001";
const ROTATED: &str = "cockpit-test-token-0002";

fn yaml(token_file: Option<&Path>) -> String {
    let admin = token_file.map_or(String::new(), |f| {
        format!("admin:\n  token_file: {}\n  top_keys: 10\n", f.display())
    });
    format!(
        "{admin}trusted_proxies: [127.0.0.2/32]\nrate_limits:\n  policies:\n    - {{name: per-ip, key: ip, rate: 1/hour, burst: 2}}\n    - {{name: per-user, key: user, rate: 1/hour, burst: 5, mode: shadow}}\n"
    )
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn new(addr: SocketAddr) -> Admin {
        Admin {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, v)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, h, v) = self.send("GET", path, token, None).await;
        assert_eq!(h["cache-control"], "no-store", "{path}");
        (s, v)
    }

    async fn reset(&self, token: Option<&str>, body: String) -> (u16, Value) {
        let (s, _, v) = self.send("POST", "/limits/reset", token, Some(body)).await;
        (s, v)
    }
}

/// `n` requests from client `ip` (through the trusted proxy 127.0.0.2); statuses.
async fn hits(gw: &GatewayProc, ip: &str, n: usize) -> Vec<u16> {
    hits_at(gw.addr, ip, n).await
}

#[tokio::test]
async fn cockpit_endpoints_auth_reset_and_rotation() {
    let stub = Stub::start(StubMode::Echo).await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin_token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let gw = GatewayProc::start(stub.addr, &yaml(Some(&token_file)));
    let admin = Admin::new(gw.admin);

    assert_eq!(hits(&gw, "203.0.113.7", 5).await, [200, 200, 429, 429, 429]);
    assert_eq!(hits(&gw, "2001:db8:1:2::9", 3).await, [200, 200, 429]);

    // /limits is open and names no client.
    let (s, v) = admin.get("/limits", None).await;
    assert_eq!(s, 200, "{v}");
    let bytes = std::fs::read(&gw.config_path).unwrap();
    assert_eq!(v["config"]["sha256"], sha256_hex(&bytes));
    assert_eq!(v["config"]["path"], gw.config_path.display().to_string());
    assert!(v["last_reload"].is_null());
    assert_eq!(
        v["policies"][0],
        json!({"name": "per-ip", "key": "ip", "rate": "1/hour", "burst": 2, "mode": "enforce", "shared": "local", "tracked_keys": 2})
    );
    assert_eq!(v["policies"][1]["mode"], "shadow");
    assert!(!v.to_string().contains("203.0.113.7"));

    // Auth first: no or a wrong token is a 401 with the challenge, whatever else is wrong.
    for (path, token) in [
        ("/limits/top", None),
        ("/limits/top", Some("wrong-token-wrong-token")),
        ("/limits/top?policy=nope", None),
        ("/limits/key?policy=per-ip&key=*", Some("")),
    ] {
        let (s, h, v) = admin.send("GET", path, token, None).await;
        assert_eq!(s, 401, "{path} {token:?}: {v}");
        assert!(h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    let (s, _) = admin.reset(None, "{}".into()).await;
    assert_eq!(s, 401);

    // The error contract behind the token.
    let t = Some(TOKEN);
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<String>, u16, &str)] = &[
        ("GET", "/limits/top?policy=nope", None, 404, "unknown_policy"),
        ("GET", "/limits/top?n=0", None, 400, "bad_request"),
        ("GET", "/limits/top?n=20001", None, 400, "bad_request"),
        ("GET", "/limits/top?bogus=1", None, 400, "bad_request"),
        ("GET", "/limits/key?policy=per-ip", None, 400, "bad_request"),
        ("GET", "/limits/key?policy=per-ip&key=not-an-ip", None, 400, "bad_request"),
        ("GET", "/limits/key?policy=nope&key=203.0.113.7", None, 404, "unknown_policy"),
        ("POST", "/limits/top", None, 405, "method_not_allowed"),
        ("GET", "/limits/reset", None, 405, "method_not_allowed"),
        ("DELETE", "/limits", None, 405, "method_not_allowed"),
        ("GET", "/limits/nothing", None, 404, "not_found"),
        ("POST", "/limits/reset", Some("{not json".into()), 400, "bad_request"),
        ("POST", "/limits/reset", Some(r#"{"policy":"per-ip"}"#.into()), 400, "bad_request"),
        ("POST", "/limits/reset", Some(r#"{"policy":"per-ip","key":"*"}"#.into()), 400, "bad_request"),
        ("POST", "/limits/reset", Some(r#"{"policy":"per-ip","key":"203.0.113.*"}"#.into()), 400, "bad_request"),
        ("POST", "/limits/reset", Some(r#"{"policy":"nope","key":"203.0.113.7"}"#.into()), 404, "unknown_policy"),
        ("POST", "/limits/reset", Some(format!(r#"{{"policy":"per-ip","key":"{}"}}"#, "x".repeat(5000))), 413, "payload_too_large"),
    ];
    for (method, path, body, status, code) in cases {
        let (s, h, v) = admin.send(method, path, t, body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path}: {v}"
        );
        assert_eq!(h["content-type"], "application/json");
    }

    // Who is limited: heaviest first, IPv6 as its /64.
    let (s, v) = admin.get("/limits/top?policy=per-ip&n=5", t).await;
    assert_eq!(s, 200, "{v}");
    let top = &v["policies"][0]["top"];
    assert_eq!(v["policies"][0]["policy"], "per-ip");
    assert_eq!(top[0]["key"], "203.0.113.7");
    assert_eq!(top[0]["refused"], 3);
    assert_eq!(top[1]["key"], "2001:db8:1:2::/64");
    assert_eq!(top[1]["refused"], 1);
    assert!(top[0]["last_refused"].as_str().unwrap().ends_with('Z'));
    let (_, all) = admin.get("/limits/top", t).await;
    assert_eq!(all["policies"].as_array().unwrap().len(), 2);
    assert_eq!(all["window_seconds"], 300);

    let (s, v) = admin
        .get("/limits/key?policy=per-ip&key=203.0.113.7", t)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["remaining"], 0);
    let retry = v["retry_after_seconds"].as_f64().unwrap();
    assert!(retry > 3500.0 && retry <= 3600.0, "{v}");
    assert!(v.get("redis").is_none());

    // Reset: the client gets its burst back, the audit line names the token by its id.
    let body = json!({"policy": "per-ip", "key": "203.0.113.7"}).to_string();
    let (s, v) = admin.reset(t, body.clone()).await;
    assert_eq!((s, &v["reset"]), (200, &json!("replica")), "{v}");
    assert_eq!(hits(&gw, "203.0.113.7", 3).await, [200, 200, 429]);
    assert_eq!(
        hits(&gw, "2001:db8:1:2::1", 1).await,
        [429],
        "others untouched"
    );
    assert_eq!(
        gw.metric_sum("gateway_limit_resets_total", &[("policy", "per-ip")]),
        1.0
    );
    let log = gw.proc.log_text();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("limit reset")).collect();
    assert_eq!(audit.len(), 1, "{log}");
    assert!(
        audit[0].contains("WARN") || audit[0].contains("\"level\":\"WARN\""),
        "{}",
        audit[0]
    );
    assert!(audit[0].contains("203.0.113.7") && audit[0].contains("per-ip"));
    assert!(!log.contains(TOKEN), "the token never reaches the log");
    let id = &sha256_hex(TOKEN.as_bytes())[..8];
    assert!(audit[0].contains(id), "{}", audit[0]);

    // Config metrics.
    let m = gw.metrics();
    assert_eq!(
        metric_sum(&m, "gateway_config_last_reload_successful", &[]),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "gateway_config_info",
            &[("sha256", &sha256_hex(&bytes))]
        ),
        1.0
    );

    // Rotation: a new token in the file is live without a restart; the old one is refused.
    std::fs::write(&token_file, format!("{ROTATED}\n")).unwrap();
    let rotated = wait_until(Duration::from_secs(10), || {
        get_blocking_auth(gw.admin, "/limits/top", ROTATED) == 200
    });
    assert!(
        rotated,
        "rotated token not accepted: {}",
        tail(&gw.proc.log, 10)
    );
    assert_eq!(get_blocking_auth(gw.admin, "/limits/top", TOKEN), 401);

    // A rejected reload is visible on /limits and in the metric; the old config runs on.
    std::fs::write(
        &gw.config_path,
        format!(
            "{}rate_limits: {{max_keys: 0}}\n",
            std::str::from_utf8(&bytes)
                .unwrap()
                .split("trusted_proxies")
                .next()
                .unwrap()
        ),
    )
    .unwrap();
    let seen = wait_until(Duration::from_secs(10), || {
        metric_sum(&gw.metrics(), "gateway_config_last_reload_successful", &[]) == 0.0
    });
    assert!(seen);
    let (_, v) = admin.get("/limits", None).await;
    assert_eq!(v["last_reload"]["result"], "rejected", "{v}");
    let error = v["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("rate_limits.max_keys"), "{error}");
    assert_eq!(
        v["config"]["sha256"],
        sha256_hex(&bytes),
        "still the loaded config"
    );
}

#[tokio::test]
async fn without_a_token_file_client_data_is_off() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, &yaml(None));
    let admin = Admin::new(gw.admin);
    for path in ["/limits/top", "/limits/key?policy=per-ip&key=192.0.2.1"] {
        let (s, v) = admin.get(path, Some(TOKEN)).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (403, &json!("forbidden")),
            "{path}"
        );
    }
    let (s, _) = admin.reset(Some(TOKEN), "{}".into()).await;
    assert_eq!(s, 403);
    for path in ["/limits", "/metrics", "/healthz", "/readyz"] {
        let (s, _, _) = admin.send("GET", path, None, None).await;
        assert_eq!(s, 200, "{path}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    gateway::observe::config_status::sha256_hex(bytes)
}

/// Status of an authenticated GET (blocking, for `wait_until`).
fn get_blocking_auth(addr: SocketAddr, path: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf).map_or(0, |r| r.status)
}

/// A gateway started from `config` (listen and admin on port 0); its bound addresses
/// from the `gateway started` line.
struct Replica {
    _guard: ChildGuard,
    addr: SocketAddr,
    admin: String,
    _log: tempfile::TempDir,
}

fn start_replica(config: &Path) -> Replica {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(child);
    let mut started = None;
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        started = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "gateway started");
        started.is_some()
    });
    let v = started.unwrap_or_else(|| panic!("no start line: {}", tail(&log, 10)));
    Replica {
        _guard: guard,
        addr: v["listen"].as_str().unwrap().parse().unwrap(),
        admin: v["admin"].as_str().unwrap().to_string(),
        _log: dir,
    }
}

/// `gateway limits …`: (exit success, stdout, stderr).
fn limits_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("limits")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_across_three_replicas_merges_resets_and_finds_drift() {
    let stub = Stub::start(StubMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let (_keys_dir, keys) = dev_key_file();
    let token_file = dir.path().join("admin_token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let body = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: {}\ntoken_key_file: {}\n{}",
        stub.addr,
        keys.display(),
        yaml(Some(&token_file))
    );
    // One file for the fleet: byte-identical configs, as a real fleet runs.
    let fleet_file = dir.path().join("gateway.yaml");
    std::fs::write(&fleet_file, &body).unwrap();
    let fleet: Vec<Replica> = (0..3).map(|_| start_replica(&fleet_file)).collect();
    let admins = fleet
        .iter()
        .map(|r| r.admin.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let tf = token_file.display().to_string();

    let (ok, out, err) = limits_cli(&["config", "--admin", &admins]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("same config on every replica"), "{out}");

    // 203.0.113.7 is refused 2 + 1 + 0 times on the three replicas, 198.51.100.1 once.
    for (r, n) in fleet.iter().zip([4, 3, 2]) {
        hits_at(r.addr, "203.0.113.7", n).await;
    }
    hits_at(fleet[0].addr, "198.51.100.1", 3).await;
    let (ok, out, err) = limits_cli(&[
        "top",
        "--policy",
        "per-ip",
        "--admin",
        &admins,
        "--token-file",
        &tf,
        "--json",
    ]);
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let top = &v["policies"][0]["top"];
    assert_eq!(
        (
            top[0]["key"].as_str(),
            top[0]["refused"].as_u64(),
            top[0]["replicas"].as_u64()
        ),
        (Some("203.0.113.7"), Some(3), Some(2)),
        "{v}"
    );
    assert_eq!(
        (top[1]["key"].as_str(), top[1]["refused"].as_u64()),
        (Some("198.51.100.1"), Some(1))
    );
    let (ok, table, _) = limits_cli(&["top", "--admin", &admins, "--token-file", &tf]);
    assert!(
        ok && table.starts_with("POLICY") && table.contains("203.0.113.7"),
        "{table}"
    );

    let one_key = |verb: &str| {
        limits_cli(&[
            verb,
            "--policy",
            "per-ip",
            "--key",
            "203.0.113.7",
            "--admin",
            &admins,
            "--token-file",
            &tf,
        ])
    };
    let (ok, out, err) = one_key("key");
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.lines().count(),
        4,
        "a header and one line per replica: {out}"
    );

    // A local policy is reset on every listed replica.
    let (ok, out, err) = one_key("reset");
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches("(replica)").count(), 3, "{out}");
    for r in &fleet {
        assert_eq!(hits_at(r.addr, "203.0.113.7", 1).await, [200]);
    }

    // Clear one-line errors and a non-zero exit: wrong token, unknown policy, a replica down.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-0000000\n").unwrap();
    let (ok, _, err) = limits_cli(&[
        "top",
        "--admin",
        &admins,
        "--token-file",
        &wrong.display().to_string(),
    ]);
    assert!(
        !ok && err.lines().count() == 3 && err.contains("401"),
        "{err}"
    );
    let (ok, _, err) = limits_cli(&[
        "key",
        "--policy",
        "nope",
        "--key",
        "192.0.2.1",
        "--admin",
        &fleet[0].admin,
        "--token-file",
        &tf,
    ]);
    assert!(
        !ok && err.contains("404") && err.contains("No such rate-limit policy"),
        "{err}"
    );
    let down = format!("127.0.0.1:{}", free_port());
    let with_down = format!("{admins},{down}");
    let (ok, _, err) = limits_cli(&["config", "--admin", &with_down]);
    assert!(
        !ok && err.contains(&format!("replica {down}: down")),
        "{err}"
    );

    // Drift: a fourth replica from a different file.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, body.replace("burst: 2}", "burst: 3}")).unwrap();
    let odd = start_replica(&other);
    let (ok, out, _) = limits_cli(&["config", "--admin", &format!("{admins},{}", odd.admin)]);
    assert!(!ok, "drift must exit non-zero: {out}");
    assert!(out.contains("DRIFT"), "{out}");
    let (_, json_out, _) = limits_cli(&[
        "config",
        "--json",
        "--admin",
        &format!("{admins},{}", odd.admin),
    ]);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["same"], false);
}

/// `n` requests to the public address `addr` from client `ip` (through the trusted proxy).
async fn hits_at(addr: SocketAddr, ip: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get_from("127.0.0.2", addr, "/v1/x", &[("x-forwarded-for", ip)]).await;
        out.push(r.status);
    }
    out
}
