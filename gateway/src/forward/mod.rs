//! Forward: the pingora `ProxyHttp` adapter, the upstream's headers and address, and the
//! shape of every response and error a client sees.

pub mod errors;
pub mod headers;
pub mod proxy;
pub mod request_log;
pub mod respond;
pub mod upstream;
