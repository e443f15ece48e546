//! Certificate files → a checked pair: reads `tls.cert_file` and `tls.key_file` (blocking:
//! callers on the runtime use `spawn_blocking`), checks them with `tls::cert::load_pair`, and
//! says which config field an error belongs to. Used by startup, `check-config` and the
//! hot-reload watcher (`CertWatch`, run by `reload`); when to try is decided in `decide`.

pub mod decide;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::accept::tls::cert::{load_pair, CertError, LoadedCert};
use crate::config::{locate_field, Config, ConfigError, TlsConfig};
use crate::operate::certs::decide::{tls_change, Debounce, FileRead, Snapshot, Step, TlsChange};
use crate::state::Process;

/// A read of the two files that takes longer is given up on for this poll (a hung network
/// file system): the served certificate stays, the stall is logged and counted once.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads both files now. Errors name the file, so a log line says what to fix.
pub fn read(tls: &TlsConfig) -> Snapshot {
    let one = |p: &Path| -> FileRead {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let cert = one(&tls.cert_file);
    let key = one(&tls.key_file);
    Snapshot {
        published_in: published_in(&tls.cert_file, &tls.key_file),
        cert,
        key,
    }
}

/// The directory both files resolve into, when one of them is a symlink and they resolve
/// into the same directory (a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..2026_12_06_…`).
fn published_in(cert: &Path, key: &Path) -> Option<PathBuf> {
    let linked = |p: &Path| {
        p.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    };
    if !linked(cert) && !linked(key) {
        return None;
    }
    let dir = |p: &Path| Some(std::fs::canonicalize(p).ok()?.parent()?.to_path_buf());
    let (c, k) = (dir(cert)?, dir(key)?);
    (c == k).then_some(c)
}

/// `read` on its own thread, given up after `READ_TIMEOUT` (for callers that are blocking
/// already, like a config reload: a hung file system must not stall the config watcher). The
/// thread of a hung read stays blocked until the file system answers.
pub fn read_bounded(tls: &TlsConfig) -> Result<Snapshot, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = tls.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read(&t));
    });
    rx.recv_timeout(READ_TIMEOUT).map_err(|_| {
        format!(
            "field `tls.cert_file`: reading {} and {} timed out after {} s",
            tls.cert_file.display(),
            tls.key_file.display(),
            READ_TIMEOUT.as_secs()
        )
    })
}

/// A pair refused: which config field to look at, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Key problems point at `tls.key_file`, everything else at `tls.cert_file`.
fn field_of(e: &CertError) -> &'static str {
    match e {
        CertError::NoKey | CertError::KeyPem(_) | CertError::UnsupportedKey(_) => "tls.key_file",
        _ => "tls.cert_file",
    }
}

/// Checks a snapshot as of `now`.
pub fn load(s: &Snapshot, now: SystemTime) -> Result<LoadedCert, PairError> {
    let cert = s.cert.as_deref().map_err(|m| PairError {
        field: "tls.cert_file",
        message: m.clone(),
    })?;
    let key = s.key.as_deref().map_err(|m| PairError {
        field: "tls.key_file",
        message: m.clone(),
    })?;
    load_pair(cert, key, now).map_err(|e| PairError {
        field: field_of(&e),
        message: e.to_string(),
    })
}

/// For `check-config` and startup: the config's pair, loaded, or a `file:line: field` error.
/// `None` without `tls`.
pub fn check(config: &Config, path: &Path) -> Result<Option<LoadedCert>, ConfigError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    load(&read(tls), SystemTime::now()).map(Some).map_err(|e| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        ConfigError {
            file: path.display().to_string(),
            line: locate_field(&text, e.field),
            column: None,
            field: e.field.into(),
            message: e.message,
        }
    })
}

/// Puts a checked pair in service (or refuses it): resolver, expiry gauge, counter, log.
/// `why` says what triggered it (file change, SIGHUP, config).
pub fn apply(shared: &Process, result: Result<LoadedCert, PairError>, why: &str) -> bool {
    let (Some(tls), Some(paths)) = (&shared.tls, shared.live.load().config.tls.clone()) else {
        return false;
    };
    let counter = &shared.metrics.tls_certificate_reloads;
    match result {
        Ok(pair) => {
            tls.resolver.store(Arc::clone(&pair.key));
            let not_after = pair.not_after_unix() as i64;
            shared
                .metrics
                .export_tls_certificate_expiry(Some(not_after));
            counter.with_label_values(&["ok"]).inc();
            tracing::info!(
                cert = %paths.cert_file.display(),
                not_after = %humantime::format_rfc3339_seconds(pair.not_after),
                chain = pair.chain_len,
                trigger = why,
                "certificate reloaded"
            );
            true
        }
        Err(error) => {
            counter.with_label_values(&["error"]).inc();
            tracing::error!(
                cert = %paths.cert_file.display(),
                key = %paths.key_file.display(),
                %error,
                trigger = why,
                "certificate reload rejected; keeping the served certificate"
            );
            false
        }
    }
}

/// For a config reload, before the new config is swapped in: `Ok(None)` keeps the served
/// pair, `Ok(Some)` is the new paths' pair to `apply` with the config, `Err` refuses the
/// whole config (TLS switched on or off, or the new pair is bad). Blocking (reads files).
pub fn for_new_config(running: &Config, new: &Config) -> Result<Option<LoadedCert>, String> {
    let paths = |c: &Config| {
        c.tls
            .as_ref()
            .map(|t| (t.cert_file.clone(), t.key_file.clone()))
    };
    match tls_change(paths(running).as_ref(), paths(new).as_ref()) {
        TlsChange::Off | TlsChange::SamePaths => Ok(None),
        TlsChange::Refused(why) => Err(format!("field `tls`: {why}")),
        TlsChange::NewPaths => {
            let tls = new.tls.as_ref().expect("NewPaths has tls");
            load(&read_bounded(tls)?, SystemTime::now())
                .map(Some)
                .map_err(|e| format!("field `{}`: {}", e.field, e.message))
        }
    }
}

