//! Hot reload: on SIGHUP or when the config or key file's content changes, parse
//! and validate; swap in the new config atomically only if it is valid. The TLS
//! certificate pair is watched the same way (`certs::CertWatch`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::operate::certs::{self, CertWatch};
use crate::state::{Live, Process};

/// Why polling and not inotify: editors replace files by rename and a
/// single-file bind mount pins the old inode, so events get lost; comparing
/// content once a second always sees what the process would read.
pub use crate::observe::config_status::ReloadResult;

const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One reload attempt. The running config is replaced only by a valid one.
pub fn reload(shared: &Process) -> ReloadResult {
    let old = shared.live.load_full();
    let sha256 = crate::observe::config_status::file_sha256(&shared.config_path);
    // A config that names other certificate files brings their pair, or is refused whole.
    let result = Config::load(&shared.config_path)
        .map_err(|e| e.to_string())
        .and_then(|config| Live::build(config, Some(&old)))
        .and_then(|live| {
            certs::for_new_config(&old.config, &live.config)
                .map(|pair| (live, pair))
                .map_err(|e| format!("{}: {e}", shared.config_path.display()))
        });
    match result {
        Ok((live, pair)) => {
            shared.live.store(Arc::new(live));
            if let Some(pair) = pair {
                certs::apply(shared, Ok(pair), "config");
            }
            shared
                .metrics
                .config_reloads
                .with_label_values(&["ok"])
                .inc();
            tracing::info!(config = %shared.config_path.display(), "config reloaded");
            shared.status.reloaded(ReloadResult::Applied, sha256, None);
            ReloadResult::Applied
        }
        Err(error) => {
            shared
                .metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(config = %shared.config_path.display(), %error, "config reload rejected; keeping the running config");
            shared
                .status
                .reloaded(ReloadResult::Rejected, sha256, Some(error));
            ReloadResult::Rejected
        }
    }
}

/// Each watched file's path and content (None when unreadable).
fn fingerprint(paths: &[&Path]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    paths
        .iter()
        .map(|p| (p.to_path_buf(), std::fs::read(p).ok()))
        .collect()
}

/// Watches for SIGHUP and content changes until the process exits.
pub async fn watch(shared: Arc<Process>) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload by file change only");
            return;
        }
    };
    let watched = |shared: &Process| {
        let live = shared.live.load();
        let (key_file, token_file) = (
            live.config.token_key_file.clone(),
            live.config.admin.token_file.clone(),
        );
        let mut paths = vec![shared.config_path.as_path(), key_file.as_path()];
        paths.extend(token_file.as_deref());
        fingerprint(&paths)
    };
    let mut last = {
        let s = shared.clone();
        tokio::task::spawn_blocking(move || watched(&s))
            .await
            .unwrap_or_default()
    };
    let mut cert_watch = CertWatch::start(&shared).await;
    loop {
        let hangup = tokio::select! {
            _ = hup.recv() => {
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || reload(&s)).await;
                true
            }
            _ = tokio::time::sleep(POLL_INTERVAL) => false,
        };
        if let Some(c) = cert_watch.as_mut() {
            c.poll(&shared, hangup).await;
        }
        let s = shared.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || watched(&s)).await else {
            continue;
        };
        if now != last {
            last = now;
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&s)).await;
            // The reload may have switched key files: watch a new one from its content now.
            // A file whose path is unchanged keeps its pre-reload content here, so an edit
            // written while the reload ran is still a change on the next poll (re-reading
            // everything here lost such an edit).
            let s = shared.clone();
            if let Ok(fp) = tokio::task::spawn_blocking(move || watched(&s)).await {
                for (old, new) in last.iter_mut().zip(fp) {
                    if old.0 != new.0 {
                        *old = new;
                    }
                }
            }
        }
    }
}
