//! Reads one request head (request line + headers) under a total deadline and a
//! size cap, before pingora sees the connection: slow heads get 408, large ones
//! 431, unparsable ones 400 — answers pingora's own reader does not give.

use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::forward::request_log::Seen;

/// pingora's HTTP/1 parser accepts at most this many header fields.
pub const PARSER_MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadScan {
    /// The head ends at this byte offset (the body, if any, follows).
    Complete(usize),
    Partial,
    TooManyHeaders,
    Invalid(HeadRefusal),
}

/// Why a complete head is refused with 400. Each is one bounded `reason` label of
/// `gateway_request_head_rejections_total` and the access log's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// Not HTTP/1.x syntax at all (httparse refuses it).
    Malformed,
    /// A line ends in a bare LF.
    BareLf,
    /// Content-Length other than one run of digits, or more than one.
    ContentLength,
    /// Transfer-Encoding other than a single `chunked`, beside Content-Length, or in HTTP/1.0.
    TransferEncoding,
    /// `_` spelling of a framing or Host header (some servers fold it to `-`).
    UnderscoreFraming,
    /// HTTP/1.1 without Host (RFC 9112 §3.2).
    HostMissing,
    /// More than one Host line (RFC 9112 §3.2).
    HostDuplicate,
    /// Host is not `uri-host [":" port]`, or carries userinfo (RFC 9112 §3.2, RFC 9110 §4.2.4).
    HostInvalid,
    /// CONNECT: we are not a forward proxy.
    Method,
    /// A request target pingora's own parser refuses, non-ASCII bytes, asterisk-form,
    /// or a scheme other than http/https.
    Target,
    /// Absolute-form whose authority is empty, ambiguous (`http:/\h`), unparseable
    /// (`http://[::1/`) or carries userinfo.
    Authority,
}

impl HeadRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            HeadRefusal::Malformed => "malformed",
            HeadRefusal::BareLf => "bare_lf",
            HeadRefusal::ContentLength => "content_length",
            HeadRefusal::TransferEncoding => "transfer_encoding",
            HeadRefusal::UnderscoreFraming => "underscore_framing",
            HeadRefusal::HostMissing => "host_missing",
            HeadRefusal::HostDuplicate => "host_duplicate",
            HeadRefusal::HostInvalid => "host_invalid",
            HeadRefusal::Method => "method",
            HeadRefusal::Target => "target",
            HeadRefusal::Authority => "authority",
        }
    }

    /// Every value, for tests and for pre-registering metric labels.
    pub const ALL: [HeadRefusal; 11] = [
        HeadRefusal::Malformed,
        HeadRefusal::BareLf,
        HeadRefusal::ContentLength,
        HeadRefusal::TransferEncoding,
        HeadRefusal::UnderscoreFraming,
        HeadRefusal::HostMissing,
        HeadRefusal::HostDuplicate,
        HeadRefusal::HostInvalid,
        HeadRefusal::Method,
        HeadRefusal::Target,
        HeadRefusal::Authority,
    ];
}

/// Pure: is `buf` a complete, well-formed HTTP/1.x request head?
pub fn scan_head(buf: &[u8], max_headers: usize) -> HeadScan {
    // Uninitialised slots: httparse writes only those it fills, instead of this function
    // clearing all 256 (8 KiB) on every scan.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; PARSER_MAX_HEADERS];
    let max = max_headers.min(PARSER_MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers[..max]) {
        Ok(httparse::Status::Complete(n)) => match unambiguous(&req, &buf[..n]) {
            // `origin_form` adds a Host line: the forwarded head must stay within the cap too
            // (found by the `head` fuzz target: an HTTP/1.0 absolute-form head at the cap).
            Ok(Rewrite::AddsHost) if req.headers.len() >= max => HeadScan::TooManyHeaders,
            Ok(_) => HeadScan::Complete(n),
            Err(refusal) => HeadScan::Invalid(refusal),
        },
        Ok(httparse::Status::Partial) => HeadScan::Partial,
        Err(httparse::Error::TooManyHeaders) => HeadScan::TooManyHeaders,
        Err(_) => HeadScan::Invalid(HeadRefusal::Malformed),
    }
}

/// What `origin_form` will do to a head `unambiguous` passed.
enum Rewrite {
    None,
    ReplacesHost,
    AddsHost,
}

