//! Hostile forwarded headers, end to end: a real gateway process, the echo stub
//! upstream, raw requests from chosen 127.x sources. Each table row states the
//! client IP the upstream must see (`X-Real-IP`, the rewritten `X-Forwarded-For`)
//! and the trust decision the access log must record. Complements forwarding.rs
//! (basic cases) with spoofing, junk in trusted chains, RFC 7239 corners, IPv6
//! spellings, hop caps, and oversized/repeated headers.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Trusted proxies in the main config.
const T1: &str = "127.0.0.2";
const T2: &str = "127.0.0.4";
/// Untrusted clients.
const U1: &str = "127.0.0.3";
const U2: &str = "127.0.0.9";

const MAIN_CONFIG: &str = "trusted_proxies: [127.0.0.2/32, 127.0.0.4/32, 10.0.0.0/8, \"2001:db8:ffff::/48\", \"::ffff:192.168.0.0/112\"]\n";

#[derive(Clone, Debug)]
enum Want {
    /// Proxied: the upstream sees this client and chain; the log says this trust.
    Seen {
        real_ip: String,
        xff: String,
        trust: &'static str,
    },
    /// Answered at the edge with this status; nothing reaches the upstream. With
    /// `Some(trust)` the client IP was resolved first and logged with that trust.
    Refused(u16, Option<&'static str>),
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    from: &'static str,
    headers: Vec<(String, Vec<u8>)>,
    want: Want,
}

fn case(
    name: &str,
    from: &'static str,
    headers: &[(&str, &str)],
    real_ip: &str,
    xff: &str,
    trust: &'static str,
) -> Case {
    Case {
        name: name.to_string(),
        from,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        want: Want::Seen {
            real_ip: real_ip.to_string(),
            xff: xff.to_string(),
            trust,
        },
    }
}

/// The client `want` seen through trusted peer `peer`: chain "want, peer".
fn via(name: &str, peer: &'static str, headers: &[(&str, &str)], want: &str) -> Case {
    case(
        name,
        peer,
        headers,
        want,
        &format!("{want}, {peer}"),
        "trusted",
    )
}

/// Junk at the trust boundary: the peer itself is the client.
fn junk(name: &str, peer: &'static str, headers: &[(&str, &str)]) -> Case {
    case(name, peer, headers, peer, peer, "malformed")
}

/// An untrusted peer's forwarding headers are ignored.
fn spoof(name: &str, from: &'static str, headers: &[(&str, &str)]) -> Case {
    case(name, from, headers, from, from, "untrusted_peer_spoof")
}

fn owned(name: String, from: &'static str, headers: Vec<(String, Vec<u8>)>, want: Want) -> Case {
    Case {
        name,
        from,
        headers,
        want,
    }
}

fn seen(real_ip: &str, xff: &str, trust: &'static str) -> Want {
    Want::Seen {
        real_ip: real_ip.to_string(),
        xff: xff.to_string(),
        trust,
    }
}

fn spoofing_cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Every header that claims to name the client, in several spellings.
    for name in [
        "X-FORWARDED-FOR",
        "x_forwarded_for",
        "X-Forwarded_For",
        "X-Real-Ip",
        "X_REAL_IP",
        "FORWARDED",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Port",
        "X-Forwarded-Server",
        "X-Forwarded",
        "Forwarded-For",
        "X-Client-IP",
        "Client-IP",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
        "X-Cluster-Client-IP",
        "X-Original-Forwarded-For",
        "X-Originating-IP",
        "X-Remote-IP",
        "X-Remote-Addr",
        "X-ProxyUser-Ip",
        "true_client_ip",
    ] {
        v.push(spoof(
            &format!("untrusted sends {name}"),
            U1,
            &[(name, "198.51.100.66")],
        ));
    }
    v.extend([
        spoof(
            "untrusted claims to be a trusted proxy's client",
            U2,
            &[("X-Forwarded-For", "203.0.113.5, 127.0.0.2")],
        ),
        spoof(
            "untrusted claims an internal address",
            U1,
            &[("X-Forwarded-For", "10.0.0.1")],
        ),
        spoof(
            "untrusted claims loopback",
            U1,
            &[("X-Real-IP", "127.0.0.1")],
        ),
        spoof(
            "untrusted sends every header at once",
            U2,
            &[
                ("X-Forwarded-For", "1.1.1.1"),
                ("Forwarded", "for=2.2.2.2"),
                ("X-Real-IP", "3.3.3.3"),
                ("True-Client-IP", "4.4.4.4"),
            ],
        ),
        // pingora refuses to let Connection nominate x-forwarded-for (or Host,
        // X-Forwarded-Host/-Proto) at all: a JSON 400, nothing proxied.
        owned(
            "untrusted hides XFF behind Connection".into(),
            U1,
            vec![
                ("Connection".into(), b"keep-alive, X-Forwarded-For".to_vec()),
                ("X-Forwarded-For".into(), b"198.51.100.7".to_vec()),
            ],
            Want::Refused(400, Some("untrusted_peer_spoof")),
        ),
        spoof(
            "untrusted sends an IPv6 XFF",
            U1,
            &[("X-Forwarded-For", "[2001:db8::66]:1")],
        ),
        spoof(
            "untrusted sends junk XFF",
            U2,
            &[("X-Forwarded-For", "not, an, address")],
        ),
        spoof(
            "untrusted sends an empty XFF",
            U2,
            &[("X-Forwarded-For", "")],
        ),
        owned(
            "untrusted, Connection naming XFF but no XFF".into(),
            U1,
            vec![("Connection".into(), b"x-forwarded-for".to_vec())],
            Want::Refused(400, Some("direct")),
        ),
        case(
            "untrusted, Connection naming another spoof header",
            U2,
            &[("Connection", "X-Real-IP"), ("X-Real-IP", "198.51.100.8")],
            U2,
            U2,
            "untrusted_peer_spoof",
        ),
        case(
            "untrusted, request id is not a forwarding header",
            U2,
            &[("X-Request-Id", "abc-123")],
            U2,
            U2,
            "direct",
        ),
    ]);
    // Many repeated lines and one big line from an untrusted peer.
    let many: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            (
                "X-Forwarded-For".to_string(),
                format!("198.51.100.{i}").into_bytes(),
            )
        })
        .collect();
    v.push(owned(
        "untrusted sends 60 XFF lines".into(),
        U1,
        many,
        seen(U1, U1, "untrusted_peer_spoof"),
    ));
    let big = vec!["198.51.100.1"; 600].join(", ");
    v.push(owned(
        format!("untrusted sends a {} byte XFF", big.len()),
        U2,
        vec![("X-Forwarded-For".into(), big.into_bytes())],
        seen(U2, U2, "untrusted_peer_spoof"),
    ));
    v
}

