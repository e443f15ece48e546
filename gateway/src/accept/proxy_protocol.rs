//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, v1 text and v2 binary) that
//! an L4 load balancer in `proxy_protocol.from` puts before the client's bytes: which
//! client the connection carries. `parse` is pure and incremental (bytes so far → need
//! more, a header and its length, or why it can never be one); `read` drives it on a
//! connection under a deadline. Only a connection's first bytes are ever parsed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// v1: the whole line, `PROXY` to CRLF, is at most this long.
pub const V1_MAX: usize = 107;
/// v2's fixed 12-byte signature (it can never start an HTTP request or a TLS record).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header (16 fixed bytes, addresses and TLVs) longer than this is refused: its
/// 16-bit length would let one connection make us buffer 64 KiB before anything is known.
pub const V2_MAX: usize = 4096;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED: usize = 16;
const TLV_CRC32C: u8 = 0x03;

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The client's connection as the balancer accepted it.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL` or v1 `UNKNOWN`: the balancer's own connection (a health check); the
    /// socket peer stays the peer.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: read more.
    Incomplete,
    /// The header and how many bytes it took; what follows is the client's.
    Complete(Header, usize),
}

/// Why a connection from a balancer was closed: `gateway_proxy_protocol_errors_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The first bytes are neither `PROXY ` nor the v2 signature (say, plain HTTP).
    Missing,
    /// Broken v1 syntax, a v2 length too short for its addresses, or a TLV overrunning it.
    Malformed,
    /// No CRLF within `V1_MAX`, or a v2 header longer than `V2_MAX`.
    Oversized,
    /// v2 with another version or command, or `PROXY` over anything but TCP/IPv4 or IPv6.
    Unsupported,
    /// A v2 CRC32C TLV that does not match the header.
    Checksum,
    /// No complete header within `proxy_protocol.header_timeout`.
    Timeout,
    /// The balancer closed (or the read failed) before the header was complete.
    Closed,
}

impl Error {
    pub const fn reason(self) -> &'static str {
        match self {
            Error::Missing => "missing",
            Error::Malformed => "malformed",
            Error::Oversized => "oversized",
            Error::Unsupported => "unsupported",
            Error::Checksum => "checksum",
            Error::Timeout => "timeout",
            Error::Closed => "closed",
        }
    }
}

/// Pure: the bytes a connection opened with so far → its header, or more needed, or never.
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    if is_prefix_of(buf, &V2_SIGNATURE) {
        return v2(buf);
    }
    if is_prefix_of(buf, V1_PREFIX) {
        return v1(buf);
    }
    Err(Error::Missing)
}

/// `buf` starts with `sig`, or is a (possibly empty) beginning of it.
fn is_prefix_of(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn v1(buf: &[u8]) -> Result<Parsed, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Error::Oversized)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = match window[..lf].strip_suffix(b"\r") {
        Some(l) if l.len() >= V1_PREFIX.len() => &l[V1_PREFIX.len()..],
        _ => return Err(Error::Malformed),
    };
    let line = std::str::from_utf8(line).map_err(|_| Error::Malformed)?;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        // The rest of an UNKNOWN line is to be ignored, whatever it is.
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let f: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = f[..] else {
                return Err(Error::Malformed);
            };
            let ip = |s: &str| -> Result<IpAddr, Error> {
                let ip = if family == "TCP4" {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| Error::Malformed)
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, v1_port(sport)?),
                destination: SocketAddr::new(ip(dst)?, v1_port(dport)?),
            }
        }
        _ => return Err(Error::Malformed),
    };
    Ok(Parsed::Complete(header, lf + 1))
}

/// 0 to 65535 in plain decimal: no sign, no leading zero.
fn v1_port(s: &str) -> Result<u16, Error> {
    let plain = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !plain {
        return Err(Error::Malformed);
    }
    s.parse().map_err(|_| Error::Malformed)
}

