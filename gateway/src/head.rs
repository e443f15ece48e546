//! Reads one request head (request line + headers) under a total deadline and a
//! size cap, before pingora sees the connection: slow heads get 408, large ones
//! 431, unparsable ones 400 — answers pingora's own reader does not give.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout, timeout_at, Instant};

/// pingora's HTTP/1 parser accepts at most this many header fields.
pub const PARSER_MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadScan {
    /// The head ends at this byte offset (the body, if any, follows).
    Complete(usize),
    Partial,
    TooManyHeaders,
    Invalid,
}

/// Pure: is `buf` a complete, well-formed HTTP/1.x request head?
pub fn scan_head(buf: &[u8], max_headers: usize) -> HeadScan {
    let mut headers = [httparse::EMPTY_HEADER; PARSER_MAX_HEADERS];
    let max = max_headers.min(PARSER_MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..max]);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => HeadScan::Complete(n),
        Ok(httparse::Status::Partial) => HeadScan::Partial,
        Err(httparse::Error::TooManyHeaders) => HeadScan::TooManyHeaders,
        Err(_) => HeadScan::Invalid,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOutcome {
    /// `buf` holds a complete head (and maybe the start of the body).
    Ready,
    /// The client sent nothing and went away or stayed idle too long: close quietly.
    Idle,
    /// Started a head but did not finish it in time: 408.
    TimedOut,
    /// Head larger than the cap, or too many fields: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
    /// The connection broke mid-head: nothing to answer.
    Broken,
}

impl HeadOutcome {
    /// Label for `gateway_request_head_rejections_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            HeadOutcome::Ready => "ready",
            HeadOutcome::Idle => "idle",
            HeadOutcome::TimedOut => "timeout",
            HeadOutcome::TooLarge => "too_large",
            HeadOutcome::Malformed => "malformed",
            HeadOutcome::Broken => "broken",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// How long to wait for the first byte (keep-alive idle or a fresh connection's silence).
    pub idle: Duration,
    /// Total time from the first byte to the end of the head.
    pub head: Duration,
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Reads into `buf` until it holds a complete head or a limit is hit.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> HeadOutcome {
    // Wait for the first byte; silence here is an idle connection, not a slow request.
    if buf.is_empty() {
        match timeout(limits.idle, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Err(_) => return HeadOutcome::Idle,
            Ok(Err(_)) => return HeadOutcome::Broken,
            Ok(Ok(_)) => {}
        }
    }
    let deadline = Instant::now() + limits.head;
    loop {
        match scan_head(buf, limits.max_headers) {
            HeadScan::Complete(n) if n > limits.max_bytes => return HeadOutcome::TooLarge,
            HeadScan::Complete(_) => return HeadOutcome::Ready,
            HeadScan::TooManyHeaders => return HeadOutcome::TooLarge,
            HeadScan::Invalid => return HeadOutcome::Malformed,
            HeadScan::Partial if buf.len() > limits.max_bytes => return HeadOutcome::TooLarge,
            HeadScan::Partial => {}
        }
        // Never read far past the cap: the check above runs after every read.
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096.min(limits.max_bytes + 1024));
        }
        match timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return HeadOutcome::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return HeadOutcome::Broken,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn scan_table() {
        let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many_headers}\r\n");
        let cases: Vec<(&str, Vec<u8>, HeadScan)> = vec![
            (
                "simple",
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                HeadScan::Complete(27),
            ),
            (
                "with body",
                b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
                HeadScan::Complete(38),
            ),
            ("partial line", b"GET / HT".to_vec(), HeadScan::Partial),
            (
                "partial headers",
                b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(),
                HeadScan::Partial,
            ),
            ("empty", b"".to_vec(), HeadScan::Partial),
            (
                "http/1.0",
                b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                HeadScan::Complete(18),
            ),
            (
                "not http",
                b"\x16\x03\x01\x02\x00\x01\x00".to_vec(),
                HeadScan::Invalid,
            ),
            (
                "space in name",
                b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n".to_vec(),
                HeadScan::Invalid,
            ),
            (
                "obs-fold",
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n".to_vec(),
                HeadScan::Invalid,
            ),
            (
                "nul in value",
                b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n".to_vec(),
                HeadScan::Invalid,
            ),
            (
                "bad version",
                b"GET / HTTP/2.0\r\n\r\n".to_vec(),
                HeadScan::Invalid,
            ),
            (
                "too many headers",
                many.into_bytes(),
                HeadScan::TooManyHeaders,
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(scan_head(&input, 100), want, "{name}");
        }
    }

    fn limits() -> HeadLimits {
        HeadLimits {
            idle: Duration::from_millis(200),
            head: Duration::from_millis(300),
            max_bytes: 2048,
            max_headers: 100,
        }
    }

    async fn run(
        client: impl FnOnce(tokio::io::DuplexStream) -> tokio::task::JoinHandle<()>,
    ) -> HeadOutcome {
        let (server, peer) = tokio::io::duplex(64 * 1024);
        let task = client(peer);
        let mut server = server;
        let mut buf = BytesMut::with_capacity(4096);
        let out = read_head(&mut server, &mut buf, limits()).await;
        task.abort();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_times_out_with_total_deadline() {
        // One byte every 100 ms never trips a per-read timeout, but must trip the total one.
        let out = run(|mut c| {
            tokio::spawn(async move {
                for b in b"GET / HTTP/1.1\r\nHost: slowloris\r\n".iter() {
                    if c.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .await;
        assert_eq!(out, HeadOutcome::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_idle_not_timeout() {
        let out = run(|c| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(c);
            })
        })
        .await;
        assert_eq!(out, HeadOutcome::Idle);
    }

    #[tokio::test]
    async fn oversized_and_malformed_and_ready() {
        let big = run(|mut c| {
            tokio::spawn(async move {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nX-Big: ").await;
                let _ = c.write_all(&vec![b'a'; 4096]).await;
            })
        })
        .await;
        assert_eq!(big, HeadOutcome::TooLarge);
        let bad = run(|mut c| {
            tokio::spawn(async move {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n").await;
            })
        })
        .await;
        assert_eq!(bad, HeadOutcome::Malformed);
        let ok = run(|mut c| {
            tokio::spawn(async move {
                let _ = c.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n").await;
            })
        })
        .await;
        assert_eq!(ok, HeadOutcome::Ready);
        let broken = run(|mut c| {
            tokio::spawn(async move {
                let _ = c.write_all(b"GET /v1/x HT").await;
                drop(c);
            })
        })
        .await;
        assert_eq!(broken, HeadOutcome::Broken);
    }
}
