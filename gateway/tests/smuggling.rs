//! Request smuggling and parsing: ambiguous framing, obs-fold, bare LF,
//! oversized request lines and heads. A real gateway in front of a strict
//! recording upstream that parses every request it gets (Content-Length and
//! chunked) and flags ambiguous framing. For each hostile request we assert the
//! client's answer (status, JSON error body, connection closed when framing was
//! ambiguous, never a second response) and exactly what reached the upstream.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const CLIENT: &str = "127.0.0.3";

/// One request as the upstream parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
    /// Framing the upstream would have to guess about (a bug if ever set).
    ambiguous: Option<String>,
}

/// A strict HTTP/1.1 upstream: CRLF only, one Content-Length or chunked, never both.
struct StrictUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    raw_bytes: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StrictUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

/// Decodes a complete chunked body at the start of `buf`: (body, bytes used).
/// `Err` when the framing is not strict RFC 9112 chunked.
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        if line.contains(&b'\n') {
            return Err("bare LF in chunk size line".into());
        }
        let size_hex = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_str = std::str::from_utf8(size_hex).map_err(|_| "non-ASCII chunk size")?;
        if size_str.is_empty() || !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("bad chunk size {size_str:?}"));
        }
        let size = usize::from_str_radix(size_str, 16).map_err(|e| e.to_string())?;
        at += eol + 2;
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                let Some(eol) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// Parses one request from `buf`: Ok(None) = need more bytes.
fn parse_strict(buf: &[u8]) -> Result<Option<(Seen, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..end + 4];
    let mut ambiguous = Vec::new();
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        ambiguous.push("bare LF in head".to_string());
    }
    let mut hs = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        other => return Err(format!("upstream could not parse head: {other:?}")),
    }
    let mut cls = Vec::new();
    let mut tes = Vec::new();
    let mut hosts = 0;
    for h in req.headers.iter() {
        let folded = h.name.to_ascii_lowercase().replace('_', "-");
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        match folded.as_str() {
            "content-length" if h.name.eq_ignore_ascii_case("content-length") => cls.push(value),
            "transfer-encoding" if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                tes.push(value)
            }
            "content-length" | "transfer-encoding" => {
                ambiguous.push(format!("framing header spelled {:?}", h.name))
            }
            "host" => hosts += 1,
            _ => {}
        }
    }
    if hosts > 1 {
        ambiguous.push("several Host lines".into());
    }
    if !cls.is_empty() && !tes.is_empty() {
        ambiguous.push("Content-Length and Transfer-Encoding".into());
    }
    if cls.len() > 1 || tes.len() > 1 {
        ambiguous.push(format!("repeated framing headers {cls:?} {tes:?}"));
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let rest = &buf[head.len()..];
    let (body, used) = if let Some(te) = tes.last() {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(format!("unsupported transfer coding {te:?}"));
        }
        match decode_chunked(rest)? {
            Some(x) => x,
            None => return Ok(None),
        }
    } else if let Some(cl) = cls.last() {
        if cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad Content-Length {cl:?}"));
        }
        let n: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        if rest.len() < n {
            return Ok(None);
        }
        (rest[..n].to_vec(), n)
    } else {
        (Vec::new(), 0)
    };
    let seen = Seen {
        method,
        path,
        body,
        ambiguous: (!ambiguous.is_empty()).then(|| ambiguous.join("; ")),
    };
    Ok(Some((seen, head.len() + used)))
}

impl StrictUpstream {
    async fn start() -> StrictUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let raw_bytes = Arc::new(Mutex::new(0usize));
        let (seen2, raw2) = (seen.clone(), raw_bytes.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (seen, raw) = (seen2.clone(), raw2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        match parse_strict(&buf) {
                            Ok(Some((req, used))) => {
                                buf.drain(..used);
                                let body = format!(
                                    "{{\"path\":{:?},\"body_len\":{}}}",
                                    req.path,
                                    req.body.len()
                                );
                                seen.lock().unwrap().push(req);
                                let resp = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                if s.write_all(resp.as_bytes()).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                seen.lock().unwrap().push(Seen {
                                    method: String::new(),
                                    path: String::new(),
                                    body: Vec::new(),
                                    ambiguous: Some(e),
                                });
                                return;
                            }
                        }
                        let mut chunk = [0u8; 8192];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                *raw.lock().unwrap() += n;
                                buf.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                });
            }
        });
        StrictUpstream {
            addr,
            seen,
            raw_bytes,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// What the client observed for one raw request.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Response>,
    /// The gateway closed the connection after its answer.
    closed: bool,
}

