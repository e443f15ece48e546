//! Token parser: `keyring::Keyring::verify` and `gateway::admit::identity::identify`.
//! Never panics; only a correctly signed token with a usable `sub` is a user.
//!
//! Byte 0 picks the mode:
//! 0 = the rest is a raw `Authorization` header value;
//! 1 = the rest is a JWT payload, signed with the real key under a fixed header,
//!     so claim parsing and validation (exp, nbf, sub) get fuzzed past the signature;
//! 2 = the rest is `header-json \xff payload-json`, both signed with the real key.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gateway::admit::identity::{identify, Identity};
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use keyring::{Keyring, VerifyError};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-0123456789abcdef-0123456789";

fn ring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let ring = Keyring::from_yaml(&format!(
            "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"{SECRET}\"\n"
        ))
        .unwrap();
        // Sanity of the oracle: a fresh token from the real signer verifies.
        let good = ring.sign("u-1", Duration::from_secs(60), SystemTime::now());
        assert_eq!(ring.verify(&good).unwrap().sub, "u-1");
        ring
    })
}

fn signed(header_json: &[u8], payload_json: &[u8]) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{msg}.{sig}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `payload` is the JSON we signed, `None` for tokens we did not sign.
fn check(token: &str, payload: Option<&[u8]>) {
    let ring = ring();
    let signed_by_us = payload.is_some();
    match ring.verify(token) {
        Ok(claims) => {
            // Forging is out of reach: only tokens we signed may verify.
            assert!(signed_by_us, "unsigned token verified: {token:?}");
            assert!(!claims.sub.is_empty() && claims.sub.len() <= 128);
            let leeway = keyring::DEFAULT_LEEWAY_SECS + 5;
            assert!(
                claims.exp + leeway >= now(),
                "expired token accepted: {claims:?}"
            );
            // A token that says it is not valid yet must not be accepted either.
            let nbf = payload
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v.get("nbf").and_then(serde_json::Value::as_u64));
            if let Some(nbf) = nbf {
                assert!(
                    nbf <= now() + leeway,
                    "token before its nbf accepted: {token}"
                );
            }
        }
        Err(VerifyError::BadSignature) => assert!(!signed_by_us, "our own signature refused"),
        Err(_) => {}
    }
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, v);
        let id = identify(&headers, ring);
        assert_eq!(id.user_id().is_some(), matches!(id, Identity::User(_)));
        if id.user_id().is_some() {
            assert!(signed_by_us);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    match mode % 3 {
        0 => {
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                let mut headers = HeaderMap::new();
                headers.append(AUTHORIZATION, v.clone());
                let id = identify(&headers, ring());
                assert!(id.user_id().is_none(), "forged credential accepted: {v:?}");
                // Two credentials are always refused, whatever they hold.
                headers.append(AUTHORIZATION, v);
                assert!(matches!(identify(&headers, ring()), Identity::Rejected(_)));
            }
            check(&String::from_utf8_lossy(rest), None);
        }
        1 => check(
            &signed(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#, rest),
            Some(rest),
        ),
        _ => {
            let (header, payload) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            check(&signed(header, payload), Some(payload));
        }
    }
});
