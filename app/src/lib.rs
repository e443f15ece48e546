//! The document service as a library: `handle` serves one request in-process (tests drive
//! it with no socket), `server::run` puts it on a listener with graceful shutdown.

#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod config;
pub mod cursor;
pub mod errors;
pub mod handlers;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod store;
pub mod users;
pub mod validate;

pub use handlers::AppState;
pub use server::handle;
