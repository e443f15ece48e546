//! Shared HS256 token keys: the app signs access tokens with them, the gateway
//! and the app verify them. One implementation, so both sides agree on the
//! rules (algorithm, `kid`, leeway, required claims).
//!
//! Key file (YAML):
//! ```yaml
//! signing_kid: "2026-11"        # the key new tokens are signed with
//! keys:                          # every key listed here verifies
//!   - kid: "2026-11"
//!     secret: "at least 32 bytes of random text"
//!   - kid: "2026-08"             # an older key kept during a rotation
//!     secret: "..."
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Shortest secret accepted: RFC 7518 §3.2 wants a key at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp`/`nbf` between issuer and verifier.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Tokens longer than this are rejected before any parsing work.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why the token key file could not be loaded (shared wording: `edgekit::FileError`).
pub type KeyFileError = edgekit::FileError;

/// Why a token was refused. Deliberately coarse: callers log the variant, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is malformed")]
    Malformed,
    #[error("token has no kid or an unknown kid")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

impl VerifyError {
    /// Stable snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyError::Malformed => "malformed",
            VerifyError::UnknownKey => "unknown_key",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    signing_kid: String,
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    kid: String,
    secret: String,
}

struct Key {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

pub struct Keyring {
    signing_kid: String,
    keys: HashMap<String, Key>,
    validation: Validation,
}

impl std::fmt::Debug for Keyring {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Keyring")
            .field("signing_kid", &self.signing_kid)
            .field("kids", &kids)
            .finish()
    }
}

impl Keyring {
    pub fn load(path: &Path) -> Result<Keyring, KeyFileError> {
        edgekit::load_file(path, "token key file", Keyring::from_yaml)
    }

    pub fn from_yaml(text: &str) -> Result<Keyring, String> {
        let file: KeyFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for entry in file.keys {
            if entry.kid.is_empty() || entry.kid.len() > 64 {
                return Err("keys[].kid must be 1 to 64 characters".into());
            }
            if entry.secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "key {:?}: secret must be at least {MIN_SECRET_BYTES} bytes",
                    entry.kid
                ));
            }
            let key = Key {
                encoding: EncodingKey::from_secret(entry.secret.as_bytes()),
                decoding: DecodingKey::from_secret(entry.secret.as_bytes()),
            };
            if keys.insert(entry.kid.clone(), key).is_some() {
                return Err(format!("key {:?} is listed twice", entry.kid));
            }
        }
        if !keys.contains_key(&file.signing_kid) {
            return Err(format!(
                "signing_kid {:?} is not among keys",
                file.signing_kid
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = DEFAULT_LEEWAY_SECS;
        // jsonwebtoken ignores `nbf` unless asked: a token not valid yet must be refused.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Keyring {
            signing_kid: file.signing_kid,
            keys,
            validation,
        })
    }

    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Signs a token for `sub` valid for `ttl` from `now`.
    pub fn sign(&self, sub: &str, ttl: Duration, now: SystemTime) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let key = &self.keys[&self.signing_kid].encoding;
        // HS256 encoding of a serialisable struct cannot fail.
        jsonwebtoken::encode(&header, &claims, key).expect("HS256 signing")
    }

    /// Verifies signature (HS256 only, key chosen by `kid`), `exp` with leeway and `nbf`.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(VerifyError::Malformed);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(VerifyError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation).map_err(
            |e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => VerifyError::BadSignature,
                    ErrorKind::ExpiredSignature => VerifyError::Expired,
                    ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                    _ => VerifyError::Malformed,
                }
            },
        )?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 128 {
            return Err(VerifyError::Malformed);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_KEYS: &str = r#"
signing_kid: new
keys:
  - kid: new
    secret: "0123456789abcdef0123456789abcdef-new"
  - kid: old
    secret: "0123456789abcdef0123456789abcdef-old"
"#;

    fn ring(yaml: &str) -> Keyring {
        Keyring::from_yaml(yaml).expect("valid key file")
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn round_trip_carries_sub_and_kid() {
        let ring = ring(TWO_KEYS);
        let token = ring.sign("u-1", Duration::from_secs(60), now());
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("new"));
        assert_eq!(ring.verify(&token).unwrap().sub, "u-1");
    }

    #[test]
    fn old_key_still_verifies_during_rotation() {
        let old_only = ring(
            "signing_kid: old\nkeys:\n  - kid: old\n    secret: \"0123456789abcdef0123456789abcdef-old\"\n",
        );
        let token = old_only.sign("u-2", Duration::from_secs(60), now());
        assert_eq!(ring(TWO_KEYS).verify(&token).unwrap().sub, "u-2");
    }

    #[test]
    fn rejects_hostile_tokens() {
        let ring = ring(TWO_KEYS);
        let other = Keyring::from_yaml(
            "signing_kid: new\nkeys:\n  - kid: new\n    secret: \"ffffffffffffffffffffffffffffffffffff\"\n",
        )
        .unwrap();
        let forged = other.sign("admin", Duration::from_secs(60), now());
        let expired = ring.sign(
            "u",
            Duration::from_secs(1),
            now() - Duration::from_secs(600),
        );
        let future = {
            let claims = Claims {
                sub: "u".into(),
                iat: 0,
                exp: u64::MAX / 2,
            };
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("gone".into());
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"x")).unwrap()
        };
        let no_kid = {
            let claims = Claims {
                sub: "u".into(),
                iat: 0,
                exp: u64::MAX / 2,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef-new"),
            )
            .unwrap()
        };
        // alg=none: header {"alg":"none","kid":"new"}, claims {"sub":"admin","exp":9999999999}
        let alg_none =
            "eyJhbGciOiJub25lIiwia2lkIjoibmV3In0.eyJzdWIiOiJhZG1pbiIsImV4cCI6OTk5OTk5OTk5OX0.";
        let good = ring.sign("u", Duration::from_secs(60), now());
        // Flip the signature's first character: the last one carries padding bits, so
        // changing it can make the base64 non-canonical (Malformed) rather than wrong.
        let sig_start = good.rfind('.').unwrap() + 1;
        let flipped = if good[sig_start..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        let mut tampered = good.clone();
        tampered.replace_range(sig_start..sig_start + 1, flipped);
        let cases: Vec<(&str, String, VerifyError)> = vec![
            ("empty", String::new(), VerifyError::Malformed),
            ("garbage", "not.a.jwt".into(), VerifyError::Malformed),
            ("one segment", "abc".into(), VerifyError::Malformed),
            (
                "huge",
                "a".repeat(MAX_TOKEN_BYTES + 1),
                VerifyError::Malformed,
            ),
            ("alg none", alg_none.into(), VerifyError::Malformed),
            (
                "forged with other secret",
                forged,
                VerifyError::BadSignature,
            ),
            ("tampered signature", tampered, VerifyError::BadSignature),
            ("expired", expired, VerifyError::Expired),
            ("unknown kid", future, VerifyError::UnknownKey),
            ("missing kid", no_kid, VerifyError::UnknownKey),
        ];
        for (name, token, want) in cases {
            assert_eq!(ring.verify(&token), Err(want), "case {name}");
        }
    }

    #[test]
    fn not_before_in_the_future_is_refused() {
        #[derive(Serialize)]
        struct WithNbf {
            sub: &'static str,
            exp: u64,
            iat: u64,
            nbf: u64,
        }
        let ring = ring(TWO_KEYS);
        let t = now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("new".into());
        let token = |nbf| {
            let claims = WithNbf {
                sub: "u",
                exp: t + 600,
                iat: t,
                nbf,
            };
            jsonwebtoken::encode(&header, &claims, &ring.keys["new"].encoding).unwrap()
        };
        assert_eq!(ring.verify(&token(t + 300)), Err(VerifyError::NotYetValid));
        assert!(ring.verify(&token(t + 5)).is_ok(), "inside leeway");
        assert!(ring.verify(&token(t - 5)).is_ok());
    }

    #[test]
    fn expiry_leeway_is_small() {
        let ring = ring(TWO_KEYS);
        let ttl = Duration::from_secs(60);
        let just_expired = ring.sign("u", ttl, now() - ttl - Duration::from_secs(5));
        assert!(ring.verify(&just_expired).is_ok(), "inside leeway");
        let long_expired = ring.sign(
            "u",
            ttl,
            now() - ttl - Duration::from_secs(DEFAULT_LEEWAY_SECS + 5),
        );
        assert_eq!(ring.verify(&long_expired), Err(VerifyError::Expired));
    }

    #[test]
    fn rejects_bad_key_files() {
        let cases = [
            ("short secret", "signing_kid: a\nkeys:\n  - kid: a\n    secret: short\n"),
            ("signing kid missing", "signing_kid: b\nkeys:\n  - kid: a\n    secret: \"0123456789abcdef0123456789abcdef\"\n"),
            ("duplicate kid", "signing_kid: a\nkeys:\n  - kid: a\n    secret: \"0123456789abcdef0123456789abcdef\"\n  - kid: a\n    secret: \"0123456789abcdef0123456789abcdef\"\n"),
            ("unknown field", "signing_kid: a\nalgo: none\nkeys:\n  - kid: a\n    secret: \"0123456789abcdef0123456789abcdef\"\n"),
            ("empty kid", "signing_kid: \"\"\nkeys:\n  - kid: \"\"\n    secret: \"0123456789abcdef0123456789abcdef\"\n"),
            ("not yaml", "{{{", ),
        ];
        for (name, yaml) in cases {
            assert!(Keyring::from_yaml(yaml).is_err(), "case {name}");
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let text = format!("{:?}", ring(TWO_KEYS));
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}
