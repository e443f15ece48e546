//! Edge gateway: a pipeline of small stages, each a module with a pure core.
//! The pingora `ProxyHttp` impl in `proxy` only wires them together.

pub mod client_ip;
pub mod forwarding;
pub mod limits;
