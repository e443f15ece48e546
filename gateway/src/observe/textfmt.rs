//! Hot-path text writers: JSON strings, numbers, IP addresses and the RFC 3339 timestamp
//! appended straight to a byte buffer. `core::fmt` and serde_json cost several times as
//! much per request (perf/RESULTS.md); these write the same text.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends `s` as a JSON string (quotes included), escaped as serde_json escapes:
/// `"`, `\` and the control characters below U+0020. The common case (nothing to
/// escape) is a word-at-a-time scan and one copy.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    if !needs_escape(b) {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if !is_special(c) {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn is_special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// Whether any byte of `b` needs escaping, 8 bytes per step (a byte-at-a-time scan was
/// ~40 % of the access line's cost: ten strings per line, perf/RESULTS.md).
fn needs_escape(b: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    // Nonzero iff some byte of `w` is below `n` (n <= 0x80; bytes >= 0x80 never match).
    let below = |w: u64, n: u8| w.wrapping_sub(LO * u64::from(n)) & !w & HI;
    let mut words = b.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        let quote = w ^ (LO * u64::from(b'"'));
        let backslash = w ^ (LO * u64::from(b'\\'));
        if below(w, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&c| is_special(c))
}

pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// As serde_json writes an `f64` (zmij's shortest form; `null` if not finite).
pub fn push_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends the address as `Display` writes it; IPv4 (the common case) without `core::fmt`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(39);
            let _ = write!(s, "{v6}");
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if o >= 100 {
            out.push(b'0' + o / 100);
        }
        if o >= 10 {
            out.push(b'0' + (o / 10) % 10);
        }
        out.push(b'0' + o % 10);
    }
}

thread_local! {
    /// The unix second last formatted and its `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Appends `t` as RFC 3339 UTC with microseconds (`2026-12-02T04:24:43.123456Z`, what
/// `humantime::format_rfc3339_micros` writes); the date and time of day are formatted
/// once per second per thread.
pub fn push_rfc3339_micros(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.0 != secs {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + d).to_string();
            // Years 1970..=9999 give 20 bytes ending in `Z`; anything else is not cached.
            if text.len() != 20 {
                out.extend_from_slice(humantime::format_rfc3339_micros(t).to_string().as_bytes());
                return;
            }
            c.1.copy_from_slice(&text.as_bytes()[..19]);
            c.0 = secs;
        }
        out.extend_from_slice(&c.1);
        let micros = d.subsec_micros();
        let mut frac = [b'.', 0, 0, 0, 0, 0, 0, b'Z'];
        let mut m = micros;
        for i in (1..7).rev() {
            frac[i] = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out.extend_from_slice(&frac);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_strings_match_serde_json() {
        let cases = [
            "",
            "plain",
            "/v1/\"quoted\"",
            "line\nbreak\r\n{\"fake\":1}",
            "tab\there",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}",
            "\\backslash\\",
            "ünïcödé \u{2028} \u{fffd}",
            "\"",
            "\\",
            "end\n",
        ];
        for s in cases {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn every_ascii_byte_at_every_word_position_escapes_as_serde_json() {
        // The word scan must see a special byte wherever it sits (in a word or the tail)
        // and must not flag bytes just above the thresholds or UTF-8 bytes.
        for c in 0u8..=0x7f {
            for pos in 0..19 {
                let mut s = vec![b'a'; 19];
                s[pos] = c;
                let s = String::from_utf8(s).unwrap();
                let mut out = Vec::new();
                push_json_str(&mut out, &s);
                assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{c:#x} at {pos}");
                assert_eq!(needs_escape(s.as_bytes()), is_special(c), "{c:#x} at {pos}");
            }
        }
        for s in ["ü".repeat(9), "\u{fffd}".repeat(5), "é\"é".repeat(4)] {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_match_serde_json() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap(), "{n}");
        }
        for x in [0.0, 0.001, 1.25, 32.225, 3000.0, 1e-7, 1e21, f64::MAX] {
            let mut out = Vec::new();
            push_f64(&mut out, x);
            assert_eq!(out, serde_json::to_vec(&x).unwrap(), "{x}");
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut out = Vec::new();
            push_f64(&mut out, x);
            assert_eq!(out, b"null", "{x}");
        }
    }

    #[test]
    fn ips_match_display() {
        let cases = [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.7",
            "10.0.0.1",
            "::",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
            "fe80::1:2:3:4",
        ];
        for s in cases {
            let ip: IpAddr = s.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string(), "{s}");
        }
    }

    #[test]
    fn timestamps_match_humantime() {
        let cases = [
            Duration::ZERO,
            Duration::from_micros(1),
            Duration::new(1_764_649_483, 123_456_789),
            Duration::new(1_764_649_483, 999_999_999),
            Duration::new(1_764_649_484, 0),
            Duration::new(951_782_400, 5_000), // 2000-02-29
            Duration::new(253_402_300_799, 999_999_000), // 9999-12-31T23:59:59
        ];
        // Twice: once formatting each second, once from the cache (same second twice in a row).
        for _ in 0..2 {
            for d in cases {
                let t = UNIX_EPOCH + d;
                let mut out = Vec::new();
                push_rfc3339_micros(&mut out, t);
                push_rfc3339_micros(&mut out, t);
                let want = humantime::format_rfc3339_micros(t).to_string();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("{want}{want}"),
                    "{d:?}"
                );
            }
        }
    }
}
