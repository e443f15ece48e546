//! Certificate operations: `check-config` on the pair, the shipped TLS config, and hot reload
//! of the certificate through a real gateway process on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{CertificateParams, KeyPair};

const DAY: Duration = Duration::from_secs(86_400);

/// A self-signed `localhost` pair valid from `from` to `until` (relative to now, may be past).
fn pair_valid(from: SystemTime, until: SystemTime) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = from.into();
    p.not_after = until.into();
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn pair_for(days: u64) -> (String, String) {
    let now = SystemTime::now();
    pair_valid(now - Duration::from_secs(3600), now + days as u32 * DAY)
}

/// The shipped config/gateway.tls.yaml with the compose secrets' paths pointed at `dir`.
fn shipped_tls_config(dir: &Path, keys: &Path) -> PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("config/gateway.tls.yaml")).unwrap();
    let file = dir.join("gateway.tls.yaml");
    let text = text
        .replace("/run/secrets/token_keys", &keys.display().to_string())
        .replace(
            "/run/secrets/tls_cert",
            &dir.join("cert.pem").display().to_string(),
        )
        .replace(
            "/run/secrets/tls_key",
            &dir.join("key.pem").display().to_string(),
        )
        .replace(
            "/run/secrets/admin_token",
            &dir.join("admin_token").display().to_string(),
        );
    std::fs::write(dir.join("admin_token"), "tls-ops-admin-token-01\n").unwrap();
    std::fs::write(&file, text).unwrap();
    file
}

/// `gateway check-config [flags] <file>`, as an operator runs it.
fn check_config_with(flags: &[&str], file: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.arg("check-config").args(flags).arg(file);
    cmd.output().unwrap()
}

fn check_config(file: &Path) -> Output {
    check_config_with(&[], file)
}

#[test]
fn check_config_validates_the_certificate_pair() {
    let (dir, keys) = dev_key_file();
    let file = shipped_tls_config(dir.path(), &keys);
    let line_of = |field: &str| {
        let text = std::fs::read_to_string(&file).unwrap();
        let tls = text.lines().position(|l| l == "tls:").unwrap();
        let at = text
            .lines()
            .skip(tls)
            .position(|l| l.trim_start().starts_with(field));
        format!(
            "gateway.tls.yaml:{}: field `tls.{field}`",
            tls + at.unwrap() + 1
        )
    };
    let now = SystemTime::now();
    let (good_cert, good_key) = pair_for(90);
    let (soon_cert, soon_key) = pair_valid(now - DAY, now + 5 * DAY + DAY / 2);
    let (expired_cert, expired_key) = pair_valid(now - 30 * DAY, now - DAY);
    let (_, other_key) = pair_for(90);
    // (name, cert file, key file, exit ok, stdout has, stderr has)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        bool,
        &'a str,
        String,
    );
    let cases: Vec<Case> = vec![
        (
            "good pair",
            Some(&good_cert),
            Some(&good_key),
            true,
            "days left",
            String::new(),
        ),
        (
            "expires in 5.5 days: ok with a warning",
            Some(&soon_cert),
            Some(&soon_key),
            true,
            "5 days left",
            "warning: field `tls.cert_file`: certificate expires in 5days".into(),
        ),
        (
            "expired",
            Some(&expired_cert),
            Some(&expired_key),
            false,
            "",
            format!("{}: leaf certificate expired", line_of("cert_file")),
        ),
        (
            "key of another certificate",
            Some(&good_cert),
            Some(&other_key),
            false,
            "",
            format!("{}: private key does not match", line_of("cert_file")),
        ),
        (
            "no certificate file",
            None,
            Some(&good_key),
            false,
            "",
            format!("{}: cannot read", line_of("cert_file")),
        ),
        (
            "no key file",
            Some(&good_cert),
            None,
            false,
            "",
            format!("{}: cannot read", line_of("key_file")),
        ),
        (
            "files swapped",
            Some(&good_key),
            Some(&good_cert),
            false,
            "",
            format!("{}: ", line_of("cert_file")),
        ),
        (
            "key file is not PEM",
            Some(&good_cert),
            Some("not a key"),
            false,
            "",
            format!("{}: key file holds no PEM", line_of("key_file")),
        ),
    ];
    let mut failures = Vec::new();
    for (name, cert, key, ok, stdout_has, stderr_has) in &cases {
        for (path, content) in [("cert.pem", cert), ("key.pem", key)] {
            let path = dir.path().join(path);
            let _ = std::fs::remove_file(&path);
            if let Some(c) = content {
                std::fs::write(&path, c).unwrap();
            }
        }
        let out = check_config(&file);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if out.status.success() != *ok
            || !stdout.contains(stdout_has)
            || !stderr.contains(stderr_has.as_str())
        {
            failures.push(format!(
                "{name}: exit {:?}\n  stdout {stdout}\n  stderr {stderr}",
                out.status.code()
            ));
        }
        if *ok && stderr_has.is_empty() && !stderr.is_empty() {
            failures.push(format!("{name}: unexpected stderr {stderr}"));
        }
    }
    assert_all_passed(&failures, cases.len());

    // --skip-files: the shipped file as it is (container paths) checks without the pair.
    let shipped = workspace_root().join("config/gateway.tls.yaml");
    let out = check_config_with(&["--skip-files"], &shipped);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipped_tls_config_is_the_stack_config_plus_tls() {
    let parse = |f: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(workspace_root().join(f)).unwrap()).unwrap()
    };
    let (plain, mut tls) = (
        parse("config/gateway.yaml"),
        parse("config/gateway.tls.yaml"),
    );
    let block = tls
        .as_mapping_mut()
        .unwrap()
        .remove("tls")
        .expect("gateway.tls.yaml has tls");
    assert_eq!(block["cert_file"].as_str(), Some("/run/secrets/tls_cert"));
    assert_eq!(block["key_file"].as_str(), Some("/run/secrets/tls_key"));
    assert!(plain.get("tls").is_none(), "TLS stays off by default");
    assert_eq!(
        plain, tls,
        "gateway.tls.yaml must equal gateway.yaml apart from `tls`"
    );
}

