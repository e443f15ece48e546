//! A raw HTTP/1.1 client (chosen 127.x source address, exact bytes) and a response parser.

use std::io::{Read, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Parsed header lines as owned `(name, value)` pairs, names lower-cased when asked.
pub fn owned_headers(headers: &[httparse::Header<'_>], lowercase: bool) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let name = if lowercase {
                h.name.to_ascii_lowercase()
            } else {
                h.name.to_string()
            };
            (name, String::from_utf8_lossy(h.value).into_owned())
        })
        .collect()
}

/// Parses one response from raw bytes (Content-Length, chunked, or until EOF).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers = owned_headers(resp.headers, false);
    let status = resp.code?;
    let rest = &raw[n..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        let mut r = rest;
        loop {
            let line_end = r.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&r[..line_end]).ok()?.trim(), 16).ok()?;
            r = &r[line_end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(r.get(..size)?);
            r = r.get(size + 2..)?;
        }
        body
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes from `local` (a 127.x address) and reads the response until
/// the server closes or a complete response arrived. Bounded by `limit`.
pub async fn raw_request(
    local: IpAddr,
    server: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> std::io::Result<Response> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_response(&buf) {
                let complete =
                    r.header("content-length").is_some() || r.header("transfer-encoding").is_some();
                if complete {
                    return Ok::<_, std::io::Error>(Some(r));
                }
            }
        }
        Ok(None)
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => parse_response(&buf).ok_or_else(|| {
            std::io::Error::other(format!("no response: {:?}", String::from_utf8_lossy(&buf)))
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "response timed out",
        )),
    }
}

/// Blocking GET for readiness polling from sync code.
pub fn get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf).ok_or_else(|| std::io::Error::other("bad response"))
}

/// Reads until the peer closes, an error, or `limit` passes; returns the bytes read.
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parse_response_table() {
        /// (raw bytes, Some((status, body)) or None for incomplete/garbage)
        type Case<'a> = (&'a [u8], Option<(u16, &'a [u8])>);
        let cases: &[Case] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi", Some((200, b"hi"))),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", Some((404, b""))),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                Some((200, b"abcde")),
            ),
            (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil eof", Some((200, b"until eof"))),
            // Incomplete: head not finished, body shorter than declared, chunk cut short.
            (b"HTTP/1.1 200 OK\r\ncontent-len", None),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", None),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", None),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", None),
            (b"not http at all\r\n\r\n", None),
        ];
        for (raw, want) in cases {
            let got = parse_response(raw).map(|r| (r.status, r.body));
            let want = want.map(|(s, b)| (s, b.to_vec()));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(raw));
        }
    }
}
