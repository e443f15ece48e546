//! The access-log record: filled along the request's way, written once as one
//! escaped JSON line through `tracing` (target `access_log`). It has no field
//! that could hold a credential: no headers, no query by default, no token.

use std::net::IpAddr;

use crate::client_ip::TrustDecision;

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

impl AccessRecord {
    /// Writes the line. The subscriber's JSON formatter escapes every value.
    pub fn emit(&self) {
        tracing::info!(
            target: "access_log",
            request_id = %self.request_id,
            method = %self.method,
            path = %self.path,
            query = self.query.as_deref(),
            route = self.route,
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = self.duration_ms,
            upstream_ms = self.upstream_ms,
            peer = self.peer.map(tracing::field::display),
            client_ip = self.client_ip.map(tracing::field::display),
            trust = self.trust.map(|t| t.as_str()),
            forwarded_rejection = self.forwarded_rejection,
            user_id = self.user_id.as_deref(),
            auth = self.auth,
            policy = self.policy.as_deref(),
            policy_decision = self.policy_decision,
            shadow_rejected_by = self.shadow_rejected_by.as_deref(),
            user_agent = self.user_agent.as_deref(),
            error = self.error,
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn emit_to_string(rec: &AccessRecord) -> String {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = crate::logging::json_subscriber(move || writer.clone());
        tracing::subscriber::with_default(subscriber, || rec.emit());
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
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}
