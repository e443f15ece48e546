//! Rules the gateway and the app must agree on, kept in one place so they cannot drift:
//! which `X-Request-Id` values are trusted, how new ids look, the bounded `method` label,
//! and how a config-like file is loaded and its failure worded.

#![forbid(unsafe_code)]

pub mod file;
pub mod request_id;

pub use file::{load_file, parse_yaml, FileError};
pub use request_id::{is_valid_request_id, new_request_id};

/// Bounded `method` label: arbitrary client methods must not create new metric series.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;
    use http::Method;

    #[test]
    fn method_labels_are_bounded() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET", "GET"),
            (b"HEAD", "HEAD"),
            (b"POST", "POST"),
            (b"PUT", "PUT"),
            (b"PATCH", "PATCH"),
            (b"DELETE", "DELETE"),
            (b"OPTIONS", "OPTIONS"),
            (b"CONNECT", "OTHER"),
            (b"TRACE", "OTHER"),
            (b"BREW", "OTHER"),
            (b"get", "OTHER"),
            (b"X-EVIL-SERIES-1", "OTHER"),
        ];
        for (raw, want) in cases {
            let method = Method::from_bytes(raw).unwrap();
            assert_eq!(method_label(&method), *want, "{method}");
        }
    }
}
