//! Who is calling: the user id from a bearer token the gateway verifies itself.

use std::collections::HashMap;
use std::sync::Mutex;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use keyring::{Keyring, VerifyError};

/// Verified tokens remembered per key set. Entries: token -> (sub, exp).
const TOKEN_CACHE_ENTRIES: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No Authorization header: only per-IP and global policies apply.
    Anonymous,
    /// A verified token; the user id is its `sub`.
    User(String),
    /// A credential was presented and refused: answer 401 at the edge.
    Rejected(AuthFailure),
}

/// Why a presented credential was refused: `gateway_auth_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// More than one Authorization header.
    MultipleCredentials,
    /// Not `scheme token`, or not visible ASCII.
    Malformed,
    UnsupportedScheme,
    /// The bearer token did not verify.
    Token(VerifyError),
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MultipleCredentials => "multiple_credentials",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnsupportedScheme => "unsupported_scheme",
            AuthFailure::Token(e) => e.as_str(),
        }
    }
}

impl Identity {
    /// Label for logs and `gateway_auth_failures_total{reason}`.
    pub fn auth_label(&self) -> &'static str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::User(_) => "user",
            Identity::Rejected(reason) => reason.as_str(),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        match self {
            Identity::User(id) => Some(id),
            _ => None,
        }
    }
}

/// Pure: decides the identity from the request headers.
pub fn identify(headers: &HeaderMap, keys: &Keyring) -> Identity {
    identify_with(headers, |token| keys.verify(token).map(|c| c.sub))
}

/// `identify`, but a token this key set already verified is not verified again
/// while it is unexpired: the HMAC and two JSON parses were ~20 % of a proxied
/// request's instructions (perf/RESULTS.md). `now_secs` is Unix time.
pub fn identify_cached(
    headers: &HeaderMap,
    keys: &Keyring,
    cache: &TokenCache,
    now_secs: u64,
) -> Identity {
    identify_with(headers, |token| cache.verify(keys, token, now_secs))
}

fn identify_with(
    headers: &HeaderMap,
    verify: impl FnOnce(&str) -> Result<String, VerifyError>,
) -> Identity {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Identity::Anonymous;
    };
    if values.next().is_some() {
        // Two credentials: which one would the app read? Refuse the ambiguity.
        return Identity::Rejected(AuthFailure::MultipleCredentials);
    }
    let Ok(value) = value.to_str() else {
        return Identity::Rejected(AuthFailure::Malformed);
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Identity::Rejected(AuthFailure::Malformed);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Identity::Rejected(AuthFailure::UnsupportedScheme);
    }
    match verify(token.trim()) {
        Ok(sub) => Identity::User(sub),
        Err(e) => Identity::Rejected(AuthFailure::Token(e)),
    }
}

/// Tokens that verified under one key set (it lives in `Live`, so a reload that
/// changes the keys starts an empty cache). Only successes are stored, keyed by the
/// exact token text, and a hit is served only before the token's `exp`, which is
/// never more lenient than `Keyring::verify` (it also allows the leeway after `exp`).
/// Bounded: when full, it is emptied and refills from live traffic.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Box<str>, (String, u64)>>,
}

