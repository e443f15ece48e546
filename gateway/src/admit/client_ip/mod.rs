//! Who is the client? Resolves the client address of a request from the socket
//! peer and, only when the peer is a trusted proxy, its forwarding headers.
//!
//! The result keys rate limiting, and clients on the internet are hostile, so:
//! - headers from an untrusted peer are never believed;
//! - a chain is walked right to left (the right end is the part our own
//!   proxies wrote) and stops at the first untrusted address;
//! - anything we cannot parse *before* reaching that address makes us fall
//!   back to the last hop we could verify, never to attacker-chosen text;
//! - nothing here panics, allocates per byte, or does I/O.

pub mod forwarded;

use std::collections::VecDeque;
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::admit::client_ip::forwarded::{
    is_forwarding_header, parse_addr_entry, parse_forwarded_element, trim_ows, Node,
    SplitOutsideQuotes,
};
use crate::admit::net::{canonical_ip, canonical_nets};
use crate::observe::textfmt::push_ip;

// The decision is the access log's bounded `trust` field, so observe defines it.
pub use crate::observe::labels::TrustDecision;

/// Default cap on chain entries walked: deep enough for any real proxy chain,
/// small enough that a 10 KB header cannot make us do real work.
pub const DEFAULT_MAX_HOPS: usize = 20;

/// A forwarding header we know how to read. YAML: `x-forwarded-for`,
/// `forwarded`, `x-real-ip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
    XRealIp,
}

impl ForwardedHeader {
    /// The canonical header name. Only this exact spelling is read from a
    /// trusted peer; odd spellings (`X_Forwarded_For`) only count as spoofing.
    pub fn header_name(self) -> HeaderName {
        match self {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => http::header::FORWARDED,
            ForwardedHeader::XRealIp => HeaderName::from_static("x-real-ip"),
        }
    }
}

/// Which peers may tell us who the client is, and how.
#[derive(Clone, Debug)]
pub struct ClientIpPolicy {
    /// Proxies whose forwarding headers we believe, canonical (built by `new`). Empty =
    /// trust no one.
    trusted_proxies: Vec<IpNet>,
    /// Headers to read, in order of preference; the first one present wins.
    pub headers: Vec<ForwardedHeader>,
    /// Cap on chain entries walked (including the client entry itself).
    pub max_hops: usize,
}

impl Default for ClientIpPolicy {
    /// Trust no one: the safe default until configuration says otherwise.
    fn default() -> Self {
        ClientIpPolicy {
            trusted_proxies: Vec::new(),
            headers: vec![ForwardedHeader::XForwardedFor],
            max_hops: DEFAULT_MAX_HOPS,
        }
    }
}

impl ClientIpPolicy {
    /// The policy with `trusted_proxies` in canonical form (`net::canonical_net`), so an
    /// IPv4-mapped CIDR (`::ffff:10.0.0.0/104`) trusts the IPv4 hosts it names.
    pub fn new(trusted_proxies: &[IpNet], headers: Vec<ForwardedHeader>, max_hops: usize) -> Self {
        ClientIpPolicy {
            trusted_proxies: canonical_nets(trusted_proxies),
            headers,
            max_hops,
        }
    }

    /// Is `ip` one of our trusted proxies? The address is canonicalised first and the
    /// list was at construction, so the same host matches however it is spelled. Other
    /// IPv6 CIDRs (even `::/0`) never match IPv4 addresses: trusting more than the
    /// operator wrote is the dangerous direction.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Why forwarding information was (partly) rejected; metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    UntrustedPeer,
    Malformed,
    UnknownNode,
    TooManyHops,
}

impl Rejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::UntrustedPeer => "untrusted_peer",
            Rejection::Malformed => "malformed",
            Rejection::UnknownNode => "unknown_node",
            Rejection::TooManyHops => "too_many_hops",
        }
    }
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub client: IpAddr,
    pub decision: TrustDecision,
    pub rejection: Option<Rejection>,
    /// The validated chain for the upstream X-Forwarded-For: client first, then the trusted
    /// hops to its right, then the socket peer last. For an untrusted peer: just the peer.
    pub chain: Vec<IpAddr>,
}

impl Resolution {
    /// The upstream `X-Forwarded-For` value, `"client, hop, peer"`. Built only
    /// from verified addresses, so nothing the client wrote is relayed.
    pub fn x_forwarded_for(&self) -> String {
        String::from_utf8_lossy(&self.xff_bytes()).into_owned()
    }

    fn xff_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.chain.len() * 17);
        for (i, ip) in self.chain.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_ip(&mut out, *ip);
        }
        out
    }

    /// `X-Forwarded-For` and `X-Real-IP` for the upstream, formatted once: the client is
    /// the chain's first entry, so X-Real-IP shares X-Forwarded-For's bytes (one
    /// allocation for both, no copy).
    pub fn upstream_values(&self) -> (HeaderValue, HeaderValue) {
        let xff = Bytes::from(self.xff_bytes());
        let real = if self.chain.first() == Some(&self.client) {
            let n = xff.iter().position(|&b| b == b',').unwrap_or(xff.len());
            xff.slice(..n)
        } else {
            let mut own = Vec::with_capacity(39);
            push_ip(&mut own, self.client);
            Bytes::from(own)
        };
        // Formatted addresses are digits, hex, `.`, `:` and `, `: always valid values.
        let value = |b: Bytes| {
            HeaderValue::from_maybe_shared(b).unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        (value(xff), value(real))
    }
}

