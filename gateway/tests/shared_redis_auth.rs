//! Shared limits with a least-privilege ACL user and with TLS against a real redis-server:
//! - the ACL: a user with exactly `link::ACL_COMMANDS` on `~edge:*` can do everything the
//!   gateway does (handshake, scripts and the commands they call, resets, `ROLE`), and a
//!   user with any one command fewer cannot;
//! - a gateway with that user gets in sync and `exact` works; a gateway with a weaker ACL
//!   or a wrong password logs one clear line and stays degraded, serving requests;
//! - TLS with a CA made at test time: in sync; a wrong CA and a cleartext port are
//!   refused (degraded, never cleartext); a TLS-only cluster (slot map, every master and
//!   `exact` over TLS); a TLS sentinel naming a TLS master.
//!
//! ~15 s. Skips loudly without `redis-server`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fleet::*;
use common::redis_cluster::cli_with;
use common::redis_server::{create_cluster, spawn_server, Redis};
use common::*;
use gateway::admit::limits::shared::link::{self, Link, ACL_COMMANDS};
use gateway::admit::limits::shared::{keys, resets, script, sync, Connection, Target};

/// One `EVALSHA` of `script` on one key.
fn evalsha(script: &redis::Script, key: &str, argv: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key).arg(argv);
    cmd
}

/// Everything the gateway sends to Redis, as its modules send it.
async fn exercise(port: u16, user: &str, password: &str) -> Result<(), String> {
    let c = Connection {
        target: Target::Single {
            url: format!("redis://127.0.0.1:{port}/1"),
        },
        username: Some(user.into()),
        password: Some(password.into()),
        sentinel_password: None,
        tls: None,
        key_prefix: "edge".into(),
    };
    let s = |e: redis::RedisError| e.to_string();
    let mut link = Link::new(&c)?;
    let mut conn = link.connect().await.map_err(s)?;
    sync::load_scripts(&mut conn).await.map_err(s)?;
    let budget = Duration::from_secs(1);
    let calls = [
        evalsha(
            &script::HEARTBEAT,
            &keys::replicas_key("edge"),
            &["r1", "5000"],
        ),
        evalsha(
            &script::FLUSH,
            &keys::redis_key("edge", 1, 0xaa),
            &["100000.000", "3"],
        ),
        evalsha(
            &script::EXACT,
            &keys::redis_key("edge", 2, 0xbb),
            &["100000.000", "500000"],
        ),
    ];
    for call in &calls {
        sync::call_reloading(&mut conn, call, budget)
            .await
            .map_err(s)?;
    }
    let mut feed = resets::Feed::default();
    feed.poll(&mut conn, "edge", &[]).await.map_err(s)?;
    resets::publish_key(&mut conn, "edge", &keys::redis_key("edge", 1, 7), 1, 7)
        .await
        .map_err(s)?;
    feed.poll(&mut conn, "edge", &[]).await.map_err(s)?;
    link::verify_master(&mut conn).await.map_err(s)?;
    Ok(())
}

fn acl_line(user: &str, password: &str, commands: &[&str]) -> String {
    let mut line = format!("user {user} on >{password} resetkeys ~edge:* resetchannels -@all");
    for c in commands {
        line.push_str(&format!(" +{c}"));
    }
    line
}