fn v2(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(Error::Unsupported);
    }
    let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > V2_MAX {
        return Err(Error::Oversized);
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let header = &buf[..total];
    // LOCAL: the block, family included, is to be discarded unread.
    if command == 0 {
        return Ok(Parsed::Complete(Header::Local, total));
    }
    let block = &header[V2_FIXED..];
    // TCP over IPv4 or IPv6: source and destination addresses, then their two ports.
    let width = match buf[13] {
        0x11 => 4,
        0x21 => 16,
        _ => return Err(Error::Unsupported),
    };
    let addresses = 2 * width + 4;
    if block.len() < addresses {
        return Err(Error::Malformed);
    }
    let ip = |at: usize| match width {
        4 => IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap()),
    };
    let ports = 2 * width;
    let proxied = Header::Proxied {
        source: SocketAddr::new(ip(0), be16(&block[ports..])),
        destination: SocketAddr::new(ip(width), be16(&block[ports + 2..])),
    };
    check_tlvs(header, V2_FIXED + addresses)?;
    Ok(Parsed::Complete(proxied, total))
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Walks the TLVs from `at` to the end of `header`: each must fit; a CRC32C one must match.
fn check_tlvs(header: &[u8], mut at: usize) -> Result<(), Error> {
    while at < header.len() {
        let Some(&[kind, hi, lo]) = header.get(at..at + 3) else {
            return Err(Error::Malformed);
        };
        let value = at + 3;
        let end = value + usize::from(u16::from_be_bytes([hi, lo]));
        if end > header.len() {
            return Err(Error::Malformed);
        }
        if kind == TLV_CRC32C {
            let Ok(want) = <[u8; 4]>::try_from(&header[value..end]) else {
                return Err(Error::Malformed);
            };
            // Computed over the whole header with the checksum field zeroed.
            let crc = crc32c(
                crc32c(crc32c(!0, &header[..value]), &[0; 4]),
                &header[end..],
            );
            if !crc != u32::from_be_bytes(want) {
                return Err(Error::Checksum);
            }
        }
        at = end;
    }
    Ok(())
}