fn trusted_junk_cases() -> Vec<Case> {
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    let mut v = vec![
        junk("junk right of the client", T1, &xff("203.0.113.7, junk")),
        via(
            "junk left of the client is never read",
            T1,
            &xff("junk, 203.0.113.7"),
            "203.0.113.7",
        ),
        case(
            "junk between client and a trusted hop falls back to the hop",
            T1,
            &xff("203.0.113.7, junk, 10.0.0.1"),
            "10.0.0.1",
            "10.0.0.1, 127.0.0.2",
            "malformed",
        ),
        via(
            "empty list elements skipped",
            T1,
            &xff("203.0.113.7,,  , "),
            "203.0.113.7",
        ),
        case("only commas", T1, &xff(",,,"), T1, T1, "trusted"),
        case("empty value", T1, &xff(""), T1, T1, "trusted"),
        via("tabs as OWS", T1, &xff("\t203.0.113.8\t"), "203.0.113.8"),
        case(
            "spaces around commas",
            T2,
            &xff("203.0.113.9 , 10.0.0.2"),
            "203.0.113.9",
            "203.0.113.9, 10.0.0.2, 127.0.0.4",
            "trusted",
        ),
        junk("leading-zero octets", T1, &xff("203.000.113.7")),
        junk("port separator without port", T1, &xff("203.0.113.7:")),
        junk("port out of range", T1, &xff("203.0.113.7:65536")),
        junk("signed port", T1, &xff("203.0.113.7:+80")),
        via(
            "port zero is still a port",
            T1,
            &xff("203.0.113.7:0"),
            "203.0.113.7",
        ),
        junk("five octets", T1, &xff("1.2.3.4.5")),
        junk("octet over 255", T1, &xff("256.1.1.1")),
        junk("hex octet", T1, &xff("0x7f.0.0.1")),
        junk("integer IPv4", T1, &xff("2130706433")),
        junk("CIDR instead of address", T1, &xff("203.0.113.7/24")),
        junk("unknown is not an XFF value", T1, &xff("unknown")),
        junk("quoted address", T1, &xff("\"203.0.113.7\"")),
        junk("host name", T1, &xff("localhost")),
        junk(
            "entry longer than any address",
            T1,
            &xff("2001:0db8:0000:0000:0000:0000:0000:0001:2001:0db8:0000:0000:0000:0001"),
        ),
        junk("space inside an entry", T1, &xff("203.0.113 .7")),
        case(
            "trusted proxy names itself",
            T1,
            &xff("127.0.0.2"),
            "127.0.0.2",
            "127.0.0.2, 127.0.0.2",
            "trusted",
        ),
        case(
            "all hops trusted: leftmost is the client",
            T1,
            &xff("10.0.0.1, 10.0.0.2"),
            "10.0.0.1",
            "10.0.0.1, 10.0.0.2, 127.0.0.2",
            "trusted",
        ),
        case(
            "trusted hop left of the client is not believed",
            T1,
            &xff("10.0.0.1, 203.0.113.7, 10.0.0.2"),
            "203.0.113.7",
            "203.0.113.7, 10.0.0.2, 127.0.0.2",
            "trusted",
        ),
        via(
            "spoofed private address on the left",
            T2,
            &xff("192.168.1.1, 203.0.113.7"),
            "203.0.113.7",
        ),
        junk(
            "XFF wins even when junk and Forwarded is fine",
            T1,
            &[
                ("X-Forwarded-For", "junk"),
                ("Forwarded", "for=198.51.100.3"),
            ],
        ),
        case(
            "X-Real-IP is not read unless configured",
            T1,
            &[("X-Real-IP", "198.51.100.4")],
            T1,
            T1,
            "trusted",
        ),
        via(
            "header name case does not matter",
            T1,
            &[("x-FORWARDED-for", "203.0.113.10")],
            "203.0.113.10",
        ),
        case(
            "underscore spelling is not read from a trusted peer",
            T1,
            &[("X_Forwarded_For", "203.0.113.11")],
            T1,
            T1,
            "trusted",
        ),
        case(
            "lines joined: junk line between client line and hop line",
            T1,
            &[
                ("X-Forwarded-For", "203.0.113.1"),
                ("X-Forwarded-For", "junk"),
                ("X-Forwarded-For", "10.0.0.1"),
            ],
            "10.0.0.1",
            "10.0.0.1, 127.0.0.2",
            "malformed",
        ),
        via(
            "identical repeated lines",
            T1,
            &[
                ("X-Forwarded-For", "203.0.113.12"),
                ("X-Forwarded-For", "203.0.113.12"),
            ],
            "203.0.113.12",
        ),
        via(
            "second trusted proxy",
            T2,
            &xff("198.51.100.200"),
            "198.51.100.200",
        ),
    ];
    // obs-text bytes (valid in an HTTP field value, never in an address).
    v.push(owned(
        "obs-text at the boundary".into(),
        T1,
        vec![(
            "X-Forwarded-For".into(),
            b"203.0.113.7, 10.0.0.\xff1".to_vec(),
        )],
        seen(T1, T1, "malformed"),
    ));
    v.push(owned(
        "UTF-8 left of the client is never read".into(),
        T1,
        vec![(
            "X-Forwarded-For".into(),
            "ünïcödé, 203.0.113.13".as_bytes().to_vec(),
        )],
        seen("203.0.113.13", "203.0.113.13, 127.0.0.2", "trusted"),
    ));
    // Hop cap (default 20 entries walked, the client entry included).
    let hops: Vec<String> = (1..=19).map(|i| format!("10.0.0.{i}")).collect();
    v.push(owned(
        "19 trusted hops plus the client fit the default cap".into(),
        T1,
        vec![(
            "X-Forwarded-For".into(),
            format!("203.0.113.14, {}", hops.join(", ")).into_bytes(),
        )],
        seen(
            "203.0.113.14",
            &format!("203.0.113.14, {}, 127.0.0.2", hops.join(", ")),
            "trusted",
        ),
    ));
    let hops: Vec<String> = (1..=20).map(|i| format!("10.0.0.{i}")).collect();
    v.push(owned(
        "20 trusted hops plus the client exceed the cap".into(),
        T1,
        vec![(
            "X-Forwarded-For".into(),
            format!("203.0.113.15, {}", hops.join(", ")).into_bytes(),
        )],
        seen(
            "10.0.0.1",
            &format!("{}, 127.0.0.2", hops.join(", ")),
            "malformed",
        ),
    ));
    v
}