/// Framing and addressing every parser on the path must agree on. Refused here
/// (400, connection closed) rather than by pingora, which would answer a bare
/// non-JSON 400 for some of these and quietly normalise (and forward) others:
/// bare LF line ends, Content-Length other than one run of digits, any
/// Transfer-Encoding other than a single `chunked` (and never beside a
/// Content-Length or in HTTP/1.0), `_` spellings of framing headers (some
/// servers fold them to `-`), Host missing (HTTP/1.1), repeated or invalid,
/// CONNECT, and request targets other than origin-form or http(s) absolute-form.
/// Last, the target and Host go through pingora's own request-target parser and
/// authority checks, so nothing we pass can be refused by pingora with its bare 400.
fn unambiguous(req: &httparse::Request<'_, '_>, head: &[u8]) -> Result<Rewrite, HeadRefusal> {
    // memchr jumps from line end to line end instead of testing every byte of the head.
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return Err(HeadRefusal::BareLf);
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
                return Err(HeadRefusal::ContentLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadRefusal::TransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(value);
        } else if name.contains(&b'_') {
            let folded = |want: &[u8]| {
                name.len() == want.len()
                    && (name.iter().zip(want))
                        .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
            };
            if folded(b"content-length") || folded(b"transfer-encoding") || folded(b"host") {
                return Err(HeadRefusal::UnderscoreFraming);
            }
        }
    }
    if cl > 1 {
        return Err(HeadRefusal::ContentLength);
    }
    if te > 1 || (cl > 0 && te > 0) || (te > 0 && req.version == Some(0)) {
        return Err(HeadRefusal::TransferEncoding);
    }
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, with
    // more than one Host line, or with an invalid Host value (whatever the target form).
    if hosts > 1 {
        return Err(HeadRefusal::HostDuplicate);
    }
    match host {
        None if req.version == Some(1) => return Err(HeadRefusal::HostMissing),
        Some(value) if !valid_authority(value) => return Err(HeadRefusal::HostInvalid),
        _ => {}
    }
    let method = req.method.unwrap_or("");
    if method == "CONNECT" {
        return Err(HeadRefusal::Method);
    }
    let target = req.path.unwrap_or("").as_bytes();
    // RFC 3986 URIs are ASCII; pingora would forward other bytes verbatim (and log them lossily).
    if !target.is_ascii() {
        return Err(HeadRefusal::Target);
    }
    // What pingora will see after `origin_form` rewrote an absolute-form head.
    let (forwarded_target, forwarded_host, rewrite) = match split_target(target)? {
        Target::Origin => (target, host, Rewrite::None),
        Target::Absolute {
            authority,
            path_and_query,
        } => (
            path_and_query,
            Some(authority),
            if host.is_some() {
                Rewrite::ReplacesHost
            } else {
                Rewrite::AddsHost
            },
        ),
    };
    let v10 = req.version == Some(0);
    // The common head (origin-form, plain URI bytes, plain Host, a standard method) is one
    // pingora always accepts: skip building its RequestHeader to ask (~2 500 instructions
    // a request). `plain_origin_form_head` is checked against `pingora_accepts` in tests.
    if matches!(rewrite, Rewrite::None) && plain_origin_form_head(method, target, host) {
        return Ok(rewrite);
    }
    if !pingora_accepts(method, forwarded_target, forwarded_host, v10) {
        return Err(HeadRefusal::Target);
    }
    Ok(rewrite)
}

/// pingora's own parser on the same bytes (pingora-core's HTTP/1 `read_request` builds the
/// `RequestHeader` exactly so, then runs `validate_request_authority`): whatever it would
/// refuse with its bare 400 (`<`, `>`, `"`, `` ` ``, `{` in the target, ...) is ours to answer.
fn pingora_accepts(method: &str, target: &[u8], host: Option<&[u8]>, v10: bool) -> bool {
    let check = || -> pingora::Result<()> {
        let mut parsed =
            pingora::http::RequestHeader::build_no_case(method, rooted(target).as_ref(), Some(1))?;
        parsed.set_version(if v10 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
        if let Some(host) = host {
            parsed.insert_header(http::header::HOST, host)?;
        }
        pingora::protocols::http::authority::validate_request_authority(&parsed)
    };
    check().is_ok()
}

/// A head pingora's request-target parser and authority checks cannot refuse: a standard
/// method, an origin-form target of at most 8 000 bytes of unreserved, sub-delims, `:`, `@`,
/// `/`, `?` and `%` (no `#`, no bytes the `http` crate's URI parser refuses), and a Host (if
/// any; `valid_authority` passed it) without `@`. Anything else goes to `pingora_accepts`.
fn plain_origin_form_head(method: &str, target: &[u8], host: Option<&[u8]>) -> bool {
    const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let plain = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
                    | b'%'
            )
    };
    METHODS.contains(&method)
        && target.first() == Some(&b'/')
        && target.len() <= 8000
        && target.iter().all(|&b| plain(b))
        && host.is_none_or(|h| !h.contains(&b'@'))
}

