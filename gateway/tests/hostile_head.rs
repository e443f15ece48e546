//! Hostile request heads through the real gateway: every refusal is
//! ours (JSON, security headers, `X-Request-Id`, one access-log line, a metric), Host
//! per RFC 9112 §3.2, absolute-form forwarded with the target's authority as Host, and
//! tokens whose JOSE header has `crit` refused at the edge and at the app.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const CLIENT: &str = "127.0.0.3";

/// One request on its own connection (every request here says `Connection: close`, or is
/// refused and closed): reads to EOF, bounded, and parses the answer. A HEAD answer
/// has a Content-Length but no body, which `parse_response` would wait for.
async fn send(gw: &GatewayProc, request: &[u8]) -> Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = request.escape_ascii().to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(CLIENT.parse().unwrap(), 0))
        .unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: connection not closed within 10 s"))
        .ok();
    if let Some(r) = parse_response(&buf) {
        return r;
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut hs);
    match head.parse(&buf) {
        Ok(httparse::Status::Complete(_)) if request.starts_with(b"HEAD ") => Response {
            status: head.code.unwrap(),
            headers: (head.headers.iter())
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: Vec::new(),
        },
        _ => panic!("{what}: no answer, got {:?}", String::from_utf8_lossy(&buf)),
    }
}

/// Our response shape: security headers and a request id always; JSON for errors.
fn assert_ours(r: &Response, what: &str) -> String {
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}: {r:?}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert!(r.header("content-security-policy").is_some(), "{what}");
    assert!(
        !r.header("server")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("pingora"),
        "{what}: pingora's own answer"
    );
    // A HEAD answer has no body (RFC 9110 §9.3.2), so only its content type can say JSON.
    if r.status >= 400 && what.contains("\"HEAD ") {
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    } else if r.status >= 400 {
        let body: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{what}: {} with a non-JSON body {:?}", r.status, r.text()));
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
    }
    r.header("x-request-id")
        .unwrap_or_else(|| panic!("{what}: no X-Request-Id"))
        .to_string()
}

