//! What the upstream receives: which request headers must be stripped before
//! proxying (the forwarding headers `client_ip` knows, hop-by-hop, `Connection:` nominees).
//!
//! Pure functions over `http::HeaderMap`; no I/O. Clients on the internet are
//! hostile, so nothing here may panic on any input.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::admit::client_ip::forwarded::{is_forwarding_header, trim_ows};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the de-facto `proxy-connection`
/// and `keep-alive`): they describe *this* connection and must not be relayed.
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Headers the proxy itself needs to frame and route the request. A client
/// listing them in `Connection:` must not be able to make us drop them
/// (request smuggling / desync, host confusion).
const NEVER_STRIP: &[&str] = &["host", "content-length", "transfer-encoding"];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP_HEADERS
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

fn is_never_strip(name: &str) -> bool {
    NEVER_STRIP.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// Every header name to remove from a request before it goes upstream:
/// forwarding headers (any spelling), hop-by-hop headers, and every header
/// nominated by `Connection:` tokens (all `Connection` lines) — except
/// `host`, `content-length` and `transfer-encoding`, which the proxy needs for
/// framing and must never drop on a client's say-so.
///
/// Only names actually present in `headers` are returned (removing an absent
/// header is a no-op, and this keeps a `Connection:` line with thousands of
/// junk tokens from inflating the result). Each name appears once.
pub fn headers_to_strip(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    // `keys()` yields each distinct name once.
    for name in headers.keys() {
        let s = name.as_str();
        if (is_forwarding_header(s) || is_hop_by_hop(s)) && !is_never_strip(s) {
            out.push(name.clone());
        }
    }
    for value in headers.get_all(http::header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = trim_ows(token);
            if token.is_empty() {
                continue;
            }
            // Junk tokens (not a valid field name) cannot name a header: skip.
            let Ok(name) = HeaderName::from_bytes(token) else {
                continue;
            };
            if is_never_strip(name.as_str()) || !headers.contains_key(&name) {
                continue;
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Headers the proxy writes itself after stripping. `insert_header` replaces every
/// client copy of these, so they need no separate removal (one map operation less each).
/// Other spellings (`X_Forwarded_For`) are different names and are still stripped.
const REWRITTEN: &[&str] = &["x-forwarded-for", "x-real-ip", "x-forwarded-proto"];

/// True for a header name the proxy overwrites (see `REWRITTEN`).
pub fn is_rewritten(name: &HeaderName) -> bool {
    REWRITTEN.contains(&name.as_str())
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `cookie` into several fields ("crumbs");
/// before the request goes to an HTTP/1.1 upstream they are joined with `"; "` into one.
/// `None` when there is nothing to join (zero or one field). HTTP/1.1 requests are left
/// as sent: RFC 9110 gives no rule to merge `Cookie` lines (it is not a list field).
pub fn joined_cookie(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut crumbs = headers.get_all(http::header::COOKIE).iter();
    let first = crumbs.next()?;
    let second = crumbs.next()?;
    let mut out = Vec::with_capacity(first.len() + 2 + second.len());
    // The separator goes between crumbs, not after non-empty output: an empty leading
    // crumb keeps its place like any other.
    for (i, v) in [first, second].into_iter().chain(crumbs).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_header_spellings() {
        let cases: &[(&str, bool)] = &[
            ("x-forwarded-for", true),
            ("X-Forwarded-For", true),
            ("X-FORWARDED-FOR", true),
            ("x_forwarded_for", true),
            ("X_Forwarded-For", true),
            ("x-forwarded-host", true),
            ("X-Forwarded-Proto", true),
            ("x-forwarded-port", true),
            ("x-forwarded-server", true),
            ("x-forwarded-prefix", true),
            ("x_forwarded_ssl", true),
            ("x-forwarded", true),
            ("Forwarded", true),
            ("forwarded-for", true),
            ("Forwarded_For", true),
            ("X-Real-IP", true),
            ("x_real_ip", true),
            ("X-REAL-IP", true),
            ("x-client-ip", true),
            ("Client-IP", true),
            ("client_ip", true),
            ("True-Client-IP", true),
            ("CF-Connecting-IP", true),
            ("Fastly-Client-IP", true),
            ("X-Cluster-Client-IP", true),
            ("x-original-forwarded-for", true),
            ("X-Originating-IP", true),
            ("x-remote-ip", true),
            ("X-Remote-Addr", true),
            ("x-proxyuser-ip", true),
            ("x-request-id", false),
            ("X-Request-Id", false),
            ("x-forwarded-forx", false),
            ("x-forwarded-fo", false),
            ("xforwardedfor", false),
            (" x-forwarded-for", false),
            ("", false),
            ("host", false),
            ("connection", false),
            ("x-forwarded-for\u{0}", false),
            ("x-fORWARDED-fOR", true),
            ("ｘ-forwarded-for", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_forwarding_header(name), *want, "{name:?}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn strip_table() {
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[(&str, &str)], &[&str])] = &[
            ("nothing to strip", &[("host", "a"), ("accept", "*/*")], &[]),
            (
                "forwarding headers any spelling",
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x_forwarded_for", "1.2.3.4"),
                    ("true-client-ip", "1.2.3.4"),
                    ("forwarded", "for=1.2.3.4"),
                    ("x-request-id", "abc"),
                ],
                &[
                    "x-forwarded-for",
                    "x_forwarded_for",
                    "true-client-ip",
                    "forwarded",
                ],
            ),
            (
                "hop by hop",
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "close"),
                    ("te", "trailers"),
                    ("trailer", "x"),
                    ("upgrade", "websocket"),
                    ("proxy-authorization", "Basic x"),
                    ("proxy-authenticate", "Basic"),
                ],
                // Independent of HOP_BY_HOP_HEADERS on purpose: a name dropped there fails here.
                &"connection keep-alive proxy-connection te trailer upgrade proxy-authorization proxy-authenticate"
                    .split(' ').collect::<Vec<_>>(),
            ),
            (
                "connection nominates x-foo",
                &[("connection", "X-Foo"), ("x-foo", "1"), ("x-bar", "2")],
                &["connection", "x-foo"],
            ),
            (
                "connection cannot nominate framing headers",
                &[
                    ("connection", "content-length, Host, TRANSFER-ENCODING"),
                    ("host", "a"),
                    ("content-length", "0"),
                    ("transfer-encoding", "chunked"),
                ],
                &["connection"],
            ),
            (
                "multiple connection lines",
                &[
                    ("connection", "x-a"),
                    ("connection", "x-b ,  x-a"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                ],
                &["connection", "x-a", "x-b"],
            ),
            (
                "junk tokens ignored",
                &[
                    ("connection", ",, \"x-a\", x b, x-c;q=1, @@, ,x-d"),
                    ("x-a", "1"),
                    ("x-c", "1"),
                    ("x-d", "1"),
                ],
                &["connection", "x-d"],
            ),
            (
                "nominated but absent",
                &[("connection", "x-absent, close")],
                &["connection"],
            ),
            (
                "nominated forwarding header listed once",
                &[
                    ("connection", "x-forwarded-for, X-Forwarded-For"),
                    ("x-forwarded-for", "1.1.1.1"),
                ],
                &["x-forwarded-for", "connection"],
            ),
        ];
        for (name, pairs, want) in cases {
            let got = headers_to_strip(&map(pairs));
            let mut got: Vec<&str> = got.iter().map(|h| h.as_str()).collect();
            let mut want: Vec<&str> = want.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn rewritten_are_exactly_the_headers_we_write() {
        let cases = [
            ("x-forwarded-for", true),
            ("x-real-ip", true),
            ("x-forwarded-proto", true),
            ("x_forwarded_for", false),
            ("x-forwarded-host", false),
            ("forwarded", false),
            ("x-request-id", false),
            ("connection", false),
        ];
        for (name, want) in cases {
            let h = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(is_rewritten(&h), want, "{name}");
            // Every rewritten header is also one `headers_to_strip` would name.
            if want {
                assert!(is_forwarding_header(name), "{name}");
            }
        }
    }

    #[test]
    fn strip_names_are_unique() {
        let m = map(&[
            ("connection", "x-a, x-a, connection, keep-alive"),
            ("connection", "x-a"),
            ("keep-alive", "1"),
            ("x-a", "1"),
        ]);
        let got = headers_to_strip(&m);
        let mut dedup = got.clone();
        dedup.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        dedup.dedup();
        assert_eq!(got.len(), dedup.len());
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn strip_non_utf8_connection() {
        let mut m = HeaderMap::new();
        m.append(
            http::header::CONNECTION,
            HeaderValue::from_bytes(b"\xff\xfe, x-a").unwrap(),
        );
        m.append("x-a", HeaderValue::from_static("1"));
        let got = headers_to_strip(&m);
        assert!(got.iter().any(|h| h == "x-a"));
    }

    #[test]
    fn cookie_crumbs_join_with_semicolon_space() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (&["a=1"], None),
            (&["a=1", "b=2"], Some("a=1; b=2")),
            (&["a=1", "b=2", "c=3"], Some("a=1; b=2; c=3")),
            // An empty crumb is kept in place, not dropped: the app sees what was sent.
            (&["a=1", "", "c=3"], Some("a=1; ; c=3")),
            (&["", "", "c=3"], Some("; ; c=3")),
            (&["a=x;", "b=\"q\""], Some("a=x;; b=\"q\"")),
        ];
        for (crumbs, want) in cases {
            let mut h = HeaderMap::new();
            for c in *crumbs {
                h.append(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
            }
            let got = joined_cookie(&h);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                *want,
                "{crumbs:?}"
            );
        }
    }
}
