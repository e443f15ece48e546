//! Opaque pagination cursor: the sort key of the last document on a page.

/// Position in the newest-first listing: (created_at in ns, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_ns: u64,
    pub id: String,
}

const TS_HEX: usize = 16;
const ID_HEX: usize = 32;

/// 48 lowercase hex digits: 16 for the timestamp, 32 for the document id. URL-safe and
/// strictly parseable; clients must treat it as opaque.
pub fn encode(cursor: &Cursor) -> String {
    format!("{:016x}{}", cursor.created_ns, cursor.id)
}

pub fn decode(s: &str) -> Option<Cursor> {
    if s.len() != TS_HEX + ID_HEX || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let created_ns = u64::from_str_radix(&s[..TS_HEX], 16).ok()?;
    Some(Cursor {
        created_ns,
        id: s[TS_HEX..].to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for created_ns in [0, 1, 1_763_000_000_123_456_789, u64::MAX] {
            let c = Cursor {
                created_ns,
                id: "0123456789abcdef0123456789abcdef".into(),
            };
            assert_eq!(decode(&encode(&c)), Some(c));
        }
    }

    #[test]
    fn rejects_hostile_input() {
        let valid = "00000000000000010123456789abcdef0123456789abcdef";
        assert!(decode(valid).is_some());
        let too_long = format!("{valid}0");
        let huge = "f".repeat(10_000);
        let cases = [
            "",
            &valid[1..],
            &too_long,
            &huge,
            "../../../../../../../../../../../../etc/passwd00",
            "0000000000000001\u{0}123456789abcdef0123456789abcdef",
            "00000000000000010123456789ABCDEF0123456789abcdef",
            "0000000000000001 123456789abcdef0123456789abcdef",
            "000000000000000é123456789abcdef0123456789abcdef",
            "-000000000000001123456789abcdef0123456789abcdef0",
            "+000000000000001123456789abcdef0123456789abcdef0",
        ];
        for input in cases {
            assert_eq!(decode(input), None, "{input:?}");
        }
    }
}