fn rfc7239_cases() -> Vec<Case> {
    let fwd = |v: &'static str| [("Forwarded", v)];
    vec![
        via("plain for", T1, &fwd("for=192.0.2.43"), "192.0.2.43"),
        via(
            "parameter name is case-insensitive",
            T1,
            &fwd("For=192.0.2.44"),
            "192.0.2.44",
        ),
        via("quoted IPv4", T1, &fwd("FOR=\"192.0.2.45\""), "192.0.2.45"),
        via(
            "quoted IPv4 with port",
            T1,
            &fwd("for=\"192.0.2.46:4711\""),
            "192.0.2.46",
        ),
        junk(
            "unquoted port is not a token",
            T1,
            &fwd("for=192.0.2.47:4711"),
        ),
        via(
            "quoted bracketed IPv6",
            T1,
            &fwd("for=\"[2001:db8:cafe::18]\""),
            "2001:db8:cafe::18",
        ),
        junk(
            "unquoted brackets are not a token",
            T1,
            &fwd("for=[2001:db8::1]"),
        ),
        junk("bare IPv6 is not a node", T1, &fwd("for=\"2001:db8::1\"")),
        case(
            "obfuscated node",
            T1,
            &fwd("for=_hidden"),
            T1,
            T1,
            "malformed",
        ),
        case(
            "quoted obfuscated node",
            T1,
            &fwd("for=\"_gazonk\""),
            T1,
            T1,
            "malformed",
        ),
        case(
            "unknown with port",
            T1,
            &fwd("for=\"unknown:4711\""),
            T1,
            T1,
            "malformed",
        ),
        via(
            "obfuscated port is allowed",
            T1,
            &fwd("for=\"[2001:db8::19]:_p0rt\""),
            "2001:db8::19",
        ),
        via(
            "other parameters around for",
            T1,
            &fwd("proto=http;for=192.0.2.60;by=203.0.113.43"),
            "192.0.2.60",
        ),
        via(
            "rightmost untrusted element wins",
            T1,
            &fwd("for=192.0.2.43, for=198.51.100.17"),
            "198.51.100.17",
        ),
        case(
            "trusted element skipped",
            T1,
            &fwd("for=192.0.2.48, for=10.0.0.5"),
            "192.0.2.48",
            "192.0.2.48, 10.0.0.5, 127.0.0.2",
            "trusted",
        ),
        junk(
            "two for in one element",
            T1,
            &fwd("for=192.0.2.43;for=198.51.100.17"),
        ),
        junk("element without for", T1, &fwd("proto=https")),
        junk("pair without =", T1, &fwd("for=192.0.2.43;junk")),
        junk(
            "unterminated quote in another parameter",
            T1,
            &fwd("for=192.0.2.43;by=\"unterminated"),
        ),
        junk(
            "quotes inside the node",
            T1,
            &fwd("for=\"\\\"192.0.2.1\\\"\""),
        ),
        via(
            "escaped character inside quotes",
            T1,
            &fwd("for=\"192.0.2.\\49\""),
            "192.0.2.49",
        ),
        junk(
            "quoted comma inside the node",
            T1,
            &fwd("for=\"198.51.100.1,10.0.0.1\""),
        ),
        via(
            "quoted comma in another parameter",
            T1,
            &fwd("by=\"a,b\";for=192.0.2.9"),
            "192.0.2.9",
        ),
        via(
            "OWS around semicolons",
            T1,
            &fwd("for=192.0.2.50 ; proto=http"),
            "192.0.2.50",
        ),
        junk("spaces around =", T1, &fwd("for = 192.0.2.51")),
        case(
            "several Forwarded lines, chain kept",
            T1,
            &[
                ("Forwarded", "for=192.0.2.53"),
                ("Forwarded", "for=10.0.0.7"),
            ],
            "192.0.2.53",
            "192.0.2.53, 10.0.0.7, 127.0.0.2",
            "trusted",
        ),
        via(
            "unterminated quote on an earlier line cannot swallow a later one",
            T1,
            &[
                ("Forwarded", "for=\"192.0.2.1, for=6.6.6.6"),
                ("Forwarded", "for=198.51.100.9"),
            ],
            "198.51.100.9",
        ),
        via(
            "mapped IPv6 node canonicalised",
            T1,
            &fwd("for=\"[::ffff:203.0.113.5]\""),
            "203.0.113.5",
        ),
        junk("Forwarded zone id", T1, &fwd("for=\"[fe80::1%eth0]\"")),
        junk(
            "IPv6 port out of range",
            T1,
            &fwd("for=\"[2001:db8::1]:99999\""),
        ),
        via(
            "trailing empty element",
            T1,
            &fwd("for=192.0.2.54,"),
            "192.0.2.54",
        ),
        case("empty Forwarded", T1, &fwd(""), T1, T1, "trusted"),
        junk(
            "non-token parameter value",
            T1,
            &fwd("for=192.0.2.55;by=@@"),
        ),
        via(
            "mixed case unknown to the left is never read",
            T1,
            &fwd("for=UNKNOWN, for=198.51.100.10"),
            "198.51.100.10",
        ),
        junk("Forwarded bracketed IPv4", T1, &fwd("for=\"[192.0.2.56]\"")),
        via(
            "Forwarded used when XFF is absent",
            T2,
            &fwd("for=198.51.100.11;proto=https;host=example.com"),
            "198.51.100.11",
        ),
    ]
}

