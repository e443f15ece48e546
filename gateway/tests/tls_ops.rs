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
        );
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
