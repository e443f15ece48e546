//! The rustls server side, built once: ring provider (pure Rust + ring's own C/asm, no
//! aws-lc or OpenSSL build), TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, certificates
//! from the hot-swappable resolver. `handshake` runs one under a deadline and names failures.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4Stream;
use rustls::crypto::ring;
use rustls::server::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::resolver::CertResolver;
use super::stream::TlsIo;

pub fn server_config(resolver: Arc<CertResolver>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session tickets/IDs kept beyond rustls' bounded default cache.
    Ok(config)
}

/// Runs the server handshake within `deadline`.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: L4Stream,
    deadline: Duration,
) -> Result<TlsIo, &'static str> {
    match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Err(_) => Err("timeout"),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(s)) => Ok(TlsIo::new(s)),
    }
}

/// Pure: an accept error to one of `labels::TLS_HANDSHAKE_FAILURES`.
pub fn classify(e: &io::Error) -> &'static str {
    use rustls::{Error, InvalidMessage, PeerIncompatible as P, PeerMisbehaved};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => "eof",
            _ => "other",
        };
    };
    match tls {
        // Plain HTTP (or anything not a TLS record) to the TLS port.
        Error::InvalidMessage(InvalidMessage::InvalidContentType) => "not_tls",
        Error::InvalidMessage(_) | Error::PeerMisbehaved(PeerMisbehaved::TooManyEmptyFragments) => {
            "malformed"
        }
        Error::PeerIncompatible(
            P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::SupportedVersionsExtensionRequired
            | P::ServerDoesNotSupportTls12Or13,
        ) => "protocol_version",
        Error::PeerIncompatible(
            P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon | P::NoSignatureSchemesInCommon,
        ) => "no_shared_cipher",
        Error::NoApplicationProtocol => "no_alpn",
        Error::AlertReceived(_) => "alert",
        Error::PeerMisbehaved(_) => "malformed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::labels::TLS_HANDSHAKE_FAILURES;
    use rustls::{AlertDescription, Error, InvalidMessage, PeerIncompatible};

    #[test]
    fn failure_reasons_are_bounded_and_named() {
        let tls = |e: Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                tls(Error::InvalidMessage(InvalidMessage::InvalidContentType)),
                "not_tls",
            ),
            (
                tls(Error::InvalidMessage(InvalidMessage::MessageTooLarge)),
                "malformed",
            ),
            (
                tls(PeerIncompatible::SupportedVersionsExtensionRequired.into()),
                "protocol_version",
            ),
            (
                tls(PeerIncompatible::Tls12NotOfferedOrEnabled.into()),
                "protocol_version",
            ),
            (
                tls(PeerIncompatible::NoCipherSuitesInCommon.into()),
                "no_shared_cipher",
            ),
            (tls(Error::NoApplicationProtocol), "no_alpn"),
            (
                tls(Error::AlertReceived(AlertDescription::UnknownCA)),
                "alert",
            ),
            (tls(Error::General("x".into())), "other"),
            (io::Error::from(io::ErrorKind::UnexpectedEof), "eof"),
            (io::Error::from(io::ErrorKind::ConnectionReset), "eof"),
            (io::Error::other("boom"), "other"),
        ];
        for (e, want) in cases {
            let got = classify(&e);
            assert_eq!(got, want, "{e:?}");
            assert!(TLS_HANDSHAKE_FAILURES.contains(&got));
        }
    }

    #[test]
    fn only_tls12_and_13_with_h2_first() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = crate::accept::tls::cert::test_certs::leaf(&key, 2020, 2090);
        let pem = key.serialize_pem();
        let loaded = crate::accept::tls::cert::load_pair(
            cert.as_bytes(),
            pem.as_bytes(),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let c = server_config(Arc::new(CertResolver::new(loaded.key))).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let mut versions: Vec<_> = c
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.version().version)
            .collect();
        versions.dedup();
        assert!(versions.iter().all(|v| matches!(
            v,
            rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
        )));
    }
}
