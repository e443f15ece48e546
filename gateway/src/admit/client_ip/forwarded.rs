//! Parsers for forwarding header values: X-Forwarded-For / X-Real-IP address entries
//! and RFC 7239 `Forwarded` elements. Pure and allocation-free; `client_ip` walks what
//! they return and decides whom to believe; `forwarded_proto` picks the X-Forwarded-Proto we send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderName, FORWARDED};
use http::HeaderMap;

/// Canonical (lower-case, dash-separated) names of headers that claim to say
/// who the client is or how it connected. Upstreams must only ever see the
/// values *we* write, so every spelling of these is stripped from requests.
const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded",
    "forwarded",
    "forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
];

/// ASCII lower-case with `_` folded to `-`, so `X_Forwarded_For` matches
/// `x-forwarded-for`: many servers (CGI, some frameworks) treat the two as the
/// same header, so an attacker can use either spelling.
fn fold(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Compare `name` against an already-canonical `canonical` without allocating.
fn eq_folded(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len() && name.iter().zip(canonical).all(|(&a, &b)| fold(a) == b)
}

/// True for every header that claims to say who the client is or how it
/// connected, in any case and with `_` in place of `-` (`X_Forwarded_For`).
/// `x-request-id` is deliberately not one of them.
pub fn is_forwarding_header(name: &str) -> bool {
    FORWARDING_HEADERS
        .iter()
        .any(|c| eq_folded(name.as_bytes(), c.as_bytes()))
}

/// Strip optional whitespace (SP / HTAB) from both ends, per RFC 9110 OWS.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// One chain entry as seen by the walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Ip(IpAddr),
    /// RFC 7239 `unknown` or an obfuscated identifier (`_hidden`).
    Unknown,
    Malformed,
}

/// Longest plausible single address entry (`[v6 with embedded v4]:65535` is
/// ~53 bytes); anything longer is rejected before parsing.
const MAX_ENTRY_LEN: usize = 64;

/// One X-Forwarded-For / X-Real-IP entry (already OWS-trimmed):
/// `1.2.3.4`, `1.2.3.4:80`, `[v6]`, `[v6]:443`, bare `v6`. Anything else
/// (zone ids, quotes, names, `unknown`, obs-text, trailing garbage) is None.
pub fn parse_addr_entry(s: &[u8]) -> Option<IpAddr> {
    if s.is_empty() || s.len() > MAX_ENTRY_LEN || !s.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let s = std::str::from_utf8(s).ok()?;
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inner.parse().ok()?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?.as_bytes()) {
            return None;
        }
        return Some(IpAddr::V6(ip).to_canonical());
    }
    // Plain IPv4 or bare IPv6 (std rejects zone ids and leading-zero octets).
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // IPv4 with port. A bare IPv6 with a port would be ambiguous: rejected.
    let (host, port) = s.split_once(':')?;
    let ip: Ipv4Addr = host.parse().ok()?;
    is_port(port.as_bytes()).then_some(IpAddr::V4(ip))
}

/// 1–5 ASCII digits, value ≤ 65535 (`u16::from_str` would accept a `+`).
fn is_port(p: &[u8]) -> bool {
    (1..=5).contains(&p.len())
        && p.iter().all(u8::is_ascii_digit)
        && p.iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
            <= 65535
}

/// RFC 7239 obfuscated identifier: `_` then 1+ of ALPHA / DIGIT / `.` `_` `-`.
fn is_obfuscated(s: &[u8]) -> bool {
    match s {
        [b'_', rest @ ..] => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        _ => false,
    }
}

/// RFC 9110 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Walk the body of a quoted-string (between the quotes), calling `emit` for
/// each unescaped byte. False on a bare `"`, a dangling `\`, control chars or
/// obs-text (we accept only ASCII in forwarding data).
fn scan_quoted(inner: &[u8], mut emit: impl FnMut(u8) -> bool) -> bool {
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        let b = match b {
            b'\\' => match bytes.next() {
                Some(&e) if e == b'\t' || (0x20..0x7f).contains(&e) => e,
                _ => return false,
            },
            b'"' => return false,
            b'\t' | 0x20..=0x7e => b,
            _ => return false,
        };
        if !emit(b) {
            return false;
        }
    }
    true
}

