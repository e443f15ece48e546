//! The access-log record: filled along the request's way, written once as one
//! escaped JSON line through `tracing` (target `access_log`). It has no field
//! that could hold a credential: no headers, no query by default, no token.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::client_ip::TrustDecision;
use crate::logging;

/// Longest User-Agent kept, so one client cannot bloat every log line.
pub const MAX_USER_AGENT: usize = 256;
/// Longest path kept.
pub const MAX_PATH: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct AccessRecord {
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub route: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub peer: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    pub trust: Option<TrustDecision>,
    pub forwarded_rejection: Option<&'static str>,
    pub user_id: Option<String>,
    pub auth: &'static str,
    pub policy: Option<String>,
    pub policy_decision: Option<&'static str>,
    pub shadow_rejected_by: Option<String>,
    pub user_agent: Option<String>,
    /// "HTTP/1.1", "HTTP/2", "HTTP/1.0"; empty for answers before a request was parsed.
    pub protocol: &'static str,
    /// "TLSv1.3" / "TLSv1.2" when the client spoke TLS to us; absent when cleartext.
    pub tls_version: Option<&'static str>,
    /// Short error kind when the request failed inside the gateway.
    pub error: Option<&'static str>,
}

/// Truncates to at most `max` bytes on a char boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The access line, laid out as the tracing JSON formatter lays out operational logs
/// (flattened event, target last), so one log pipeline reads both. Serialised here rather
/// than through that formatter, which was ~15 % of a proxied request's instructions.
/// serde_json escapes every value.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "display_timestamp")]
    timestamp: humantime::Rfc3339Timestamp,
    level: &'static str,
    message: &'static str,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    route: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display")]
    peer: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display")]
    client_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded_rejection: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    auth: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_rejected_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    target: &'static str,
}

fn display_timestamp<S: serde::Serializer>(
    t: &humantime::Rfc3339Timestamp,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

fn display<S: serde::Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => s.collect_str(ip),
        None => s.serialize_none(),
    }
}

