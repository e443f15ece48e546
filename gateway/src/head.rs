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
        Ok(httparse::Status::Complete(n)) if unambiguous(&req, &buf[..n]) => HeadScan::Complete(n),
        Ok(httparse::Status::Complete(_)) => HeadScan::Invalid,
        Ok(httparse::Status::Partial) => HeadScan::Partial,
        Err(httparse::Error::TooManyHeaders) => HeadScan::TooManyHeaders,
        Err(_) => HeadScan::Invalid,
    }
}

/// Framing and addressing every parser on the path must agree on. Refused here
/// (400, connection closed) rather than by pingora, which would answer a bare
/// non-JSON 400 for some of these and quietly normalise (and forward) others:
/// bare LF line ends, Content-Length other than one run of digits, any
/// Transfer-Encoding other than a single `chunked` (and never beside a
/// Content-Length or in HTTP/1.0), `_` spellings of framing headers (some
/// servers fold them to `-`), several Host lines or userinfo in Host, CONNECT,
/// and request targets other than origin-form or absolute-form naming the Host.
fn unambiguous(req: &httparse::Request<'_, '_>, head: &[u8]) -> bool {
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return false;
    }
    let (mut cl, mut te, mut hosts) = (0, 0, 0);
    let mut host: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl += 1;
            // At most 19 digits: always fits a u64.
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return false;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return false;
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if value.contains(&b'@') {
                return false;
            }
            host = Some(value);
        } else if name.contains(&b'_') {
            let folded = |want: &[u8]| {
                name.len() == want.len()
                    && (name.iter().zip(want))
                        .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
            };
            if folded(b"content-length") || folded(b"transfer-encoding") || folded(b"host") {
                return false;
            }
        }
    }
    if cl > 1 || te > 1 || (cl > 0 && te > 0) || hosts > 1 {
        return false;
    }
    if te > 0 && req.version == Some(0) {
        return false;
    }
    if req.method == Some("CONNECT") {
        return false;
    }
    let target = req.path.unwrap_or("").as_bytes();
    if target.first() == Some(&b'/') {
        return true;
    }
    // Absolute-form: only with an authority equal to Host (what pingora would demand).
    let lower = target
        .get(..8)
        .map(<[u8]>::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with(b"http://") {
        &target[7..]
    } else if lower.starts_with(b"https://") {
        &target[8..]
    } else {
        return false;
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    !authority.is_empty() && !authority.contains(&b'@') && host.is_none_or(|h| h == authority)
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
        let mut cases: Vec<(&str, Vec<u8>, HeadScan)> = vec![
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
        // Ambiguous framing or addressing: refused before pingora or the app sees it.
        for (name, head, ok) in [
            (
                "chunked",
                "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
                true,
            ),
            (
                "one length",
                "POST / HTTP/1.1\r\nContent-Length:  42 \r\n\r\n",
                true,
            ),
            (
                "absolute-form = Host",
                "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
                true,
            ),
            ("bare LF", "GET / HTTP/1.1\nHost: a\n\n", false),
            (
                "TE and CL",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
            ),
            (
                "two lengths",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                false,
            ),
            (
                "length list",
                "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
                false,
            ),
            (
                "signed length",
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
                false,
            ),
            (
                "20-digit length",
                "POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
                false,
            ),
            (
                "gzip, chunked",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
            ),
            (
                "TE in 1.0",
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
            (
                "underscore TE",
                "POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n",
                false,
            ),
            (
                "two Hosts",
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                false,
            ),
            ("userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", false),
            (
                "CONNECT",
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                false,
            ),
            (
                "absolute-form != Host",
                "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
                false,
            ),
            ("asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", false),
        ] {
            let want = if ok {
                HeadScan::Complete(head.len())
            } else {
                HeadScan::Invalid
            };
            cases.push((name, head.as_bytes().to_vec(), want));
        }
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
