//! Bearer-token authentication of requests via the shared keyring.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use keyring::Keyring;

use crate::errors::ApiError;
use crate::validate::is_valid_user_id;

/// Returns the verified user id. Nothing but the signed token is trusted (no identity
/// headers). Failure reasons are logged as coarse kinds, never with the token.
pub fn authenticate(keyring: &Keyring, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = bearer_token(headers).ok_or_else(|| {
        tracing::debug!(
            reason = "missing_or_malformed_header",
            "authentication failed"
        );
        ApiError::missing_token()
    })?;
    let claims = keyring.verify(token).map_err(|e| {
        tracing::info!(reason = e.as_str(), "authentication failed");
        ApiError::invalid_token()
    })?;
    // The id names a directory: re-check it even though we signed it ourselves.
    if !is_valid_user_id(&claims.sub) {
        tracing::warn!(reason = "bad_subject", "authentication failed");
        return Err(ApiError::invalid_token());
    }
    Ok(claims.sub)
}

/// Extracts `<token>` from `Authorization: Bearer <token>` (scheme is case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None; // ambiguous
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_extraction() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], None),
            (&["Bearer abc"], Some("abc")),
            (&["bearer abc"], Some("abc")),
            (&["Bearer   abc  "], Some("abc")),
            (&["Bearer"], None),
            (&["Bearer "], None),
            (&["Basic YWxpY2U6cHc="], None),
            (&["abc"], None),
            (&["Bearer a", "Bearer b"], None),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(bearer_token(&headers), *want, "{values:?}");
        }
    }
}