fn ipv6_cases() -> Vec<Case> {
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    vec![
        via("bare IPv6", T1, &xff("2001:db8::1"), "2001:db8::1"),
        via(
            "upper-case IPv6 canonicalised",
            T1,
            &xff("2001:DB8::A"),
            "2001:db8::a",
        ),
        via(
            "fully written IPv6 compressed",
            T1,
            &xff("2001:0db8:0000:0000:0000:0000:0000:0001"),
            "2001:db8::1",
        ),
        via(
            "bracketed without port",
            T1,
            &xff("[2001:db8::2]"),
            "2001:db8::2",
        ),
        junk("bracketed with empty port", T1, &xff("[2001:db8::3]:")),
        junk("missing closing bracket", T1, &xff("[2001:db8::4")),
        junk("missing opening bracket", T1, &xff("2001:db8::5]")),
        via(
            "a trailing group is part of the address, not a port",
            T1,
            &xff("2001:db8::1:443"),
            "2001:db8::1:443",
        ),
        via(
            "mapped with port canonicalised",
            T1,
            &xff("[::ffff:203.0.113.7]:80"),
            "203.0.113.7",
        ),
        via(
            "hex-written mapped address canonicalised",
            T1,
            &xff("::ffff:cb00:7108"),
            "203.0.113.8",
        ),
        junk("zone id percent-encoded", T1, &xff("fe80::1%25eth0")),
        junk("zone id", T1, &xff("fe80::1%eth0")),
        via("IPv6 loopback is just an address", T1, &xff("::1"), "::1"),
        case(
            "trusted IPv6 hop skipped",
            T1,
            &xff("203.0.113.16, 2001:db8:ffff::1"),
            "203.0.113.16",
            "203.0.113.16, 2001:db8:ffff::1, 127.0.0.2",
            "trusted",
        ),
        case(
            "mapped hop matches the mapped trusted CIDR",
            T1,
            &xff("203.0.113.17, ::ffff:192.168.0.5"),
            "203.0.113.17",
            "203.0.113.17, 192.168.0.5, 127.0.0.2",
            "trusted",
        ),
        case(
            "IPv4 trusted hop written mapped",
            T1,
            &xff("203.0.113.18, ::ffff:10.0.0.3"),
            "203.0.113.18",
            "203.0.113.18, 10.0.0.3, 127.0.0.2",
            "trusted",
        ),
        via(
            "v6 outside the trusted /48 is the client",
            T1,
            &xff("2001:db8:fffe::1"),
            "2001:db8:fffe::1",
        ),
        junk("bracketed IPv4", T1, &xff("[203.0.113.7]")),
        junk("invalid hex group", T1, &xff("2001:db8::g")),
        via(
            "longest mapped form with port",
            T1,
            &xff("[::ffff:255.255.255.255]:65535"),
            "255.255.255.255",
        ),
        junk("two double colons", T1, &xff("2001::db8::1")),
        junk("nine groups", T1, &xff("1:2:3:4:5:6:7:8:9")),
    ]
}

