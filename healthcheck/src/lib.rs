//! The container HEALTHCHECK probe shared by `gateway healthcheck` and `app healthcheck`.
//! Runtime images have no shell or curl, so the binaries probe themselves.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// The `healthcheck` subcommand of `program`: success when `url` answers 200 within 2 s,
/// else a line on stderr and failure (what a container HEALTHCHECK reads).
pub fn command(program: &str, url: &str) -> ExitCode {
    if http_ok(url, Duration::from_secs(2)) {
        ExitCode::SUCCESS
    } else {
        eprintln!("{program}: unhealthy: {url}");
        ExitCode::FAILURE
    }
}

/// GETs a plain `http://host:port/path` URL; true only for a 200 within `timeout`
/// (per connect and per read).
pub fn http_ok(url: &str, timeout: Duration) -> bool {
    probe(url, timeout) == Some(true)
}

fn probe(url: &str, timeout: Duration) -> Option<bool> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    // One write: `write!` on a socket is a syscall (and a segment) per piece of the format.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    // "HTTP/1.x 200 " — the status code must be exactly 200, followed by its SP.
    let mut status_line = [0u8; 13];
    stream.read_exact(&mut status_line).ok()?;
    Some(matches!(&status_line, b"HTTP/1.1 200 " | b"HTTP/1.0 200 "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves one connection with `reply` and returns the URL to reach it. It reads the whole
    /// request head first: closing with unread bytes makes the kernel reset the connection,
    /// which can discard the reply before the probe reads it.
    fn serve_once(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let (mut head, mut buf) = (Vec::new(), [0u8; 512]);
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(reply);
            }
        });
        url
    }

    #[test]
    fn answers() {
        let t = Duration::from_secs(2);
        let cases: &[(&[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\n\r\n", true),
            (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            (b"HTTP/1.1 2000 Nonsense\r\n\r\n", false),
            (b"HTTP/1.1 201 Created\r\n\r\n", false),
            (b"HTTP/1.1 20", false), // short read
            (b"", false),
        ];
        for (reply, want) in cases {
            let url = serve_once(reply);
            assert_eq!(
                http_ok(&url, t),
                *want,
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn bad_urls_are_unhealthy() {
        let t = Duration::from_millis(500);
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        for url in [
            "https://127.0.0.1:1/healthz".to_string(),
            "127.0.0.1:9901/healthz".to_string(),
            "http://no-port/healthz".to_string(),
            format!("http://{closed}/healthz"),
        ] {
            assert!(!http_ok(&url, t), "{url}");
        }
    }
}