/// Sends `request` on a fresh keep-alive connection and reads every response the
/// gateway writes until it closes or stays silent for `quiet`.
async fn exchange(gw: SocketAddr, request: &[u8], quiet: Duration) -> Exchange {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(CLIENT.parse().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(gw).await.unwrap();
    // The gateway may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let closed = loop {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
        // Split off every complete response.
        while let Some(r) = parse_response(&buf) {
            let Some(len) = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            else {
                break;
            };
            let head_end = find(&buf, b"\r\n\r\n").unwrap() + 4;
            if buf.len() < head_end + len {
                break;
            }
            buf.drain(..head_end + len);
            responses.push(r);
        }
    };
    if !buf.is_empty() {
        if let Some(r) = parse_response(&buf) {
            responses.push(r);
        }
    }
    Exchange { responses, closed }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// One JSON error with this status and code; the connection is closed; the
    /// upstream received nothing at all.
    Refused(u16, &'static str),
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    expect: Expect,
}

fn req(name: &'static str, head_lines: &str, body: &[u8], expect: Expect) -> Case {
    let mut request = head_lines.as_bytes().to_vec();
    request.extend_from_slice(body);
    Case {
        name,
        request,
        expect,
    }
}

const BAD: Expect = Expect::Refused(400, "bad_request");
const TOO_LARGE: Expect = Expect::Refused(431, "request_header_fields_too_large");

fn hostile_cases() -> Vec<Case> {
    let post = |framing: &str| format!("POST /v1/upload HTTP/1.1\r\nHost: gw\r\n{framing}\r\n");
    let chunked_body = b"5\r\nhello\r\n0\r\n\r\n";
    let smuggled = b"0\r\n\r\nGET /v1/admin HTTP/1.1\r\nHost: gw\r\n\r\n";
    vec![
        // Content-Length that two parsers could read differently.
        req(
            "two different Content-Length",
            &post("Content-Length: 5\r\nContent-Length: 6\r\n"),
            b"hello!",
            BAD,
        ),
        req(
            "Content-Length list",
            &post("Content-Length: 5, 6\r\n"),
            b"hello!",
            BAD,
        ),
        req(
            "identical Content-Length twice",
            &post("Content-Length: 5\r\nContent-Length: 5\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "negative Content-Length",
            &post("Content-Length: -1\r\n"),
            b"",
            BAD,
        ),
        req(
            "signed Content-Length",
            &post("Content-Length: +5\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "non-numeric Content-Length",
            &post("Content-Length: five\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "hex Content-Length",
            &post("Content-Length: 0x5\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "space inside Content-Length",
            &post("Content-Length: 5 0\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "Content-Length overflowing u64",
            &post("Content-Length: 99999999999999999999999\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "empty Content-Length",
            &post("Content-Length: \r\n"),
            b"",
            BAD,
        ),
        // Transfer-Encoding with Content-Length, or a coding we would not frame like the app.
        req(
            "TE chunked then CL",
            &post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"),
            smuggled,
            BAD,
        ),
        req(
            "CL then TE chunked",
            &post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
            smuggled,
            BAD,
        ),
        req(
            "CL with TE identity",
            &post("Content-Length: 5\r\nTransfer-Encoding: identity\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "TE chunked twice in one line",
            &post("Transfer-Encoding: chunked, chunked\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "TE chunked on two lines",
            &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "TE gzip, chunked",
            &post("Transfer-Encoding: gzip, chunked\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "TE chunked, identity",
            &post("Transfer-Encoding: chunked, identity\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "TE xchunked",
            &post("Transfer-Encoding: xchunked\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "TE chunked with a vertical tab",
            &post("Transfer-Encoding: chunked\x0b\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "TE in HTTP/1.0",
            "POST /v1/upload HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunked_body,
            BAD,
        ),
        req(
            "underscore Transfer_Encoding beside CL",
            &post("Content-Length: 5\r\nTransfer_Encoding: chunked\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "underscore Content_Length beside TE",
            &post("Transfer-Encoding: chunked\r\nContent_Length: 3\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "space before colon in TE",
            &post("Transfer-Encoding : chunked\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "space before colon in CL",
            &post("Content-Length : 5\r\n"),
            b"hello",
            BAD,
        ),
        // Line folding, bare LF / CR, control bytes.
        req(
            "obs-fold continuation",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n b\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "obs-fold hiding TE",
            &post("Content-Length: 5\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "obs-fold TE value",
            &post("Transfer-Encoding:\r\n chunked\r\n"),
            chunked_body,
            BAD,
        ),
        req(
            "bare LF line endings",
            "GET /v1/x HTTP/1.1\nHost: gw\n\n",
            b"",
            BAD,
        ),
        req(
            "bare LF inside the head",
            "GET /v1/x HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "bare LF before TE",
            &post("Content-Length: 5\nTransfer-Encoding: chunked\r\n"),
            b"hello",
            BAD,
        ),
        req(
            "bare LF ending the head",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\n\n",
            b"",
            BAD,
        ),
        req(
            "bare CR in a value",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-A: a\rb\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "NUL in a value",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "space in a header name",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX A: b\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "separator in a header name",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX(A): b\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "empty header name",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\n: b\r\n\r\n",
            b"",
            BAD,
        ),
        // Request lines.
        req(
            "double space in the request line",
            "GET  /v1/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            b"",
            BAD,
        ),
        req("HTTP/0.9 request line", "GET /v1/x\r\n\r\n", b"", BAD),
        req(
            "HTTP/2.0 on an HTTP/1 connection",
            "GET /v1/x HTTP/2.0\r\nHost: gw\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "unknown version",
            "GET /v1/x HTTP/1.2\r\nHost: gw\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "lower-case version",
            "GET /v1/x http/1.1\r\nHost: gw\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "TLS hello on the plain port",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03",
            b"",
            BAD,
        ),
        // Who is the request for?
        req(
            "two Host lines",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nHost: evil\r\n\r\n",
            b"",
            BAD,
        ),
        // An absolute-form authority disagreeing with Host is no longer refused: it wins
        // and is forwarded as the only Host (RFC 9112 §3.2.2), asserted by
        // hostile_head.rs `host_rules_and_absolute_form_authority_wins`. What stays
        // refused is an authority parsers could read two ways.
        req(
            "absolute-form with an ambiguous authority",
            "GET http:/\\evil.example/v1/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            b"",
            BAD,
        ),
        req(
            "userinfo in Host",
            "GET /v1/x HTTP/1.1\r\nHost: user@gw\r\n\r\n",
            b"",
            BAD,
        ),
    ]
}

fn size_cases(max_bytes: usize, max_headers: usize) -> Vec<Case> {
    let long_target = format!("/v1/{}", "a".repeat(max_bytes + 100));
    let line = format!("GET {long_target} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let big_value = format!(
        "GET /v1/x HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\n\r\n",
        "b".repeat(max_bytes)
    );
    let many: String = (0..=max_headers)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect();
    let many = format!("GET /v1/x HTTP/1.1\r\n{many}\r\n");
    vec![
        Case {
            name: "request line longer than the head cap",
            request: line.into_bytes(),
            expect: TOO_LARGE,
        },
        Case {
            name: "one header value as large as the head cap",
            request: big_value.into_bytes(),
            expect: TOO_LARGE,
        },
        Case {
            name: "one field over the field cap",
            request: many.into_bytes(),
            expect: TOO_LARGE,
        },
    ]
}

/// A request head of exactly `len` bytes (padding in one header).
fn head_of_len(len: usize) -> Vec<u8> {
    let base = "GET /v1/fits HTTP/1.1\r\nHost: gw\r\nX-Pad: \r\n\r\n".len();
    format!(
        "GET /v1/fits HTTP/1.1\r\nHost: gw\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(len - base)
    )
    .into_bytes()
}

const MAX_BYTES: usize = 4096;
const MAX_HEADERS: usize = 20;

async fn setup() -> (StrictUpstream, GatewayProc) {
    let up = StrictUpstream::start().await;
    let gw = GatewayProc::start(
        up.addr,
        &format!(
            "limits:\n  max_request_header_bytes: {MAX_BYTES}\n  max_request_headers: {MAX_HEADERS}\n  max_request_body_bytes: 65536\n"
        ),
    );
    (up, gw)
}

#[tokio::test]
async fn ambiguous_and_malformed_requests_get_a_clean_4xx_and_never_reach_the_app() {
    let (up, gw) = setup().await;
    let mut cases = hostile_cases();
    cases.extend(size_cases(MAX_BYTES, MAX_HEADERS));
    let mut failures = Vec::new();
    for case in &cases {
        let Expect::Refused(status, code) = case.expect;
        let ex = exchange(gw.addr, &case.request, Duration::from_secs(3)).await;
        let Some(first) = ex.responses.first() else {
            failures.push(format!(
                "{}: no response (closed: {})",
                case.name, ex.closed
            ));
            continue;
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&first.body).ok();
        let got_code = json
            .as_ref()
            .and_then(|j| j["error"]["code"].as_str())
            .unwrap_or("<not JSON>");
        if first.status != status || got_code != code {
            failures.push(format!(
                "{}: got {} {got_code} ({:?}), want {status} {code}",
                case.name,
                first.status,
                first.text()
            ));
        }
        if first.header("content-type") != Some("application/json")
            || first.header("x-request-id").is_none()
            || first.header("x-content-type-options") != Some("nosniff")
        {
            failures.push(format!(
                "{}: not the gateway's JSON error: {:?}",
                case.name, first.headers
            ));
        }
        if ex.responses.len() != 1 {
            failures.push(format!(
                "{}: {} responses (a smuggled request was answered)",
                case.name,
                ex.responses.len()
            ));
        }
        if !ex.closed {
            failures.push(format!(
                "{}: connection left open after ambiguous framing",
                case.name
            ));
        }
    }
    // Nothing at all reached the upstream: not one byte on any connection.
    let seen = up.seen();
    if !seen.is_empty() || *up.raw_bytes.lock().unwrap() != 0 {
        failures.push(format!("upstream received {seen:?}"));
    }
    assert_all_passed(&failures, cases.len());
    // Each refusal is counted and logged like any other answer.
    let refused = gw.metric_sum("http_requests_total", &[("status", "400")])
        + gw.metric_sum("http_requests_total", &[("status", "431")]);
    assert_eq!(refused, cases.len() as f64, "every refusal is counted");
    eprintln!(
        "smuggling: {} hostile requests refused, upstream untouched",
        cases.len()
    );
}

#[tokio::test]
async fn well_framed_requests_reach_the_app_exactly_as_framed() {
    let (up, gw) = setup().await;
    // The largest head the cap allows passes; one byte more does not.
    let ex = exchange(gw.addr, &head_of_len(MAX_BYTES), Duration::from_secs(2)).await;
    assert_eq!(ex.responses.first().map(|r| r.status), Some(200), "{ex:?}");
    let ex = exchange(gw.addr, &head_of_len(MAX_BYTES + 1), Duration::from_secs(2)).await;
    assert_eq!(ex.responses.first().map(|r| r.status), Some(431), "{ex:?}");
    // Exactly the field cap passes.
    let fields: String = (1..MAX_HEADERS).map(|i| format!("X-H{i}: v\r\n")).collect();
    let at_cap = format!("GET /v1/fields HTTP/1.1\r\nHost: gw\r\n{fields}\r\n");
    let ex = exchange(gw.addr, at_cap.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(ex.responses.first().map(|r| r.status), Some(200), "{ex:?}");

    // Three requests whose bodies look like framing or like requests. Each on its
    // own connection first: the upstream must see each exactly as the client framed it.
    let inner = b"GET /v1/hidden HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut one =
        b"POST /v1/one HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    one.extend_from_slice(format!("{:x}\r\n", inner.len()).as_bytes());
    one.extend_from_slice(inner);
    one.extend_from_slice(b"\r\n3;ext=1\r\nabc\r\n0\r\n\r\n");
    let two = b"POST /v1/two HTTP/1.1\r\nHost: gw\r\nContent-Length: 14\r\n\r\n0\r\n\r\nGET /v1/x"
        .to_vec();
    let three = b"GET /v1/three HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec();
    let mut one_body = inner.to_vec();
    one_body.extend_from_slice(b"abc");
    let want: Vec<(String, String, Vec<u8>)> = vec![
        ("POST".into(), "/v1/one".into(), one_body),
        (
            "POST".into(),
            "/v1/two".into(),
            b"0\r\n\r\nGET /v1/x".to_vec(),
        ),
        ("GET".into(), "/v1/three".into(), Vec::new()),
    ];
    let summary = |seen: &[Seen]| -> Vec<(String, String, Vec<u8>)> {
        seen.iter()
            .map(|s| (s.method.clone(), s.path.clone(), s.body.clone()))
            .collect()
    };
    for (request, want) in [&one, &two, &three].into_iter().zip(&want) {
        let before = up.seen().len();
        let ex = exchange(gw.addr, request, Duration::from_millis(500)).await;
        assert_eq!(ex.responses.len(), 1, "{ex:?}");
        assert_eq!(ex.responses[0].status, 200, "{ex:?}");
        assert_eq!(summary(&up.seen()[before..]), std::slice::from_ref(want));
    }
    // Then pipelined in one write. The gateway answers them in order or answers a
    // prefix and closes (it does not serve pipelined requests, which HTTP allows);
    // either way the upstream sees exactly the requests answered, framed the same.
    let before = up.seen().len();
    let pipeline = [one, two, three].concat();
    let ex = exchange(gw.addr, &pipeline, Duration::from_secs(2)).await;
    let answered = ex.responses.len();
    assert!(answered >= 1, "{ex:?}");
    assert!(ex.responses.iter().all(|r| r.status == 200), "{ex:?}");
    assert!(
        answered == 3 || ex.closed,
        "unanswered pipelined requests on an open connection"
    );
    assert_eq!(summary(&up.seen()[before..]), want[..answered]);
    let seen = up.seen();
    for s in &seen {
        assert_eq!(s.ambiguous, None, "upstream had to guess: {s:?}");
    }
    assert!(
        !seen
            .iter()
            .any(|s| s.path == "/v1/hidden" || s.path == "/v1/x"),
        "a body was parsed as a request"
    );
    eprintln!(
        "smuggling: pipelined 3 requests, {answered} answered, closed: {}",
        ex.closed
    );
}

#[tokio::test]
async fn broken_chunked_bodies_get_json_400_and_nothing_after_them_is_forwarded() {
    let (up, gw) = setup().await;
    let head = "POST /v1/chunks HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies: &[(&str, &[u8])] = &[
        ("chunk size not hex", b"zz\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size overflow",
            b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk longer than declared", b"3\r\nhello\r\n0\r\n\r\n"),
        ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after chunk size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare LF after chunk data", b"5\r\nhello\n0\r\n\r\n"),
        ("space before chunk size", b" 5\r\nhello\r\n0\r\n\r\n"),
    ];
    for (name, body) in bodies {
        let mut request = head.as_bytes().to_vec();
        request.extend_from_slice(body);
        request.extend_from_slice(b"GET /v1/after HTTP/1.1\r\nHost: gw\r\n\r\n");
        let ex = exchange(gw.addr, &request, Duration::from_secs(3)).await;
        // One JSON 400, never an answer to the request hidden after the broken body.
        assert_eq!(ex.responses.len(), 1, "{name}: {ex:?}");
        let r = &ex.responses[0];
        assert_eq!(r.status, 400, "{name}: {ex:?}");
        assert_eq!(r.json()["error"]["code"], "bad_request", "{name}");
        assert!(ex.closed, "{name}: connection left open");
    }
    // The app never receives a complete request built from a broken body, nor
    // the request after it (it may see a cut-off head, which it must discard).
    let seen = up.seen();
    assert!(seen.is_empty(), "upstream completed {seen:?}");
}