/// Access-log lines by request id, waiting (bounded) until `want` lines are there.
fn logged(gw: &GatewayProc, want: usize) -> HashMap<String, Vec<serde_json::Value>> {
    let start = Instant::now();
    loop {
        let lines = gw.proc.access_logs();
        if lines.len() >= want || start.elapsed() > Duration::from_secs(5) {
            let mut by_id: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
            for l in lines {
                let id = l["request_id"].as_str().unwrap_or_default().to_string();
                by_id.entry(id).or_default().push(l);
            }
            return by_id;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// xorshift64*: deterministic, so a failing case reproduces from its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "POST", "HEAD", "DELETE", "OPTIONS", "CONNECT", "get", "G@T", "PUT",
];
const PREFIXES: &[&str] = &[
    "/v1/",
    "/v1/",
    "/",
    "/admin",
    "http://gw/v1/",
    "HTTP://gw:80/v1/",
    "https://other.example/v1/",
    "http://[::1/",
    "http://[::1]:8080/v1/",
    "http:/\\gw/",
    "http://u@gw/",
    "http://gw\\x/",
    "*",
    "",
    "ftp://gw/",
    "//gw/v1/",
    "?q",
    "v1/",
];
const PIECES: &[&str] = &[
    "a", "docs", "x", "%", "%3C", "%zz", "<", ">", "`", "\"", "{", "}", "|", "^", "\\", "?", "#",
    "=", "&", "@", ":", "[", "]", "..", "/", "//", ";", "'", "~", "\t", "%00", "\u{e9}", "\x7f",
    " ",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "http/1.1",
    "HTTP/1.1 x",
];
const HOSTS: &[Option<&str>] = &[
    Some("gw"),
    Some("gw"),
    Some("gw"),
    Some("gw:8080"),
    Some("[::1]:80"),
    None,
    Some("bad host"),
    Some("u@gw"),
    Some(""),
    Some("gw:99999"),
    Some("[::1"),
];

fn fuzzed_request(rng: &mut Rng) -> Vec<u8> {
    let mut target = rng.pick(PREFIXES).to_string();
    for _ in 0..rng.next() % 6 {
        let piece = rng.pick(PIECES);
        target.push_str(piece);
    }
    let mut req = format!("{} {target} {}\r\n", rng.pick(METHODS), rng.pick(VERSIONS));
    if let Some(host) = rng.pick(HOSTS) {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    if rng.next().is_multiple_of(8) {
        req.push_str("Host: second\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// Request lines pingora would refuse, and many it would not, through the
/// real gateway. Every answer is ours and every request has exactly one access-log line.
#[tokio::test]
async fn fuzzed_request_lines_always_get_our_answer_and_one_log_line() {
    let stub = Stub::start(StubMode::Echo).await;
    // 400 connections from one address, one per case.
    let gw = GatewayProc::start(stub.addr, NO_CONN_CAPS);
    let mut rng = Rng(0x5eed_0013_cafe_f00d);
    let cases = 400;
    let mut ids = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for i in 0..cases {
        let request = fuzzed_request(&mut rng);
        let what = format!("case {i} {:?}", String::from_utf8_lossy(&request));
        let r = send(&gw, &request).await;
        ids.push((assert_ours(&r, &what), what));
        *statuses.entry(r.status).or_default() += 1;
    }
    let logs = logged(&gw, cases);
    for (id, what) in &ids {
        let lines = logs.get(id).map_or(0, Vec::len);
        assert_eq!(
            lines, 1,
            "{what}: {lines} access-log lines for request {id}"
        );
    }
    let total: usize = logs.values().map(Vec::len).sum();
    assert_eq!(
        total, cases,
        "access-log lines for requests we did not send"
    );
    let rejected: f64 = gw.metric_sum("gateway_request_head_rejections_total", &[]);
    let mut by_status: Vec<_> = statuses.into_iter().collect();
    by_status.sort();
    eprintln!(
        "request-line fuzz: {cases} requests, statuses {by_status:?}, head rejections {rejected}, \
         {} reached the upstream",
        stub.count()
    );
    assert!(
        rejected > 0.0 && stub.count() > 0,
        "the fuzz must hit both sides"
    );
}

/// The head classes pingora refuses with a bare 400, one example each, with their reason label.
#[tokio::test]
async fn targets_pingora_refuses_are_our_400_with_a_reason() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "");
    let cases: &[(&str, &str, &str)] = &[
        (
            "< in path",
            "GET /v1/<x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "target",
        ),
        (
            "> in path",
            "GET /v1/x> HTTP/1.1\r\nHost: gw\r\n\r\n",
            "target",
        ),
        (
            "backtick in path",
            "GET /v1/`x` HTTP/1.1\r\nHost: gw\r\n\r\n",
            "target",
        ),
        (
            "quote in query",
            "GET /v1/x?q=\" HTTP/1.1\r\nHost: gw\r\n\r\n",
            "target",
        ),
        (
            "<> in query",
            "GET /v1/x?q=<> HTTP/1.1\r\nHost: gw\r\n\r\n",
            "target",
        ),
        (
            "unclosed IPv6 authority",
            "GET http://[::1/v1/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "authority",
        ),
        (
            "ambiguous authority",
            "GET http:/\\gw/v1/x HTTP/1.1\r\nHost: gw\r\n\r\n",
            "authority",
        ),
    ];
    for (i, (name, request, reason)) in cases.iter().enumerate() {
        let r = send(&gw, request.as_bytes()).await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(r.json()["error"]["code"], "bad_request", "{name}");
        let id = assert_ours(&r, name);
        let logs = logged(&gw, i + 1);
        let line = &logs[&id];
        assert_eq!(line.len(), 1, "{name}");
        assert_eq!(line[0]["status"], 400, "{name}");
        assert_eq!(line[0]["error"], *reason, "{name}");
    }
    for reason in ["target", "authority"] {
        let n = cases.iter().filter(|c| c.2 == reason).count() as f64;
        let got = gw.metric_sum(
            "gateway_request_head_rejections_total",
            &[("reason", reason)],
        );
        assert_eq!(got, n, "{reason}");
    }
    assert_eq!(stub.count(), 0, "nothing reached the upstream");
}

/// Refused after the head was read: the access-log line keeps what the head said — method,
/// path (no query) and user_agent, clipped (256 bytes) and escaped as for any request.
#[tokio::test]
async fn refusals_after_the_head_log_method_path_and_user_agent() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "");
    let long_ua = "u".repeat(300);
    let cases: Vec<(&str, String, &str, &str, String)> = vec![
        (
            "target pingora refuses",
            "GET /v1/a<script> HTTP/1.1\r\nHost: gw\r\nUser-Agent: probe/1\r\n\r\n".into(),
            "GET",
            "/v1/a<script>",
            "probe/1".into(),
        ),
        (
            "query not logged, UA escaped",
            "POST /v1/x?q=<> HTTP/1.1\r\nHost: gw\r\nUser-Agent: a\"b\\c\r\n\r\n".into(),
            "POST",
            "/v1/x",
            "a\"b\\c".into(),
        ),
        (
            "duplicate Host, long UA clipped",
            format!("GET /v1/y HTTP/1.1\r\nHost: a\r\nHost: b\r\nUser-Agent: {long_ua}\r\n\r\n"),
            "GET",
            "/v1/y",
            "u".repeat(256),
        ),
        (
            "bare LF",
            "DELETE /v1/z HTTP/1.1\nHost: gw\nUser-Agent: lf\n\n".into(),
            "DELETE",
            "/v1/z",
            "lf".into(),
        ),
    ];
    for (i, (name, request, method, path, ua)) in cases.iter().enumerate() {
        let r = send(&gw, request.as_bytes()).await;
        assert_eq!(r.status, 400, "{name}");
        let id = assert_ours(&r, name);
        let logs = logged(&gw, i + 1);
        let line = &logs[&id][0];
        assert_eq!(line["method"], *method, "{name}: {line}");
        assert_eq!(line["path"], *path, "{name}: {line}");
        assert_eq!(line["user_agent"], ua.as_str(), "{name}: {line}");
    }
    assert_eq!(stub.count(), 0, "nothing reached the upstream");
}

/// Host per RFC 9112 §3.2, and absolute-form's authority winning.
#[tokio::test]
async fn host_rules_and_absolute_form_authority_wins() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "");
    let refused: &[(&str, &str, &str)] = &[
        ("no Host", "GET /v1/x HTTP/1.1\r\n\r\n", "host_missing"),
        (
            "no Host, absolute-form",
            "GET http://gw/v1/x HTTP/1.1\r\n\r\n",
            "host_missing",
        ),
        (
            "two Host lines",
            "GET /v1/x HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n",
            "host_duplicate",
        ),
        (
            "Host: bad host",
            "GET /v1/x HTTP/1.1\r\nHost: bad host\r\n\r\n",
            "host_invalid",
        ),
        (
            "empty Host",
            "GET /v1/x HTTP/1.1\r\nHost:\r\n\r\n",
            "host_invalid",
        ),
        (
            "Host with a path",
            "GET /v1/x HTTP/1.1\r\nHost: gw/x\r\n\r\n",
            "host_invalid",
        ),
        (
            "Host port out of range",
            "GET /v1/x HTTP/1.1\r\nHost: gw:65536\r\n\r\n",
            "host_invalid",
        ),
    ];
    for (i, (name, request, reason)) in refused.iter().enumerate() {
        let r = send(&gw, request.as_bytes()).await;
        assert_eq!(r.status, 400, "{name}");
        let id = assert_ours(&r, name);
        let logs = logged(&gw, i + 1);
        assert_eq!(logs[&id].len(), 1, "{name}");
        assert_eq!(logs[&id][0]["error"], *reason, "{name}");
        assert_eq!(
            gw.metric_sum(
                "gateway_request_head_rejections_total",
                &[("reason", reason)]
            ),
            refused[..=i].iter().filter(|c| c.2 == *reason).count() as f64,
            "{name}"
        );
    }
    assert_eq!(stub.count(), 0, "no refused request reached the upstream");

    // Absolute-form: the target's authority wins over Host; the upstream gets origin-form
    // and exactly one Host, the authority.
    let forwarded: &[(&str, &str, &str, &str)] = &[
        (
            "authority differs from Host",
            "GET http://docs.example:8080/v1/x?y=1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            "/v1/x?y=1",
            "docs.example:8080",
        ),
        (
            "authority equals Host",
            "GET http://gw/v1/y HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            "/v1/y",
            "gw",
        ),
        (
            "HTTP/1.0 absolute-form without Host",
            "GET HTTP://docs.example/v1/z HTTP/1.0\r\nConnection: close\r\n\r\n",
            "/v1/z",
            "docs.example",
        ),
    ];
    for (name, request, path, host) in forwarded {
        let before = stub.count();
        let r = send(&gw, request.as_bytes()).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_ours(&r, name);
        assert_eq!(stub.count(), before + 1, "{name}");
        let seen = stub.requests.lock().unwrap().last().cloned().unwrap();
        assert_eq!(seen["path"], *path, "{name}");
        let headers = stub.last_headers();
        assert_eq!(header_values(&headers, "host"), [*host], "{name}");
    }
}

