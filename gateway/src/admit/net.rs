//! One spelling per address: IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as dual-stack sockets
//! and some proxies write it) is the IPv4 host, for addresses and for CIDR entries alike.
//! Every CIDR list is canonicalised with `canonical_net` at load, every address with
//! `canonical_ip` before it is compared.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `::ffff:a.b.c.d/(96+n)` → `a.b.c.d/n`; everything else unchanged. Other IPv6 CIDRs
/// (even `::/0`) never cover IPv4 addresses: matching more than the operator wrote is the
/// dangerous direction.
pub fn canonical_net(net: &IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if n.prefix_len() >= 96 {
            if let Some(v4) = n.network().to_ipv4_mapped() {
                if let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(v4net);
                }
            }
        }
    }
    *net
}

/// A configured CIDR list in canonical form, ready for `contains(canonical_ip(..))`.
pub fn canonical_nets(nets: &[IpNet]) -> Vec<IpNet> {
    nets.iter().map(canonical_net).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_table() {
        let cases = [
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("::ffff:0.0.0.0", "0.0.0.0"),
            ("2001:db8::1", "2001:db8::1"),
            // IPv4-compatible (deprecated) form is not the IPv4 host.
            ("::203.0.113.7", "::203.0.113.7"),
            ("::1", "::1"),
            ("::", "::"),
        ];
        for (ip, want) in cases {
            let got = canonical_ip(ip.parse().unwrap());
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "{ip}");
        }
    }

    #[test]
    fn networks_table() {
        let cases = [
            ("::ffff:203.0.113.7/128", "203.0.113.7/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
            // Shorter than /96 reaches outside the mapped range: left as written.
            ("::ffff:0.0.0.0/95", "::ffff:0.0.0.0/95"),
            ("::/0", "::/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
        ];
        for (net, want) in cases {
            let got = canonical_net(&net.parse().unwrap());
            assert_eq!(got, want.parse::<IpNet>().unwrap(), "{net}");
        }
    }
}