/// CRC-32C (Castagnoli, reflected 0x82F63B78) over `data`, continuing from `crc` (start
/// with `!0`, finish with `!`). Once per v2 header of at most `V2_MAX` bytes: a byte table
/// is plenty, no dependency for it.
pub fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// Reads a connection's header within `deadline`. `Ok` also returns the bytes read past
/// the header (the client's first bytes, to put back in front of the stream).
pub async fn read<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: Duration,
) -> Result<(Header, Vec<u8>), Error> {
    let reading = async {
        // Most headers arrive whole in the first read; a v1 line is at most 107 bytes.
        let mut buf = Vec::with_capacity(256);
        loop {
            if let Parsed::Complete(header, used) = parse(&buf)? {
                buf.drain(..used);
                return Ok((header, buf));
            }
            let room = V2_MAX - buf.len();
            match io.read_buf(&mut (&mut buf).limit(room)).await {
                Ok(0) | Err(_) => return Err(Error::Closed),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, reading)
        .await
        .unwrap_or(Err(Error::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(src: &str, dst: &str) -> Header {
        Header::Proxied {
            source: sa(src),
            destination: sa(dst),
        }
    }

    /// A v2 header: command, family byte, address block, TLVs (type, value).
    fn v2_bytes(command: u8, family: u8, addresses: &[u8], tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut block = addresses.to_vec();
        for (kind, value) in tlvs {
            block.push(*kind);
            block.extend_from_slice(&(value.len() as u16).to_be_bytes());
            block.extend_from_slice(value);
        }
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(&block);
        h
    }

    const V4_BLOCK: [u8; 12] = [192, 0, 2, 7, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb];

    fn v6_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        b
    }

    /// A v2 PROXY TCP4 header with a CRC32C TLV set right (or `flip`ped in one bit).
    fn with_crc(flip: bool) -> Vec<u8> {
        let mut h = v2_bytes(1, 0x11, &V4_BLOCK, &[(0x04, b"pad"), (TLV_CRC32C, &[0; 4])]);
        let crc = !crc32c(!0, &h);
        let n = h.len();
        h[n - 4..].copy_from_slice(&crc.to_be_bytes());
        if flip {
            h[20] ^= 1;
        }
        h
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        assert_eq!(!crc32c(!0, b""), 0);
    }

    #[test]
    fn v1_table() {
        use Error::*;
        let long_tail = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 16));
        let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
        let ones = format!("PROXY TCP4 {}", "1".repeat(200));
        let max_v6 = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        #[rustfmt::skip]
        let cases: Vec<(&str, Result<Parsed, Error>)> = vec![
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\n", Ok(Parsed::Complete(proxied("192.0.2.7:12345", "10.0.0.1:443"), 41))),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\nGET / HTTP/1.1\r\n", Ok(Parsed::Complete(proxied("192.0.2.7:12345", "10.0.0.1:443"), 41))),
            ("PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n", Ok(Parsed::Complete(proxied("[2001:db8::7]:0", "[2001:db8::1]:65535"), 44))),
            ("PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n", Ok(Parsed::Complete(proxied("[::ffff:192.0.2.7]:1", "[::1]:2"), 37))),
            (max_v6, Ok(Parsed::Complete(proxied("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), V1_MAX - 3))),
            ("PROXY UNKNOWN\r\n", Ok(Parsed::Complete(Header::Local, 15))),
            ("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", Ok(Parsed::Complete(Header::Local, 35))),
            (&long_tail, Ok(Parsed::Complete(Header::Local, V1_MAX))),
            // Prefixes of a valid line: more is needed.
            ("", Ok(Parsed::Incomplete)),
            ("P", Ok(Parsed::Incomplete)),
            ("PROXY", Ok(Parsed::Incomplete)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r", Ok(Parsed::Incomplete)),
            // Hostile or broken.
            (&too_long, Err(Oversized)),
            (&ones, Err(Oversized)),
            ("GET / HTTP/1.1\r\n", Err(Missing)),
            ("proxy TCP4 192.0.2.7 10.0.0.1 1 2\r\n", Err(Missing)),
            ("PROXY\r\n", Err(Missing)),
            ("PROXY \r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345 443 \r\n", Err(Malformed)),
            ("PROXY TCP4  192.0.2.7 10.0.0.1 12345 443\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 12345 443 9\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.256 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.07 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 0x7f.0.0.1 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 080 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 +80 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 1 \r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7\r10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY tcp4 192.0.2.7 10.0.0.1 1 2\r\n", Err(Malformed)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\r\n", Err(Malformed)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input.as_bytes()), want, "{input:?}");
        }
        let mut bad_utf8 = b"PROXY TCP4 \xff.0.2.7 10.0.0.1 1 2\r\n".to_vec();
        assert_eq!(parse(&bad_utf8), Err(Malformed));
        bad_utf8[11] = 0;
        assert_eq!(parse(&bad_utf8), Err(Malformed));
    }

    #[test]
    fn v2_table() {
        use Error::*;
        let tcp4 = v2_bytes(1, 0x11, &V4_BLOCK, &[]);
        let tcp6 = v2_bytes(1, 0x21, &v6_block(), &[(0x01, b"h2"), (0xEE, &[7; 40])]);
        let local = v2_bytes(0, 0x00, &[], &[]);
        let mut extra = tcp4.clone();
        extra.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut bad_version = tcp4.clone();
        bad_version[12] = 0x11;
        let mut bad_command = tcp4.clone();
        bad_command[12] = 0x22;
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let mut max = v2_bytes(
            1,
            0x11,
            &V4_BLOCK,
            &[(0x04, &vec![0; V2_MAX - 16 - 12 - 3])],
        );
        let over = v2_bytes(
            1,
            0x11,
            &V4_BLOCK,
            &[(0x04, &vec![0; V2_MAX - 16 - 12 - 2])],
        );
        let v4_src = proxied("192.0.2.7:12345", "10.0.0.1:443");
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, Result<Parsed, Error>)> = vec![
            ("tcp4", tcp4.clone(), Ok(Parsed::Complete(v4_src, 28))),
            ("tcp4 + request", extra, Ok(Parsed::Complete(v4_src, 28))),
            ("tcp6 + tlvs", tcp6.clone(), Ok(Parsed::Complete(proxied("[2001:db8::7]:12345", "[2001:db8::1]:443"), tcp6.len()))),
            ("local", local.clone(), Ok(Parsed::Complete(Header::Local, 16))),
            ("local ignores its block", v2_bytes(0, 0x31, &[9; 216], &[]), Ok(Parsed::Complete(Header::Local, 232))),
            ("crc ok", with_crc(false), Ok(Parsed::Complete(v4_src, with_crc(false).len()))),
            ("at the cap", max.clone(), Ok(Parsed::Complete(v4_src, V2_MAX))),
            ("signature only", V2_SIGNATURE.to_vec(), Ok(Parsed::Incomplete)),
            ("fixed part only", tcp4[..16].to_vec(), Ok(Parsed::Incomplete)),
            ("one short", tcp4[..27].to_vec(), Ok(Parsed::Incomplete)),
            ("crc wrong", with_crc(true), Err(Checksum)),
            ("version 1", bad_version, Err(Unsupported)),
            ("command 2", bad_command, Err(Unsupported)),
            ("udp4", v2_bytes(1, 0x12, &V4_BLOCK, &[]), Err(Unsupported)),
            ("unix", v2_bytes(1, 0x31, &[0; 216], &[]), Err(Unsupported)),
            ("unspec proxy", v2_bytes(1, 0x00, &[], &[]), Err(Unsupported)),
            ("tcp4 short block", v2_bytes(1, 0x11, &V4_BLOCK[..11], &[]), Err(Malformed)),
            ("tcp6 short block", v2_bytes(1, 0x21, &V4_BLOCK, &[]), Err(Malformed)),
            ("tlv header cut", v2_bytes(1, 0x11, &[&V4_BLOCK[..], &[0x04, 0x00]].concat(), &[]), Err(Malformed)),
            ("tlv overruns", v2_bytes(1, 0x11, &[&V4_BLOCK[..], &[0x04, 0x00, 0x09, 1]].concat(), &[]), Err(Malformed)),
            ("tlv length max", v2_bytes(1, 0x11, &[&V4_BLOCK[..], &[0x04, 0xff, 0xff]].concat(), &[]), Err(Malformed)),
            ("crc tlv of 3 bytes", v2_bytes(1, 0x11, &V4_BLOCK, &[(TLV_CRC32C, &[0; 3])]), Err(Malformed)),
            ("64 KiB length", huge, Err(Oversized)),
            ("one over the cap", over, Err(Oversized)),
            ("signature broken", [&V2_SIGNATURE[..11], b"X"].concat(), Err(Missing)),
            ("tls hello", vec![0x16, 0x03, 0x01, 0x02, 0x00], Err(Missing)),
        ];
        for (name, input, want) in cases {
            assert_eq!(parse(&input), want, "{name}");
        }
        max.truncate(V2_MAX - 1);
        assert_eq!(parse(&max), Ok(Parsed::Incomplete));
    }

    #[test]
    fn every_split_of_every_header_is_incomplete_until_the_last_byte() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 12345 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_bytes(1, 0x21, &v6_block(), &[(0x01, b"h2")]),
            v2_bytes(0, 0x00, &[], &[]),
            with_crc(false),
        ];
        for h in headers {
            for cut in 0..h.len() {
                assert_eq!(
                    parse(&h[..cut]),
                    Ok(Parsed::Incomplete),
                    "{h:?} cut at {cut}"
                );
            }
            assert!(matches!(parse(&h), Ok(Parsed::Complete(_, n)) if n == h.len()));
        }
    }

    #[test]
    fn reasons_are_the_metric_label_set() {
        let all = [
            Error::Missing,
            Error::Malformed,
            Error::Oversized,
            Error::Unsupported,
            Error::Checksum,
            Error::Timeout,
            Error::Closed,
        ]
        .map(Error::reason);
        assert_eq!(all, crate::observe::labels::PROXY_PROTOCOL_ERRORS);
    }

    #[tokio::test]
    async fn read_takes_the_header_and_hands_back_the_rest_at_any_split() {
        let mut wire = v2_bytes(1, 0x11, &V4_BLOCK, &[(0x04, b"x")]);
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        for cut in 1..wire.len() {
            let (mut client, mut server) = tokio::io::duplex(64);
            let w = wire.clone();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                client.write_all(&w[..cut]).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
                client.write_all(&w[cut..]).await.unwrap();
                client
            });
            let (header, mut rest) = read(&mut server, Duration::from_secs(5)).await.unwrap();
            assert_eq!(header, proxied("192.0.2.7:12345", "10.0.0.1:443"));
            let _client = writer.await.unwrap();
            let want = b"GET / HTTP/1.1\r\n\r\n";
            while rest.len() < want.len() {
                server.read_buf(&mut rest).await.unwrap();
            }
            assert_eq!(rest, want, "cut at {cut}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_failures() {
        use tokio::io::AsyncWriteExt;
        // (bytes sent, then close?, want)
        let cases: [(&[u8], bool, Error); 4] = [
            (b"PROXY TCP4 192.0.2.7", false, Error::Timeout),
            (b"PROXY TCP4 192.0.2.7", true, Error::Closed),
            (b"", true, Error::Closed),
            (b"GET / HTTP/1.1\r\n", false, Error::Missing),
        ];
        for (sent, close, want) in cases {
            let (mut client, mut server) = tokio::io::duplex(256);
            client.write_all(sent).await.unwrap();
            if close {
                drop(client);
                let got = read(&mut server, Duration::from_secs(5)).await;
                assert_eq!(got, Err(want), "{sent:?}");
            } else {
                let got = read(&mut server, Duration::from_secs(5)).await;
                assert_eq!(got, Err(want), "{sent:?}");
                drop(client);
            }
        }
    }
}
