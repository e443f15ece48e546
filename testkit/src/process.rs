//! Child processes that die with the test, free loopback ports, bounded readiness waits,
//! and a look at what a process left on disk.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (released before return; the test binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready` every 25 ms for at most `limit`; true once it held.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Names of the entries in `dir`, sorted; empty when it does not exist.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A child process killed on drop, so a failing test leaves no process behind.
pub struct ChildGuard {
    pub child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. "-TERM") with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} failed");
    }

    /// SIGKILL and reap, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits (bounded, blocking) for exit; returns how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(Duration, ExitStatus)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.exited() {
                return Some((start.elapsed(), status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Like `wait_exit`, without blocking the async runtime (other tasks keep running).
    pub async fn wait_exit_async(&mut self, limit: Duration) -> Option<(Duration, ExitStatus)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.exited() {
                return Some((start.elapsed(), status));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
