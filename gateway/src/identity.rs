//! Who is calling: the user id from a bearer token the gateway verifies itself.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use keyring::Keyring;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No Authorization header: only per-IP and global policies apply.
    Anonymous,
    /// A verified token; the user id is its `sub`.
    User(String),
    /// A credential was presented and refused: answer 401 at the edge.
    Rejected(&'static str),
}

impl Identity {
    /// Label for logs and `gateway_auth_failures_total{reason}`.
    pub fn auth_label(&self) -> &'static str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::User(_) => "user",
            Identity::Rejected(reason) => reason,
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
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Identity::Anonymous;
    };
    if values.next().is_some() {
        // Two credentials: which one would the app read? Refuse the ambiguity.
        return Identity::Rejected("multiple_credentials");
    }
    let Ok(value) = value.to_str() else {
        return Identity::Rejected("malformed");
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Identity::Rejected("malformed");
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Identity::Rejected("unsupported_scheme");
    }
    match keys.verify(token.trim()) {
        Ok(claims) => Identity::User(claims.sub),
        Err(e) => Identity::Rejected(e.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    const KEYS: &str = "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"0123456789abcdef0123456789abcdef-k1\"\n";

    #[test]
    fn identity_table() {
        let keys = Keyring::from_yaml(KEYS).unwrap();
        let good = keys.sign("u-alice", Duration::from_secs(60), SystemTime::now());
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
                Identity::Rejected("expired"),
            ),
            (
                "forged",
                vec![format!("Bearer {other}")],
                Identity::Rejected("bad_signature"),
            ),
            (
                "basic",
                vec!["Basic dXNlcjpwYXNz".into()],
                Identity::Rejected("unsupported_scheme"),
            ),
            (
                "no token",
                vec!["Bearer".into()],
                Identity::Rejected("malformed"),
            ),
            (
                "empty token",
                vec!["Bearer ".into()],
                Identity::Rejected("malformed"),
            ),
            (
                "garbage",
                vec!["Bearer x.y.z".into()],
                Identity::Rejected("malformed"),
            ),
            (
                "two headers",
                vec![format!("Bearer {good}"), format!("Bearer {good}")],
                Identity::Rejected("multiple_credentials"),
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
        assert_eq!(identify(&h, &keys), Identity::Rejected("malformed"));
    }
}
