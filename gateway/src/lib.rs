//! Edge gateway: a pipeline of small stages, each a module with a pure core. The folders
//! follow a request's path:
//!
//! - `accept`: before pingora has a request: the accept loop and per-client connection caps,
//!   TLS, HTTP/1.1 (buffered connection, head reader) and HTTP/2 (frame watcher);
//! - `admit`: pure request decisions in order (`admit::admit`): client IP, request id, block
//!   list, route, body size, in-flight cap, identity, rate limits; then the one awaited
//!   `shared: exact` confirmation;
//! - `forward`: the pingora `ProxyHttp` adapter that wires the stages into pingora's phases,
//!   the upstream's headers and address, per-connection settings, every response's shape
//!   (`respond`), errors, and what a finished request leaves (`request_log`);
//! - `observe`: metrics and their bounded label sets, the access-log record, JSON logging;
//! - `operate`: the admin port, config and certificate hot reload;
//! - `config`: the one typed config schema every stage reads; `state`: the process state
//!   (the hot-swappable `Live` config and what outlives a reload).
//!
//! Layering: `accept` may use `admit` and `forward`; `forward` uses `admit`; every stage
//! uses `observe`, `config` and `state`; `operate` may use anything and nothing uses it;
//! `observe` uses no other folder. No two files import each other, even round a loop
//! (`tests/source_tree.rs` checks all of this).

#![forbid(unsafe_code)]

pub mod accept;
pub mod admit;
pub mod config;
pub mod forward;
pub mod observe;
pub mod operate;
pub mod state;
