//! TLS on the public listener: `cert` checks a PEM pair (pure), `resolver` holds the
//! live certificate for hot swaps, `acceptor` builds the rustls server config once.

pub mod cert;