/// Resolve the client address of a request. Never panics; see the module docs
/// and the rules on each header parser below.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, policy: &ClientIpPolicy) -> Resolution {
    let peer = peer.to_canonical();
    if !policy.is_trusted(peer) {
        // Any spelling of any forwarding header from an untrusted peer is a
        // spoof attempt (or a misconfigured proxy): record it, believe nothing.
        let spoof = headers.keys().any(|n| is_forwarding_header(n.as_str()));
        return Resolution {
            client: peer,
            decision: if spoof {
                TrustDecision::UntrustedPeerSpoof
            } else {
                TrustDecision::Direct
            },
            rejection: spoof.then_some(Rejection::UntrustedPeer),
            chain: vec![peer],
        };
    }

    let mut walker = Walker::new(peer, policy);
    // First configured header present wins, even if its value is empty: a
    // trusted proxy that sent it is the authority, we do not shop around.
    let chosen = policy
        .headers
        .iter()
        .map(|h| (*h, h.header_name()))
        .find(|(_, name)| headers.contains_key(name));
    if let Some((which, name)) = chosen {
        match which {
            ForwardedHeader::XForwardedFor => walk_xff(headers, &name, &mut walker),
            ForwardedHeader::Forwarded => walk_forwarded(headers, &name, &mut walker),
            ForwardedHeader::XRealIp => walk_real_ip(headers, &name, &mut walker),
        }
    }
    walker.finish()
}

enum End {
    Client(IpAddr),
    Reject(Rejection),
}

/// Right-to-left walk state shared by all header formats.
struct Walker<'p> {
    policy: &'p ClientIpPolicy,
    peer: IpAddr,
    /// Trusted hops walked so far, right to left (peer excluded).
    hops: Vec<IpAddr>,
    walked: usize,
    end: Option<End>,
}

impl<'p> Walker<'p> {
    fn new(peer: IpAddr, policy: &'p ClientIpPolicy) -> Self {
        Walker {
            policy,
            peer,
            hops: Vec::new(),
            walked: 0,
            end: None,
        }
    }

    fn done(&self) -> bool {
        self.end.is_some()
    }

    /// How many more entries the walk could consume, counting the one that
    /// would trip the hop cap. Used to bound buffering in the Forwarded parser.
    fn remaining(&self) -> usize {
        self.policy
            .max_hops
            .saturating_sub(self.walked)
            .saturating_add(1)
    }

    /// Feed the next entry (right to left). Returns false when the walk is over.
    fn step(&mut self, node: Node) -> bool {
        if self.end.is_some() {
            return false;
        }
        if self.walked >= self.policy.max_hops {
            self.end = Some(End::Reject(Rejection::TooManyHops));
            return false;
        }
        self.walked += 1;
        self.end = Some(match node {
            Node::Ip(ip) => {
                let ip = ip.to_canonical();
                if self.policy.is_trusted(ip) {
                    self.hops.push(ip);
                    return true;
                }
                End::Client(ip)
            }
            Node::Unknown => End::Reject(Rejection::UnknownNode),
            Node::Malformed => End::Reject(Rejection::Malformed),
        });
        false
    }

    /// Build the resolution. With no untrusted address found (all trusted, or
    /// rejected) the client is the leftmost verified hop, else the peer.
    fn finish(self) -> Resolution {
        let mut chain = Vec::with_capacity(self.hops.len() + 2);
        let (decision, rejection) = match self.end {
            Some(End::Client(ip)) => {
                chain.push(ip);
                (TrustDecision::Trusted, None)
            }
            Some(End::Reject(r)) => (TrustDecision::Malformed, Some(r)),
            None => (TrustDecision::Trusted, None),
        };
        chain.extend(self.hops.iter().rev());
        chain.push(self.peer);
        Resolution {
            client: chain.first().copied().unwrap_or(self.peer),
            decision,
            rejection,
            chain,
        }
    }
}

/// X-Forwarded-For: all lines in order form one comma list (RFC 9110 list
/// syntax, empty elements skipped), walked right to left in place.
fn walk_xff(headers: &HeaderMap, name: &HeaderName, walker: &mut Walker<'_>) {
    for value in headers.get_all(name).iter().rev() {
        for raw in value.as_bytes().rsplit(|&b| b == b',') {
            let raw = trim_ows(raw);
            if raw.is_empty() {
                continue;
            }
            if !walker.step(parse_addr_entry(raw).map_or(Node::Malformed, Node::Ip)) {
                return;
            }
        }
    }
}

/// X-Real-IP: exactly one line holding one address; the proxy that set it
/// vouches for it, so it is the client even if it is itself a trusted address.
fn walk_real_ip(headers: &HeaderMap, name: &HeaderName, walker: &mut Walker<'_>) {
    let mut lines = headers.get_all(name).iter();
    let node = match (lines.next(), lines.next()) {
        (Some(v), None) => {
            parse_addr_entry(trim_ows(v.as_bytes())).map_or(Node::Malformed, Node::Ip)
        }
        _ => Node::Malformed,
    };
    walker.step(node);
}