/// `uri-host [":" port]` without userinfo (RFC 9112 §3.2, §3.2.2), parsed by the `http`
/// crate's `Authority` as pingora does for absolute-form targets.
fn valid_authority(value: &[u8]) -> bool {
    if value.is_empty() || value.contains(&b'@') {
        return false;
    }
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return false;
    };
    // `Authority` keeps a port it cannot read as u16 (`h:99999`); an empty port (`h:`) is legal.
    let port = authority.as_str().rsplit_once(':').filter(|_| {
        // An IPv6 literal's colons are inside the brackets.
        !authority.as_str().ends_with(']')
    });
    match port {
        Some((_, "")) | None => true,
        Some((_, p)) => p.parse::<u16>().is_ok(),
    }
}

enum Target<'a> {
    Origin,
    /// http(s) absolute-form: the authority wins over Host (RFC 9112 §3.2.2).
    Absolute {
        authority: &'a [u8],
        path_and_query: &'a [u8],
    },
}

/// Classifies the target with pingora's own absolute-form classifier.
fn split_target(target: &[u8]) -> Result<Target<'_>, HeadRefusal> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    if target.first() == Some(&b'/') {
        return Ok(Target::Origin);
    }
    match raw_target_authority(target) {
        RawTargetAuthority::Absolute {
            scheme,
            authority,
            path_and_query,
        } if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https") => {
            if !valid_authority(authority) {
                return Err(HeadRefusal::Authority);
            }
            Ok(Target::Absolute {
                authority,
                path_and_query,
            })
        }
        RawTargetAuthority::AmbiguousAuthority => Err(HeadRefusal::Authority),
        // `*`, `ws://`, `mailto:x`, `foo`: nothing we serve.
        _ => Err(HeadRefusal::Target),
    }
}

/// An absolute-form path-and-query as origin-form: `` → `/`, `?q` → `/?q` (as pingora's Uri does).
fn rooted(path_and_query: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if path_and_query.first() == Some(&b'/') {
        std::borrow::Cow::Borrowed(path_and_query)
    } else {
        let mut rooted = Vec::with_capacity(path_and_query.len() + 1);
        rooted.push(b'/');
        rooted.extend_from_slice(path_and_query);
        std::borrow::Cow::Owned(rooted)
    }
}