/// An ACL file: `default` (for the test's own checks) plus `users`.
fn acl_file(dir: &Path, users: &[String]) -> String {
    let path = dir.join("users.acl");
    let mut text = String::from("user default on nopass ~* &* +@all\n");
    for u in users {
        text.push_str(u);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The gateway gets in sync (≤ 10 s) and its `exact` policy (burst 5) admits exactly 5 of
/// 10 requests from `client`: Redis answered every confirmation.
async fn in_sync_and_exact(good: &GatewayProc, how: &str, client: &str) {
    let took = wait_all(
        std::slice::from_ref(good),
        &format!("in sync {how}"),
        Duration::from_secs(10),
        |g| up(g) == 1.0,
    );
    eprintln!("{how}: in sync {took:?} after start");
    let (admitted, _) = round_robin(
        std::slice::from_ref(good),
        client,
        "/v1/exact/a",
        10,
        Duration::ZERO,
    )
    .await;
    assert_eq!(admitted, 5, "exact {how}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_user_needs_exactly_the_listed_commands() {
    if missing("redis-server", "--version") {
        return;
    }
    // The shipped rule is the one tested here.
    let shipped = link::acl_rule("edge");
    assert_eq!(
        acl_line("edge", "pw", ACL_COMMANDS),
        format!("user edge on >pw {shipped}")
    );
    let dir = tempfile::tempdir().unwrap();
    let mut users = vec![acl_line("edge", "pw-all", ACL_COMMANDS)];
    for (i, _) in ACL_COMMANDS.iter().enumerate() {
        let fewer: Vec<&str> = ACL_COMMANDS
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| *c)
            .collect();
        users.push(acl_line(&format!("minus{i}"), "pw", &fewer));
    }
    let aclfile = acl_file(dir.path(), &users);
    let redis = Redis::start_with(&["--aclfile".into(), aclfile]);

    exercise(redis.port, "edge", "pw-all")
        .await
        .expect("the listed commands are enough");
    for (i, c) in ACL_COMMANDS.iter().enumerate() {
        let r = exercise(redis.port, &format!("minus{i}"), "pw").await;
        eprintln!("without +{c}: {r:?}");
        assert!(r.is_err(), "+{c} is not needed: drop it from ACL_COMMANDS");
    }
    // Keys outside the prefix are refused.
    let mut c = redis.conn().await;
    let _: () = redis::cmd("AUTH")
        .arg("edge")
        .arg("pw-all")
        .query_async(&mut c)
        .await
        .unwrap();
    let other: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("other:key").query_async(&mut c).await;
    assert!(other.is_err(), "{other:?}");
}

const POLICIES: &str = r#"rate_limits:
  policies:
    - {name: login, key: ip, rate: 1/hour, burst: 5, match: {path_prefix: /v1/exact}, shared: exact}
    - {name: spread, key: ip, rate: 60/min, burst: 30}
"#;

fn gateway(stub: std::net::SocketAddr, shared: &str) -> GatewayProc {
    GatewayProc::start(stub, &format!("shared_limits:\n{shared}{POLICIES}"))
}

fn up(g: &GatewayProc) -> f64 {
    g.metric_sum(UP, &[])
}

/// Never in sync over `wait`, serving every request, with the refusal logged once.
async fn refused(g: &GatewayProc, what: &str, log_has: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up(g), 0.0, "{what}: must stay degraded");
    let (admitted, _) = round_robin(
        std::slice::from_ref(g),
        "127.0.0.31",
        "/v1/exact/a",
        8,
        Duration::ZERO,
    )
    .await;
    assert_eq!(admitted, 5, "{what}: exact falls back to the local burst");
    let log = g.proc.log_text();
    let lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains("Redis refuses this gateway"))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", v["error"], v["to"])
        })
        .collect();
    eprintln!("{what}: {lines:?}");
    assert_eq!(lines.len(), 1, "{what}: one clear line\n{log}");
    assert!(
        lines[0].to_lowercase().contains(log_has),
        "{what}: {}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_acl_user_syncs_and_a_wrong_acl_degrades() {
    if missing("redis-server", "--version") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let no_time: Vec<&str> = ACL_COMMANDS
        .iter()
        .copied()
        .filter(|c| *c != "time")
        .collect();
    let aclfile = acl_file(
        dir.path(),
        &[
            acl_line("edge", "edge-secret", ACL_COMMANDS),
            acl_line("weak", "weak-secret", &no_time),
        ],
    );
    let redis = Redis::start_with(&["--aclfile".into(), aclfile]);
    let stub = Stub::start(StubMode::Echo).await;
    let url = redis.url();
    // A gateway logging in as `user` with `password` (written to a secret file).
    let as_user = |user: &str, password: &str| {
        let p = dir.path().join(format!("{user}-{password}"));
        std::fs::write(&p, format!("{password}\n")).unwrap();
        let shared = format!(
            "  redis: {url}\n  username: {user}\n  password_file: {}\n",
            p.display()
        );
        gateway(stub.addr, &shared)
    };
    let good = as_user("edge", "edge-secret");
    in_sync_and_exact(&good, "with the ACL user", "127.0.0.32").await;
    let fallbacks = good.metric_sum("gateway_shared_limits_exact_fallbacks_total", &[]);
    assert_eq!(fallbacks, 0.0, "exact answered by Redis");

    let weak = as_user("weak", "weak-secret");
    let wrong = as_user("edge", "not-the-password");
    refused(&weak, "ACL without +time", "can't run this command").await;
    refused(&wrong, "wrong password", "authentication failed").await;
    assert_eq!(up(&good), 1.0);
}

