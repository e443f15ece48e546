//! h2 -> HTTP/1.1 translation cores: `headers::joined_cookie` (cookie crumbs),
//! `body_relay::BodyRelay` (the body pieces pingora writes upstream) and `head::seen`.
//!
//! Input: byte 0 = declared Content-Length mode; then a list of pieces (each a length byte
//! and that many bytes), the last one carrying the end of the stream; the same pieces are
//! cookie crumbs and a head for `seen`.
//!
//! Invariants, whatever the input:
//! - crumbs join to exactly the values joined with "; ", in order, as one valid value;
//! - the relay never answers `None` before the end, never an empty piece at the end, passes
//!   on exactly the bytes it got, in order, and never completes a declared length before
//!   the end;
//! - `seen` returns slices of its input.
#![no_main]

use bytes::Bytes;
use gateway::accept::h1::head::seen;
use gateway::forward::body_relay::BodyRelay;
use gateway::forward::headers::joined_cookie;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [n, rest @ ..] = data {
        let n = (*n as usize).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fn cookies(pieces: &[&[u8]]) {
    let mut h = HeaderMap::new();
    let mut values = Vec::new();
    for p in pieces {
        if let Ok(v) = HeaderValue::from_bytes(p) {
            h.append(http::header::COOKIE, v);
            values.push(*p);
        }
    }
    match joined_cookie(&h) {
        None => assert!(values.len() < 2, "{} crumbs not joined", values.len()),
        Some(v) => {
            assert!(values.len() >= 2);
            assert_eq!(v.as_bytes(), values.join(&b"; "[..]).as_slice());
        }
    }
}

fn relay(declared_mode: u8, pieces: &[&[u8]]) {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let declared = match declared_mode % 3 {
        0 => None,
        1 => Some(total as u64),
        _ => Some(declared_mode as u64 / 3),
    };
    let mut r = BodyRelay::default();
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let end = i + 1 == pieces.len();
        let got = r.pass(Some(Bytes::copy_from_slice(p)), end, || declared);
        match got {
            None => assert!(end, "None before the end"),
            Some(b) => {
                assert!(!(end && b.is_empty()), "empty piece at the end");
                out.extend_from_slice(&b);
            }
        }
        if !end {
            if let Some(d) = declared {
                assert!(
                    (out.len() as u64) < d || d == 0,
                    "declared length completed early"
                );
            }
        }
    }
    if !pieces.is_empty() {
        assert_eq!(out, pieces.concat(), "bytes changed on the way");
    }
}

fn head(input: &[u8]) {
    let s = seen(input);
    let inside = |part: &[u8]| {
        part.is_empty()
            || input.as_ptr_range().contains(&part.as_ptr())
                && part.as_ptr_range().end <= input.as_ptr_range().end
    };
    assert!(inside(s.method) && inside(s.target));
    assert!(s.user_agent.is_none_or(inside));
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let p = pieces(rest);
    cookies(&p);
    relay(*mode, &p);
    head(rest);
});
