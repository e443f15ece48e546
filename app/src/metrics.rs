//! Prometheus metrics: request counts/latency by route template, storage gauges.

use std::time::Duration;

use edgekit::method_label;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    documents: IntGauge,
    bytes: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests handled"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to produce the response head",
            ),
            &["method", "route"],
        )
        .expect("valid metric");
        let documents = IntGauge::new("app_documents_stored", "Documents currently stored")
            .expect("valid metric");
        let bytes = IntGauge::new(
            "app_documents_bytes",
            "Bytes of document data currently stored",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(documents.clone()),
            Box::new(bytes.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            duration,
            documents,
            bytes,
        }
    }

    pub fn observe(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// Renders the text exposition format; storage gauges are sampled now.
    pub fn render(&self, documents: u64, bytes: u64) -> Vec<u8> {
        self.documents
            .set(i64::try_from(documents).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec");
        out
    }
}
