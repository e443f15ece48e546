//! Head reader: `gateway::accept::h1::head::scan_head` and `origin_form`, checked against pingora's
//! own HTTP/1 reader (`HttpSession::read_request`, what the proxy runs next).
//!
//! Byte 0 picks the mode: even = the rest is raw bytes; odd = the rest drives an
//! `arbitrary` request head (request line, header block with framing and Host headers,
//! line ends) rendered to bytes, so most inputs get past httparse into our rules.
//!
//! Invariants, whatever the input:
//! - no panic; a `Complete(n)` head lies inside the input;
//! - every head we pass is read by pingora (after the absolute-form rewrite) to the same
//!   length: nothing we forward can earn pingora's bare 400;
//! - a passed HTTP/1.1 head has exactly one valid Host, at most one framing header, no
//!   bare LF; the rewritten head has an origin-form target and rescans as complete.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use gateway::accept::h1::head::{oracle, origin_form, scan_head, HeadScan};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Head {
    method: Method,
    target: Target,
    version: Version,
    fields: Vec<Field>,
    /// Line end after the request line and after each field.
    eol: Eol,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Method {
    /// An index into `METHODS`.
    Known(u8),
    Token(Piece),
}

const METHODS: &[&[u8]] = &[b"GET", b"POST", b"CONNECT", b"OPTIONS"];

