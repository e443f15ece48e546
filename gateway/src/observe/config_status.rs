//! What `/limits` and the config metrics say about the loaded config: its path, the
//! SHA-256 of its bytes, when it was loaded, and how the last reload went.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sha2::{Digest, Sha256};

/// How one reload attempt ended (`/limits`' `last_reload.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Rejected,
}

/// Hex SHA-256 of a config file's bytes; empty when unreadable.
pub fn file_sha256(path: &Path) -> String {
    std::fs::read(path).map_or_else(|_| String::new(), |b| sha256_hex(&b))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastReload {
    /// `applied`, `rejected` or `unchanged` (a valid reload of the same bytes).
    pub result: &'static str,
    pub at: SystemTime,
    /// `file:line: field …` for a rejected reload.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub last_reload: Option<LastReload>,
}

pub struct ConfigStatus {
    state: Mutex<Snapshot>,
    last_reload_successful: IntGauge,
    info: IntGaugeVec,
    /// `gateway_limit_resets_total{policy}`.
    pub resets: IntCounterVec,
}

impl ConfigStatus {
    /// Registers the metrics; `sha256` is the config loaded at start.
    pub fn new(registry: &Registry, sha256: String) -> ConfigStatus {
        let last_reload_successful = IntGauge::new(
            "gateway_config_last_reload_successful",
            "1 if the last config reload was applied or unchanged (or none was tried), 0 if rejected.",
        )
        .expect("valid metric");
        let info = IntGaugeVec::new(
            Opts::new(
                "gateway_config_info",
                "The loaded config: 1 for its sha256 (replicas of one fleet show one value).",
            ),
            &["sha256"],
        )
        .expect("valid metric");
        let resets = IntCounterVec::new(
            Opts::new(
                "gateway_limit_resets_total",
                "Operator resets of one key's rate-limit bucket (POST /limits/reset), by policy.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        for m in [
            Box::new(last_reload_successful.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(info.clone()),
            Box::new(resets.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        last_reload_successful.set(1);
        info.with_label_values(&[&sha256]).set(1);
        ConfigStatus {
            state: Mutex::new(Snapshot {
                sha256,
                loaded_at: SystemTime::now(),
                last_reload: None,
            }),
            last_reload_successful,
            info,
            resets,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a reload attempt; `sha256` is the hash of the bytes it read.
    pub fn reloaded(&self, result: ReloadResult, sha256: String, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        let result = match result {
            ReloadResult::Rejected => "rejected",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Applied if sha256 == s.sha256 => "unchanged",
            ReloadResult::Applied => "applied",
        };
        if result == "applied" {
            self.info.reset();
            self.info.with_label_values(&[&sha256]).set(1);
            s.sha256 = sha256;
            s.loaded_at = now;
        }
        self.last_reload_successful
            .set(i64::from(result != "rejected"));
        s.last_reload = Some(LastReload {
            result,
            at: now,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_results_table() {
        let r = Registry::new();
        let s = ConfigStatus::new(&r, "aa".into());
        #[rustfmt::skip]
        let steps = [
            (ReloadResult::Applied, "aa", None, "unchanged", "aa", 1),
            (ReloadResult::Applied, "bb", None, "applied", "bb", 1),
            (ReloadResult::Rejected, "cc", Some("f.yaml:3: field `x`: bad"), "rejected", "bb", 0),
            (ReloadResult::Unchanged, "bb", None, "unchanged", "bb", 1),
        ];
        for (result, sha, error, want, loaded, ok) in steps {
            s.reloaded(result, sha.into(), error.map(String::from));
            let snap = s.snapshot();
            let last = snap.last_reload.unwrap();
            assert_eq!((last.result, snap.sha256.as_str()), (want, loaded));
            assert_eq!(last.error.as_deref(), error);
            assert_eq!(s.last_reload_successful.get(), ok);
            assert_eq!(s.info.with_label_values(&[loaded]).get(), 1);
        }
        assert_eq!(
            s.info.with_label_values(&["aa"]).get(),
            0,
            "old hash dropped"
        );
        assert_eq!(sha256_hex(b"").len(), 64);
    }
}