/// `crit` (and the other refused header parameters) → 401 at the edge and
/// at the app, which share `keyring`; the same token with a plain header is accepted.
#[tokio::test]
async fn crit_and_key_carrying_headers_are_401_at_the_edge_and_at_the_app() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "");
    let app = AppProc::start(&gw.key_file());
    let good = mint_token_with_header(r#"{"typ":"JWT","alg":"HS256","kid":"test-1"}"#);
    let hostile = [
        r#"{"alg":"HS256","kid":"test-1","crit":["exp"]}"#,
        r#"{"alg":"HS256","kid":"test-1","crit":[]}"#,
        r#"{"alg":"HS256","kid":"test-1","b64":false,"crit":["b64"]}"#,
        r#"{"alg":"HS256","kid":"test-1","jku":"http://127.0.0.1:1/jwks"}"#,
        r#"{"alg":"HS256","kid":"test-1","jwk":{"kty":"oct","k":"AAAA"}}"#,
        r#"{"typ":"at+jwt","alg":"HS256","kid":"test-1"}"#,
    ];
    let auth = |t: &str| format!("Bearer {t}");
    let r = get_from(
        CLIENT,
        gw.addr,
        "/v1/documents",
        &[("authorization", &auth(&good))],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "control: a plain header verifies at the edge"
    );
    let r = get_from(
        CLIENT,
        app.addr,
        "/v1/documents",
        &[("authorization", &auth(&good))],
    )
    .await;
    assert_eq!(r.status, 200, "control: and at the app");
    let before = stub.count();
    for header in hostile {
        let token = mint_token_with_header(header);
        let edge = get_from(
            CLIENT,
            gw.addr,
            "/v1/documents",
            &[("authorization", &auth(&token))],
        )
        .await;
        assert_eq!(edge.status, 401, "edge, {header}");
        assert_ours(&edge, header);
        let at_app = get_from(
            CLIENT,
            app.addr,
            "/v1/documents",
            &[("authorization", &auth(&token))],
        )
        .await;
        assert_eq!(at_app.status, 401, "app, {header}");
    }
    assert_eq!(stub.count(), before, "no hostile token was forwarded");
    assert_eq!(
        gw.metric_sum(
            "gateway_auth_failures_total",
            &[("reason", "unsupported_header")]
        ),
        hostile.len() as f64
    );
}