impl AccessRecord {
    fn line(&self, now: SystemTime) -> Line<'_> {
        Line {
            timestamp: humantime::format_rfc3339_micros(now),
            level: "INFO",
            message: "access",
            request_id: &self.request_id,
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            route: &self.route,
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: self.duration_ms,
            upstream_ms: self.upstream_ms,
            peer: self.peer,
            client_ip: self.client_ip,
            trust: self.trust.map(|t| t.as_str()),
            forwarded_rejection: self.forwarded_rejection,
            user_id: self.user_id.as_deref(),
            auth: self.auth,
            policy: self.policy.as_deref(),
            policy_decision: self.policy_decision,
            shadow_rejected_by: self.shadow_rejected_by.as_deref(),
            user_agent: self.user_agent.as_deref(),
            protocol: self.protocol,
            tls_version: self.tls_version,
            error: self.error,
            target: "access_log",
        }
    }

    /// The JSON line, with its newline.
    fn to_json_line(&self, now: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        // Serialising plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.line(now));
        out.push(b'\n');
        out
    }

    /// Writes the line through the log writer when the log filter lets `access_log` info
    /// through.
    pub fn emit(&self) {
        if tracing::enabled!(target: "access_log", tracing::Level::INFO) {
            logging::write_line(&self.to_json_line(SystemTime::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::tests::Sink;

    /// The line `emit` writes.
    fn emit_to_string(rec: &AccessRecord) -> String {
        String::from_utf8(rec.to_json_line(SystemTime::now())).unwrap()
    }

    /// The same record as an operational log event through the tracing JSON formatter:
    /// the shape the access line must keep.
    fn via_tracing_formatter(rec: &AccessRecord) -> String {
        let buf = Sink::default();
        let writer = buf.clone();
        let subscriber = crate::logging::json_subscriber(move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "access_log",
                request_id = %rec.request_id,
                method = %rec.method,
                path = %rec.path,
                query = rec.query.as_deref(),
                route = rec.route,
                status = rec.status,
                bytes_in = rec.bytes_in,
                bytes_out = rec.bytes_out,
                duration_ms = rec.duration_ms,
                upstream_ms = rec.upstream_ms,
                peer = rec.peer.map(tracing::field::display),
                client_ip = rec.client_ip.map(tracing::field::display),
                trust = rec.trust.map(|t| t.as_str()),
                forwarded_rejection = rec.forwarded_rejection,
                user_id = rec.user_id.as_deref(),
                auth = rec.auth,
                policy = rec.policy.as_deref(),
                policy_decision = rec.policy_decision,
                shadow_rejected_by = rec.shadow_rejected_by.as_deref(),
                user_agent = rec.user_agent.as_deref(),
                protocol = (!rec.protocol.is_empty()).then_some(rec.protocol),
                tls_version = rec.tls_version,
                error = rec.error,
                "access"
            )
        });
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hostile_values_stay_one_escaped_line() {
        let hostile = [
            "/v1/\"quoted\"",
            "/v1/line\nbreak",
            "/v1/cr\r\n{\"fake\":1}",
            "/v1/ünïcödé",
            "/v1/\u{0}nul",
            "/v1/\\backslash",
            "/v1/\u{2028}sep",
        ];
        for path in hostile {
            let rec = AccessRecord {
                request_id: "r1".into(),
                method: "GET".into(),
                path: path.into(),
                user_agent: Some("curl\"/8\n".into()),
                status: 200,
                client_ip: Some("2001:db8::1".parse().unwrap()),
                trust: Some(TrustDecision::UntrustedPeerSpoof),
                auth: "anonymous",
                ..Default::default()
            };
            let line = emit_to_string(&rec);
            assert_eq!(line.matches('\n').count(), 1, "{path:?}: {line}");
            let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(v["path"], path);
            assert_eq!(v["target"], "access_log");
            assert_eq!(v["trust"], "untrusted_peer_spoof");
            assert_eq!(v["client_ip"], "2001:db8::1");
            assert!(v.get("user_id").is_none(), "absent fields are omitted");
        }
    }

    #[test]
    fn line_matches_the_tracing_formatter_shape() {
        let full = AccessRecord {
            request_id: "r1".into(),
            method: "POST".into(),
            path: "/v1/\"odd\"\npath".into(),
            query: Some("a=1".into()),
            route: "/v1/".into(),
            status: 429,
            bytes_in: 12,
            bytes_out: 99,
            duration_ms: 1.25,
            upstream_ms: Some(0.5),
            peer: Some("127.0.0.1".parse().unwrap()),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            trust: Some(TrustDecision::Trusted),
            forwarded_rejection: Some("malformed"),
            user_id: Some("u-alice".into()),
            auth: "user",
            policy: Some("per-ip".into()),
            policy_decision: Some("rejected"),
            shadow_rejected_by: Some("a,b".into()),
            user_agent: Some("curl\u{0}/8".into()),
            protocol: "HTTP/2",
            tls_version: Some("TLSv1.3"),
            error: Some("limit"),
        };
        let sparse = AccessRecord {
            auth: "anonymous",
            ..Default::default()
        };
        for rec in [full, sparse] {
            let via_tracing: serde_json::Value =
                serde_json::from_str(via_tracing_formatter(&rec).trim_end()).unwrap();
            let line = rec.to_json_line(SystemTime::now());
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let direct: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let keys = |v: &serde_json::Value| -> Vec<String> {
                v.as_object().unwrap().keys().cloned().collect()
            };
            assert_eq!(keys(&direct), keys(&via_tracing), "same fields");
            for (k, v) in via_tracing.as_object().unwrap() {
                if k != "timestamp" {
                    assert_eq!(&direct[k], v, "{k}");
                }
            }
            let ts = direct["timestamp"].as_str().unwrap();
            assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        }
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}
