//! `admin:` as operators write it: who may see clients or change limits on the admin
//! port, and how much the top-refusals view remembers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::admit::limits::top::{DEFAULT_TOP_KEYS, DEFAULT_TOP_WINDOW};
use crate::config::invalid::Invalid;

const MIN_TOP_WINDOW: Duration = Duration::from_secs(60);
const MAX_TOP_WINDOW: Duration = Duration::from_secs(3600);
const TOP_KEYS: std::ops::RangeInclusive<usize> = 10..=10_000;
/// A shorter token is too easy to guess to guard a reset.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token (one line) for the admin endpoints that show clients or change state;
    /// absent: those endpoints answer 403. Re-read on every reload.
    pub token_file: Option<PathBuf>,
    /// How far back `/limits/top` looks (1m to 1h).
    #[serde(deserialize_with = "crate::config::duration")]
    #[schemars(schema_with = "crate::config::field_schema::duration")]
    pub top_window: Duration,
    /// Heaviest refused keys remembered per policy (10 to 10000).
    #[schemars(range(min = 10, max = 10000))]
    pub top_keys: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_file: None,
            top_window: DEFAULT_TOP_WINDOW,
            top_keys: DEFAULT_TOP_KEYS,
        }
    }
}

impl AdminConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(MIN_TOP_WINDOW..=MAX_TOP_WINDOW).contains(&self.top_window) {
            return Err(Invalid::new("admin.top_window", "must be 1m to 1h"));
        }
        if !TOP_KEYS.contains(&self.top_keys) {
            return Err(Invalid::new("admin.top_keys", "must be 10 to 10000"));
        }
        Ok(())
    }

    /// The token from `token_file` (blocking read: config load only); `None` when unset.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        read_token(path).map(Some)
    }
}

fn read_token(path: &Path) -> Result<String, String> {
    let at = |m: String| format!("admin.token_file {}: {m}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
    let token = text.trim_end_matches(['\r', '\n']);
    if token.len() < MIN_TOKEN_LEN || token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(at(format!(
            "must be one line of at least {MIN_TOKEN_LEN} printable ASCII characters"
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AdminConfig, String> {
        let c: AdminConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate()
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        Ok(c)
    }

    #[test]
    fn defaults_and_validation_table() {
        assert_eq!(parse("{}").unwrap(), AdminConfig::default());
        #[rustfmt::skip]
        let cases: &[(&str, Result<(), &str>)] = &[
            ("{top_window: 1m, top_keys: 10}", Ok(())),
            ("{top_window: 1h, top_keys: 10000}", Ok(())),
            ("{token_file: /run/secrets/admin_token}", Ok(())),
            ("{top_window: 59s}", Err("admin.top_window")),
            ("{top_window: 61m}", Err("admin.top_window")),
            ("{top_window: soon}", Err("not a duration")),
            ("{top_window: 0s}", Err("0")),
            ("{top_keys: 9}", Err("admin.top_keys")),
            ("{top_keys: 10001}", Err("admin.top_keys")),
            ("{top_keys: -1}", Err("invalid")),
            ("{token: x}", Err("unknown field")),
        ];
        for (yaml, want) in cases {
            match (parse(yaml), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.contains(w), "{yaml}: {e}"),
                (got, _) => panic!("{yaml}: {got:?}"),
            }
        }
    }

    #[test]
    fn token_file_table() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&[u8], Result<&str, &str>)] = &[
            (b"0123456789abcdef\n", Ok("0123456789abcdef")),
            (b"0123456789abcdef\r\n", Ok("0123456789abcdef")),
            (b"short\n", Err("at least 16")),
            (b"", Err("at least 16")),
            (b"0123456789 abcdef\n", Err("printable")),
            (b"0123456789abcdef\nsecond line\n", Err("one line")),
        ];
        for (i, (bytes, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("t{i}"));
            std::fs::write(&path, bytes).unwrap();
            let got = read_token(&path);
            match (&got, want) {
                (Ok(t), Ok(w)) => assert_eq!(t, w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                _ => panic!("{bytes:?}: {got:?}"),
            }
        }
        let missing = read_token(&dir.path().join("missing")).unwrap_err();
        assert!(missing.contains("admin.token_file") && missing.contains("cannot read"));
    }
}
