//! Pure input checks: ids, document names, query strings, header values.

use http::HeaderValue;

/// User ids become directory names, so only a conservative character set is allowed
/// (no dots, so `.` / `..` cannot be expressed).
pub fn is_valid_user_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Document ids are exactly what `new_document_id` produces: 32 lowercase hex digits.
pub fn is_valid_document_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 128 random bits from a CSPRNG-backed thread RNG; never derived from client input.
pub fn new_document_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` escape that is not followed by two hex digits.
    BadEscape,
    /// The same parameter given twice: ambiguous, so refused.
    Duplicate,
    NotUtf8,
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space), as browsers and
/// most HTTP clients encode query strings.
pub fn form_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| QueryError::BadEscape)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(QueryError::BadEscape);
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::BadEscape)?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

/// The decoded value of `key` in a query string; `None` when absent.
pub fn query_param(query: Option<&str>, key: &str) -> Result<Option<String>, QueryError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k)? != key {
            continue;
        }
        if found.is_some() {
            return Err(QueryError::Duplicate);
        }
        found = Some(form_decode(v)?);
    }
    Ok(found)
}

pub const MAX_NAME_BYTES: usize = 255;

/// Document names are display strings only (never paths): 1..=255 bytes, no control characters.
pub fn is_valid_document_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len()) && !name.chars().any(char::is_control)
}

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// `limit` for listings: plain decimal digits, 1..=1000.
pub fn parse_limit(raw: Option<&str>) -> Option<usize> {
    match raw {
        None => Some(DEFAULT_LIMIT),
        Some(s) if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(s) => s.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)),
    }
}

pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Keeps a client's Content-Type only if it is a plausible `type/subtype[; params]` made of
/// visible ASCII, because it is echoed back verbatim on download.
pub fn sanitize_content_type(value: Option<&HeaderValue>) -> String {
    let Some(s) = value.and_then(|v| v.to_str().ok()) else {
        return DEFAULT_CONTENT_TYPE.into();
    };
    let s = s.trim();
    let essence = s.split(';').next().unwrap_or("").trim();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let sane = s.len() <= 255
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && matches!(essence.split_once('/'), Some((t, sub)) if token(t) && token(sub));
    if sane {
        s.to_owned()
    } else {
        DEFAULT_CONTENT_TYPE.into()
    }
}

/// `attachment; filename*=UTF-8''…` (RFC 6266/8187): every byte outside attr-char is
/// percent-encoded, so any stored name yields a safe ASCII header.
pub fn content_disposition(name: &str) -> String {
    let mut out = String::from("attachment; filename*=UTF-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_document_ids() {
        let good = new_document_id();
        assert!(is_valid_document_id(&good), "{good}");
        assert_ne!(good, new_document_id());
        type Rule = fn(&str) -> bool;
        let user: Rule = is_valid_user_id;
        let doc: Rule = is_valid_document_id;
        let long_ok = "a".repeat(64);
        let too_long = "a".repeat(65);
        // (rule, input, want)
        let cases: &[(Rule, &str, bool)] = &[
            (user, "u-alice", true),
            (user, "A_z-09", true),
            (user, &long_ok, true),
            (user, "", false),
            (user, &too_long, false),
            (user, "..", false),
            (user, "../etc", false),
            (user, "a/b", false),
            (user, "a\\b", false),
            (user, "a\0b", false),
            (user, "a b", false),
            (user, "ålice", false),
            (user, ".tmp-x", false),
            (doc, "0123456789abcdef0123456789abcdef", true),
            (doc, "0123456789ABCDEF0123456789abcdef", false),
            (doc, "0123456789abcdef0123456789abcde", false),
            (doc, "0123456789abcdef0123456789abcdef0", false),
            (doc, "", false),
            (doc, "..", false),
            (doc, "../../../../etc/passwd", false),
            (doc, "0123456789abcdef0123456789abcde\0", false),
            (doc, "0123456789abcdef0123456789abcdeé", false),
            (doc, "0123456789abcdef0123456789abcd.json", false),
        ];
        for (i, (rule, input, want)) in cases.iter().enumerate() {
            assert_eq!(rule(input), *want, "case {i}: {input:?}");
        }
    }

    #[test]
    fn query_params() {
        type Want = Result<Option<&'static str>, QueryError>;
        let cases: &[(Option<&str>, Want)] = &[
            (None, Ok(None)),
            (Some(""), Ok(None)),
            (Some("name=a.txt"), Ok(Some("a.txt"))),
            (Some("x=1&name=hello+world"), Ok(Some("hello world"))),
            (Some("name=a%2Bb%20c"), Ok(Some("a+b c"))),
            (Some("name=%C3%A9t%C3%A9.txt"), Ok(Some("été.txt"))),
            (
                Some("name=..%2F..%2Fetc%2Fpasswd"),
                Ok(Some("../../etc/passwd")),
            ),
            (Some("name=a%00b"), Ok(Some("a\0b"))),
            (Some("name"), Ok(Some(""))),
            (Some("n%61me=x"), Ok(Some("x"))),
            (Some("name=%"), Err(QueryError::BadEscape)),
            (Some("name=%4"), Err(QueryError::BadEscape)),
            (Some("name=%zz"), Err(QueryError::BadEscape)),
            (Some("name=%+1"), Err(QueryError::BadEscape)),
            (Some("name=%FF"), Err(QueryError::NotUtf8)),
            (Some("name=a&name=b"), Err(QueryError::Duplicate)),
        ];
        for (query, want) in cases {
            let got = query_param(*query, "name");
            assert_eq!(got, want.map(|o| o.map(String::from)), "{query:?}");
        }
    }

    #[test]
    fn document_names() {
        let max = "n".repeat(255);
        let too_long = "n".repeat(256);
        let multibyte_too_long = "é".repeat(128); // 256 bytes

        // "../../etc/passwd" is fine: a name is only ever a label, never a path.
        let valid = [
            "report.pdf",
            "../../etc/passwd",
            "日本語 ファイル.txt",
            "emoji 🎉",
            &max,
        ];
        for name in valid {
            assert!(is_valid_document_name(name), "{name:?} refused");
        }
        let invalid = [
            "",
            &too_long,
            &multibyte_too_long,
            "a\0b",
            "line\nbreak",
            "tab\t",
            "del\u{7f}",
            "c1\u{85}",
        ];
        for name in invalid {
            assert!(!is_valid_document_name(name), "{name:?} accepted");
        }
    }

    #[test]
    fn limits() {
        let cases: &[(Option<&str>, Option<usize>)] = &[
            (None, Some(50)),
            (Some("1"), Some(1)),
            (Some("1000"), Some(1000)),
            (Some("0"), None),
            (Some("1001"), None),
            (Some(""), None),
            (Some("-1"), None),
            (Some("+5"), None),
            (Some("5 "), None),
            (Some("abc"), None),
            (Some("99999999999999999999999"), None),
            (Some("٣"), None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_limit(*input), *want, "{input:?}");
        }
    }

    #[test]
    fn content_types() {
        let long = format!("text/{}", "x".repeat(300));
        let cases: &[(Option<&[u8]>, &str)] = &[
            (None, DEFAULT_CONTENT_TYPE),
            (Some(b"text/plain"), "text/plain"),
            (
                Some(b"text/plain; charset=utf-8"),
                "text/plain; charset=utf-8",
            ),
            (
                Some(b"application/vnd.api+json"),
                "application/vnd.api+json",
            ),
            (Some(b"  image/png "), "image/png"),
            (Some(b""), DEFAULT_CONTENT_TYPE),
            (Some(b"text"), DEFAULT_CONTENT_TYPE),
            (Some(b"/plain"), DEFAULT_CONTENT_TYPE),
            (Some(b"text/"), DEFAULT_CONTENT_TYPE),
            (Some(b"te xt/plain"), DEFAULT_CONTENT_TYPE),
            (Some(b"text/\thtml"), DEFAULT_CONTENT_TYPE),
            (Some("text/plain; x=é".as_bytes()), DEFAULT_CONTENT_TYPE),
            (Some(long.as_bytes()), DEFAULT_CONTENT_TYPE),
        ];
        for (input, want) in cases {
            let value = input.map(|b| HeaderValue::from_bytes(b).unwrap());
            assert_eq!(sanitize_content_type(value.as_ref()), *want, "{input:?}");
        }
    }

    #[test]
    fn dispositions_are_safe_ascii() {
        let cases = [
            ("a.txt", "attachment; filename*=UTF-8''a.txt"),
            (
                "a b\"c;.txt",
                "attachment; filename*=UTF-8''a%20b%22c%3B.txt",
            ),
            ("é", "attachment; filename*=UTF-8''%C3%A9"),
            ("../x", "attachment; filename*=UTF-8''..%2Fx"),
        ];
        for (name, want) in cases {
            let got = content_disposition(name);
            assert_eq!(got, want);
            assert!(HeaderValue::from_str(&got).is_ok());
        }
    }
}
