//! The `X-Request-Id` rule: what we accept from a trusted peer and what we mint.

/// Longest X-Request-Id we relay: long enough for UUIDs and trace ids, short
/// enough that a hostile value cannot bloat logs.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// X-Request-Id accepted from a trusted peer: 1..=64 bytes of
/// `[A-Za-z0-9._:-]`. The id ends up in logs and upstream headers, so anything
/// that could inject (spaces, CR/LF, quotes, non-ASCII) is refused.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new random request id: 32 lower-case hex chars (128 random bits), so
/// collisions are negligible and ids are not guessable.
pub fn new_request_id() -> String {
    hex32(rand::random::<u128>())
}

/// `n` as 32 lower-case hex digits, by hand: `format!("{:032x}")` went through
/// `core::fmt` on every request.
fn hex32(n: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = vec![0u8; 32];
    for (i, d) in out.iter_mut().enumerate() {
        *d = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Hex digits are ASCII: the check cannot fail.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex32_is_format_032x() {
        let cases = [
            0u128,
            1,
            0xdead_beef,
            u128::MAX,
            1 << 127,
            0x0123_4567_89ab_cdef,
        ];
        for n in cases {
            assert_eq!(hex32(n), format!("{n:032x}"), "{n}");
        }
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(is_valid_request_id(id.as_bytes()));
    }

    #[test]
    fn request_id_table() {
        let long64 = "a".repeat(64);
        let long65 = "a".repeat(65);
        let cases: &[(&[u8], bool)] = &[
            (b"abc", true),
            (b"abc-123", true),
            (b"trace.id:7_x", true),
            (b"0123456789abcdef0123456789abcdef", true),
            (b"A-Z.a_z:0-9", true),
            (b"550e8400-e29b-41d4-a716-446655440000", true),
            (long64.as_bytes(), true),
            (long65.as_bytes(), false),
            (b"", false),
            (b"a b", false),
            (b" abc", false),
            (b"abc\r\nX-Evil: 1", false),
            (b"abc\n", false),
            (b"abc\t", false),
            ("caf\u{e9}".as_bytes(), false),
            ("ünï".as_bytes(), false),
            (b"\xff", false),
            (b"a/b", false),
            (b"../x", false),
            (b"a\"b", false),
            (b"a\0b", false),
        ];
        for (v, want) in cases {
            assert_eq!(
                is_valid_request_id(v),
                *want,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn new_request_id_shape() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert!(is_valid_request_id(a.as_bytes()));
        assert_ne!(a, b);
    }
}
