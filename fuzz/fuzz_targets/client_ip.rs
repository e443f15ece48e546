//! Forwarded-header parser (`gateway::admit::client_ip::resolve`): never panics, and the
//! result keeps its trust invariants whatever a proxy chain writes.
//!
//! Input layout (so libFuzzer can mutate header text directly):
//! byte 0 picks the socket peer, byte 1 the header preference order and hop cap,
//! then `\n`-separated lines whose first byte picks a header name and whose rest
//! is the raw value.
#![no_main]

use std::net::IpAddr;

use gateway::admit::client_ip::{resolve, ClientIpPolicy, ForwardedHeader, TrustDecision};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x_forwarded_for",
    "x-forwarded-host",
    "true-client-ip",
    "forwarded-for",
    "x-client-ip",
];

const PEERS: &[&str] = &[
    "10.0.0.1",            // trusted (10/8)
    "127.0.0.2",           // trusted (/32)
    "::ffff:10.1.2.3",     // trusted via mapped-v4 canonicalisation
    "2001:db8:1::5",       // trusted (v6 /48)
    "203.0.113.9",         // untrusted
    "2001:db8:2::1",       // untrusted
    "::ffff:198.51.100.1", // untrusted, mapped
    "::1",                 // untrusted
];

fn policy(order: u8) -> ClientIpPolicy {
    use ForwardedHeader::*;
    let orders: [&[ForwardedHeader]; 4] = [
        &[XForwardedFor, Forwarded],
        &[Forwarded, XForwardedFor],
        &[XRealIp],
        &[XForwardedFor, Forwarded, XRealIp],
    ];
    let trusted: Vec<ipnet::IpNet> = [
        "10.0.0.0/8",
        "127.0.0.2/32",
        "2001:db8:1::/48",
        "::ffff:192.168.0.0/112",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect();
    ClientIpPolicy::new(
        &trusted,
        orders[usize::from(order & 3)].to_vec(),
        // 1..=64 as config validation allows.
        1 + usize::from((order >> 2) % 64),
    )
}

fuzz_target!(|data: &[u8]| {
    let [peer_sel, order, rest @ ..] = data else {
        return;
    };
    let peer: IpAddr = PEERS[usize::from(*peer_sel) % PEERS.len()].parse().unwrap();
    let policy = policy(*order);
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let [sel, value @ ..] = line else { continue };
        let name = HeaderName::from_static(NAMES[usize::from(*sel) % NAMES.len()]);
        // Only bytes a real HTTP parser would hand us as a header value.
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }

    let r = resolve(peer, &headers, &policy);
    let canonical_peer = peer.to_canonical();

    // The peer is always the last hop, the client always the first entry.
    assert_eq!(r.chain.last(), Some(&canonical_peer));
    assert_eq!(r.chain.first(), Some(&r.client));
    assert!(r.chain.len() <= policy.max_hops + 1, "{r:?}");
    // Every hop right of the client was checked against the trusted set.
    for hop in &r.chain[1..] {
        assert!(policy.is_trusted(*hop), "untrusted hop in chain: {r:?}");
    }
    // Canonical addresses only: no IPv4-mapped IPv6 leaks upstream.
    assert!(r.chain.iter().all(|ip| *ip == ip.to_canonical()), "{r:?}");
    if !policy.is_trusted(canonical_peer) {
        // Nothing an untrusted peer writes is believed.
        assert_eq!(r.client, canonical_peer);
        assert_eq!(r.chain.len(), 1);
        assert!(matches!(
            r.decision,
            TrustDecision::Direct | TrustDecision::UntrustedPeerSpoof
        ));
    } else {
        assert!(matches!(
            r.decision,
            TrustDecision::Trusted | TrustDecision::Malformed
        ));
        assert_eq!(
            r.decision == TrustDecision::Malformed,
            r.rejection.is_some()
        );
    }
    // What we send upstream is always a valid header value.
    assert!(HeaderValue::from_str(&r.x_forwarded_for()).is_ok());
});