/// The file-watching side of certificate reload, polled by `reload::watch`.
pub struct CertWatch {
    debounce: Debounce,
    paths: (PathBuf, PathBuf),
    /// A read that outlived `READ_TIMEOUT`; no new read starts until it returns.
    stalled: Option<JoinHandle<Snapshot>>,
}

impl CertWatch {
    /// `None` without TLS. Starts from the files as they are now; if they no longer hold the
    /// pair being served (changed since startup), the first settled poll tries them.
    pub async fn start(shared: &Arc<Process>) -> Option<CertWatch> {
        let tls = shared.live.load().config.tls.clone()?;
        let served = shared.tls.as_ref()?.resolver.current();
        let t = tls.clone();
        let snap = tokio::task::spawn_blocking(move || read(&t)).await.ok()?;
        let mut debounce = Debounce::default();
        if let Ok(pair) = load(&snap, SystemTime::now()) {
            if pair.key.cert.first() == served.cert.first() {
                shared
                    .metrics
                    .export_tls_certificate_expiry(Some(pair.not_after_unix() as i64));
                debounce = Debounce::loaded(snap);
            }
        }
        Some(CertWatch {
            debounce,
            paths: (tls.cert_file, tls.key_file),
            stalled: None,
        })
    }

    /// One poll (`forced` on SIGHUP): read, and load + apply when the debounce says so.
    pub async fn poll(&mut self, shared: &Arc<Process>, forced: bool) {
        let Some(tls) = shared.live.load().config.tls.clone() else {
            return;
        };
        let Some(snap) = self.read(&tls, shared).await else {
            return;
        };
        let paths = (tls.cert_file.clone(), tls.key_file.clone());
        if paths != self.paths {
            // A config reload switched files and already applied their pair.
            self.paths = paths;
            self.debounce.reset(snap);
            return;
        }
        if self.debounce.observe(&snap, forced) == Step::Attempt {
            let why = if forced { "sighup" } else { "file change" };
            apply(shared, load(&snap, SystemTime::now()), why);
        }
    }

    async fn read(&mut self, tls: &TlsConfig, shared: &Process) -> Option<Snapshot> {
        let mut handle = match self.stalled.take() {
            Some(h) if !h.is_finished() => {
                self.stalled = Some(h);
                return None;
            }
            Some(h) => h,
            None => {
                let t = tls.clone();
                tokio::task::spawn_blocking(move || read(&t))
            }
        };
        match tokio::time::timeout(READ_TIMEOUT, &mut handle).await {
            Ok(r) => r.ok(),
            Err(_) => {
                shared
                    .metrics
                    .tls_certificate_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(
                    cert = %tls.cert_file.display(),
                    timeout_ms = READ_TIMEOUT.as_millis() as u64,
                    "certificate reload rejected; keeping the served certificate: reading the files timed out"
                );
                self.stalled = Some(handle);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::tls::cert::test_certs::leaf;
    use rcgen::KeyPair;

    fn snap(cert: FileRead, key: FileRead) -> Snapshot {
        Snapshot {
            cert,
            key,
            published_in: None,
        }
    }

    #[test]
    fn errors_point_at_the_field_to_fix() {
        let k = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let cert = leaf(&k, 2020, 2090).into_bytes();
        let key = k.serialize_pem().into_bytes();
        let now = SystemTime::now();
        let gone = || Err::<Vec<u8>, _>("cannot read /x: No such file".to_string());
        // Ok = loads; Err((field, message contains)).
        type Want = Result<&'static str, (&'static str, &'static str)>;
        let cases: Vec<(&str, Snapshot, Want)> = vec![
            ("good pair", snap(Ok(cert.clone()), Ok(key.clone())), Ok("")),
            (
                "cert unreadable",
                snap(gone(), Ok(key.clone())),
                Err(("tls.cert_file", "cannot read")),
            ),
            (
                "key unreadable",
                snap(Ok(cert.clone()), gone()),
                Err(("tls.key_file", "cannot read")),
            ),
            (
                "both unreadable: the cert first",
                snap(gone(), gone()),
                Err(("tls.cert_file", "cannot read")),
            ),
            (
                "key file holds a cert",
                snap(Ok(cert.clone()), Ok(cert.clone())),
                Err(("tls.key_file", "no PEM private key")),
            ),
            (
                "cert file holds a key",
                snap(Ok(key.clone()), Ok(key.clone())),
                Err(("tls.cert_file", "no PEM CERTIFICATE")),
            ),
            (
                "empty files",
                snap(Ok(vec![]), Ok(vec![])),
                Err(("tls.cert_file", "no PEM CERTIFICATE")),
            ),
            (
                "binary junk",
                snap(Ok(vec![0xff; 4096]), Ok(vec![0; 64])),
                Err(("tls.cert_file", "")),
            ),
            (
                "key of another certificate",
                snap(Ok(cert.clone()), Ok(other.serialize_pem().into_bytes())),
                Err(("tls.cert_file", "does not match")),
            ),
            (
                "expired",
                snap(Ok(leaf(&k, 2001, 2010).into_bytes()), Ok(key.clone())),
                Err(("tls.cert_file", "expired")),
            ),
        ];
        for (name, s, want) in cases {
            match (load(&s, now), want) {
                (Ok(_), Ok(_)) => {}
                (Err(e), Err((field, text))) => {
                    assert_eq!(e.field, field, "{name}: {e}");
                    assert!(e.message.contains(text), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