fn oversized_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let big = vec!["198.51.100.1"; 500].join(", ");
    v.push(owned(
        format!("trusted {} byte XFF, client on the right", big.len()),
        T1,
        vec![("X-Forwarded-For".into(), big.into_bytes())],
        seen("198.51.100.1", "198.51.100.1, 127.0.0.2", "trusted"),
    ));
    // 90 lines of trusted hops: the walk stops at the cap (20) and falls back.
    let lines: Vec<(String, Vec<u8>)> = (1..=90)
        .map(|i| {
            (
                "X-Forwarded-For".to_string(),
                format!("10.0.1.{i}").into_bytes(),
            )
        })
        .collect();
    let kept: Vec<String> = (71..=90).map(|i| format!("10.0.1.{i}")).collect();
    v.push(owned(
        "90 XFF lines of trusted hops".into(),
        T1,
        lines,
        seen(
            "10.0.1.71",
            &format!("{}, 127.0.0.2", kept.join(", ")),
            "malformed",
        ),
    ));
    let elements = vec!["for=198.51.100.2"; 700].join(", ");
    v.push(owned(
        format!("{} byte Forwarded", elements.len()),
        T1,
        vec![("Forwarded".into(), elements.into_bytes())],
        seen("198.51.100.2", "198.51.100.2, 127.0.0.2", "trusted"),
    ));
    let elements = vec!["for=10.0.0.1"; 500].join(", ");
    v.push(owned(
        "500 trusted Forwarded elements hit the cap".into(),
        T1,
        vec![("Forwarded".into(), elements.into_bytes())],
        seen(
            "10.0.0.1",
            &format!("{}, 127.0.0.2", vec!["10.0.0.1"; 20].join(", ")),
            "malformed",
        ),
    ));
    // Over the head limits: refused at the edge, nothing proxied.
    let huge = vec!["198.51.100.1"; 1500].join(", ");
    v.push(owned(
        format!("{} byte XFF over the head cap", huge.len()),
        T1,
        vec![("X-Forwarded-For".into(), huge.into_bytes())],
        Want::Refused(431, None),
    ));
    let lines: Vec<(String, Vec<u8>)> = (0..101)
        .map(|i| {
            (
                "X-Forwarded-For".to_string(),
                format!("198.51.100.{}", i % 250).into_bytes(),
            )
        })
        .collect();
    v.push(owned(
        "101 XFF lines over the field cap".into(),
        U1,
        lines,
        Want::Refused(431, None),
    ));
    v
}

