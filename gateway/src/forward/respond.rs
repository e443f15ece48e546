//! The one place responses are shaped: the security headers every response carries,
//! the head of every JSON error the gateway answers itself (through pingora or as raw
//! bytes from the listener), 401's challenge, Retry-After and the RateLimit headers.

use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use crate::admit::limits::headers::retry_after_secs;
use crate::admit::limits::Verdict;
use crate::forward::errors::EdgeError;
use crate::state::Live;

// Constant values are built without a copy or validation at run time (a `&str` value
// would be checked and copied into a new allocation on every response).
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const DENY: HeaderValue = HeaderValue::from_static("DENY");
const NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");

/// Headers every response carries, proxied or not.
pub fn common_headers(resp: &mut ResponseHeader, live: &Live, request_id: &str) -> Result<()> {
    resp.insert_header("x-content-type-options", NOSNIFF)?;
    resp.insert_header("x-frame-options", DENY)?;
    resp.insert_header("referrer-policy", NO_REFERRER)?;
    // Built once per config (`Live`): cloning shares its bytes.
    resp.insert_header("content-security-policy", live.csp.clone())?;
    if let Some(hsts) = &live.hsts {
        resp.insert_header("strict-transport-security", hsts.clone())?;
    }
    let Ok(id) = HeaderValue::from_str(request_id) else {
        return Error::e_explain(ErrorType::InvalidHTTPHeader, "invalid request id");
    };
    resp.insert_header("x-request-id", per_response(id))?;
    Ok(())
}

/// A value unique to one response. Over HTTP/2 it is sent as a never-indexed literal: added
/// to the connection's HPACK table it would only evict the constant headers above, which
/// then go out (and are Huffman-coded) in full again instead of as one-byte references.
/// HTTP/1.1 ignores the flag.
fn per_response(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// `RateLimit-Policy` and `RateLimit` for the policy the verdict reports, if any.
pub fn rate_limit_headers(resp: &mut ResponseHeader, verdict: &Verdict) -> Result<()> {
    if let Some(report) = verdict.reported() {
        resp.insert_header("ratelimit-policy", report.policy_value.clone())?;
        resp.insert_header("ratelimit", report.ratelimit_header_value())?;
    }
    Ok(())
}

/// The head of every JSON error the gateway answers itself.
pub fn error_header(
    err: EdgeError,
    body_len: usize,
    live: &Live,
    request_id: &str,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(err.status, Some(12))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    common_headers(&mut resp, live, request_id)?;
    Ok(resp)
}

/// A refusal's full answer: the JSON body (naming the policy for a 429) and its head with
/// `WWW-Authenticate` for a 401, the RateLimit headers and, for a 429, Retry-After.
/// `jitter` is any cheap per-request value (Retry-After adds 0 or 1 s from its low bit).
pub fn refusal(
    err: EdgeError,
    live: &Live,
    request_id: &str,
    verdict: Option<&Verdict>,
    jitter: u64,
) -> Result<(ResponseHeader, String)> {
    let rejection = verdict
        .and_then(Verdict::rejection)
        .filter(|_| err.status == 429);
    let body = err.body(rejection.map(|o| &*o.policy));
    let mut resp = error_header(err, body.len(), live, request_id)?;
    if err.status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    if let Some(v) = verdict {
        rate_limit_headers(&mut resp, v)?;
        if let Some(o) = rejection {
            let retry = retry_after_secs(o.retry_after, jitter);
            resp.insert_header("retry-after", retry.to_string())?;
        }
    }
    Ok((resp, body))
}

/// Raw HTTP/1.1 error response for answers given before pingora has a session
/// (408, 431, 400 from the head reader; 503 when over the connection cap).
pub fn raw_error_response(err: EdgeError, live: &Live, request_id: &str) -> Vec<u8> {
    let body = err.body(None);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\n",
        err.status,
        err.reason_phrase()
    )
    .into_bytes();
    // Same header set as every other error the gateway gives.
    if let Ok(head) = error_header(err, body.len(), live, request_id) {
        for (name, value) in head.headers.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const KEYS: &str =
        "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"0123456789abcdef0123456789abcdef01234567\"\n";

    #[test]
    fn only_the_request_id_is_kept_out_of_the_hpack_table() {
        let config = Config::parse(
            "test.yaml",
            "upstream: 127.0.0.1:8081\ntoken_key_file: k.yaml\n",
        )
        .expect("test config");
        let live =
            Live::with_keys(config, keyring::Keyring::from_yaml(KEYS).unwrap(), None).unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        common_headers(&mut resp, &live, "0123abcd").unwrap();
        #[rustfmt::skip]
        let cases = [
            // header, value, never indexed
            ("x-request-id",            Some("0123abcd"), true),
            ("x-content-type-options",  Some("nosniff"),  false),
            ("x-frame-options",         Some("DENY"),     false),
            ("referrer-policy",         None,             false),
            ("content-security-policy", None,             false),
        ];
        for (name, value, sensitive) in cases {
            let v = resp
                .headers
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(v.is_sensitive(), sensitive, "{name}");
            if let Some(want) = value {
                assert_eq!(v.to_str().unwrap(), want, "{name}");
            }
        }
        // A request id that is no header value is an error, never a panic.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        assert!(common_headers(&mut resp, &live, "bad\nid").is_err());
    }
}
