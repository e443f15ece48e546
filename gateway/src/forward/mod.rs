//! Forward: from an admitted request to the upstream and back. The pingora `ProxyHttp`
//! adapter (`proxy`) wires the stages; the upstream's headers and address, per-connection
//! settings, the shape of every response and error a client sees, and what a finished
//! request leaves behind (`request_log`) are each one module here.

pub mod body_relay;
pub mod conn;
pub mod errors;
pub mod headers;
pub mod proxy;
pub mod request_log;
pub mod respond;
pub mod upstream;
