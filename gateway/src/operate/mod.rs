//! Operate: what runs the process around the request path: the admin port, config hot
//! reload and certificate hot reload. Nothing but `main` imports it.

pub mod admin;
pub mod certs;
pub mod cockpit;
pub mod reload;
pub mod replay;