/// RFC 7239 value: a token or a complete quoted-string.
fn is_valid_value(v: &[u8]) -> bool {
    match v {
        [b'"', inner @ .., b'"'] => scan_quoted(inner, |_| true),
        _ => is_token(v),
    }
}

/// Longest `for` node we accept after unquoting (same bound as XFF entries).
const MAX_NODE_LEN: usize = MAX_ENTRY_LEN;

/// One Forwarded element: `;`-separated `name=value` pairs (OWS around pairs
/// tolerated, empty pairs allowed). Exactly one `for` is required; every other
/// pair must still be well-formed, or the element as a whole is untrustworthy.
pub fn parse_forwarded_element(element: &[u8]) -> Node {
    let mut node = None;
    for pair in SplitOutsideQuotes::new(element, b';') {
        let pair = trim_ows(pair);
        if pair.is_empty() {
            continue;
        }
        // Names are tokens, which cannot contain '=', so the first '=' splits.
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Node::Malformed;
        };
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if !is_token(name) {
            return Node::Malformed;
        }
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return Node::Malformed;
            }
            node = Some(parse_for_value(value));
        } else if !is_valid_value(value) {
            return Node::Malformed;
        }
    }
    node.unwrap_or(Node::Malformed)
}

/// A `for` value: token or quoted-string, unescaped into a stack buffer.
fn parse_for_value(value: &[u8]) -> Node {
    let mut buf = [0u8; MAX_NODE_LEN];
    let node: &[u8] = match value {
        [b'"', inner @ .., b'"'] => {
            let mut len = 0;
            let ok = scan_quoted(inner, |b| match buf.get_mut(len) {
                Some(slot) => {
                    *slot = b;
                    len += 1;
                    true
                }
                None => false,
            });
            match buf.get(..len) {
                Some(s) if ok => s,
                _ => return Node::Malformed,
            }
        }
        _ if is_token(value) => value,
        _ => return Node::Malformed,
    };
    parse_forwarded_node(node)
}

/// RFC 7239 node: `nodename [":" node-port]`, nodename = IPv4 / "[" IPv6 "]" /
/// "unknown" / obfnode, node-port = port / obfport. Bare IPv6 is not allowed.
fn parse_forwarded_node(v: &[u8]) -> Node {
    let split = if v.first() == Some(&b'[') {
        v.iter().position(|&b| b == b']').map(|i| i + 1)
    } else {
        Some(v.iter().position(|&b| b == b':').unwrap_or(v.len()))
    };
    let Some((name, port)) = split.and_then(|i| Some((v.get(..i)?, v.get(i..)?))) else {
        return Node::Malformed;
    };
    if let Some(port) = port.strip_prefix(b":") {
        if !(is_port(port) || is_obfuscated(port)) {
            return Node::Malformed;
        }
    } else if !port.is_empty() {
        return Node::Malformed;
    }
    if name.eq_ignore_ascii_case(b"unknown") || is_obfuscated(name) {
        return Node::Unknown;
    }
    let parsed = match name {
        [b'[', inner @ .., b']'] => std::str::from_utf8(inner)
            .ok()
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6),
        _ => std::str::from_utf8(name)
            .ok()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .map(IpAddr::V4),
    };
    parsed.map_or(Node::Malformed, |ip| Node::Ip(ip.to_canonical()))
}

/// The `X-Forwarded-Proto` we send: a trusted peer's own `X-Forwarded-Proto` (one value) or
/// its `Forwarded` element's `proto=` (the last element: the one that peer wrote), when it
/// is `http` or `https`; otherwise what we saw (`https` when we terminated TLS).
pub fn forwarded_proto(headers: &HeaderMap, peer_trusted: bool, tls: bool) -> &'static str {
    // Pre-parsed names: a `&str` key is parsed and validated again on every lookup
    // (~500 instructions for these two per request, perf/RESULTS.md).
    const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let seen = if tls { "https" } else { "http" };
    if !peer_trusted {
        return seen;
    }
    let xfp = headers.get_all(&X_FORWARDED_PROTO).iter();
    if let Some(v) = single(xfp).and_then(|v| scheme(v.as_bytes())) {
        return v;
    }
    let last = headers.get_all(FORWARDED).iter().next_back();
    let element = last.and_then(|v| SplitOutsideQuotes::new(v.as_bytes(), b',').last());
    // Only from an element the client-IP walker would accept too (exactly one valid `for`).
    let valid = element.filter(|e| parse_forwarded_element(e) != Node::Malformed);
    let proto = valid
        .into_iter()
        .flat_map(|e| SplitOutsideQuotes::new(e, b';'));
    for pair in proto {
        if let Some((name, value)) = trim_ows(pair).split_at_checked(6) {
            if name.eq_ignore_ascii_case(b"proto=") {
                let value = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                return scheme(value).unwrap_or(seen);
            }
        }
    }
    seen
}

