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
        let (reqs, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read one request head + Content-Length body.
                        let (head_len, headers, method, path) = loop {
                            let mut hs = [httparse::EMPTY_HEADER; 128];
                            let mut req = httparse::Request::new(&mut hs);
                            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                                let headers = owned_headers(req.headers, true);
                                break (
                                    n,
                                    headers,
                                    req.method.unwrap().to_string(),
                                    req.path.unwrap().to_string(),
                                );
                            }
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let body_len: usize = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_len + body_len {
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_len + body_len);
                        let record = serde_json::json!({
                            "method": method, "path": path, "headers": headers, "body_len": body_len,
                        });
                        reqs.lock().unwrap().push(record.clone());
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
            connections,
            task,
        }
    }

    /// Headers of the last request the stub saw, lower-cased names, every line kept.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        let reqs = self.requests.lock().unwrap();
        let last = reqs.last().expect("stub saw no request");
        last["headers"]
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

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

pub fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}
