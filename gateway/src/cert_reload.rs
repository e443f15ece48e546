//! Certificate files → a checked pair: reads `tls.cert_file` and `tls.key_file` (blocking:
//! callers on the runtime use `spawn_blocking`), checks them with `tls::cert::load_pair`, and
//! says which config field an error belongs to. Shared by startup, `check-config` and the
//! hot-reload watcher (`reload.rs`); when to try is decided in `cert_watch`.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use crate::cert_watch::{FileRead, Snapshot};
use crate::config::{locate_field, Config, ConfigError, TlsConfig};
use crate::tls::cert::{load_pair, CertError, LoadedCert};

/// Reads both files now. Errors name the file, so a log line says what to fix.
pub fn read(tls: &TlsConfig) -> Snapshot {
    let one = |p: &Path| -> FileRead {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    Snapshot {
        cert: one(&tls.cert_file),
        key: one(&tls.key_file),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::cert::test_certs::leaf;
    use rcgen::KeyPair;

    fn snap(cert: FileRead, key: FileRead) -> Snapshot {
        Snapshot { cert, key }
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