/// Forwarded (RFC 7239). Quoted strings can hide commas, so elements must be
/// found scanning left to right; we keep only the last few element slices
/// (as many as the walk could still use) and then walk those right to left.
///
/// Quote state does not carry across lines: an unterminated quote on an
/// earlier (client-written) line cannot swallow a later line our proxy added.
fn walk_forwarded(headers: &HeaderMap, name: &HeaderName, walker: &mut Walker<'_>) {
    let mut window: VecDeque<&[u8]> = VecDeque::new();
    for value in headers.get_all(name).iter().rev() {
        if walker.done() {
            return;
        }
        let keep = walker.remaining();
        window.clear();
        for element in SplitOutsideQuotes::new(value.as_bytes(), b',') {
            let element = trim_ows(element);
            if element.is_empty() {
                continue;
            }
            if window.len() >= keep {
                window.pop_front();
            }
            window.push_back(element);
        }
        for element in window.iter().rev() {
            if !walker.step(parse_forwarded_element(element)) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_values_are_xff_and_the_client() {
        let ips = |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let cases: &[(&str, &[&str])] = &[
            ("203.0.113.7", &["203.0.113.7", "127.0.0.1"]),
            ("10.0.0.1", &["10.0.0.1"]),
            ("2001:db8::7", &["2001:db8::7", "10.0.0.2", "::1"]),
            (
                "255.255.255.255",
                &["255.255.255.255", "2001:db8:ffff::1", "0.0.0.0"],
            ),
            // Not first in the chain (not built by `resolve`, still answered right).
            ("198.51.100.1", &["10.0.0.9"]),
            ("198.51.100.1", &[]),
        ];
        for (client, chain) in cases {
            let r = Resolution {
                client: client.parse().unwrap(),
                decision: TrustDecision::Trusted,
                rejection: None,
                chain: ips(chain),
            };
            let (xff, real) = r.upstream_values();
            assert_eq!(xff, r.x_forwarded_for().as_str(), "{client} {chain:?}");
            assert_eq!(xff, chain.join(", ").as_str(), "{client} {chain:?}");
            assert_eq!(real, client, "{client} {chain:?}");
        }
    }
    use http::HeaderValue;
    use rand::{Rng, SeedableRng};
    use ForwardedHeader::{Forwarded as FWD_H, XForwardedFor as XFF_H, XRealIp as XRI_H};
    use Rejection as R;
    use TrustDecision::{Direct as D, Malformed as M, Trusted as T, UntrustedPeerSpoof as S};

    const XFF: &[ForwardedHeader] = &[XFF_H];
    const FWD: &[ForwardedHeader] = &[FWD_H];
    const XRI: &[ForwardedHeader] = &[XRI_H];
    const TEN: &[&str] = &["10.0.0.0/8"];

    /// One table row: (name, peer, trusted CIDRs, header config, header lines,
    /// expected client, decision, rejection, chain).
    struct Case {
        name: &'static str,
        peer: &'static str,
        trusted: &'static [&'static str],
        cfg: &'static [ForwardedHeader],
        max_hops: usize,
        headers: Vec<(&'static str, Vec<u8>)>,
        client: String,
        decision: TrustDecision,
        rejection: Option<Rejection>,
        /// Expected chain, written as the expected upstream X-Forwarded-For.
        chain: String,
    }

    impl Case {
        fn hops(mut self, n: usize) -> Self {
            self.max_hops = n;
            self
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        name: &'static str,
        peer: &'static str,
        trusted: &'static [&'static str],
        cfg: &'static [ForwardedHeader],
        headers: Vec<(&'static str, Vec<u8>)>,
        client: impl Into<String>,
        decision: TrustDecision,
        rejection: Option<Rejection>,
        chain: impl Into<String>,
    ) -> Case {
        Case {
            name,
            peer,
            trusted,
            cfg,
            max_hops: DEFAULT_MAX_HOPS,
            headers,
            client: client.into(),
            decision,
            rejection,
            chain: chain.into(),
        }
    }

    /// Header lines from (name, value) pairs; a repeated name is a repeated line.
    fn h(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (*n, v.as_bytes().to_vec()))
            .collect()
    }

    fn policy(trusted: &[&str], cfg: &[ForwardedHeader], max_hops: usize) -> ClientIpPolicy {
        let trusted: Vec<IpNet> = trusted.iter().map(|s| s.parse().unwrap()).collect();
        ClientIpPolicy::new(&trusted, cfg.to_vec(), max_hops)
    }

    fn header_map(headers: &[(&str, Vec<u8>)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in headers {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        m
    }

    fn ips(list: &str) -> Vec<IpAddr> {
        list.split(", ").map(|s| s.parse().unwrap()).collect()
    }

    /// `n` distinct trusted 10.x addresses, left to right as in a header.
    fn ten_hops(n: usize) -> Vec<String> {
        (0..n)
            .rev()
            .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
            .collect()
    }

    #[rustfmt::skip]
    fn cases() -> Vec<Case> {
        let p = "10.0.0.1";
        let u = "203.0.113.50";
        let long25 = ten_hops(25);
        let long25_xff = format!("198.51.100.1, {}", long25.join(", "));
        // Walking right to left, the 20th trusted hop is long25[5].
        let long25_chain = format!("{}, {p}", long25[5..].join(", "));
        let long25_fwd = long25.iter().map(|a| format!("for={a}")).collect::<Vec<_>>().join(", ");
        let ten_kb_spoof = format!("{}203.0.113.7, 10.0.0.2", "1.1.1.1, ".repeat(1200));
        let ten_kb_fwd = format!(
            "{}for=\"203.0.113.7:1\";proto=https, for=10.0.0.2",
            "for=\"[2001:db8::1]:_x\";by=_y, ".repeat(350)
        );
        assert!(ten_kb_spoof.len() > 10_000 && ten_kb_fwd.len() > 10_000);
        let ten_kb_junk = "a".repeat(10_240);
        let ten_kb_commas = format!("{}203.0.113.7", ", ".repeat(5_200));

        vec![
            // --- untrusted peer: never believe, flag any forwarding header ---
            case("untrusted, no headers", u, TEN, XFF, h(&[("accept", "*/*")]), u, D, None, u),
            case("untrusted, X-Forwarded-For", u, TEN, XFF, h(&[("X-Forwarded-For", "1.2.3.4")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, x_forwarded_for", u, TEN, XFF, h(&[("x_forwarded_for", "1.2.3.4")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, X-REAL-IP", u, TEN, XRI, h(&[("X-REAL-IP", "1.2.3.4")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, True-Client-IP", u, TEN, XFF, h(&[("True-Client-IP", "1.2.3.4")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, Forwarded", u, TEN, FWD, h(&[("Forwarded", "for=1.2.3.4")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, unconfigured header still spoof", u, TEN, XFF, h(&[("X-Forwarded-Host", "evil")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, empty XFF still spoof", u, TEN, XFF, h(&[("x-forwarded-for", "")]), u, S, Some(R::UntrustedPeer), u),
            case("untrusted, x-request-id is not forwarding", u, TEN, XFF, h(&[("x-request-id", "abc")]), u, D, None, u),
            case("untrusted, mapped v6 peer canonicalised", "::ffff:203.0.113.50", TEN, XFF, vec![], u, D, None, u),
            case("empty trusted list trusts no one", p, &[], XFF, h(&[("x-forwarded-for", "1.2.3.4")]), p, S, Some(R::UntrustedPeer), p),
            case("::/0 does not trust v4 peers", p, &["::/0"], XFF, h(&[("x-forwarded-for", "1.2.3.4")]), p, S, Some(R::UntrustedPeer), p),
            case("0.0.0.0/0 does not trust v6 peers", "2001:db8::1", &["0.0.0.0/0"], XFF, vec![], "2001:db8::1", D, None, "2001:db8::1"),
            // --- trusted peer, X-Forwarded-For ---
            case("trusted, no headers", p, TEN, XFF, vec![], p, T, None, p),
            case("trusted single hop", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("multi-hop trusted chain", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2, 10.0.0.3")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.3, 10.0.0.1"),
            case("several trusted CIDRs", p, &["10.0.0.0/8", "192.168.0.0/16", "2001:db8:ffff::/48"], XFF, h(&[("x-forwarded-for", "198.51.100.9, 2001:db8:ffff::1, 192.168.1.1")]), "198.51.100.9", T, None, "198.51.100.9, 2001:db8:ffff::1, 192.168.1.1, 10.0.0.1"),
            case("spoofed left entries ignored", p, TEN, XFF, h(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 203.0.113.7, 10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("spoofed trusted-looking left entry ignored", p, TEN, XFF, h(&[("x-forwarded-for", "10.9.9.9, 203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("all trusted -> leftmost", p, TEN, XFF, h(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]), "10.0.0.3", T, None, "10.0.0.3, 10.0.0.2, 10.0.0.1"),
            case("multiple XFF lines joined in order", p, TEN, XFF, h(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7"), ("x-forwarded-for", "10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("client on last XFF line", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.1, 10.0.0.2")]), "198.51.100.1", T, None, "198.51.100.1, 10.0.0.2, 10.0.0.1"),
            case("all trusted across lines -> leftmost", p, TEN, XFF, h(&[("x-forwarded-for", "10.0.0.4"), ("x-forwarded-for", "10.0.0.3")]), "10.0.0.4", T, None, "10.0.0.4, 10.0.0.3, 10.0.0.1"),
            case("v4 port stripped", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7:4711")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("[v6]:port stripped", p, TEN, XFF, h(&[("x-forwarded-for", "[2001:db8::7]:443")]), "2001:db8::7", T, None, "2001:db8::7, 10.0.0.1"),
            case("[v6] without port", p, TEN, XFF, h(&[("x-forwarded-for", "[2001:db8::7]")]), "2001:db8::7", T, None, "2001:db8::7, 10.0.0.1"),
            case("bare v6", p, TEN, XFF, h(&[("x-forwarded-for", "2001:db8::7")]), "2001:db8::7", T, None, "2001:db8::7, 10.0.0.1"),
            case("mapped v6 client in XFF", p, TEN, XFF, h(&[("x-forwarded-for", "::ffff:203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("mapped v6 trusted hops in XFF", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7, [::ffff:10.0.0.2]:80, ::ffff:10.0.0.3")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.3, 10.0.0.1"),
            case("mapped v6 peer trusted via v4 CIDR", "::ffff:10.0.0.1", TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("mapped v6 CIDR trusts v4 addresses", p, &["::ffff:10.0.0.0/104"], XFF, h(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("v6 peer and v6 trusted CIDR", "2001:db8:ffff::1", &["2001:db8:ffff::/48"], XFF, h(&[("x-forwarded-for", "2001:db8::7")]), "2001:db8::7", T, None, "2001:db8::7, 2001:db8:ffff::1"),
            case("zone id at boundary -> peer", p, TEN, XFF, h(&[("x-forwarded-for", "fe80::1%eth0")]), p, M, Some(R::Malformed), p),
            case("zone id in brackets at boundary", p, TEN, XFF, h(&[("x-forwarded-for", "[fe80::1%25eth0]:80")]), p, M, Some(R::Malformed), p),
            case("zone id left of client ignored", p, TEN, XFF, h(&[("x-forwarded-for", "fe80::1%eth0, 203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("garbage behind trusted hop -> that hop", p, TEN, XFF, h(&[("x-forwarded-for", "garbage, 10.0.0.2")]), "10.0.0.2", M, Some(R::Malformed), "10.0.0.2, 10.0.0.1"),
            case("garbage left of client ignored", p, TEN, XFF, h(&[("x-forwarded-for", "<script>, 203.0.113.7, 10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("unknown in XFF is malformed", p, TEN, XFF, h(&[("x-forwarded-for", "unknown")]), p, M, Some(R::Malformed), p),
            case("hostname", p, TEN, XFF, h(&[("x-forwarded-for", "example.com")]), p, M, Some(R::Malformed), p),
            case("octet out of range", p, TEN, XFF, h(&[("x-forwarded-for", "256.1.1.1")]), p, M, Some(R::Malformed), p),
            case("leading zeros rejected", p, TEN, XFF, h(&[("x-forwarded-for", "010.0.0.1")]), p, M, Some(R::Malformed), p),
            case("short v4 rejected", p, TEN, XFF, h(&[("x-forwarded-for", "127.1")]), p, M, Some(R::Malformed), p),
            case("port out of range", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7:65536")]), p, M, Some(R::Malformed), p),
            case("port with plus sign", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7:+80")]), p, M, Some(R::Malformed), p),
            case("empty port", p, TEN, XFF, h(&[("x-forwarded-for", "[2001:db8::7]:")]), p, M, Some(R::Malformed), p),
            case("bare v6 with port is not an address", p, TEN, XFF, h(&[("x-forwarded-for", "2001:db8:1:2:3:4:5:6:443")]), p, M, Some(R::Malformed), p),
            case("v4 in brackets", p, TEN, XFF, h(&[("x-forwarded-for", "[203.0.113.7]")]), p, M, Some(R::Malformed), p),
            case("quotes in XFF", p, TEN, XFF, h(&[("x-forwarded-for", "\"203.0.113.7\"")]), p, M, Some(R::Malformed), p),
            case("trailing garbage", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7x")]), p, M, Some(R::Malformed), p),
            case("inner space", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7 10.0.0.2")]), p, M, Some(R::Malformed), p),
            case("empty elements skipped", p, TEN, XFF, h(&[("x-forwarded-for", ",, 203.0.113.7 ,,10.0.0.2,  ,")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("tabs and spaces trimmed", p, TEN, XFF, h(&[("x-forwarded-for", "\t 203.0.113.7\t")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("present but empty -> peer", p, TEN, XFF, h(&[("x-forwarded-for", "")]), p, T, None, p),
            case("only commas -> peer", p, TEN, XFF, h(&[("x-forwarded-for", " , ,")]), p, T, None, p),
            case("long chain > max_hops", p, TEN, XFF, vec![("x-forwarded-for", long25_xff.into_bytes())], long25[5].clone(), M, Some(R::TooManyHops), long25_chain.clone()),
            case("client just past max_hops", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7, 10.0.0.4, 10.0.0.3, 10.0.0.2")]), "10.0.0.4", M, Some(R::TooManyHops), "10.0.0.4, 10.0.0.3, 10.0.0.2, 10.0.0.1").hops(3),
            case("client exactly at max_hops", p, TEN, XFF, h(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.3, 10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.3, 10.0.0.2, 10.0.0.1").hops(3),
            case("all trusted, exactly max_hops", p, TEN, XFF, h(&[("x-forwarded-for", "10.0.0.4, 10.0.0.3, 10.0.0.2")]), "10.0.0.4", T, None, "10.0.0.4, 10.0.0.3, 10.0.0.2, 10.0.0.1").hops(3),
            case("max_hops 0 walks nothing", p, TEN, XFF, h(&[("x-forwarded-for", "203.0.113.7")]), p, M, Some(R::TooManyHops), p).hops(0),
            case("10 KB spoofed prefix", p, TEN, XFF, vec![("x-forwarded-for", ten_kb_spoof.into_bytes())], "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("10 KB junk entry", p, TEN, XFF, vec![("x-forwarded-for", ten_kb_junk.clone().into_bytes())], p, M, Some(R::Malformed), p),
            case("10 KB of empty elements", p, TEN, XFF, vec![("x-forwarded-for", ten_kb_commas.into_bytes())], "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("non-UTF-8 at boundary", p, TEN, XFF, vec![("x-forwarded-for", b"203.0.113.7\xff".to_vec())], p, M, Some(R::Malformed), p),
            case("non-UTF-8 left of client ignored", p, TEN, XFF, vec![("x-forwarded-for", b"\xff\xfe, 203.0.113.7".to_vec())], "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fullwidth digits (obs-text)", p, TEN, XFF, vec![("x-forwarded-for", "２０３.0.113.7".as_bytes().to_vec())], p, M, Some(R::Malformed), p),
            case("0.0.0.0/0 trusted -> leftmost", p, &["0.0.0.0/0"], XFF, h(&[("x-forwarded-for", "203.0.113.7, 198.51.100.1")]), "203.0.113.7", T, None, "203.0.113.7, 198.51.100.1, 10.0.0.1"),
            case("::/0 trusted, v4 client not trusted", "2001:db8::1", &["::/0"], XFF, h(&[("x-forwarded-for", "203.0.113.7, 2001:db8::2")]), "203.0.113.7", T, None, "203.0.113.7, 2001:db8::2, 2001:db8::1"),
            // --- Forwarded (RFC 7239) ---
            case("fwd simple", p, TEN, FWD, h(&[("forwarded", "for=203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd quoted v4 with port", p, TEN, FWD, h(&[("forwarded", "for=\"203.0.113.7:4711\"")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd quoted bracketed v6", p, TEN, FWD, h(&[("forwarded", "for=\"[2001:db8:cafe::17]\"")]), "2001:db8:cafe::17", T, None, "2001:db8:cafe::17, 10.0.0.1"),
            case("fwd v6 with port", p, TEN, FWD, h(&[("forwarded", "for=\"[2001:db8:cafe::17]:4711\"")]), "2001:db8:cafe::17", T, None, "2001:db8:cafe::17, 10.0.0.1"),
            case("fwd obfuscated port", p, TEN, FWD, h(&[("forwarded", "for=\"203.0.113.7:_abc\"")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd multi-element chain", p, TEN, FWD, h(&[("forwarded", "for=1.1.1.1, for=203.0.113.7;proto=https;by=10.0.0.2, for=10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("fwd case-insensitive FOR", p, TEN, FWD, h(&[("forwarded", "FOR=203.0.113.7;Proto=http")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd quoted comma is not a separator", p, TEN, FWD, h(&[("forwarded", "for=1.1.1.1, for=\"203.0.113.7\";x=\"a,b\"")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd escaped quote keeps string open", p, TEN, FWD, h(&[("forwarded", "for=203.0.113.7;x=\"a\\\",for=1.1.1.1\"")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd escapes inside for value", p, TEN, FWD, h(&[("forwarded", "for=\"\\2\\03.0.113.7\"")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd unterminated quote at boundary", p, TEN, FWD, h(&[("forwarded", "for=\"203.0.113.7")]), p, M, Some(R::Malformed), p),
            case("fwd unterminated quote swallows rest of line", p, TEN, FWD, h(&[("forwarded", "for=10.0.0.2;x=\"oops, for=203.0.113.7")]), p, M, Some(R::Malformed), p),
            case("fwd unterminated quote does not cross lines", p, TEN, FWD, h(&[("forwarded", "for=1.1.1.1;x=\"oops"), ("forwarded", "for=203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd escaped closing quote is unterminated", p, TEN, FWD, h(&[("forwarded", "for=\"203.0.113.7\\\"")]), p, M, Some(R::Malformed), p),
            case("fwd missing for", p, TEN, FWD, h(&[("forwarded", "proto=https;by=10.0.0.9")]), p, M, Some(R::Malformed), p),
            case("fwd missing for behind trusted hop", p, TEN, FWD, h(&[("forwarded", "by=10.0.0.9, for=10.0.0.2")]), "10.0.0.2", M, Some(R::Malformed), "10.0.0.2, 10.0.0.1"),
            case("fwd two for in one element", p, TEN, FWD, h(&[("forwarded", "for=203.0.113.7;for=198.51.100.1")]), p, M, Some(R::Malformed), p),
            case("fwd unknown at boundary", p, TEN, FWD, h(&[("forwarded", "for=unknown")]), p, M, Some(R::UnknownNode), p),
            case("fwd UNKNOWN quoted with port", p, TEN, FWD, h(&[("forwarded", "for=\"UNKNOWN:80\"")]), p, M, Some(R::UnknownNode), p),
            case("fwd _hidden behind trusted hop", p, TEN, FWD, h(&[("forwarded", "for=_hidden, for=10.0.0.2")]), "10.0.0.2", M, Some(R::UnknownNode), "10.0.0.2, 10.0.0.1"),
            case("fwd unknown left of client ignored", p, TEN, FWD, h(&[("forwarded", "for=unknown, for=_x, for=203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd unquoted brackets are not a token", p, TEN, FWD, h(&[("forwarded", "for=[2001:db8::1]")]), p, M, Some(R::Malformed), p),
            case("fwd unquoted port is not a token", p, TEN, FWD, h(&[("forwarded", "for=203.0.113.7:80")]), p, M, Some(R::Malformed), p),
            case("fwd bare v6 must be bracketed", p, TEN, FWD, h(&[("forwarded", "for=\"2001:db8::1\"")]), p, M, Some(R::Malformed), p),
            case("fwd zone id", p, TEN, FWD, h(&[("forwarded", "for=\"[fe80::1%25eth0]\"")]), p, M, Some(R::Malformed), p),
            case("fwd port out of range", p, TEN, FWD, h(&[("forwarded", "for=\"203.0.113.7:99999\"")]), p, M, Some(R::Malformed), p),
            case("fwd bad obfuscated port", p, TEN, FWD, h(&[("forwarded", "for=\"203.0.113.7:_\"")]), p, M, Some(R::Malformed), p),
            case("fwd malformed other param", p, TEN, FWD, h(&[("forwarded", "for=203.0.113.7;proto")]), p, M, Some(R::Malformed), p),
            case("fwd empty for", p, TEN, FWD, h(&[("forwarded", "for=")]), p, M, Some(R::Malformed), p),
            case("fwd multiple lines joined", p, TEN, FWD, h(&[("forwarded", "for=1.1.1.1"), ("forwarded", "for=203.0.113.7, for=10.0.0.2")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("fwd empty elements and OWS", p, TEN, FWD, h(&[("forwarded", " , for=203.0.113.7 ; proto=http ,, ")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("fwd mapped v6", p, TEN, FWD, h(&[("forwarded", "for=\"[::ffff:203.0.113.7]\", for=\"[::ffff:10.0.0.2]:1\"")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("fwd long chain > max_hops", p, TEN, FWD, vec![("forwarded", long25_fwd.into_bytes())], long25[5].clone(), M, Some(R::TooManyHops), long25_chain),
            case("fwd 10 KB value", p, TEN, FWD, vec![("forwarded", ten_kb_fwd.into_bytes())], "203.0.113.7", T, None, "203.0.113.7, 10.0.0.2, 10.0.0.1"),
            case("fwd non-UTF-8 in quoted for", p, TEN, FWD, vec![("forwarded", b"for=\"203.0.113.7\xff\"".to_vec())], p, M, Some(R::Malformed), p),
            // --- header preference ---
            case("pref forwarded before xff", p, TEN, &[FWD_H, XFF_H], h(&[("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("pref xff before forwarded", p, TEN, &[XFF_H, FWD_H], h(&[("x-forwarded-for", "198.51.100.1"), ("forwarded", "for=203.0.113.7")]), "198.51.100.1", T, None, "198.51.100.1, 10.0.0.1"),
            case("pref falls through to present header", p, TEN, &[FWD_H, XFF_H], h(&[("x-forwarded-for", "198.51.100.1")]), "198.51.100.1", T, None, "198.51.100.1, 10.0.0.1"),
            case("pref only unlisted headers present", p, TEN, FWD, h(&[("x-forwarded-for", "198.51.100.1"), ("x-real-ip", "198.51.100.2")]), p, T, None, p),
            case("pref empty config reads nothing", p, TEN, &[], h(&[("x-forwarded-for", "198.51.100.1")]), p, T, None, p),
            case("pref underscore spelling is not read", p, TEN, XFF, h(&[("x_forwarded_for", "198.51.100.1")]), p, T, None, p),
            case("pref first present wins even if malformed", p, TEN, &[XRI_H, XFF_H], h(&[("x-real-ip", "junk"), ("x-forwarded-for", "198.51.100.1")]), p, M, Some(R::Malformed), p),
            // --- X-Real-IP ---
            case("xri valid", p, TEN, XRI, h(&[("x-real-ip", "203.0.113.7")]), "203.0.113.7", T, None, "203.0.113.7, 10.0.0.1"),
            case("xri v6 with port and OWS", p, TEN, XRI, h(&[("X-Real-IP", " [2001:db8::7]:80 ")]), "2001:db8::7", T, None, "2001:db8::7, 10.0.0.1"),
            case("xri junk", p, TEN, XRI, h(&[("x-real-ip", "nope")]), p, M, Some(R::Malformed), p),
            case("xri empty", p, TEN, XRI, h(&[("x-real-ip", "")]), p, M, Some(R::Malformed), p),
            case("xri comma list", p, TEN, XRI, h(&[("x-real-ip", "203.0.113.7, 198.51.100.1")]), p, M, Some(R::Malformed), p),
            case("xri two lines", p, TEN, XRI, h(&[("x-real-ip", "203.0.113.7"), ("x-real-ip", "198.51.100.1")]), p, M, Some(R::Malformed), p),
            case("xri trusted address is still the client", p, TEN, XRI, h(&[("x-real-ip", "10.0.0.5")]), "10.0.0.5", T, None, "10.0.0.5, 10.0.0.1"),
            case("xri 10 KB junk", p, TEN, XRI, vec![("x-real-ip", ten_kb_junk.into_bytes())], p, M, Some(R::Malformed), p),
        ]
    }

    #[test]
    fn resolve_table() {
        let cases = cases();
        assert!(cases.len() >= 60, "only {} cases", cases.len());
        for c in &cases {
            let pol = policy(c.trusted, c.cfg, c.max_hops);
            let got = resolve(c.peer.parse().unwrap(), &header_map(&c.headers), &pol);
            let want = Resolution {
                client: c.client.parse().unwrap(),
                decision: c.decision,
                rejection: c.rejection,
                chain: ips(&c.chain),
            };
            assert_eq!(got, want, "case {:?}", c.name);
            assert_eq!(got.x_forwarded_for(), c.chain, "case {:?}", c.name);
        }
    }

    #[test]
    fn labels() {
        assert_eq!(D.as_str(), "direct");
        assert_eq!(T.as_str(), "trusted");
        assert_eq!(S.as_str(), "untrusted_peer_spoof");
        assert_eq!(M.as_str(), "malformed");
        assert_eq!(R::UntrustedPeer.as_str(), "untrusted_peer");
        assert_eq!(R::Malformed.as_str(), "malformed");
        assert_eq!(R::UnknownNode.as_str(), "unknown_node");
        assert_eq!(R::TooManyHops.as_str(), "too_many_hops");
    }

    #[test]
    fn is_trusted_canonicalises() {
        let pol = policy(
            &["10.0.0.0/8", "::ffff:192.168.0.0/112", "2001:db8::/32"],
            XFF,
            DEFAULT_MAX_HOPS,
        );
        let cases: &[(&str, bool)] = &[
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("192.168.4.5", true),
            ("::ffff:192.168.4.5", true),
            ("192.169.0.1", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("11.0.0.1", false),
            // IPv4-compatible (deprecated), not mapped: not canonicalised.
            ("::a00:1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(pol.is_trusted(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn forwarded_header_config_names() {
        #[derive(serde::Deserialize)]
        struct W {
            h: Vec<ForwardedHeader>,
        }
        let w: W =
            serde_json::from_str(r#"{"h":["x-forwarded-for","forwarded","x-real-ip"]}"#).unwrap();
        assert_eq!(w.h, vec![XFF_H, FWD_H, XRI_H]);
        assert!(serde_json::from_str::<W>(r#"{"h":["X-Forwarded-For"]}"#).is_err());
    }

    /// Random hostile header values must never panic, and the result must
    /// always be a verified chain: peer last, client first, every hop between
    /// trusted, and a rejected walk never names an untrusted client.
    #[test]
    fn no_panic_fuzz() {
        const ALPHABET: &[u8] = b"[]:,;\"\\ \t_%.0123456789abcdefABCDEF=xforunkw";
        const FRAGMENTS: &[&str] = &[
            "10.0.0.2",
            "10.0.0.3",
            "203.0.113.7",
            "[2001:db8::1]",
            "2001:db8::1",
            ":80",
            ":_p",
            ", ",
            ",",
            ";",
            "for=",
            "FOR=",
            "\"",
            "\\",
            "\\\"",
            "unknown",
            "_hid",
            "::ffff:10.0.0.4",
            "[::ffff:10.0.0.5]",
            "%eth0",
            "256.1.1.1",
            "proto=https",
            " ",
            "fe80::1",
            "[2001:db8:ffff::7]",
            "::ffff:172.16.0.1",
        ];
        const ADDRS: &[&str] = &[
            "10.0.0.2",
            "10.0.0.3",
            "[::ffff:10.0.0.4]:8",
            "172.16.0.5",
            "2001:db8:ffff::7",
            "[2001:db8:ffff::8]:443",
            "203.0.113.7",
            "198.51.100.1:80",
            "[2001:db8::1]",
            "unknown",
            "_hid",
            "fe80::1%eth0",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_c0ffee);
        let names = ["x-forwarded-for", "forwarded", "x-real-ip"];
        let peers = [
            "10.0.0.1",
            "::ffff:10.0.0.9",
            "2001:db8:ffff::1",
            "203.0.113.50",
        ];
        let mut trusted_runs = 0;
        for i in 0..20_000 {
            let pol = policy(
                &["10.0.0.0/8", "2001:db8:ffff::/48", "::ffff:172.16.0.0/108"],
                match i % 4 {
                    0 => XFF,
                    1 => FWD,
                    2 => XRI,
                    _ => &[FWD_H, XFF_H, XRI_H],
                },
                if i % 7 == 0 {
                    rng.random_range(0..4)
                } else {
                    DEFAULT_MAX_HOPS
                },
            );
            let mut map = HeaderMap::new();
            for _ in 0..rng.random_range(1..4) {
                let name = names[rng.random_range(0..names.len())];
                let mut v: Vec<u8> = Vec::new();
                if rng.random_bool(0.5) {
                    // Structured: a plausible chain, possibly corrupted.
                    for j in 0..rng.random_range(0..8) {
                        if j > 0 {
                            v.extend_from_slice(b", ");
                        }
                        let addr = ADDRS[rng.random_range(0..ADDRS.len())].as_bytes();
                        if name == "forwarded" {
                            v.extend_from_slice(b"for=\"");
                            v.extend_from_slice(addr);
                            v.push(b'"');
                        } else {
                            v.extend_from_slice(addr);
                        }
                    }
                    if !v.is_empty() && rng.random_bool(0.3) {
                        let at = rng.random_range(0..v.len());
                        v[at] = ALPHABET[rng.random_range(0..ALPHABET.len())];
                    }
                } else {
                    let len = if i % 50 == 0 {
                        2_000
                    } else {
                        rng.random_range(0..40)
                    };
                    while v.len() < len {
                        match rng.random_range(0..10) {
                            0..=4 => v.push(ALPHABET[rng.random_range(0..ALPHABET.len())]),
                            5 => v.push(rng.random()),
                            _ => v.extend_from_slice(
                                FRAGMENTS[rng.random_range(0..FRAGMENTS.len())].as_bytes(),
                            ),
                        }
                    }
                }
                // Skip values the HTTP layer itself would never hand us.
                let Ok(value) = HeaderValue::from_bytes(&v) else {
                    continue;
                };
                map.append(name, value);
            }
            let peer: IpAddr = peers[rng.random_range(0..peers.len())].parse().unwrap();
            let r = resolve(peer, &map, &pol);
            let peer = peer.to_canonical();
            assert_eq!(r.chain.last(), Some(&peer), "{r:?}");
            assert_eq!(r.chain.first(), Some(&r.client), "{r:?}");
            assert!(r.chain.len() <= pol.max_hops + 2, "{r:?}");
            assert_eq!(ips(&r.x_forwarded_for()), r.chain);
            if !pol.is_trusted(peer) {
                assert_eq!(r.chain, vec![peer]);
                assert!(matches!(r.decision, D | S));
                continue;
            }
            // Every address right of the client was verified as trusted.
            assert!(r.chain[1..].iter().all(|ip| pol.is_trusted(*ip)), "{r:?}");
            match r.decision {
                M => {
                    assert!(r.rejection.is_some());
                    assert!(pol.is_trusted(r.client), "{r:?}");
                }
                T => assert!(r.rejection.is_none()),
                other => panic!("unexpected decision {other:?}"),
            }
            if r.chain.len() > 1 {
                trusted_runs += 1;
            }
        }
        // The generator must actually exercise multi-hop walks.
        assert!(trusted_runs > 1_000, "only {trusted_runs} walks");
    }
}
