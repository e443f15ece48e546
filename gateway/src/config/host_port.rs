//! `host:port` as operators write it (a DNS name, an IPv4 or a bracketed IPv6 address, and
//! a port 1-65535): one parser and one way to print it for the upstream and Redis nodes.

use std::fmt;

/// Writes `host:port`, bracketing an IPv6 host.
pub fn write_host_port(f: &mut fmt::Formatter<'_>, host: &str, port: u16) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]:{port}")
    } else {
        write!(f, "{host}:{port}")
    }
}

/// Splits and checks `s`; the host comes back lowercased (IP addresses in canonical form).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{s:?} has port 0"));
        }
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} must be host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port"))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !host_ok || port == 0 {
        return Err(format!(
            "{s:?} must be host:port with a valid DNS name or IP and a port 1-65535"
        ));
    }
    Ok((host.to_ascii_lowercase(), port))
}
