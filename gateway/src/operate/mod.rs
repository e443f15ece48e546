//! Operate: the admin port, config and certificate hot reload.

pub mod admin;
pub mod certs;
pub mod reload;
