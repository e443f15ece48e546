//! Edge gateway: a pipeline of small stages, each a module with a pure core.
//! `pipeline` decides, `respond` shapes answers, `request_log` records; the pingora
//! `ProxyHttp` impl in `proxy` only wires them into pingora's phases.

#![forbid(unsafe_code)]

pub mod accept;
pub mod admit;
pub mod config;
pub mod forward;
pub mod observe;
pub mod operate;
pub mod state;