const RELOADS: &str = "gateway_tls_certificate_reloads_total";
const EXPIRY: &str = "gateway_tls_certificate_expiry_timestamp_seconds";

/// A pair written to `dir/<name>.crt|.key`; returns the cert PEM (what a handshake must show).
fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> String {
    std::fs::write(dir.join(format!("{name}.crt")), &pair.0).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &pair.1).unwrap();
    pair.0.clone()
}

fn tls_block(dir: &Path, name: &str) -> String {
    format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        dir.join(format!("{name}.crt")).display(),
        dir.join(format!("{name}.key")).display()
    )
}

/// The leaf a new handshake presents (openssl s_client, bounded at 5 s), base64 only.
fn served(gw: &GatewayProc) -> String {
    let out = Command::new("timeout")
        .args(["5", "openssl", "s_client", "-connect"])
        .arg(gw.addr.to_string())
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    pem_body(&String::from_utf8_lossy(&out.stdout))
}

fn pem_body(pem: &str) -> String {
    let start = pem.find("-----BEGIN CERTIFICATE-----");
    let end = pem.find("-----END CERTIFICATE-----");
    match (start, end) {
        (Some(s), Some(e)) => pem[s + 27..e].split_whitespace().collect(),
        _ => String::new(),
    }
}

/// Polls (bounded) until a new handshake presents `cert`; returns how long it took.
fn wait_served(gw: &GatewayProc, cert: &str, limit: Duration) -> Duration {
    let (want, start) = (pem_body(cert), std::time::Instant::now());
    let ok = wait_until(limit, || served(gw) == want);
    assert!(
        ok,
        "not served within {limit:?}; log:\n{}",
        tail(&gw.proc.log, 20)
    );
    start.elapsed()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64
}

/// The expiry gauge, once it reads `until` (bounded; X.509 times are whole seconds).
fn assert_expiry(gw: &GatewayProc, until: SystemTime) {
    let got = gw.metric_sum(EXPIRY, &[]);
    assert!(
        (got - unix(until)).abs() <= 1.0,
        "{EXPIRY} {got}, want {}",
        unix(until)
    );
}

