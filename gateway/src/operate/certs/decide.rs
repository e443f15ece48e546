//! Certificate hot reload, the decisions: when a pair read from disk is worth loading, what a
//! new config's `tls` block means for the served pair, and when check-config warns about
//! expiry. No I/O here: `reload.rs` reads the files off the runtime and acts on the answers.

use std::path::PathBuf;
use std::time::Duration;

/// check-config warns, and TlsCertificateExpiringSoon fires, inside this window.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// One read of a file: its bytes, or why it could not be read (the message names the path).
pub type FileRead = Result<Vec<u8>, String>;

/// The certificate and key files as read together on one poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub cert: FileRead,
    pub key: FileRead,
    /// The one directory both files resolve into through symlinks, when they do: a
    /// Kubernetes Secret volume, whose update writes a new timestamped directory and swaps
    /// both files in with one rename. None for plain files or files in different places.
    pub published_in: Option<PathBuf>,
}

impl Snapshot {
    fn same_files(&self, other: &Snapshot) -> bool {
        self.cert == other.cert && self.key == other.key
    }

    /// Both files' bytes, or the first read error.
    pub fn pair(&self) -> Result<(&[u8], &[u8]), String> {
        match (&self.cert, &self.key) {
            (Ok(c), Ok(k)) => Ok((c, k)),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new, or a change that has not settled yet.
    Wait,
    /// Load this snapshot; whatever the outcome, it is not tried again until it changes.
    Attempt,
}

/// Debounces file changes: a pair is tried once its bytes were the same on two polls in a
/// row. Renewals write the certificate and the key one after the other; trying the first
/// poll that sees only one of them would refuse a mismatched pair, count an error and page
/// someone for a renewal that is fine. SIGHUP skips the wait (the operator says it is done),
/// and so does a pair that moved into a new directory together (`published_in`): the
/// kubelet's swap is atomic, so the pair is complete on the first poll that sees it.
#[derive(Debug, Default)]
pub struct Debounce {
    /// What was last tried (at startup: what the process loaded).
    tried: Option<Snapshot>,
    /// A change seen once, waiting for the next poll to confirm it.
    pending: Option<Snapshot>,
}

impl Debounce {
    /// Starts from the snapshot the running pair was loaded from.
    pub fn loaded(snapshot: Snapshot) -> Debounce {
        Debounce {
            tried: Some(snapshot),
            pending: None,
        }
    }

    /// One poll (or a SIGHUP when `forced`) that read `now`.
    pub fn observe(&mut self, now: &Snapshot, forced: bool) -> Step {
        if forced {
            self.pending = None;
            self.tried = Some(now.clone());
            return Step::Attempt;
        }
        if self.tried.as_ref().is_some_and(|t| t.same_files(now)) {
            // Back to what was tried (a change reverted before it settled), or the same
            // bytes republished in a new directory (another key of the Secret changed).
            self.pending = None;
            self.tried = Some(now.clone());
            return Step::Wait;
        }
        let swapped = now.published_in.is_some()
            && self.tried.as_ref().map(|t| &t.published_in) != Some(&now.published_in);
        if swapped {
            self.pending = None;
            self.tried = Some(now.clone());
            return Step::Attempt;
        }
        if self.pending.as_ref() == Some(now) {
            self.pending = None;
            self.tried = Some(now.clone());
            return Step::Attempt;
        }
        self.pending = Some(now.clone());
        Step::Wait
    }

    /// After a config reload changed the paths and loaded their pair itself.
    pub fn reset(&mut self, loaded: Snapshot) {
        *self = Debounce::loaded(loaded);
    }
}

/// What a config reload means for TLS, comparing the running and the new `tls` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsChange {
    /// Cleartext before and after.
    Off,
    /// Same files: the file watcher keeps handling their content.
    SamePaths,
    /// Other files: load their pair now; a bad pair refuses the whole config.
    NewPaths,
    /// The listener was bound with or without TLS at start; switching needs a restart.
    Refused(&'static str),
}

pub fn tls_change<T: PartialEq>(running: Option<&T>, new: Option<&T>) -> TlsChange {
    match (running, new) {
        (None, None) => TlsChange::Off,
        (Some(a), Some(b)) if a == b => TlsChange::SamePaths,
        (Some(_), Some(_)) => TlsChange::NewPaths,
        (None, Some(_)) => {
            TlsChange::Refused("adding `tls` needs a restart (the listener is cleartext)")
        }
        (Some(_), None) => {
            TlsChange::Refused("removing `tls` needs a restart (the listener serves TLS)")
        }
    }
}

/// Time left before `not_after` when it is inside the warning window (zero or more), else None.
/// Both are unix seconds; an expired certificate is refused by the loader before this.
pub fn expires_soon(not_after: i64, now: i64) -> Option<Duration> {
    let left = not_after.saturating_sub(now);
    (left < EXPIRY_WARNING.as_secs() as i64).then(|| Duration::from_secs(left.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(cert: &str, key: &str) -> Snapshot {
        let read = |s: &str| match s.strip_prefix("ERR:") {
            Some(e) => Err(e.to_string()),
            None => Ok(s.as_bytes().to_vec()),
        };
        // `c1@d1`: content c1 read through a symlink into directory d1.
        let (cert, dir) = match cert.split_once('@') {
            Some((c, d)) => (c, Some(PathBuf::from(d))),
            None => (cert, None),
        };
        Snapshot {
            cert: read(cert),
            key: read(key),
            published_in: dir,
        }
    }

    #[test]
    fn debounce_tries_a_change_once_it_has_settled() {
        // Polls "cert key step" (W = wait, A = attempt; a leading ! = SIGHUP; ERR:x = unreadable);
        // the process loaded c1 k1.
        let cases = [
            ("no change ever", "c1 k1 W; c1 k1 W"),
            (
                "renewal: cert, key a poll later, settled",
                "c2 k1 W; c2 k2 W; c2 k2 A; c2 k2 W",
            ),
            (
                "a change reverted before it settled is never tried",
                "c2 k1 W; c1 k1 W; c1 k1 W",
            ),
            (
                "a file that keeps changing (slow writer) waits",
                "c2 k1 W; c3 k1 W; c4 k1 W",
            ),
            (
                "a broken pair is tried once, not every second",
                "junk k1 W; junk k1 A; junk k1 W",
            ),
            (
                "a deleted file, then its return",
                "ERR:gone k1 W; ERR:gone k1 A; c1 k1 W; c1 k1 A",
            ),
            (
                "SIGHUP tries at once, unchanged or unsettled",
                "!c1 k1 A; !c2 k1 A; c2 k1 W",
            ),
            (
                "SIGHUP drops a pending change",
                "c2 k2 W; !c3 k3 A; c3 k3 W",
            ),
            ("swapped files are a change", "k1 c1 W; k1 c1 A"),
            // A kubelet volume: both files resolve into one directory per update.
            (
                "moved into symlinked dirs: tried at once",
                "c2@d2 k2 A; c2@d2 k2 W; c3@d3 k3 A; c4@d4 k4 A",
            ),
            (
                "same bytes in a new dir are no change",
                "c1@d2 k1 W; c1@d3 k1 W",
            ),
            (
                "a broken pair in a new dir is tried once",
                "junk@d2 k1 A; junk@d2 k1 W; c2@d3 k2 A",
            ),
            (
                "edited in place inside one dir: debounced",
                "c1@d2 k1 W; c2@d2 k1 W; c2@d2 k1 A",
            ),
        ];
        for (name, polls) in cases {
            let mut d = Debounce::loaded(snap("c1", "k1"));
            for (i, poll) in polls.split("; ").enumerate() {
                let (forced, poll) = match poll.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, poll),
                };
                let [c, k, want] = poll.split(' ').collect::<Vec<_>>()[..] else {
                    panic!("{name}: bad poll {poll:?}")
                };
                let want = if want == "A" {
                    Step::Attempt
                } else {
                    Step::Wait
                };
                assert_eq!(d.observe(&snap(c, k), forced), want, "{name}: poll {i}");
            }
        }
    }

    #[test]
    fn reset_adopts_a_pair_loaded_by_a_config_reload() {
        let mut d = Debounce::loaded(snap("c1", "k1"));
        assert_eq!(d.observe(&snap("c9", "k9"), false), Step::Wait);
        d.reset(snap("c9", "k9"));
        assert_eq!(d.observe(&snap("c9", "k9"), false), Step::Wait);
    }

    #[test]
    fn pair_gives_bytes_or_the_first_read_error() {
        assert_eq!(snap("c", "k").pair(), Ok((&b"c"[..], &b"k"[..])));
        assert_eq!(snap("ERR:cert gone", "k").pair(), Err("cert gone".into()));
        assert_eq!(snap("c", "ERR:key denied").pair(), Err("key denied".into()));
        assert_eq!(
            snap("ERR:cert gone", "ERR:key denied").pair(),
            Err("cert gone".into())
        );
    }

    #[test]
    fn config_reload_tls_changes() {
        let (a, b) = (("/c", "/k"), ("/c2", "/k"));
        assert_eq!(tls_change::<(&str, &str)>(None, None), TlsChange::Off);
        assert_eq!(tls_change(Some(&a), Some(&a)), TlsChange::SamePaths);
        assert_eq!(tls_change(Some(&a), Some(&b)), TlsChange::NewPaths);
        assert!(
            matches!(tls_change(None, Some(&a)), TlsChange::Refused(m) if m.contains("adding"))
        );
        assert!(
            matches!(tls_change(Some(&a), None), TlsChange::Refused(m) if m.contains("removing"))
        );
    }

    #[test]
    fn expiry_warning_window() {
        let day = 86_400;
        let now = 1_800_000_000;
        let cases: &[(i64, Option<u64>)] = &[
            (now + 90 * day, None),
            (now + 14 * day, None), // exactly 14 days: outside
            (now + 14 * day - 1, Some(14 * 86_400 - 1)), // just inside
            (now + 3 * day, Some(3 * 86_400)),
            (now, Some(0)),
            (now - day, Some(0)), // expired: zero, never negative
            (i64::MIN, Some(0)),  // hostile: no overflow
            (i64::MAX, None),
        ];
        for (not_after, want) in cases {
            assert_eq!(
                expires_soon(*not_after, now),
                want.map(Duration::from_secs),
                "not_after {not_after}"
            );
        }
        assert_eq!(
            expires_soon(0, i64::MIN),
            None,
            "hostile clock: no overflow"
        );
    }
}