#[derive(Arbitrary, Debug)]
enum Target {
    Origin(Vec<Piece>),
    Absolute {
        scheme: Scheme,
        authority: Vec<Piece>,
        path: Vec<Piece>,
    },
    Asterisk,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Scheme {
    Http,
    Https,
    Upper,
    Ws,
    Empty,
    NoSlashes,
    Backslash,
}

#[derive(Arbitrary, Debug)]
enum Version {
    H11,
    H10,
    H2,
    Lower,
    Raw(u8),
}

#[derive(Arbitrary, Debug)]
enum Eol {
    Crlf,
    Lf,
    Mixed,
}

#[derive(Arbitrary, Debug)]
struct Field {
    name: Name,
    value: Vec<Piece>,
}

#[derive(Arbitrary, Debug)]
enum Name {
    /// An index into `NAMES`: the fields our rules look at, and their near misses.
    Known(u8),
    Other(Piece),
}

const NAMES: &[&[u8]] = &[
    b"Host",
    b"HOST",
    b"Ho_st",
    b"Content-Length",
    b"Content_Length",
    b"Transfer-Encoding",
    b"Transfer_Encoding",
    b"Connection",
    b"Expect",
];

/// Entry `i` of `table`, wrapping: every byte picks one.
fn pick(table: &[&'static [u8]], i: u8) -> &'static [u8] {
    table[i as usize % table.len()]
}

/// Pieces hostile inputs are made of: URI delimiters, characters pingora's Uri parser
/// refuses, IPv6 brackets, ports, framing values, control bytes.
#[derive(Arbitrary, Debug)]
struct Piece(u8);

const PIECES: &[&[u8]] = &[
    b"/",
    b"v1",
    b"a",
    b"gw",
    b"?",
    b"#",
    b"=",
    b"&",
    b"%",
    b"%3C",
    b"%zz",
    b"<",
    b">",
    b"`",
    b"\"",
    b"{",
    b"}",
    b"\\",
    b"@",
    b":",
    b"[",
    b"]",
    b"::1",
    b"80",
    b"99999",
    b" ",
    b"\t",
    b"..",
    b"*",
    b"\xc3\xa9",
    b"\x00",
    b"\r",
    b"\n",
    b"0",
    b"42",
    b"+1",
    b",",
    b"chunked",
    b"gzip",
    b"Chunked",
    b"identity",
    b"close",
    b"100-continue",
    b"x",
    b"-",
    b"_",
    b"http://",
    b"//",
    b"'",
    b";",
    b"|",
    b"^",
    b"~",
    b"\x7f",
    b"\xff",
];

fn put(out: &mut Vec<u8>, pieces: &[Piece]) {
    for p in pieces {
        out.extend_from_slice(PIECES[p.0 as usize % PIECES.len()]);
    }
}

impl Head {
    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.method {
            Method::Known(i) => out.extend_from_slice(pick(METHODS, *i)),
            Method::Token(p) => put(&mut out, std::slice::from_ref(p)),
        }
        out.push(b' ');
        match &self.target {
            Target::Origin(path) => {
                out.push(b'/');
                put(&mut out, path);
            }
            Target::Absolute {
                scheme,
                authority,
                path,
            } => {
                out.extend_from_slice(match scheme {
                    Scheme::Http => b"http://",
                    Scheme::Https => b"https://",
                    Scheme::Upper => b"HTTP://",
                    Scheme::Ws => b"ws://",
                    Scheme::Empty => b"://",
                    Scheme::NoSlashes => b"http:",
                    Scheme::Backslash => b"http:/\\",
                });
                put(&mut out, authority);
                put(&mut out, path);
            }
            Target::Asterisk => out.push(b'*'),
            Target::Raw(raw) => out.extend_from_slice(raw),
        }
        out.push(b' ');
        match self.version {
            Version::H11 => out.extend_from_slice(b"HTTP/1.1"),
            Version::H10 => out.extend_from_slice(b"HTTP/1.0"),
            Version::H2 => out.extend_from_slice(b"HTTP/2.0"),
            Version::Lower => out.extend_from_slice(b"http/1.1"),
            Version::Raw(b) => {
                out.extend_from_slice(&[b'H', b'T', b'T', b'P', b'/', b'1', b'.', b])
            }
        }
        let mut n = 0;
        let mut eol = |out: &mut Vec<u8>| {
            n += 1;
            match self.eol {
                Eol::Crlf => out.extend_from_slice(b"\r\n"),
                Eol::Lf => out.push(b'\n'),
                Eol::Mixed if n % 2 == 0 => out.push(b'\n'),
                Eol::Mixed => out.extend_from_slice(b"\r\n"),
            }
        };
        eol(&mut out);
        for f in &self.fields {
            match &f.name {
                Name::Known(i) => out.extend_from_slice(pick(NAMES, *i)),
                Name::Other(p) => put(&mut out, std::slice::from_ref(p)),
            }
            out.extend_from_slice(b": ");
            put(&mut out, &f.value);
            eol(&mut out);
        }
        eol(&mut out);
        out.extend_from_slice(&self.body);
        out
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

/// pingora's real HTTP/1 request reader over in-memory bytes.
fn pingora_reads(bytes: &[u8]) -> Result<usize, String> {
    runtime().block_on(oracle::pingora_reads(bytes))
}

fn check(buf: &[u8]) {
    let HeadScan::Complete(n) = scan_head(buf, 100) else {
        return;
    };
    assert!(n <= buf.len());
    let head = &buf[..n];
    assert!(
        !head
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r')),
        "bare LF passed"
    );
    let rewritten = origin_form(buf);
    let forwarded = rewritten.as_deref().unwrap_or(buf);
    let forwarded_head_len = n + forwarded.len() - buf.len();
    // What pingora sees next must be read, not refused with its bare 400.
    match pingora_reads(forwarded) {
        Ok(read) => assert_eq!(read, forwarded_head_len, "head length disagrees"),
        Err(e) => panic!(
            "we passed a head pingora refuses: {e}\n{:?}",
            forwarded.escape_ascii().to_string()
        ),
    }
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut hs);
    assert!(req.parse(forwarded).unwrap().is_complete());
    assert!(
        req.path.unwrap().starts_with('/'),
        "forwarded target not origin-form"
    );
    let hosts: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    if req.version == Some(1) || rewritten.is_some() {
        assert_eq!(hosts.len(), 1, "forwarded without exactly one Host");
    }
    for host in hosts {
        let host = host.trim_ascii();
        assert!(!host.is_empty() && !host.contains(&b'@'));
        assert!(
            http::uri::Authority::try_from(host).is_ok(),
            "invalid Host passed"
        );
    }
    let framing = req
        .headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case("content-length")
                || h.name.eq_ignore_ascii_case("transfer-encoding")
        })
        .count();
    assert!(framing <= 1, "two framing headers passed");
    if let Some(rewritten) = &rewritten {
        assert_eq!(
            scan_head(rewritten, 100),
            HeadScan::Complete(forwarded_head_len),
            "rewritten head does not rescan"
        );
        assert!(origin_form(rewritten).is_none());
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    if mode % 2 == 0 {
        check(rest);
    } else if let Ok(head) = Head::arbitrary_take_rest(Unstructured::new(rest)) {
        check(&head.render());
    }
});