#[tokio::test]
async fn certificate_hot_reload_through_a_real_gateway() {
    let stub = Stub::start(StubMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = SystemTime::now();
    let valid = |days: u32| {
        let until = now + days * DAY;
        (pair_valid(now - DAY, until), until)
    };
    let ((a, a_until), (b, b_until), (c, c_until)) = (valid(90), valid(60), valid(30));
    let a_cert = write_pair(d, "live", &a);
    let gw = GatewayProc::start(stub.addr, &tls_block(d, "live"));
    wait_served(&gw, &a_cert, Duration::from_secs(5));
    assert_expiry(&gw, a_until);
    let (ok, err) = (("result", "ok"), ("result", "error"));
    assert_eq!(
        (
            gw.metric_sum(RELOADS, &[ok]),
            gw.metric_sum(RELOADS, &[err])
        ),
        (0.0, 0.0)
    );

    // A renewal written in place (cert, then key): served on a new handshake within seconds.
    let b_cert = write_pair(d, "live", &b);
    let took = wait_served(&gw, &b_cert, Duration::from_secs(5));
    eprintln!("renewed certificate served after {took:?}");
    assert_expiry(&gw, b_until);
    gw.wait_metric_above(RELOADS, &[ok], 0.0, Duration::from_secs(2))
        .await;
    assert_eq!(
        gw.metric_sum(RELOADS, &[err]),
        0.0,
        "the half-written moment was not tried"
    );

    // SIGHUP: an attempt at once, files unchanged (ok again, same certificate).
    gw.proc.signal("-HUP");
    gw.wait_metric_above(RELOADS, &[ok], 1.0, Duration::from_secs(3))
        .await;
    assert_eq!(served(&gw), pem_body(&b_cert));

    // Broken pairs: refused, counted, logged; the renewed certificate keeps serving.
    let broken: [(&str, &[u8], &[u8]); 3] = [
        ("key of another certificate", b.0.as_bytes(), c.1.as_bytes()),
        ("garbage certificate", b"not a certificate", b.1.as_bytes()),
        ("empty key", b.0.as_bytes(), b""),
    ];
    for (i, (name, cert, key)) in broken.iter().enumerate() {
        std::fs::write(d.join("live.crt"), cert).unwrap();
        std::fs::write(d.join("live.key"), key).unwrap();
        gw.wait_metric_above(RELOADS, &[err], i as f64, Duration::from_secs(5))
            .await;
        assert_eq!(
            served(&gw),
            pem_body(&b_cert),
            "{name}: old certificate still served"
        );
        assert_expiry(&gw, b_until);
    }
    assert!(gw.proc.log_text().contains("certificate reload rejected"));
    assert_eq!(
        gw.metric_sum(RELOADS, &[err]),
        3.0,
        "each broken pair counted once"
    );

    // A config that names other files loads their pair with the config.
    let reloads = "gateway_config_reloads_total";
    let config_ok = gw.metric_sum(reloads, &[ok]); // the SIGHUP above reloaded the config too
    let c_cert = write_pair(d, "next", &c);
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let next = config.replace(&tls_block(d, "live"), &tls_block(d, "next"));
    assert_ne!(next, config);
    std::fs::write(&gw.config_path, &next).unwrap();
    wait_served(&gw, &c_cert, Duration::from_secs(5));
    assert_expiry(&gw, c_until);
    assert_eq!(gw.metric_sum(reloads, &[ok]), config_ok + 1.0);

    // ... or is refused whole: new paths with a broken pair, or `tls` removed.
    let before = gw.metric_sum(reloads, &[err]);
    let refused = [
        next.replace(&tls_block(d, "next"), &tls_block(d, "missing")),
        next.replace(&tls_block(d, "next"), ""),
    ];
    for (i, text) in refused.iter().enumerate() {
        std::fs::write(&gw.config_path, text).unwrap();
        gw.wait_metric_above(reloads, &[err], before + i as f64, Duration::from_secs(5))
            .await;
        assert_eq!(served(&gw), pem_body(&c_cert));
    }
    let log = gw.proc.log_text();
    assert!(
        log.contains("field `tls.cert_file`: cannot read"),
        "{}",
        tail(&gw.proc.log, 5)
    );
    assert!(
        log.contains("removing `tls` needs a restart"),
        "{}",
        tail(&gw.proc.log, 5)
    );
}

/// A pair as the files of a TLS Secret.
fn secret_files(pair: &(String, String)) -> [(&str, &[u8]); 2] {
    [
        ("tls.crt", pair.0.as_bytes()),
        ("tls.key", pair.1.as_bytes()),
    ]
}

/// A Secret volume (`tls.crt`, `tls.key`) updated the way the kubelet does it, several times in
/// a row: each new pair is served within 2 s of the swap (no debounce wait: both files move
/// in one rename), a broken pair is refused once and the served one kept, and the watcher
/// outlives every deleted directory.
#[tokio::test]
async fn kubelet_secret_swaps_of_the_pair_are_served_within_2s() {
    let stub = Stub::start(StubMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let first = pair_for(90);
    let mut secret = KubeletVolume::new(&dir.path().join("tls"), &secret_files(&first));
    let tls = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        secret.path("tls.crt").display(),
        secret.path("tls.key").display()
    );
    let gw = GatewayProc::start(stub.addr, &tls);
    wait_served(&gw, &first.0, Duration::from_secs(5));
    let (ok, err) = (("result", "ok"), ("result", "error"));
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let next = pair_for(60 - i);
        secret.update(&secret_files(&next));
        let took = wait_served(&gw, &next.0, Duration::from_secs(2));
        assert!(
            took <= Duration::from_secs(2),
            "swap {i} served after {took:?}"
        );
        slowest = slowest.max(took);
        gw.wait_metric_above(RELOADS, &[ok], i as f64, Duration::from_secs(2))
            .await;
    }
    eprintln!("certificate swaps: slowest served after {slowest:?}");
    let served_now = served(&gw);

    // A mismatched pair published together: refused once, the served pair kept.
    let (a, b) = (pair_for(30), pair_for(30));
    secret.update(&secret_files(&(a.0.clone(), b.1.clone())));
    gw.wait_metric_above(RELOADS, &[err], 0.0, Duration::from_secs(2))
        .await;
    assert_eq!(served(&gw), served_now, "old certificate still served");
    // And a good one after it.
    secret.update(&secret_files(&a));
    wait_served(&gw, &a.0, Duration::from_secs(2));
    assert_eq!(
        gw.metric_sum(RELOADS, &[err]),
        1.0,
        "refused once, not every poll"
    );
}

