//! Pure certificate loader: PEM chain + key in, a checked rustls `CertifiedKey` out
//! (key matches the leaf, leaf first, leaf valid now, `not_after` extracted).
//! No file I/O here: the caller reads the files, so reload and `check-config` share it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode;

/// A checked certificate pair, ready for the resolver.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's validity window.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The `now` the pair was checked at: `expires_within` counts from it.
    pub checked_at: SystemTime,
    /// Certificates in the chain, leaf included.
    pub chain_len: usize,
}

impl LoadedCert {
    /// True when the leaf expires less than `window` after `checked_at`.
    pub fn expires_within(&self, window: Duration) -> bool {
        self.not_after
            .duration_since(self.checked_at)
            .map_or(true, |left| left < window)
    }

    /// `not_after` as Unix seconds (the expiry metric's value).
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Why a pair is refused; each message names what the operator must fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("certificate file holds no PEM CERTIFICATE block")]
    NoCertificate,
    #[error("certificate file is not valid PEM: {0}")]
    CertPem(String),
    #[error("key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("key file is not valid PEM: {0}")]
    KeyPem(String),
    #[error("private key is not usable: {0}")]
    UnsupportedKey(String),
    #[error("leaf certificate does not parse as X.509: {0}")]
    BadCertificate(String),
    #[error("private key does not match the first certificate (the leaf)")]
    KeyMismatch,
    #[error("private key matches certificate #{0} of the chain: put the leaf first")]
    LeafNotFirst(usize),
    #[error("leaf certificate expired {0} s ago")]
    Expired(u64),
    #[error("leaf certificate is not valid for another {0} s")]
    NotYetValid(u64),
}

/// Parses and checks a PEM chain and key as of `now`.
pub fn load_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::CertPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey,
        e => CertError::KeyPem(e.to_string()),
    })?;
    let signer = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
    let (not_before, not_after) = validity(&chain[0])?;
    let chain_len = chain.len();
    let certified = CertifiedKey::new(chain, signer);
    if let Err(e) = certified.keys_match() {
        return Err(mismatch_reason(&certified, e));
    }
    if now > not_after {
        let ago = now.duration_since(not_after).unwrap_or_default();
        return Err(CertError::Expired(ago.as_secs()));
    }
    if now < not_before {
        let left = not_before.duration_since(now).unwrap_or_default();
        return Err(CertError::NotYetValid(left.as_secs()));
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_before,
        not_after,
        checked_at: now,
        chain_len,
    })
}

/// The leaf's `notBefore`/`notAfter`.
fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertError> {
    let cert = x509_cert::Certificate::from_der(leaf.as_ref())
        .map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let v = &cert.tbs_certificate.validity;
    Ok((
        UNIX_EPOCH + v.not_before.to_unix_duration(),
        UNIX_EPOCH + v.not_after.to_unix_duration(),
    ))
}

/// A mismatch with the leaf: says so, or that a later certificate is the key's (wrong order).
fn mismatch_reason(certified: &CertifiedKey, e: rustls::Error) -> CertError {
    use rustls::{Error, InconsistentKeys};
    match e {
        Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {}
        Error::InconsistentKeys(InconsistentKeys::Unknown) => {
            return CertError::UnsupportedKey("its public key cannot be derived".into())
        }
        e => return CertError::BadCertificate(e.to_string()),
    }
    for (i, cert) in certified.cert.iter().enumerate().skip(1) {
        let alone = CertifiedKey::new(vec![cert.clone()], Arc::clone(&certified.key));
        if alone.keys_match().is_ok() {
            return CertError::LeafNotFirst(i + 1);
        }
    }
    CertError::KeyMismatch
}

/// Certificates made at test time (rcgen, ring): no private key is committed except the
/// labelled RSA fixture ring cannot generate.
#[cfg(test)]
pub(crate) mod test_certs {
    use rcgen::{date_time_ymd, CertificateParams, Issuer, KeyPair};

    pub const RSA_KEY: &str = include_str!("testdata/rsa2048-TEST-ONLY.key.pem");

    /// (cert PEM, key PEM) for `localhost` valid over [from, until] (years).
    pub fn leaf(key: &KeyPair, from: i32, until: i32) -> String {
        params(from, until).self_signed(key).unwrap().pem()
    }

    pub fn params(from: i32, until: i32) -> CertificateParams {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.not_before = date_time_ymd(from, 1, 1);
        p.not_after = date_time_ymd(until, 1, 1);
        p
    }

    /// A leaf signed by a CA: (leaf PEM, CA PEM, leaf key).
    pub fn chained() -> (String, String, KeyPair) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = params(2020, 2090);
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params(2020, 2080).signed_by(&leaf_key, &issuer).unwrap();
        (leaf.pem(), ca_pem, leaf_key)
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::*;
    use super::*;
    use rcgen::KeyPair;