/// The one value of a header, if it has exactly one line.
fn single<'a>(
    mut values: http::header::ValueIter<'a, http::HeaderValue>,
) -> Option<&'a http::HeaderValue> {
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn scheme(v: &[u8]) -> Option<&'static str> {
    let v = trim_ows(v);
    if v.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if v.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

/// Split on `sep` outside quoted strings (`\` escapes inside quotes). An
/// unterminated quote runs to the end; the element parser then rejects it.
pub struct SplitOutsideQuotes<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> SplitOutsideQuotes<'a> {
    pub fn new(s: &'a [u8], sep: u8) -> Self {
        SplitOutsideQuotes { rest: Some(s), sep }
    }
}

impl<'a> Iterator for SplitOutsideQuotes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut in_quote = false;
        let mut escaped = false;
        for (i, &b) in s.iter().enumerate() {
            if in_quote {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quote = false;
                }
            } else if b == b'"' {
                in_quote = true;
            } else if b == self.sep {
                self.rest = s.get(i + 1..);
                return s.get(..i);
            }
        }
        self.rest = None;
        Some(s)
    }
}

#[cfg(test)]
mod proto_tests {
    use super::*;

    #[test]
    fn forwarded_proto_believes_only_trusted_peers_and_only_http_or_https() {
        // flags (t = peer trusted, s = we terminated TLS) | header lines, '|'-separated | want
        let cases = r#"
            -- ~  ~ http
            -s ~  ~ https
            -- ~ x-forwarded-proto: https ~ http
            -s ~ x-forwarded-proto: http ~ https
            t- ~ x-forwarded-proto: https ~ https
            t- ~ x-forwarded-proto: HTTPS  ~ https
            ts ~ x-forwarded-proto: http ~ http
            t- ~ x-forwarded-proto: ftp ~ http
            t- ~ x-forwarded-proto: https, http ~ http
            t- ~ x-forwarded-proto: https|x-forwarded-proto: https ~ http
            ts ~ x-forwarded-proto: javascript: ~ https
            t- ~ forwarded: for=1.2.3.4;proto=https ~ https
            t- ~ forwarded: for=1.2.3.4;PROTO="https" ~ https
            t- ~ forwarded: for=9.9.9.9;proto=http, for=1.2.3.4;proto=https ~ https
            t- ~ forwarded: for=9.9.9.9;proto=https, for=1.2.3.4 ~ http
            ts ~ forwarded: proto=https|forwarded: for=1.2.3.4;proto=http ~ http
            t- ~ forwarded: for="a,proto=https";proto=gopher ~ http
            -- ~ forwarded: for=1.2.3.4;proto=https ~ http
            ts ~ forwarded: ;;;==,,," ~ https
            t- ~ x-forwarded-proto: nope|forwarded: for=5.6.7.8;proto=https ~ https
            t- ~ forwarded: proto=https ~ http
        "#;
        let rows = cases.lines().filter_map(|l| {
            let mut f = l.trim().splitn(3, " ~ ");
            Some((f.next()?, f.next()?, f.next()?))
        });
        let mut n = 0;
        for (flags, lines, want) in rows {
            n += 1;
            let mut h = http::HeaderMap::new();
            for (name, v) in lines.split('|').filter_map(|l| l.split_once(": ")) {
                h.append(name, http::HeaderValue::from_str(v).unwrap());
            }
            let got = forwarded_proto(&h, flags.starts_with('t'), flags.ends_with('s'));
            assert_eq!(got, want, "{flags} {lines}");
        }
        assert_eq!(n, 21, "every row parsed");
    }
}
