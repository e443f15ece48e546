//! Service configuration: YAML file, strict keys, defaults, sanity checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the config file could not be loaded (shared wording: `edgekit::FileError`).
pub type ConfigError = edgekit::FileError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub users_file: PathBuf,
    pub token_key_file: PathBuf,
    #[serde(default = "default_token_ttl")]
    pub token_ttl_seconds: u64,
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_token_ttl() -> u64 {
    3600
}
fn default_max_upload() -> u64 {
    10 * 1024 * 1024
}
fn default_grace() -> u64 {
    10
}

impl Config {
    /// Relative paths inside the file stay relative to the process working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        edgekit::load_file(path, "config file", Config::from_yaml)
    }

    pub fn from_yaml(text: &str) -> Result<Config, String> {
        let config: Config = edgekit::parse_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        // Bounds catch typos (e.g. milliseconds instead of seconds) rather than police policy.
        if !(1..=7 * 24 * 3600).contains(&self.token_ttl_seconds) {
            return Err("token_ttl_seconds must be between 1 and 604800".into());
        }
        if self.max_upload_bytes == 0 {
            return Err("max_upload_bytes must be greater than 0".into());
        }
        if self.shutdown_grace_seconds > 3600 {
            return Err("shutdown_grace_seconds must be at most 3600".into());
        }
        for (key, path) in [
            ("data_dir", &self.data_dir),
            ("users_file", &self.users_file),
            ("token_key_file", &self.token_key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(format!("{key} must not be empty"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "data_dir: d\nusers_file: u.yaml\ntoken_key_file: k.yaml\n";

    #[test]
    fn defaults_apply() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.token_ttl_seconds, 3600);
        assert_eq!(c.max_upload_bytes, 10_485_760);
        assert_eq!(c.shutdown_grace_seconds, 10);
    }

    #[test]
    fn rejects_bad_files() {
        let cases = [
            ("unknown key", format!("{MINIMAL}colour: blue\n")),
            (
                "missing data_dir",
                "users_file: u\ntoken_key_file: k\n".into(),
            ),
            ("bad listen", format!("{MINIMAL}listen: nowhere\n")),
            ("zero ttl", format!("{MINIMAL}token_ttl_seconds: 0\n")),
            ("zero upload cap", format!("{MINIMAL}max_upload_bytes: 0\n")),
            ("negative", format!("{MINIMAL}max_upload_bytes: -1\n")),
            (
                "empty path",
                "data_dir: ''\nusers_file: u\ntoken_key_file: k\n".into(),
            ),
            ("not yaml", "{{{".into()),
        ];
        for (name, yaml) in cases {
            assert!(Config::from_yaml(&yaml).is_err(), "case {name}");
        }
    }
}
