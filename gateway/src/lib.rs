//! Edge gateway: a pipeline of small stages, each a module with a pure core.
//! `pipeline` decides, `respond` shapes answers, `request_log` records; the pingora
//! `ProxyHttp` impl in `proxy` only wires them into pingora's phases.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod blocklist;
pub mod buffered;
pub mod cert_reload;
pub mod cert_watch;
pub mod client_ip;
pub mod cockpit;
pub mod config;
pub mod config_schema;
pub mod errors;
pub mod forwarded;
pub mod forwarding;
pub mod head;
pub mod identity;
pub mod inflight;
pub mod invalid;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod replay;
pub mod request_log;
pub mod respond;
pub mod state;
pub mod textfmt;
pub mod tls;
pub mod upstream;
