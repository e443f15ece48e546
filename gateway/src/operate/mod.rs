//! Operate: the admin port, config and certificate hot reload, and the config schema.

pub mod admin;
pub mod certs;
pub mod config;
pub mod reload;