fn real_ip_cases() -> Vec<Case> {
    let xri = |v: &'static str| [("X-Real-IP", v)];
    vec![
        via(
            "X-Real-IP read when configured",
            T1,
            &xri("203.0.113.20"),
            "203.0.113.20",
        ),
        via(
            "a trusted address in X-Real-IP is vouched for",
            T1,
            &xri("10.0.0.1"),
            "10.0.0.1",
        ),
        junk(
            "two X-Real-IP lines",
            T1,
            &[("X-Real-IP", "203.0.113.21"), ("X-Real-IP", "203.0.113.22")],
        ),
        junk(
            "a list in X-Real-IP",
            T1,
            &xri("203.0.113.23, 198.51.100.1"),
        ),
        via(
            "XFF ignored when only X-Real-IP is configured",
            T1,
            &[
                ("X-Forwarded-For", "198.51.100.99"),
                ("X-Real-IP", "203.0.113.24"),
            ],
            "203.0.113.24",
        ),
        case(
            "XFF alone is not read",
            T1,
            &[("X-Forwarded-For", "198.51.100.98")],
            T1,
            T1,
            "trusted",
        ),
        via(
            "bracketed IPv6 with port",
            T1,
            &xri("[2001:db8::5]:80"),
            "2001:db8::5",
        ),
        spoof("untrusted X-Real-IP", U1, &xri("203.0.113.25")),
        junk("junk X-Real-IP", T1, &xri("junk")),
    ]
}