/// A CA and a server certificate for 127.0.0.1 signed by it; returns (ca.pem, cert, key).
fn make_ca(dir: &Path, name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |file: &str, text: String| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

/// A temp dir with a CA and a server certificate for 127.0.0.1 made in it (`name`), or
/// `None` (a loud skip) without `redis-server`.
fn tls_dir(name: &str) -> Option<(tempfile::TempDir, String, String, String)> {
    if missing("redis-server", "--version") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca(dir.path(), name);
    Some((dir, ca, cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_no_cleartext_fallback() {
    let Some((dir, ca, cert, key)) = tls_dir("private") else {
        return;
    };
    let (other_ca, _, _) = make_ca(dir.path(), "other");
    let tls_port = free_port();
    // The plain port is there for the readiness check and as the cleartext target below.
    let redis = Redis::start_with(&[
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        cert,
        "--tls-key-file".into(),
        key,
        "--tls-ca-cert-file".into(),
        ca.clone(),
        "--tls-auth-clients".into(),
        "no".into(),
    ]);
    let stub = Stub::start(StubMode::Echo).await;
    let good = gateway(
        stub.addr,
        &format!("  redis: redis://127.0.0.1:{tls_port}/0\n  tls:\n    ca_file: {ca}\n"),
    );
    in_sync_and_exact(&good, "over TLS with a private CA", "127.0.0.33").await;

    let wrong_ca = gateway(
        stub.addr,
        &format!("  redis: rediss://127.0.0.1:{tls_port}/0\n  tls:\n    ca_file: {other_ca}\n"),
    );
    let cleartext = gateway(
        stub.addr,
        &format!(
            "  redis: redis://127.0.0.1:{}/0\n  tls:\n    ca_file: {ca}\n",
            redis.port
        ),
    );
    refused(
        &wrong_ca,
        "a CA that did not sign the server",
        "unknownissuer",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        up(&cleartext),
        0.0,
        "TLS configured: a cleartext port is never used"
    );
    assert_eq!(up(&good), 1.0);
}

/// `redis-cli` over TLS (the nodes below have no cleartext port), its stdout.
fn cli_tls(port: u16, ca: &str, args: &[&str]) -> String {
    cli_with(&["--tls", "--cacert", ca], port, args)
}

/// A cluster whose nodes speak only TLS (as managed offerings with in-transit encryption
/// do: `port 0`, TLS on the cluster bus): the gateway, given one seed and the CA, learns the
/// slot map over TLS, connects to every master over TLS, syncs, and `exact` is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_cluster_with_a_private_ca() {
    let Some((dir, ca, cert, key)) = tls_dir("cluster") else {
        return;
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dir_arg = dir.path().display().to_string();
    let _nodes: Vec<testkit::ChildGuard> = ports
        .iter()
        .map(|port| {
            let (port_arg, bus_arg) = (port.to_string(), free_port().to_string());
            let conf = format!("nodes-{port}.conf");
            #[rustfmt::skip]
            let args = [
                "--port", "0", "--tls-port", &port_arg, "--bind", "127.0.0.1",
                "--tls-auth-clients", "no", "--tls-cert-file", &cert, "--tls-key-file", &key,
                "--tls-ca-cert-file", &ca, "--tls-cluster", "yes",
                "--cluster-enabled", "yes", "--cluster-port", &bus_arg,
                "--cluster-config-file", &conf, "--save", "", "--appendonly", "no",
                "--dir", &dir_arg,
            ];
            spawn_server(&args, &dir.path().join(format!("{port}.log")))
        })
        .collect();
    for port in &ports {
        assert!(
            testkit::wait_until(Duration::from_secs(10), || cli_tls(*port, &ca, &["PING"])
                .starts_with("PONG")),
            "TLS node {port} did not start"
        );
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    create_cluster(&["--tls", "--cacert", &ca], &addrs, 0);
    assert!(
        testkit::wait_until(Duration::from_secs(20), || ports.iter().all(|p| {
            cli_tls(*p, &ca, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        })),
        "TLS cluster not ok within 20 s"
    );
    let stub = Stub::start(StubMode::Echo).await;
    let good = gateway(
        stub.addr,
        &format!(
            "  cluster:\n    nodes: [{}]\n  tls:\n    ca_file: {ca}\n",
            addrs[0]
        ),
    );
    in_sync_and_exact(&good, "on a TLS-only cluster", "127.0.0.34").await;
    let fallbacks = good.metric_sum("gateway_shared_limits_exact_fallbacks_total", &[]);
    assert_eq!(fallbacks, 0.0, "exact answered by the cluster");
    // One policy's keys spread over the slots: 30 clients reach every master (a master
    // left out has probability 3 * (2/3)^30, ~2e-5), each over TLS.
    for i in 1..=30 {
        round_robin(
            std::slice::from_ref(&good),
            &format!("127.0.1.{i}"),
            "/v1/spread",
            1,
            Duration::ZERO,
        )
        .await;
    }
    let holding = || {
        ports
            .iter()
            .filter(|p| {
                let n: u64 = cli_tls(**p, &ca, &["DBSIZE"]).trim().parse().unwrap_or(0);
                n > 0
            })
            .count()
    };
    testkit::wait_until(Duration::from_secs(5), || holding() == 3);
    assert_eq!(holding(), 3, "keys on every master");
    assert_eq!(up(&good), 1.0);
}

/// Sentinel with TLS everywhere: the sentinel listens on TLS only and reaches the master over
/// TLS (`tls-replication yes`); the gateway asks it over TLS, verifies the master it names
/// over TLS, syncs, and `exact` is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_with_a_private_ca() {
    let Some((dir, ca, cert, key)) = tls_dir("sentinel") else {
        return;
    };
    let tls = |port: u16| {
        format!(
            "tls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n\
             tls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\n"
        )
    };
    let master_tls = free_port();
    // The cleartext port stays for the helper's readiness check; nothing else uses it.
    let master_args: Vec<String> = tls(master_tls)
        .lines()
        .flat_map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            [format!("--{k}"), v.to_string()]
        })
        .collect();
    let _master = Redis::start_with(&master_args);
    let sentinel_port = free_port();
    let sentinel_conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &sentinel_conf,
        format!(
            "port 0\nbind 127.0.0.1\ndir {}\n{}\
             sentinel monitor edge-limits 127.0.0.1 {master_tls} 1\n\
             sentinel down-after-milliseconds edge-limits 1000\n",
            dir.path().display(),
            tls(sentinel_port)
        ),
    )
    .unwrap();
    let conf = sentinel_conf.display().to_string();
    let _sentinel = spawn_server(&[&conf, "--sentinel"], &dir.path().join("sentinel.log"));
    assert!(
        testkit::wait_until(Duration::from_secs(10), || {
            cli_tls(
                sentinel_port,
                &ca,
                &["SENTINEL", "get-master-addr-by-name", "edge-limits"],
            )
            .contains(&master_tls.to_string())
        }),
        "TLS sentinel did not start"
    );
    let stub = Stub::start(StubMode::Echo).await;
    let good = gateway(
        stub.addr,
        &format!(
            "  sentinel:\n    master: edge-limits\n    nodes: [127.0.0.1:{sentinel_port}]\n  \
             tls:\n    ca_file: {ca}\n"
        ),
    );
    in_sync_and_exact(&good, "through a TLS sentinel", "127.0.0.35").await;
    let fallbacks = good.metric_sum("gateway_shared_limits_exact_fallbacks_total", &[]);
    assert_eq!(fallbacks, 0.0, "exact answered by the master");
    let keys: u64 = cli_tls(master_tls, &ca, &["DBSIZE"])
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(keys > 0, "no key on the master");
}
