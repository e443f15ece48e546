//! Observe: metrics, the per-request log record, the access log and JSON logging.

pub mod access_log;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod textfmt;
