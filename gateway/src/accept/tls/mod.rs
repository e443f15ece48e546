//! TLS on the public listener: `cert` checks a PEM pair (pure), `resolver` holds the
//! live certificate for hot swaps, `acceptor` builds the rustls server config once and
//! runs handshakes under a deadline, `stream` is the TLS connection as pingora sees it.

pub mod acceptor;
pub mod cert;
pub mod resolver;
pub mod stream;

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use cert::LoadedCert;
use resolver::CertResolver;

/// What the listener needs for TLS; lives in `Process` so a reload can `resolver.store`.
pub struct TlsState {
    pub resolver: Arc<CertResolver>,
    pub acceptor: TlsAcceptor,
}

impl TlsState {
    pub fn new(loaded: &LoadedCert) -> Result<TlsState, String> {
        let resolver = Arc::new(CertResolver::new(Arc::clone(&loaded.key)));
        let config = acceptor::server_config(Arc::clone(&resolver)).map_err(|e| e.to_string())?;
        Ok(TlsState {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}