#[tokio::test]
async fn a_hung_certificate_read_is_given_up_and_the_served_certificate_stays() {
    let stub = Stub::start(StubMode::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a_cert = write_pair(d, "live", &pair_for(90));
    let gw = GatewayProc::start(stub.addr, &tls_block(d, "live"));
    wait_served(&gw, &a_cert, Duration::from_secs(5));

    // The certificate path becomes a FIFO nobody writes: open() blocks, as on a hung network
    // file system. (A second name for the FIFO lets the test release the reader at the end.)
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::fs::hard_link(&fifo, d.join("fifo-link")).unwrap();
    std::fs::rename(d.join("fifo-link"), d.join("live.crt")).unwrap();
    let err = [("result", "error")];
    let start = std::time::Instant::now();
    gw.wait_metric_above(RELOADS, &err, 0.0, Duration::from_secs(10))
        .await;
    let took = start.elapsed();
    eprintln!("hung read given up after {took:?}");
    assert!(
        took >= Duration::from_secs(4),
        "gave up after {took:?}, before READ_TIMEOUT"
    );
    assert!(gw.proc.log_text().contains("reading the files timed out"));
    // Handshakes go on with the certificate in memory; no second read piles up meanwhile.
    assert_eq!(served(&gw), pem_body(&a_cert));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        gw.metric_sum(RELOADS, &err),
        1.0,
        "the stall is counted once"
    );

    // A config reload naming files on the hung file system is refused after the same bound,
    // and the config watcher goes on: a good edit right after it applies.
    let reloads = "gateway_config_reloads_total";
    let (ok, before) = (
        gw.metric_sum(reloads, &[("result", "ok")]),
        gw.metric_sum(reloads, &err),
    );
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let hung = config.replace(&tls_block(d, "live"), &tls_block(d, "hung"));
    std::fs::hard_link(&fifo, d.join("hung.crt")).unwrap();
    std::fs::write(d.join("hung.key"), "").unwrap();
    std::fs::write(&gw.config_path, &hung).unwrap();
    gw.wait_metric_above(reloads, &err, before, Duration::from_secs(10))
        .await;
    assert!(
        gw.proc.log_text().contains("timed out after 5 s"),
        "{}",
        tail(&gw.proc.log, 5)
    );
    std::fs::write(&gw.config_path, format!("{config}# edited\n")).unwrap();
    gw.wait_metric_above(reloads, &[("result", "ok")], ok, Duration::from_secs(5))
        .await;
    assert_eq!(served(&gw), pem_body(&a_cert));

    // The file system comes back: the real file returns and the stuck reads end.
    let b_cert = write_pair(d, "next", &pair_for(60));
    std::fs::rename(d.join("next.crt"), d.join("live.crt")).unwrap();
    std::fs::rename(d.join("next.key"), d.join("live.key")).unwrap();
    // One open for writing releases every reader blocked on the FIFO (the watcher's and the
    // reload's); the watcher's is still blocked, so this open cannot wait forever.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    wait_served(&gw, &b_cert, Duration::from_secs(8));
}
