//! The admin bearer token: compared in constant time, named in logs by a hash prefix.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured token, kept only as its SHA-256 (comparing digests also hides its length).
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    id: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({})", self.id)
    }
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        AdminToken { digest, id }
    }

    /// The audit log's name for this token: the first 8 hex digits of its SHA-256.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.digest.ct_eq(&digest))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `admin.token_file`: these endpoints are off (403).
    NotConfigured,
    /// No or a wrong bearer token (401).
    Unauthorized,
}

/// Checks an `Authorization` header value against the configured token; the token's id
/// when it matches. Only `Bearer` is read (never a query parameter or cookie).
pub fn check<'a>(
    token: Option<&'a AdminToken>,
    authorization: Option<&[u8]>,
) -> Result<&'a AdminToken, Denied> {
    let token = token.ok_or(Denied::NotConfigured)?;
    let presented = authorization
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        })
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .ok_or(Denied::Unauthorized)?;
    if token.matches(presented) {
        Ok(token)
    } else {
        Err(Denied::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123";

    /// Configured token, `Authorization` value, expected outcome.
    type Case<'a> = (Option<&'a AdminToken>, Option<&'a str>, Result<(), Denied>);

    #[test]
    fn check_table() {
        let token = AdminToken::new(T);
        let ok = format!("Bearer {T}");
        let lower = format!("bearer {T}");
        let spaced = format!("Bearer   {T} ");
        let prefix = format!("Bearer {}", &T[..T.len() - 1]);
        let longer = format!("Bearer {T}x");
        let basic = format!("Basic {T}");
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (Some(&token), Some(&ok), Ok(())),
            (Some(&token), Some(&lower), Ok(())),
            (Some(&token), Some(&spaced), Ok(())),
            (Some(&token), None, Err(Denied::Unauthorized)),
            (Some(&token), Some(""), Err(Denied::Unauthorized)),
            (Some(&token), Some("Bearer"), Err(Denied::Unauthorized)),
            (Some(&token), Some("Bearer "), Err(Denied::Unauthorized)),
            (Some(&token), Some(&prefix), Err(Denied::Unauthorized)),
            (Some(&token), Some(&longer), Err(Denied::Unauthorized)),
            (Some(&token), Some(&basic), Err(Denied::Unauthorized)),
            (Some(&token), Some(T), Err(Denied::Unauthorized)),
            (None, Some(&ok), Err(Denied::NotConfigured)),
            (None, None, Err(Denied::NotConfigured)),
        ];
        for (configured, header, want) in cases {
            let got = check(*configured, header.map(str::as_bytes)).map(drop);
            assert_eq!(got, *want, "{header:?}");
        }
    }

    #[test]
    fn id_is_a_hash_prefix_never_the_token() {
        let t = AdminToken::new(T);
        assert_eq!(t.id().len(), 8);
        assert!(!T.contains(t.id()));
        assert_ne!(t.id(), AdminToken::new("another-token-0000").id());
        assert!(!format!("{t:?}").contains(T));
    }
}
