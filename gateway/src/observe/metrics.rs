//! Prometheus metrics of the gateway. Labels are bounded: method is one of a
//! fixed set, route is a configured prefix, never a raw path, IP or user.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::observe::labels;

/// Latency buckets in seconds: fine below 50 ms where our SLOs live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub forwarded_rejections: IntCounterVec,
    pub head_rejections: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub blocked: IntCounterVec,
    pub inflight_rejections: IntCounter,
    pub upstream_errors: IntCounterVec,
    pub inflight: IntGauge,
    pub connections: IntGauge,
    pub connections_refused: IntCounter,
    pub upstream_up: IntGauge,
    pub rate_limit_decisions: IntCounterVec,
    pub rate_limit_active_keys: IntGaugeVec,
    pub rate_limit_evictions: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub tls_certificate_reloads: IntCounterVec,
    /// Registered only while `tls` is on (`export_tls_certificate_expiry`): a cleartext gateway
    /// exporting 0 would read as a certificate that expired in 1970.
    tls_certificate_expiry: IntGauge,
    pub access_log_dropped: IntGauge,
    pub tls_handshake_failures: IntCounterVec,
    pub h2_closed: IntCounterVec,
    pub connection_rejections: IntCounterVec,
    pub proxy_protocol_errors: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A counter with one label, every known value exported at 0 from the start (so a rate()
/// or an alert sees the first increment).
fn labelled_counter(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = counter_vec(r, name, help, &[label]);
    for v in values {
        c.with_label_values(&[v]);
    }
    c
}

/// `labelled_counter` with the `reason` label.
fn reason_counter(r: &Registry, name: &str, help: &str, reasons: &[&str]) -> IntCounterVec {
    labelled_counter(r, name, help, "reason", reasons)
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build_info = gauge_vec(
            &r,
            "gateway_build_info",
            "Gateway build; value is always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let upstream_errors = labelled_counter(
            &r,
            "gateway_upstream_errors_total",
            "Requests that failed talking to the app, by kind (connect, timeout, other).",
            "kind",
            &["connect", "timeout", "other"],
        );
        let config_reloads = labelled_counter(
            &r,
            "gateway_config_reloads_total",
            "Config reload attempts by result (ok, error).",
            "result",
            &["ok", "error"],
        );
        let tls_certificate_reloads = labelled_counter(
            &r,
            "gateway_tls_certificate_reloads_total",
            "Certificate reload attempts (file change, SIGHUP, new config paths) by result (ok, error).",
            "result",
            &["ok", "error"],
        );
        let forwarded_rejections = reason_counter(
            &r,
            "gateway_forwarded_header_rejections_total",
            "Requests whose forwarded headers were not believed, by reason.",
            &[
                "untrusted_peer",
                "malformed",
                "unknown_node",
                "too_many_hops",
            ],
        );
        let blocked = reason_counter(
            &r,
            "gateway_blocked_requests_total",
            "Requests refused (403) by the block list, by what matched (client, user).",
            &["client", "user"],
        );
        let tls_handshake_failures = reason_counter(
            &r,
            "gateway_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason (timeout, not_tls, protocol_version, ...).",
            labels::TLS_HANDSHAKE_FAILURES,
        );
        let connection_rejections = reason_counter(
            &r,
            "gateway_connection_rejections_total",
            "Connections closed at accept by a per-client cap, by reason (per_client_open, per_client_rate).",
            labels::CONNECTION_REJECTIONS,
        );
        let proxy_protocol_errors = reason_counter(
            &r,
            "gateway_proxy_protocol_errors_total",
            "Connections from a proxy_protocol.from balancer closed for their PROXY header, by reason (missing, malformed, timeout, ...).",
            labels::PROXY_PROTOCOL_ERRORS,
        );
        let h2_closed = reason_counter(
            &r,
            "gateway_h2_connections_closed_total",
            "HTTP/2 connections closed, by reason (client_closed, idle_timeout, rapid_reset, ...).",
            labels::H2_CLOSE_REASONS,
        );
        Metrics {
            tls_handshake_failures,
            h2_closed,
            connection_rejections,
            proxy_protocol_errors,
            requests_total: counter_vec(
                &r,
                "http_requests_total",
                "Requests answered by the gateway.",
                &["method", "status", "route"],
            ),
            request_duration: histogram_vec(
                &r,
                "http_request_duration_seconds",
                "Time from the end of the request head to the end of the response.",
                &["route"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "gateway_upstream_duration_seconds",
                "Time spent waiting on the app, per proxied request.",
                &["route"],
            ),
            forwarded_rejections,
            head_rejections: counter_vec(
                &r,
                "gateway_request_head_rejections_total",
                "Requests refused before routing: timeout (408), too_large (431), and 400s by reason (malformed, target, host_missing, ...).",
                &["reason"],
            ),
            auth_failures: counter_vec(
                &r,
                "gateway_auth_failures_total",
                "Bearer tokens refused at the edge, by reason.",
                &["reason"],
            ),
            blocked,
            inflight_rejections: counter(
                &r,
                "gateway_inflight_rejections_total",
                "Requests refused (429) because their client had max_in_flight_per_client in flight.",
            ),
            upstream_errors,
            inflight: gauge(&r, "gateway_inflight_requests", "Requests being processed."),
            connections: gauge(&r, "gateway_open_connections", "Open client connections."),
            connections_refused: counter(
                &r,
                "gateway_connections_refused_total",
                "Connections closed at accept because max_connections was reached.",
            ),
            upstream_up: gauge(
                &r,
                "gateway_upstream_up",
                "1 when the last probe of the app connected, else 0.",
            ),
            rate_limit_decisions: counter_vec(
                &r,
                "gateway_rate_limit_decisions_total",
                "Rate-limit decisions by policy: allowed, rejected, shadow_rejected.",
                &["policy", "decision"],
            ),
            rate_limit_active_keys: gauge_vec(
                &r,
                "gateway_rate_limit_active_keys",
                "Keys tracked per policy.",
                &["policy"],
            ),
            rate_limit_evictions: gauge_vec(
                &r,
                "gateway_rate_limit_evictions",
                "Active keys evicted at the per-policy cap since the policy was created.",
                &["policy"],
            ),
            config_reloads,
            tls_certificate_reloads,
            tls_certificate_expiry: IntGauge::new(
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "not_after of the served leaf certificate, unix seconds.",
            )
            .expect("valid metric"),
            access_log_dropped: gauge(
                &r,
                "gateway_access_log_dropped",
                "Access-log lines dropped because the writer fell behind.",
            ),
            registry: r,
        }
    }

    /// The registry `render` gathers: features that own process-wide metrics (the shared
    /// limits', the cockpit's config and reset metrics) add theirs here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the served leaf's `not_after` (unix seconds) and exports the gauge; `None`
    /// (cleartext) removes it.
    pub fn export_tls_certificate_expiry(&self, not_after: Option<i64>) {
        let g = &self.tls_certificate_expiry;
        match not_after {
            Some(t) => {
                g.set(t);
                // AlreadyReg on every reload after the first: the gauge is the same one.
                let _ = self.registry.register(Box::new(g.clone()));
            }
            None => {
                let _ = self.registry.unregister(Box::new(g.clone()));
            }
        }
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Bounded `method` label, shared with the app.
pub use edgekit::method_label;

/// Bounded `status` label without allocating.
pub fn status_label(status: u16) -> &'static str {
    const LABELS: [&str; 6] = ["0", "1xx", "2xx", "3xx", "4xx", "5xx"];
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s => LABELS[(s / 100).min(5) as usize],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        m.requests_total
            .with_label_values(&["GET", "200", "/v1/"])
            .inc();
        m.request_duration
            .with_label_values(&["/v1/"])
            .observe(0.01);
        m.upstream_duration
            .with_label_values(&["/v1/"])
            .observe(0.01);
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "http_requests_total",
            "http_request_duration_seconds_bucket",
            "gateway_upstream_duration_seconds_bucket",
            "gateway_forwarded_header_rejections_total",
            "gateway_upstream_errors_total",
            "gateway_inflight_requests",
            "gateway_build_info",
            "gateway_config_reloads_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    #[test]
    fn certificate_expiry_is_exported_only_with_tls() {
        let m = Metrics::new();
        let name = "gateway_tls_certificate_expiry_timestamp_seconds";
        let text = |m: &Metrics| String::from_utf8(m.render()).unwrap();
        assert!(!text(&m).contains(name), "cleartext: no expiry series");
        assert!(text(&m).contains("gateway_tls_certificate_reloads_total{result=\"error\"} 0"));
        m.export_tls_certificate_expiry(Some(1_800_000_000));
        m.export_tls_certificate_expiry(Some(1_900_000_000)); // a renewal: same series, new value
        assert!(
            text(&m).contains(&format!("{name} 1900000000")),
            "{}",
            text(&m)
        );
        assert_eq!(text(&m).matches(&format!("\n{name} ")).count(), 1);
        m.export_tls_certificate_expiry(None);
        assert!(!text(&m).contains(name));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label(&http::Method::from_bytes(b"BREW").unwrap()),
            "OTHER"
        );
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(0), "0");
        assert_eq!(status_label(65535), "5xx");
        assert_eq!(status_label(429), "429");
    }
}