impl TokenCache {
    pub fn verify(
        &self,
        keys: &Keyring,
        token: &str,
        now_secs: u64,
    ) -> Result<String, VerifyError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sub, exp)) = entries.get(token) {
            if now_secs <= *exp {
                return Ok(sub.clone());
            }
            entries.remove(token);
        }
        // Verify outside the lock: it is the slow part.
        drop(entries);
        let claims = keys.verify(token)?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= TOKEN_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(token.into(), (claims.sub.clone(), claims.exp));
        Ok(claims.sub)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    const KEYS: &str = "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"0123456789abcdef0123456789abcdef-k1\"\n";

    #[test]
    fn auth_failure_labels_are_stable() {
        let cases = [
            (AuthFailure::MultipleCredentials, "multiple_credentials"),
            (AuthFailure::Malformed, "malformed"),
            (AuthFailure::UnsupportedScheme, "unsupported_scheme"),
            (AuthFailure::Token(VerifyError::Malformed), "malformed"),
            (AuthFailure::Token(VerifyError::UnknownKey), "unknown_key"),
            (
                AuthFailure::Token(VerifyError::BadSignature),
                "bad_signature",
            ),
            (AuthFailure::Token(VerifyError::Expired), "expired"),
            (
                AuthFailure::Token(VerifyError::NotYetValid),
                "not_yet_valid",
            ),
        ];
        for (failure, label) in cases {
            assert_eq!(failure.as_str(), label);
            assert_eq!(Identity::Rejected(failure).auth_label(), label);
        }
    }

    #[test]
    fn identity_table() {
        let (keys, _, now) = fresh();
        let good = alice(&keys, now);
        let expired = keys.sign(
            "u-alice",
            Duration::from_secs(1),
            SystemTime::now() - Duration::from_secs(3600),
        );
        let other = Keyring::from_yaml(
            "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"ffffffffffffffffffffffffffffffffffffff\"\n",
        )
        .unwrap()
        .sign("u-admin", Duration::from_secs(60), SystemTime::now());
        let cases: Vec<(&str, Vec<String>, Identity)> = vec![
            ("none", vec![], Identity::Anonymous),
            (
                "valid",
                vec![format!("Bearer {good}")],
                Identity::User("u-alice".into()),
            ),
            (
                "lowercase scheme",
                vec![format!("bearer {good}")],
                Identity::User("u-alice".into()),
            ),
            (
                "expired",
                vec![format!("Bearer {expired}")],
                Identity::Rejected(AuthFailure::Token(VerifyError::Expired)),
            ),
            (
                "forged",
                vec![format!("Bearer {other}")],
                Identity::Rejected(AuthFailure::Token(VerifyError::BadSignature)),
            ),
            (
                "basic",
                vec!["Basic dXNlcjpwYXNz".into()],
                Identity::Rejected(AuthFailure::UnsupportedScheme),
            ),
            (
                "no token",
                vec!["Bearer".into()],
                Identity::Rejected(AuthFailure::Malformed),
            ),
            (
                "empty token",
                vec!["Bearer ".into()],
                Identity::Rejected(AuthFailure::Token(VerifyError::Malformed)),
            ),
            (
                "garbage",
                vec!["Bearer x.y.z".into()],
                Identity::Rejected(AuthFailure::Token(VerifyError::Malformed)),
            ),
            (
                "two headers",
                vec![format!("Bearer {good}"), format!("Bearer {good}")],
                Identity::Rejected(AuthFailure::MultipleCredentials),
            ),
        ];
        for (name, values, want) in cases {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, v.parse().unwrap());
            }
            assert_eq!(identify(&h, &keys), want, "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert_eq!(
            identify(&h, &keys),
            Identity::Rejected(AuthFailure::Malformed)
        );
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    /// The dev key set, an empty cache and the time the test runs at.
    fn fresh() -> (Keyring, TokenCache, SystemTime) {
        let keys = Keyring::from_yaml(KEYS).unwrap();
        (keys, TokenCache::default(), SystemTime::now())
    }

    /// A token for u-alice valid for a minute from `now`.
    fn alice(keys: &Keyring, now: SystemTime) -> String {
        keys.sign("u-alice", Duration::from_secs(60), now)
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn cache_serves_verified_tokens_until_exp_only() {
        let (keys, cache, now) = fresh();
        let token = alice(&keys, now);
        let h = bearer(&token);
        for _ in 0..3 {
            assert_eq!(
                identify_cached(&h, &keys, &cache, unix(now)),
                Identity::User("u-alice".into())
            );
        }
        assert_eq!(cache.len(), 1);

        // A token that expired an hour ago (by the verifier's real clock), planted as if
        // cached while it was valid: served while `now` is before its exp, re-verified
        // (and refused) once `now` passes it.
        let old = keys.sign(
            "u-bob",
            Duration::from_secs(60),
            now - Duration::from_secs(3600),
        );
        let exp = unix(now) - 3600 + 60;
        cache
            .entries
            .lock()
            .unwrap()
            .insert(old.as_str().into(), ("u-bob".into(), exp));
        let h = bearer(&old);
        assert_eq!(
            identify_cached(&h, &keys, &cache, exp),
            Identity::User("u-bob".into())
        );
        assert_eq!(
            identify_cached(&h, &keys, &cache, exp + 1),
            Identity::Rejected(AuthFailure::Token(VerifyError::Expired))
        );
        assert_eq!(cache.len(), 1, "the stale entry is dropped, not re-added");
    }

    #[test]
    fn cache_never_accepts_what_verify_refuses() {
        let (keys, cache, now) = fresh();
        let good = alice(&keys, now);
        // Same payload, one signature character changed: a different token text.
        let mut forged = good.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            identify_cached(&bearer(&good), &keys, &cache, unix(now)),
            Identity::User("u-alice".into())
        );
        assert_eq!(
            identify_cached(&bearer(&forged), &keys, &cache, unix(now)),
            identify(&bearer(&forged), &keys)
        );
        assert!(matches!(
            identify_cached(&bearer(&forged), &keys, &cache, unix(now)),
            Identity::Rejected(_)
        ));
        // Tokens of another key set are refused even with a warm cache for this one.
        let other = Keyring::from_yaml(
            "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"ffffffffffffffffffffffffffffffffffffff\"\n",
        )
        .unwrap();
        assert_eq!(
            identify_cached(&bearer(&good), &other, &TokenCache::default(), unix(now)),
            Identity::Rejected(AuthFailure::Token(VerifyError::BadSignature))
        );
    }

    #[test]
    fn cache_stays_bounded() {
        let (keys, cache, now) = fresh();
        for i in 0..TOKEN_CACHE_ENTRIES + 10 {
            let t = keys.sign(&format!("u-{i}"), Duration::from_secs(60), now);
            assert_eq!(
                identify_cached(&bearer(&t), &keys, &cache, unix(now)),
                Identity::User(format!("u-{i}"))
            );
            assert!(cache.len() <= TOKEN_CACHE_ENTRIES);
        }
    }
}
