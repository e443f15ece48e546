//! A stub upstream that records every request that reaches it and answers by mode.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::http::owned_headers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StubMode {
    /// Answer 200 with the received request as JSON.
    Echo,
    /// Read the request, never answer.
    Stall,
    /// Answer after a delay.
    Slow(Duration),
}

/// A stub upstream that records what reached it.
pub struct Stub {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The body of each request in `requests`, as framed on the wire (chunks joined).
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    pub async fn start(mode: StubMode) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (reqs, conns, bods) = (requests.clone(), connections.clone(), bodies.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (reqs, bodies) = (reqs.clone(), bods.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: its head, then a Content-Length or chunked body. Bytes
                        // that are not a request (a stray last-chunk, say) are recorded as one
                        // with method "<unparsable>" and answered 400, as an app would.
                        let parsed = loop {
                            match parse_request(&buf) {
                                Ok(Some(p)) => break Ok(p),
                                Ok(None) => {}
                                Err(()) => break Err(()),
                            }
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let Ok(req) = parsed else {
                            let raw = String::from_utf8_lossy(&buf[..buf.len().min(64)]);
                            let record = serde_json::json!({
                                "method": "<unparsable>", "path": "", "headers": [],
                                "body_len": 0, "raw": raw,
                            });
                            reqs.lock().unwrap().push(record);
                            bodies.lock().unwrap().push(Vec::new());
                            let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                            let _ = s.write_all(bad).await;
                            return;
                        };
                        buf.drain(..req.consumed);
                        let record = serde_json::json!({
                            "method": req.method, "path": req.path, "headers": req.headers,
                            "body_len": req.body.len(), "chunked": req.chunked,
                        });
                        reqs.lock().unwrap().push(record.clone());
                        bodies.lock().unwrap().push(req.body);
                        match mode {
                            StubMode::Stall => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            StubMode::Slow(d) => tokio::time::sleep(d).await,
                            StubMode::Echo => {}
                        }
                        let body = record.to_string();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                            body.len(),
                            body
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Stub {
            addr,
            requests,
            bodies,
            connections,
            task,
        }
    }

    /// Headers of the last request the stub saw, lower-cased names, every line kept.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        let reqs = self.requests.lock().unwrap();
        record_headers(reqs.last().expect("stub saw no request"))
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// One request as read off the stub's connection.
struct Parsed {
    consumed: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

/// `Ok(None)`: more bytes needed; `Err`: not an HTTP/1.1 request.
fn parse_request(buf: &[u8]) -> Result<Option<Parsed>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let headers = owned_headers(req.headers, true);
    let chunked = header_values(&headers, "transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    let (body, body_end) = if chunked {
        match chunked_body(&buf[head_len..])? {
            Some((body, n)) => (body, head_len + n),
            None => return Ok(None),
        }
    } else {
        let len: usize = header_values(&headers, "content-length")
            .first()
            .map_or(Ok(0), |v| v.parse())
            .map_err(|_| ())?;
        if buf.len() < head_len + len {
            return Ok(None);
        }
        (buf[head_len..head_len + len].to_vec(), head_len + len)
    };
    Ok(Some(Parsed {
        consumed: body_end,
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        headers,
        body,
        chunked,
    }))
}

/// A chunked body (RFC 9112 §7.1) at the start of `buf`: the data and the bytes it took,
/// trailer section included; `Ok(None)` while incomplete.
fn chunked_body(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        at += size_len;
        if size == 0 {
            // Trailer lines up to the empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| ())?;
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(());
        }
        at += size + 2;
    }
}

/// The header lines of one record in `Stub::requests`, in order.
pub fn record_headers(record: &serde_json::Value) -> Vec<(String, String)> {
    record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}