    fn at(year: i32) -> SystemTime {
        // 365.25 days a year is close enough for "which side of a 1 Jan boundary".
        UNIX_EPOCH + Duration::from_secs(((year - 1970) as u64) * 31_557_600 + 86_400 * 180)
    }

    #[test]
    fn table_of_pairs() {
        let ec = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let rsa = KeyPair::from_pem(RSA_KEY).unwrap();
        let (chain_leaf, ca, leaf_key) = chained();
        let ec_cert = leaf(&ec, 2020, 2090);
        let rsa_cert = leaf(&rsa, 2020, 2090);
        let expired = leaf(&ec, 2001, 2010);
        let future = leaf(&ec, 2080, 2090);
        let good_chain = format!("{chain_leaf}{ca}");
        let reversed = format!("{ca}{chain_leaf}");
        let truncated = ec_cert.replace("-----END CERTIFICATE-----", "");
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let not_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        let ec_key = ec.serialize_pem();
        let leaf_pem = leaf_key.serialize_pem();
        let other_pem = other.serialize_pem();
        let big = "A".repeat(1 << 20);
        type Want = Result<usize, CertError>;
        let cases: Vec<(&str, &str, &str, Want)> = vec![
            ("ec p256", &ec_cert, &ec_key, Ok(1)),
            ("rsa 2048", &rsa_cert, RSA_KEY, Ok(1)),
            ("leaf + ca", &good_chain, &leaf_pem, Ok(2)),
            (
                "ca first",
                &reversed,
                &leaf_pem,
                Err(CertError::LeafNotFirst(2)),
            ),
            (
                "other key",
                &ec_cert,
                &other_pem,
                Err(CertError::KeyMismatch),
            ),
            (
                "rsa key, ec cert",
                &ec_cert,
                RSA_KEY,
                Err(CertError::KeyMismatch),
            ),
            ("expired", &expired, &ec_key, Err(CertError::Expired(0))),
            (
                "not yet valid",
                &future,
                &ec_key,
                Err(CertError::NotYetValid(0)),
            ),
            ("empty cert", "", &ec_key, Err(CertError::NoCertificate)),
            (
                "garbage cert",
                "hello\x00\u{7f}world",
                &ec_key,
                Err(CertError::NoCertificate),
            ),
            (
                "megabyte of junk",
                &big,
                &ec_key,
                Err(CertError::NoCertificate),
            ),
            (
                "key as cert",
                &ec_key,
                &ec_key,
                Err(CertError::NoCertificate),
            ),
            ("cert as key", &ec_cert, &ec_cert, Err(CertError::NoKey)),
            ("empty key", &ec_cert, "", Err(CertError::NoKey)),
            (
                "truncated pem",
                &truncated,
                &ec_key,
                Err(CertError::CertPem(String::new())),
            ),
            (
                "pem not der",
                not_der,
                &ec_key,
                Err(CertError::BadCertificate(String::new())),
            ),
            (
                "key not der",
                &ec_cert,
                not_key,
                Err(CertError::UnsupportedKey(String::new())),
            ),
        ];
        for (name, cert, key, want) in cases {
            let got = load_pair(cert.as_bytes(), key.as_bytes(), at(2026));
            match (&got, &want) {
                (Ok(l), Ok(n)) => assert_eq!(l.chain_len, *n, "{name}"),
                // Same variant; payloads (messages, seconds) vary.
                (Err(g), Err(w)) => assert_eq!(
                    std::mem::discriminant(g),
                    std::mem::discriminant(w),
                    "{name}: {g}"
                ),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
            if let (Err(CertError::LeafNotFirst(i)), Err(CertError::LeafNotFirst(j))) =
                (&got, &want)
            {
                assert_eq!(i, j, "{name}");
            }
        }
    }

    #[test]
    fn validity_and_expiry_window() {
        let key = KeyPair::generate().unwrap();
        let cert = leaf(&key, 2020, 2027);
        let pem = key.serialize_pem();
        let now = at(2026); // about 1 July 2026
        let l = load_pair(cert.as_bytes(), pem.as_bytes(), now).unwrap();
        assert_eq!(l.not_after_unix(), 1_798_761_600, "2027-01-01T00:00:00Z");
        assert_eq!(
            l.not_before,
            UNIX_EPOCH + Duration::from_secs(1_577_836_800)
        );
        let day = Duration::from_secs(86_400);
        assert!(!l.expires_within(14 * day), "half a year left");
        assert!(l.expires_within(365 * day));
        // Right at the edge of the window.
        let late = UNIX_EPOCH + Duration::from_secs(1_798_761_600) - 14 * day;
        let l = load_pair(cert.as_bytes(), pem.as_bytes(), late).unwrap();
        assert!(!l.expires_within(14 * day) && l.expires_within(14 * day + Duration::from_secs(1)));
        let after = UNIX_EPOCH + Duration::from_secs(1_798_761_600 + 3600);
        assert_eq!(
            load_pair(cert.as_bytes(), pem.as_bytes(), after).unwrap_err(),
            CertError::Expired(3600)
        );
    }
}