fn small_cap_cases() -> Vec<Case> {
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    vec![
        case(
            "three trusted hops plus client exceed a cap of 3",
            T1,
            &xff("203.0.113.30, 10.0.0.1, 10.0.0.2, 10.0.0.3"),
            "10.0.0.1",
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.2",
            "malformed",
        ),
        case(
            "two trusted hops plus client fit a cap of 3",
            T1,
            &xff("203.0.113.31, 10.0.0.1, 10.0.0.2"),
            "203.0.113.31",
            "203.0.113.31, 10.0.0.1, 10.0.0.2, 127.0.0.2",
            "trusted",
        ),
        via(
            "Forwarded preferred when listed first",
            T1,
            &[
                ("X-Forwarded-For", "198.51.100.50"),
                ("Forwarded", "for=198.51.100.51"),
            ],
            "198.51.100.51",
        ),
        via(
            "XFF used when the preferred Forwarded is absent",
            T1,
            &xff("198.51.100.52"),
            "198.51.100.52",
        ),
        junk(
            "preferred Forwarded malformed: no shopping around",
            T1,
            &[
                ("Forwarded", "for=nonsense"),
                ("X-Forwarded-For", "198.51.100.53"),
            ],
        ),
    ]
}

fn build_request(case: &Case) -> Vec<u8> {
    let mut req = b"GET /v1/echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n".to_vec();
    for (k, v) in &case.headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Folded header names that claim to identify the client (an independent list,
/// not the gateway's own): upstream may see only the three the gateway writes.
const CLIENT_CLAIMS: &str = "
    x-forwarded-for x-forwarded-host x-forwarded-proto x-forwarded-port x-forwarded-server
    x-forwarded forwarded forwarded-for x-real-ip x-client-ip client-ip true-client-ip
    cf-connecting-ip fastly-client-ip x-cluster-client-ip x-original-forwarded-for
    x-originating-ip x-remote-ip x-remote-addr x-proxyuser-ip";

/// Runs every case against `gw`, returns the number of cases run. Collects all
/// mismatches before failing so one run shows every broken row.
async fn run_cases(gw: &GatewayProc, stub: &Stub, cases: &[Case]) -> usize {
    let mut failures = Vec::new();
    let mut ids: HashMap<String, (usize, &'static str, String)> = HashMap::new();
    for (i, case) in cases.iter().enumerate() {
        let before = stub.count();
        let resp = match raw_request(
            case.from.parse().unwrap(),
            gw.addr,
            &build_request(case),
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no response: {e}", case.name));
                continue;
            }
        };
        match &case.want {
            Want::Refused(status, trust) => {
                if let (Some(trust), Some(id)) = (trust, resp.header("x-request-id")) {
                    ids.insert(id.to_string(), (i, trust, case.from.to_string()));
                }
                if resp.status != *status {
                    failures.push(format!(
                        "{}: status {} want {status}",
                        case.name, resp.status
                    ));
                } else if serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .ok()
                    .and_then(|j| j["error"]["code"].as_str().map(str::to_owned))
                    .is_none()
                {
                    failures.push(format!("{}: refusal is not a JSON error", case.name));
                }
                if stub.count() != before {
                    failures.push(format!(
                        "{}: refused request reached the upstream",
                        case.name
                    ));
                }
            }
            Want::Seen {
                real_ip,
                xff,
                trust,
            } => {
                if resp.status != 200 || stub.count() != before + 1 {
                    failures.push(format!(
                        "{}: status {} ({}), upstream saw {} requests",
                        case.name,
                        resp.status,
                        resp.text(),
                        stub.count() - before
                    ));
                    continue;
                }
                let headers = stub.last_headers();
                let got_ip = header_values(&headers, "x-real-ip");
                let got_xff = header_values(&headers, "x-forwarded-for");
                if got_ip != [real_ip.as_str()] || got_xff != [xff.as_str()] {
                    failures.push(format!(
                        "{}: upstream saw X-Real-IP {got_ip:?}, XFF {got_xff:?}; want {real_ip:?}, {xff:?}",
                        case.name
                    ));
                }
                // Ours: exactly one http/https, https only where a trusted peer said so with a
                // well-formed Forwarded element (the one case in this table that does).
                let want_proto = if case.name == "Forwarded used when XFF is absent" {
                    "https"
                } else {
                    "http"
                };
                if header_values(&headers, "x-forwarded-proto") != [want_proto] {
                    failures.push(format!("{}: X-Forwarded-Proto not ours", case.name));
                }
                for (name, _) in &headers {
                    let folded = name.replace('_', "-");
                    let ours = matches!(
                        name.as_str(),
                        "x-forwarded-for" | "x-real-ip" | "x-forwarded-proto"
                    );
                    if CLIENT_CLAIMS.split_whitespace().any(|c| c == folded) && !ours {
                        failures.push(format!("{}: {name} leaked upstream", case.name));
                    }
                }
                if let Some(id) = resp.header("x-request-id") {
                    ids.insert(id.to_string(), (i, trust, real_ip.clone()));
                } else {
                    failures.push(format!("{}: no request id", case.name));
                }
            }
        }
    }
    // The access log is written by a background thread: wait (bounded) for every line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = gw.proc.access_logs();
        let present = logs
            .iter()
            .filter(|l| {
                l["request_id"]
                    .as_str()
                    .is_some_and(|id| ids.contains_key(id))
            })
            .count();
        if present == ids.len() || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut logged = 0;
    for line in &logs {
        let Some((i, trust, real_ip)) = line["request_id"].as_str().and_then(|id| ids.get(id))
        else {
            continue;
        };
        logged += 1;
        if line["trust"] != *trust || line["client_ip"] != real_ip.as_str() {
            failures.push(format!(
                "{}: log says trust {} client {}, want {trust} {real_ip}",
                cases[*i].name, line["trust"], line["client_ip"]
            ));
        }
    }
    if logged != ids.len() {
        failures.push(format!(
            "{} of {} access-log lines found",
            logged,
            ids.len()
        ));
    }
    // Metrics agree with the table: one untrusted_peer rejection per spoof row,
    // one other rejection per malformed row.
    let count = |t: &str| {
        cases
            .iter()
            .filter(|c| match &c.want {
                Want::Seen { trust, .. } => *trust == t,
                Want::Refused(_, trust) => *trust == Some(t),
            })
            .count() as f64
    };
    let metric = |reason: &str| {
        gw.metric_sum(
            "gateway_forwarded_header_rejections_total",
            &[("reason", reason)],
        )
    };
    let untrusted = metric("untrusted_peer");
    let other = metric("malformed") + metric("unknown_node") + metric("too_many_hops");
    // 431 rows never reach client-IP resolution, so they count nowhere.
    if untrusted != count("untrusted_peer_spoof") || other != count("malformed") {
        failures.push(format!(
            "rejection metrics: untrusted_peer {untrusted} (want {}), others {other} (want {})",
            count("untrusted_peer_spoof"),
            count("malformed")
        ));
    }
    assert_all_passed(&failures, cases.len());
    cases.len()
}

async fn gateway(extra: &str) -> (Stub, GatewayProc) {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, extra);
    (stub, gw)
}

fn assert_distinct_names(cases: &[Case]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in cases {
        *seen.entry(&c.name).or_default() += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicate case names: {dup:?}");
}

#[tokio::test]
async fn hostile_forwarded_headers_main_config() {
    let (stub, gw) = gateway(MAIN_CONFIG).await;
    let mut cases = spoofing_cases();
    cases.extend(trusted_junk_cases());
    cases.extend(rfc7239_cases());
    cases.extend(ipv6_cases());
    cases.extend(oversized_cases());
    assert_distinct_names(&cases);
    let n = run_cases(&gw, &stub, &cases).await;
    assert!(n >= 100, "only {n} cases");
    eprintln!("hostile_forwarded main config: {n} cases passed");
}

#[tokio::test]
async fn hostile_forwarded_headers_x_real_ip_config() {
    let (stub, gw) =
        gateway("trusted_proxies: [127.0.0.2/32, 10.0.0.0/8]\nforwarded_headers: [x-real-ip]\n")
            .await;
    let n = run_cases(&gw, &stub, &real_ip_cases()).await;
    eprintln!("hostile_forwarded x-real-ip config: {n} cases passed");
}

#[tokio::test]
async fn hostile_forwarded_headers_small_hop_cap_config() {
    let (stub, gw) = gateway(
        "trusted_proxies: [127.0.0.2/32, 10.0.0.0/8]\nforwarded_headers: [forwarded, x-forwarded-for]\nmax_forwarded_hops: 3\n",
    )
    .await;
    let n = run_cases(&gw, &stub, &small_cap_cases()).await;
    eprintln!("hostile_forwarded small hop cap config: {n} cases passed");
}
