//! Observe: metrics and their bounded label sets, the access-log record, hot-path text
//! writers and JSON logging. Imports no other folder: features report into it.

pub mod access_log;
pub mod config_status;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod textfmt;
