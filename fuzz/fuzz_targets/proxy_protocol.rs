//! PROXY protocol header parser (`gateway::accept::proxy_protocol::parse`): never
//! panics, is incremental (every prefix of the input is "need more" until one final
//! answer that more bytes never change), never takes more than the limits allow, and
//! what it returns round-trips through the v1 text form.
//!
//! Input: byte 0 = 0xff builds a v2 PROXY header around the rest (the rest's first byte
//! the family, then the address block and TLVs) with a correct length and CRC32C TLV, so
//! the checksum-accepting path is reached; anything else is parsed as raw bytes.
#![no_main]

use gateway::accept::proxy_protocol::{
    crc32c, parse, Error, Header, Parsed, V1_MAX, V2_MAX, V2_SIGNATURE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0xff, rest)) => with_crc(rest),
        _ => {
            check(data);
        }
    }
});

/// The invariants, for any bytes.
fn check(data: &[u8]) -> Option<Result<Parsed, Error>> {
    let last = parse(data);
    // Along the prefixes: Incomplete, then one answer that more bytes do not change.
    let mut settled = None;
    for k in 0..=data.len() {
        let r = parse(&data[..k]);
        match (settled, r) {
            (None, Ok(Parsed::Incomplete)) => {}
            (None, r) => settled = Some(r),
            (Some(s), r) => assert_eq!(s, r, "answer changed at {k}"),
        }
    }
    assert_eq!(settled.unwrap_or(Ok(Parsed::Incomplete)), last);
    if let Ok(Parsed::Complete(header, used)) = last {
        assert!(used > 0 && used <= data.len());
        let limit = if data[0] == b'P' { V1_MAX } else { V2_MAX };
        assert!(used <= limit, "{used} > {limit}");
        if let Header::Proxied {
            source,
            destination,
        } = header
        {
            assert_eq!(source.is_ipv4(), destination.is_ipv4());
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            );
            assert_eq!(
                parse(line.as_bytes()),
                Ok(Parsed::Complete(header, line.len())),
                "{line:?}"
            );
        }
    }
    Some(last)
}

/// A v2 PROXY header over `rest` with a right CRC32C: never refused for its checksum
/// or its size, never waiting for more.
fn with_crc(rest: &[u8]) {
    let Some((&family, block)) = rest.split_first() else {
        return;
    };
    let block = &block[..block.len().min(V2_MAX - 16 - 7)];
    let len = block.len() + 7;
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, family]);
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(block);
    h.extend_from_slice(&[0x03, 0x00, 0x04, 0, 0, 0, 0]);
    let crc = !crc32c(!0, &h);
    let n = h.len();
    h[n - 4..].copy_from_slice(&crc.to_be_bytes());
    let got = check(&h);
    // (The block may carry a CRC32C TLV of its own, which may well be wrong.)
    if !block.contains(&0x03) {
        assert_ne!(got, Some(Err(Error::Checksum)), "{h:?}");
    }
    assert_ne!(got, Some(Err(Error::Oversized)), "{h:?}");
    assert_ne!(got, Some(Ok(Parsed::Incomplete)), "{h:?}");
}
