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

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
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
    /// The JOSE header carries a parameter we do not accept (`crit`, key-carrying
    /// headers, `b64`, JWE fields, an unknown name) or an `alg`/`typ` other than ours.
    #[error("token header is not one we accept")]
    UnsupportedHeader,
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
            VerifyError::UnsupportedHeader => "unsupported_header",
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

impl Claims {
    /// Claims for `sub` issued at `now`, expiring `ttl` later.
    fn new(sub: &str, ttl: Duration, now: SystemTime) -> Claims {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Claims {
            sub: sub.to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
        }
    }
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

/// The only JOSE header we accept: exactly what `Keyring::sign` writes. An allowlist,
/// not a blocklist (RFC 8725 §3.1, §3.11; RFC 7515 §4.1.11):
/// - `crit` in any form (present, empty, malformed) is refused: we understand no
///   extension, and an empty list is itself invalid (RFC 7515 §4.1.11);
/// - `jku`, `jwk`, `x5u`, `x5c`, `x5t`, `x5t#S256` would let the token name its own
///   key; we only ever use the key `kid` selects from our own key file;
/// - `b64` (RFC 7797 unencoded payload) changes what the signature covers;
/// - `enc`, `zip`, `cty` belong to JWE or nested tokens, never to ours;
/// - any other name: unknown parameters are the next `crit` or `b64`.
///
/// Duplicate names are refused too (RFC 7515 §4: a parser may take the last one and
/// another the first), which a derived struct does for free.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoseHeader {
    /// Case-sensitive (RFC 7515 §4.1.1): only `HS256`; `none`, `hs256`, `HS512` are refused.
    alg: String,
    /// `JWT` when present (compared case-insensitively, RFC 7515 §4.1.9). We sign one kind of
    /// token with these keys, so a different `typ` is a token made for something else.
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Longest `kid` a key file may hold (`Keyring::from_yaml`).
const MAX_KID_BYTES: usize = 64;

/// Decodes and checks the header segment. `Malformed`: not base64url JSON object;
/// `UnsupportedHeader`: a JSON object we refuse; else the `kid` to look up.
fn check_header(token: &str) -> Result<String, VerifyError> {
    let segment = token.split('.').next().unwrap_or_default();
    let json = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| VerifyError::Malformed)?;
    // A derived struct also deserialises from a JSON array (`["HS256"]`): demand an object.
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(VerifyError::Malformed);
    }
    let header: JoseHeader = serde_json::from_slice(&json).map_err(|_| {
        // Only on the error path: tell a hostile header from garbage.
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json) {
            Ok(_) => VerifyError::UnsupportedHeader,
            Err(_) => VerifyError::Malformed,
        }
    })?;
    // Kept as `Malformed` (its label before the allowlist existed): `alg: none` and friends.
    if header.alg != "HS256" {
        return Err(VerifyError::Malformed);
    }
    if header
        .typ
        .as_deref()
        .is_some_and(|typ| !typ.eq_ignore_ascii_case("JWT"))
    {
        return Err(VerifyError::UnsupportedHeader);
    }
    match header.kid {
        Some(kid)
            if !kid.is_empty()
                && kid.len() <= MAX_KID_BYTES
                && kid.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(kid)
        }
        // Missing, empty, overlong or with control/space/non-ASCII bytes: never one of ours.
        _ => Err(VerifyError::UnknownKey),
    }
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
        let file: KeyFile = edgekit::parse_yaml(text)?;
        let mut keys = HashMap::new();
        for entry in file.keys {
            if entry.kid.is_empty()
                || entry.kid.len() > MAX_KID_BYTES
                || !entry.kid.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(
                    "keys[].kid must be 1 to 64 printable ASCII characters, no spaces".into(),
                );
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
        let claims = Claims::new(sub, ttl, now);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let key = &self.keys[&self.signing_kid].encoding;
        // HS256 encoding of a serialisable struct cannot fail.
        jsonwebtoken::encode(&header, &claims, key).expect("HS256 signing")
    }

    /// Signs like `sign` but under the JOSE header `header_json` given verbatim, so a test's
    /// token can differ from a good one in its header alone. Test support: not in the binaries.
    #[cfg(any(test, feature = "test-support"))]
    pub fn sign_with_header(
        &self,
        header_json: &str,
        sub: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> String {
        let claims = serde_json::to_string(&Claims::new(sub, ttl, now)).expect("plain struct");
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = &self.keys[&self.signing_kid].encoding;
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, Algorithm::HS256)
            .expect("HS256 signing");
        format!("{msg}.{sig}")
    }

    /// Verifies the header (`check_header`: HS256 only, no `crit` or key-carrying
    /// parameters), the signature with the key `kid` chooses, `exp` with leeway and `nbf`.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed);
        }
        // Compact JWS is exactly three segments; a JWE (five) or anything else is not ours.
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(VerifyError::Malformed);
        }
        let kid = check_header(token)?;
        let key = self.keys.get(&kid).ok_or(VerifyError::UnknownKey)?;
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
    fn hostile_headers_are_refused_even_when_correctly_signed() {
        use VerifyError::*;
        let ring = ring(TWO_KEYS);
        let long_kid = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, "n".repeat(65));
        #[rustfmt::skip]
        let cases: &[(&str, &str, Result<(), VerifyError>)] = &[
            // Accepted: what `sign` writes, and the same without `typ` or with another case.
            ("ours", r#"{"typ":"JWT","alg":"HS256","kid":"new"}"#, Ok(())),
            ("no typ", r#"{"alg":"HS256","kid":"new"}"#, Ok(())),
            ("typ lower case", r#"{"typ":"jwt","alg":"HS256","kid":"new"}"#, Ok(())),
            // crit (RFC 7515 §4.1.11): we understand no extension, so every form is refused.
            ("crit unknown", r#"{"alg":"HS256","kid":"new","crit":["exp2"],"exp2":1}"#, Err(UnsupportedHeader)),
            ("crit listed but absent", r#"{"alg":"HS256","kid":"new","crit":["x"]}"#, Err(UnsupportedHeader)),
            ("crit empty", r#"{"alg":"HS256","kid":"new","crit":[]}"#, Err(UnsupportedHeader)),
            ("crit string", r#"{"alg":"HS256","kid":"new","crit":"b64"}"#, Err(UnsupportedHeader)),
            ("crit null", r#"{"alg":"HS256","kid":"new","crit":null}"#, Err(UnsupportedHeader)),
            ("crit registered name", r#"{"alg":"HS256","kid":"new","crit":["kid"]}"#, Err(UnsupportedHeader)),
            // RFC 7797: b64=false changes what the signature covers.
            ("b64 false", r#"{"alg":"HS256","kid":"new","b64":false,"crit":["b64"]}"#, Err(UnsupportedHeader)),
            ("b64 without crit", r#"{"alg":"HS256","kid":"new","b64":false}"#, Err(UnsupportedHeader)),
            // Key-carrying headers (RFC 8725 §3.10 and the jwk-injection class).
            ("jku", r#"{"alg":"HS256","kid":"new","jku":"https://evil.example/jwks"}"#, Err(UnsupportedHeader)),
            ("jwk", r#"{"alg":"HS256","kid":"new","jwk":{"kty":"oct","k":"AAAA"}}"#, Err(UnsupportedHeader)),
            ("x5u", r#"{"alg":"HS256","kid":"new","x5u":"https://evil.example/c"}"#, Err(UnsupportedHeader)),
            ("x5c", r#"{"alg":"HS256","kid":"new","x5c":["MIIB"]}"#, Err(UnsupportedHeader)),
            ("x5t", r#"{"alg":"HS256","kid":"new","x5t":"abc"}"#, Err(UnsupportedHeader)),
            ("x5t#S256", r#"{"alg":"HS256","kid":"new","x5t#S256":"abc"}"#, Err(UnsupportedHeader)),
            // JWE / nested-token confusion.
            ("enc", r#"{"alg":"HS256","kid":"new","enc":"A128GCM"}"#, Err(UnsupportedHeader)),
            ("zip", r#"{"alg":"HS256","kid":"new","zip":"DEF"}"#, Err(UnsupportedHeader)),
            ("cty JWT", r#"{"alg":"HS256","kid":"new","cty":"JWT"}"#, Err(UnsupportedHeader)),
            ("unknown name", r#"{"alg":"HS256","kid":"new","x-admin":true}"#, Err(UnsupportedHeader)),
            // typ confusion (RFC 8725 §3.11).
            ("typ at+jwt", r#"{"typ":"at+jwt","alg":"HS256","kid":"new"}"#, Err(UnsupportedHeader)),
            ("typ JOSE+JSON", r#"{"typ":"JOSE+JSON","alg":"HS256","kid":"new"}"#, Err(UnsupportedHeader)),
            ("typ number", r#"{"typ":1,"alg":"HS256","kid":"new"}"#, Err(UnsupportedHeader)),
            // alg (RFC 8725 §3.1): only HS256, case-sensitive.
            ("alg none", r#"{"alg":"none","kid":"new"}"#, Err(Malformed)),
            ("alg lower case", r#"{"alg":"hs256","kid":"new"}"#, Err(Malformed)),
            ("alg HS512", r#"{"alg":"HS512","kid":"new"}"#, Err(Malformed)),
            ("alg RS256", r#"{"alg":"RS256","kid":"new"}"#, Err(Malformed)),
            ("alg missing", r#"{"kid":"new"}"#, Err(UnsupportedHeader)),
            ("alg array", r#"{"alg":["HS256"],"kid":"new"}"#, Err(UnsupportedHeader)),
            // Duplicate names: parsers disagree on which one wins.
            ("alg twice", r#"{"alg":"none","alg":"HS256","kid":"new"}"#, Err(UnsupportedHeader)),
            ("kid twice", r#"{"alg":"HS256","kid":"old","kid":"new"}"#, Err(UnsupportedHeader)),
            // kid oddities.
            ("kid empty", r#"{"alg":"HS256","kid":""}"#, Err(UnknownKey)),
            ("kid number", r#"{"alg":"HS256","kid":1}"#, Err(UnsupportedHeader)),
            ("kid null", r#"{"alg":"HS256","kid":null}"#, Err(UnknownKey)),
            ("kid NUL", r#"{"alg":"HS256","kid":"new\u0000"}"#, Err(UnknownKey)),
            ("kid traversal", r#"{"alg":"HS256","kid":"../../new"}"#, Err(UnknownKey)),
            ("kid space", r#"{"alg":"HS256","kid":"new "}"#, Err(UnknownKey)),
            ("kid too long", &long_kid, Err(UnknownKey)),
            // Not a JSON object at all.
            ("header array", r#"["HS256"]"#, Err(Malformed)),
            ("header string", r#""HS256""#, Err(Malformed)),
            ("header truncated", r#"{"alg":"HS256","kid":"new""#, Err(Malformed)),
        ];
        for (name, header, want) in cases {
            let got = ring
                .verify(&ring.sign_with_header(header, "u", Duration::from_secs(600), now()))
                .map(|c| {
                    assert_eq!(c.sub, "u");
                });
            assert_eq!(&got, want, "case {name}: {header}");
        }
    }

    #[test]
    fn token_shape_is_exactly_three_segments() {
        let ring = ring(TWO_KEYS);
        let good = ring.sign("u", Duration::from_secs(60), now());
        assert!(ring.verify(&good).is_ok());
        for (name, token) in [
            ("JWE-like five segments", format!("{good}.x.y")),
            ("four segments", format!("{good}.")),
            ("padded header", good.replacen('.', "=.", 1)),
            ("header with whitespace", format!(" {good}")),
        ] {
            assert!(ring.verify(&token).is_err(), "case {name}");
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