/// For a `buf` whose head `scan_head` accepted: when its target is absolute-form, the same request in origin-form with one Host equal to the target's
/// authority (RFC 9112 §3.2.2: the authority wins, any Host received is replaced), followed
/// by the rest of `buf` (the start of the body). `None` for origin-form: forward `buf` as is.
/// The rewrite happens before pingora parses, so pingora, the route allowlist, the access
/// log and the upstream all see one request for one authority.
pub fn origin_form(buf: &[u8]) -> Option<Vec<u8>> {
    // httparse (and pingora) skip empty lines before the request line (RFC 9112 §2.2), so
    // must we, or `\r\nGET http://…` would slip past the rewrite (found by the `head`
    // fuzz target). `scan_head` refused bare LFs, so they come in CRLF pairs; the
    // rewritten head drops them.
    let mut buf = buf;
    while let Some(rest) = buf.strip_prefix(b"\r\n") {
        buf = rest;
    }
    // The common case costs one short scan: origin-form's target starts with `/`.
    let target_start = buf.iter().position(|&b| b == b' ')? + 1;
    if buf.get(target_start) == Some(&b'/') {
        return None;
    }
    // A head `scan_head` accepted has CRLF line ends only, so this is where it ends.
    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..head_len];
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = &head[..line_end];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let Ok(Target::Absolute {
        authority,
        path_and_query,
    }) = split_target(target)
    else {
        return None;
    };
    let path_and_query = rooted(path_and_query);
    // pingora drops a fragment from the target; do it here so the upstream line matches.
    let path_and_query = match path_and_query.iter().position(|&b| b == b'#') {
        Some(i) => &path_and_query[..i],
        None => &path_and_query[..],
    };
    let mut out = Vec::with_capacity(buf.len() + authority.len() + 8);
    let parts: [&[u8]; 7] = [
        method,
        b" ",
        path_and_query,
        b" ",
        version,
        b"\r\nHost: ",
        authority,
    ];
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
    // Header lines as received (`scan_head` allowed only CRLF and no obs-fold), minus Host.
    for field in head[line_end + 2..].split_inclusive(|&b| b == b'\n') {
        let name = field.split(|&b| b == b':').next().unwrap_or_default();
        if !name.eq_ignore_ascii_case(b"host") {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(&buf[head_len..]);
    Some(out)
}

/// Pure: the method, target and User-Agent of what `buf` holds of a head, as far as httparse
/// read them (the request line even when a header line is refused); for the access log of
/// an answer the listener gave itself.
pub fn seen(buf: &[u8]) -> Seen<'_> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; PARSER_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let complete = matches!(
        req.parse_with_uninit_headers(buf, &mut headers),
        Ok(httparse::Status::Complete(_))
    );
    let user_agent = req
        .headers
        .iter()
        .filter(|_| complete)
        .find(|h| h.name.eq_ignore_ascii_case("user-agent"))
        .map(|h| h.value);
    Seen {
        method: req.method.map_or(&[][..], str::as_bytes),
        target: req.path.map_or(&[][..], str::as_bytes),
        user_agent,
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
    /// Not HTTP/1.x, or a head we refuse (see `HeadRefusal`): 400.
    Malformed(HeadRefusal),
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
            HeadOutcome::Malformed(refusal) => refusal.reason(),
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
            HeadScan::Invalid(refusal) => return HeadOutcome::Malformed(refusal),
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

#[doc(hidden)]
pub mod oracle;

#[cfg(test)]
mod tests {
    use super::oracle::pingora_reads;

    /// The fast path never accepts a head pingora would refuse: every target it passes
    /// (all short strings over its alphabet and the bytes around it, plus hostile ones)
    /// pingora's own parser accepts too.
    #[test]
    fn plain_origin_form_heads_are_ones_pingora_accepts() {
        let alphabet = b"/a%?:@!$&'()*+,;=-._~Z9#<>\"{}`^|[] \\\x7f\xff";
        let mut targets: Vec<Vec<u8>> = vec![b"/".to_vec()];
        let mut frontier = targets.clone();
        for _ in 0..3 {
            frontier = frontier
                .iter()
                .flat_map(|t| alphabet.iter().map(move |&c| [t.as_slice(), &[c]].concat()))
                .collect();
            targets.extend(frontier.iter().cloned());
        }
        let long = [b"/".as_slice(), &[b'a'; 7999]].concat();
        let too_long = [b"/".as_slice(), &[b'a'; 8000]].concat();
        targets.extend([
            long.clone(),
            too_long.clone(),
            b"/%zz".to_vec(),
            b"/%".to_vec(),
        ]);
        let hosts: [Option<&[u8]>; 4] = [None, Some(b"example.com"), Some(b"a:80"), Some(b"u@h")];
        let mut fast = 0;
        for t in &targets {
            for host in hosts {
                for method in ["GET", "POST", "OPTIONS", "CONNECT", "BREW"] {
                    if plain_origin_form_head(method, t, host) {
                        fast += 1;
                        assert!(
                            pingora_accepts(method, t, host, false),
                            "{method} {t:?} {host:?}"
                        );
                        assert!(
                            pingora_accepts(method, t, host, true),
                            "{method} {t:?} {host:?}"
                        );
                    }
                }
            }
        }
        assert!(fast > 1000, "the fast path is taken ({fast})");
        assert!(plain_origin_form_head("GET", &long, None));
        assert!(!plain_origin_form_head("GET", &too_long, None));
        assert!(!plain_origin_form_head("GET", b"/a#b", None));
        assert!(!plain_origin_form_head("GET", b"http://a/", None));
        assert!(!plain_origin_form_head("CONNECT", b"/", None));
        assert!(!plain_origin_form_head("GET", b"/", Some(b"u@h")));
    }
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn seen_keeps_what_a_refused_head_said() {
        type Want = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        #[rustfmt::skip]
        let cases: &[(&str, &[u8], Want)] = &[
            ("target pingora refuses", b"GET /v1/a<script> HTTP/1.1\r\nHost: a\r\nUser-Agent: probe/1\r\n\r\n", (b"GET", b"/v1/a<script>", Some(b"probe/1"))),
            ("bare LF", b"POST /x HTTP/1.1\nhost: a\nuser-agent: u\n\n", (b"POST", b"/x", Some(b"u"))),
            ("bad header line: request line only", b"GET /y HTTP/1.1\r\nBad Name: a\r\nUser-Agent: u\r\n\r\n", (b"GET", b"/y", None)),
            ("bad version", b"GET /z HTTP/2.0\r\n\r\n", (b"GET", b"/z", None)),
            ("partial", b"GET /slo", (b"GET", b"", None)),
            ("not http", b"\x16\x03\x01\x02\x00", (b"", b"", None)),
            ("empty", b"", (b"", b"", None)),
        ];
        for (name, head, (method, target, ua)) in cases {
            let got = seen(head);
            assert_eq!(
                (got.method, got.target, got.user_agent),
                (*method, *target, *ua),
                "{name}"
            );
        }
    }

    #[test]
    fn scan_table() {
        let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many_headers}\r\n");
        use HeadScan::{Complete, Invalid, Partial};
        #[rustfmt::skip]
        let fixed: &[(&str, &[u8], HeadScan)] = &[
            ("simple", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Complete(27)),
            ("with body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", Complete(47)),
            ("partial line", b"GET / HT", Partial),
            ("partial headers", b"GET / HTTP/1.1\r\nHost: a\r\n", Partial),
            ("empty", b"", Partial),
            ("http/1.0 needs no Host", b"GET / HTTP/1.0\r\n\r\n", Complete(18)),
            ("not http", b"\x16\x03\x01\x02\x00\x01\x00", Invalid(HeadRefusal::Malformed)),
            ("space in name", b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", Invalid(HeadRefusal::Malformed)),
            ("obs-fold", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", Invalid(HeadRefusal::Malformed)),
            ("nul in value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", Invalid(HeadRefusal::Malformed)),
            ("bad version", b"GET / HTTP/2.0\r\n\r\n", Invalid(HeadRefusal::Malformed)),
            ("non-ASCII target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", Invalid(HeadRefusal::Target)),
        ];
        let mut cases: Vec<(&str, Vec<u8>, HeadScan)> =
            fixed.iter().map(|(n, b, w)| (*n, b.to_vec(), *w)).collect();
        cases.extend([
            (
                "too many headers",
                many.into_bytes(),
                HeadScan::TooManyHeaders,
            ),
            (
                "absolute-form at the field cap, Host to add",
                format!("GET http://a/ HTTP/1.0\r\n{}\r\n", "X: v\r\n".repeat(100)).into_bytes(),
                HeadScan::TooManyHeaders,
            ),
            (
                "absolute-form at the field cap, Host replaced",
                format!(
                    "GET http://a/ HTTP/1.0\r\nHost: b\r\n{}\r\n",
                    "X: v\r\n".repeat(99)
                )
                .into_bytes(),
                HeadScan::Complete(24 + 9 + 99 * 6 + 2),
            ),
        ]);
        use HeadRefusal::*;
        // Ambiguous framing or addressing: refused before pingora or the app sees it.
        let rows: &[(&str, &str, Option<HeadRefusal>)] = &[
            ("chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", None),
            ("one length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  42 \r\n\r\n", None),
            ("absolute-form = Host", "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", None),
            // RFC 9112 §3.2.2: the target's authority wins; `origin_form` replaces Host.
            ("absolute-form != Host: authority wins", "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("absolute-form https, port, query", "GET HTTPS://b:8443?q=1 HTTP/1.1\r\nHost: b:8443\r\n\r\n", None),
            ("absolute-form in 1.0 without Host", "GET http://b/x HTTP/1.0\r\n\r\n", None),
            ("IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", None),
            ("Host with empty port", "GET / HTTP/1.1\r\nHost: a:\r\n\r\n", None),
            ("fragment", "GET /v1/x#frag HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("bare LF", "GET / HTTP/1.1\nHost: a\n\n", Some(BareLf)),
            ("TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Some(TransferEncoding)),
            ("two lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Some(ContentLength)),
            ("length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", Some(ContentLength)),
            ("signed length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", Some(ContentLength)),
            ("20-digit length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", Some(ContentLength)),
            ("gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Some(TransferEncoding)),
            ("TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Some(TransferEncoding)),
            ("underscore TE", "POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n", Some(UnderscoreFraming)),
            ("underscore Host", "GET / HTTP/1.1\r\nHost: a\r\nHo_st: b\r\n\r\n", None),
            ("underscore Host exact", "GET / HTTP/1.1\r\nHost: a\r\nHOS_T: b\r\n\r\n", None),
            // Host (RFC 9112 §3.2): missing in 1.1, repeated, or invalid.
            ("no Host", "GET / HTTP/1.1\r\n\r\n", Some(HostMissing)),
            ("no Host, absolute-form", "GET http://a/ HTTP/1.1\r\n\r\n", Some(HostMissing)),
            ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Some(HostDuplicate)),
            ("two equal Hosts", "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", Some(HostDuplicate)),
            ("two Hosts in 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", Some(HostDuplicate)),
            ("empty Host", "GET / HTTP/1.1\r\nHost: \r\n\r\n", Some(HostInvalid)),
            ("space in Host", "GET / HTTP/1.1\r\nHost: bad host\r\n\r\n", Some(HostInvalid)),
            ("userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Some(HostInvalid)),
            ("Host with path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Some(HostInvalid)),
            ("Host with query", "GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", Some(HostInvalid)),
            ("Host port not a number", "GET / HTTP/1.1\r\nHost: a:http\r\n\r\n", Some(HostInvalid)),
            ("Host port too big", "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", Some(HostInvalid)),
            ("Host open bracket", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Some(HostInvalid)),
            ("Host two ports", "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", Some(HostInvalid)),
            ("Host with tab", "GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", Some(HostInvalid)),
            ("Host quote", "GET / HTTP/1.1\r\nHost: \"a\"\r\n\r\n", Some(HostInvalid)),
            ("Host backslash", "GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", Some(HostInvalid)),
            ("invalid Host beside absolute-form", "GET http://a/ HTTP/1.1\r\nHost: bad host\r\n\r\n", Some(HostInvalid)),
            ("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Some(Method)),
            ("asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            // What pingora's own Uri parser refuses: must be ours.
            ("< in path", "GET /v1/<x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("> in path", "GET /v1/x> HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("backtick in path", "GET /v1/`x` HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("quote in query", "GET /v1/x?a=\" HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("< in query", "GET /v1/x?a=< HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            // Like braces, `^` and `|` are taken by pingora, so they pass.
            ("caret in path", "GET /v1/^x HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("pipe in path", "GET /v1/|x HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("> in query", "GET /v1/x?a=> HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            // pingora (the http crate) takes braces, so they pass: this table follows pingora, not taste.
            ("brace in path", "GET /v1/{x} HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("< in absolute-form path", "GET http://a/<x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("query-only target", "GET ?x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("relative target", "GET v1/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("other scheme", "GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("ws scheme", "GET ws://a/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            ("opaque scheme", "GET mailto:x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Target)),
            // Absolute-form authority: pingora's classifier and Authority parser.
            ("unclosed IPv6 authority", "GET http://[::1/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("empty authority", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("backslash authority", "GET http:/\\a/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("backslash inside authority", "GET http://a\\b/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("scheme without //", "GET http:a/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("userinfo in target", "GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("bad port in target", "GET http://a:99999/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("space-free junk authority", "GET http://a<b/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
            ("empty scheme", "GET ://a/x HTTP/1.1\r\nHost: a\r\n\r\n", Some(Authority)),
        ];
        for (name, head, refusal) in rows {
            let want = match refusal {
                None => HeadScan::Complete(head.len()),
                Some(r) => HeadScan::Invalid(*r),
            };
            cases.push((name, head.as_bytes().to_vec(), want));
        }
        for (name, input, want) in cases {
            assert_eq!(scan_head(&input, 100), want, "{name}");
        }
    }

    /// Property the listener relies on: pingora accepts every head we pass.
    #[test]
    fn pingora_parses_every_head_we_accept() {
        for head in [
            "GET /v1/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /v1/%3Cx%3E HTTP/1.1\r\nHost: a:80\r\n\r\n",
            "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let HeadScan::Complete(_) = scan_head(head.as_bytes(), 100) else {
                panic!("{head:?} refused");
            };
            let forwarded = origin_form(head.as_bytes()).unwrap_or_else(|| head.into());
            let mut hs = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut hs);
            assert!(req.parse(&forwarded).unwrap().is_complete());
            let parsed = pingora::http::RequestHeader::build(
                req.method.unwrap(),
                req.path.unwrap().as_bytes(),
                None,
            )
            .unwrap();
            assert!(parsed.uri.path().starts_with('/'));
        }
    }

    /// Differential check against pingora itself: every head we pass (after the
    /// absolute-form rewrite) pingora reads; and the head classes that used to get
    /// pingora's bare 400 are refused by pingora indeed, and now by us first.
    #[tokio::test]
    async fn agrees_with_pingoras_reader() {
        let passed = [
            "GET /v1/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /v1/%3Cx%3E HTTP/1.1\r\nHost: a:80\r\n\r\n",
            "GET /v1/{x} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /v1/x#f HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET https://b?q HTTP/1.0\r\n\r\n",
            "POST /v1/u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for head in passed {
            let HeadScan::Complete(_) = scan_head(head.as_bytes(), 100) else {
                panic!("{head:?} refused");
            };
            let forwarded = origin_form(head.as_bytes()).unwrap_or_else(|| head.into());
            let read = pingora_reads(&forwarded).await;
            assert_eq!(read, Ok(forwarded.len()), "{head:?}");
        }
        let pingora_refuses = [
            (
                "GET /v1/<x HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Target,
            ),
            (
                "GET /v1/x> HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Target,
            ),
            (
                "GET /v1/`x` HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Target,
            ),
            (
                "GET /v1/x?a=\" HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Target,
            ),
            (
                "GET /v1/x?a=<> HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Target,
            ),
            (
                "GET http://[::1/x HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Authority,
            ),
            (
                "GET http://a\\b/x HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadRefusal::Authority,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                HeadRefusal::HostDuplicate,
            ),
            (
                "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
                HeadRefusal::HostInvalid,
            ),
        ];
        for (head, refusal) in pingora_refuses {
            assert!(
                pingora_reads(head.as_bytes()).await.is_err(),
                "pingora took {head:?}"
            );
            assert_eq!(
                scan_head(head.as_bytes(), 100),
                HeadScan::Invalid(refusal),
                "{head:?}"
            );
        }
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_the_authority_as_host() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "origin-form is left alone",
                "GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
                None,
            ),
            (
                "authority replaces a different Host",
                "GET http://b/v1/x?y=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nBODY",
                Some("GET /v1/x?y=1 HTTP/1.1\r\nHost: b\r\nAccept: */*\r\n\r\nBODY"),
            ),
            (
                "Host added in 1.0, path rooted",
                "GET HTTP://b:8080 HTTP/1.0\r\nX: 1\r\n\r\n",
                Some("GET / HTTP/1.0\r\nHost: b:8080\r\nX: 1\r\n\r\n"),
            ),
            (
                "empty lines before the request line",
                "\r\n\r\nGET https://qg HTTP/1.0\r\n\r\n ",
                Some("GET / HTTP/1.0\r\nHost: qg\r\n\r\n "),
            ),
            (
                "query without path, fragment dropped",
                "POST https://b?q#f HTTP/1.1\r\nhOsT: b\r\nContent-Length: 0\r\n\r\n",
                Some("POST /?q HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n"),
            ),
        ];
        for (name, input, want) in cases {
            let HeadScan::Complete(n) = scan_head(input.as_bytes(), 100) else {
                panic!("{name}: refused");
            };
            let got = origin_form(input.as_bytes());
            assert_eq!(
                got.as_deref().map(String::from_utf8_lossy),
                want.map(Into::into),
                "{name}"
            );
            if let Some(rewritten) = got {
                let m = rewritten.len() - (input.len() - n);
                assert_eq!(
                    scan_head(&rewritten, 100),
                    HeadScan::Complete(m),
                    "{name}: rescan"
                );
            }
        }
    }

    #[test]
    fn reasons_are_distinct_labels() {
        let mut labels: Vec<&str> = HeadRefusal::ALL.iter().map(|r| r.reason()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), HeadRefusal::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
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
        assert_eq!(bad, HeadOutcome::Malformed(HeadRefusal::Malformed));
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
