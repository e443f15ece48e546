//! A throwaway `redis-server` on loopback (and a delaying TCP proxy in front of one) for the
//! shared-limits tests.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{free_port, wait_until, ChildGuard};

/// A redis-server: loopback only, no persistence, killed on drop. `extra` arguments are
/// appended on every (re)start (ACL users, TLS ports, replicaof...).
pub struct Redis {
    pub child: Option<ChildGuard>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    pub fn start_with(extra: &[String]) -> Redis {
        let mut r = Redis::unstarted(free_port(), extra);
        r.spawn();
        r
    }

    /// Not running yet: `spawn` starts it.
    pub fn unstarted(port: u16, extra: &[String]) -> Redis {
        Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_vec(),
        }
    }

    pub fn spawn(&mut self) {
        let dir = self.dir.path().display().to_string();
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        args.extend(["--appendonly", "no", "--dir", &dir]);
        args.extend(self.extra.iter().map(String::as_str));
        self.child = Some(spawn_server(&args, &self.dir.path().join("redis.log")));
        assert!(
            wait_until(Duration::from_secs(10), || self.ping()),
            "redis-server did not start on port {}",
            self.port
        );
    }

    /// Any RESP answer to PING (`-NOAUTH` counts: the server is up).
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn signal(&self, sig: &str) {
        self.child.as_ref().expect("running").signal(sig);
    }

    /// `kill -9`, as a crash would.
    pub fn kill9(&mut self) {
        self.child.take().expect("running").kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// `redis-server args…` (a config file first, if any; `--sentinel` for a sentinel), its
/// output in `log`, killed on drop.
pub fn spawn_server(args: &[&str], log: &Path) -> ChildGuard {
    let child = Command::new("redis-server")
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard::new(child)
}

/// `redis-cli [client…] --cluster create nodes… --cluster-replicas N --cluster-yes`
/// (`client`: e.g. `--tls --cacert ca.pem`); panics with its output if it fails.
pub fn create_cluster(client: &[&str], nodes: &[String], replicas: usize) {
    let out = Command::new("redis-cli")
        .args(client)
        .args(["--cluster", "create"])
        .args(nodes)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A TCP proxy on loopback that delivers every chunk Redis sends `delay` late (so every
/// call, the handshake included, takes `delay` longer). Stops when dropped.
pub struct DelayProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(target: u16, delay: Duration) -> DelayProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, delay));
            }
        });
        DelayProxy { port, task }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: tokio::net::TcpStream, target: u16, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    // Replies keep their order: each chunk is due `delay` after it arrived.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sr.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    });
    while let Some((due, data)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if cw.write_all(&data).await.is_err() {
            break;
        }
    }
    reader.abort();
    up.abort();
}
