//! The live certificate: rustls asks this resolver on every handshake, and a reload
//! `store`s a new pair without rebuilding the acceptor (handshakes in flight keep theirs).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            current: ArcSwap::new(key),
        }
    }

    /// Swaps in a checked pair (see `cert::load_pair`); the next handshake presents it.
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    /// One certificate for every name: SNI is not used to choose.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::tls::cert::{load_pair, test_certs};
    use rcgen::KeyPair;
    use std::time::SystemTime;

    fn pair() -> Arc<CertifiedKey> {
        let key = KeyPair::generate().unwrap();
        let cert = test_certs::leaf(&key, 2020, 2090);
        let pem = key.serialize_pem();
        load_pair(cert.as_bytes(), pem.as_bytes(), SystemTime::now())
            .unwrap()
            .key
    }

    #[test]
    fn store_swaps_what_resolve_hands_out() {
        let (a, b) = (pair(), pair());
        let r = CertResolver::new(Arc::clone(&a));
        assert!(Arc::ptr_eq(&r.current(), &a));
        r.store(Arc::clone(&b));
        assert!(Arc::ptr_eq(&r.current(), &b));
        assert_ne!(a.cert[0], b.cert[0]);
    }
}
