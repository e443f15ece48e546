//! The bounded label and field value sets that features report: each `reason` list is
//! registered up front (every series exists from the first scrape) and each feature's test
//! holds its values to it. Kept here so that observe needs no feature module.

/// `gateway_tls_handshake_failures_total{reason}`: why a handshake failed.
pub const TLS_HANDSHAKE_FAILURES: &[&str] = &[
    "timeout",
    "not_tls",
    "protocol_version",
    "no_shared_cipher",
    "no_alpn",
    "alert",
    "malformed",
    "eof",
    "other",
];

/// `gateway_h2_connections_closed_total{reason}`: why an HTTP/2 connection ended.
pub const H2_CLOSE_REASONS: &[&str] = &[
    "client_closed",
    "idle_timeout",
    "header_timeout",
    "ping_timeout",
    "rapid_reset",
    "control_flood",
    "continuation_flood",
    "request_trailers",
    "enhance_your_calm",
    "malformed_streams",
    "protocol_error",
    "handshake_failed",
    "shutdown",
];

/// `gateway_connection_rejections_total{reason}`: which per-client cap refused a connection.
pub const CONNECTION_REJECTIONS: &[&str] = &["per_client_open", "per_client_rate"];

/// `gateway_proxy_protocol_errors_total{reason}`: why a balancer's connection was closed
/// for its PROXY header (`accept::proxy_protocol::Error::reason`, held to this by a test).
pub const PROXY_PROTOCOL_ERRORS: &[&str] = &[
    "missing",
    "malformed",
    "oversized",
    "unsupported",
    "checksum",
    "timeout",
    "closed",
];

/// `gateway_shared_limits_topology_changes_total{kind}`: a Redis topology change followed.
pub const SHARED_TOPOLOGY_CHANGES: &[&str] = &["master_switch", "moved", "ask", "slots_refresh"];

/// The access log's `trust`: how the client address was decided (`client_ip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustDecision {
    /// Untrusted peer, no forwarding headers: the peer is the client.
    Direct,
    /// Trusted peer; the client came from a verified walk (or is the peer).
    Trusted,
    /// Untrusted peer sent forwarding headers; ignored, the peer is the client.
    UntrustedPeerSpoof,
    /// The walk hit something unusable; the client is the last verified hop.
    Malformed,
}

impl TrustDecision {
    pub const fn as_str(self) -> &'static str {
        match self {
            TrustDecision::Direct => "direct",
            TrustDecision::Trusted => "trusted",
            TrustDecision::UntrustedPeerSpoof => "untrusted_peer_spoof",
            TrustDecision::Malformed => "malformed",
        }
    }
}
