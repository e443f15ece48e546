//! Users and signing-key fixtures.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::time::{Duration, SystemTime};

/// A token key file for tests; the secret is test-only.
pub const TEST_KEYS: &str = "signing_kid: test-1\nkeys:\n  - kid: test-1\n    secret: \"integration-test-secret-0123456789abcdef\"\n";

/// A users file for `(username, user_id, password)` triples, hashed with cheap argon2id
/// params (the PHC string carries them and the app verifies any) and fixed salts, so
/// fixtures are fast and reproducible.
pub fn users_yaml(users: &[(&str, &str, &str)]) -> String {
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(1024, 1, 1, None).unwrap(),
    );
    let mut out = String::from("users:\n");
    for (i, (name, id, pw)) in users.iter().enumerate() {
        let salt = SaltString::encode_b64(&[i as u8 + 1; 16]).unwrap();
        let hash = argon.hash_password(pw.as_bytes(), &salt).unwrap();
        out.push_str(&format!(
            "  - username: {name}\n    user_id: {id}\n    password_hash: \"{hash}\"\n"
        ));
    }
    out
}

/// A bearer token for `sub` signed with `TEST_KEYS`, valid for `ttl` from now.
pub fn mint_token(sub: &str, ttl: Duration) -> String {
    keyring::Keyring::from_yaml(TEST_KEYS)
        .unwrap()
        .sign(sub, ttl, SystemTime::now())
}

/// Like `mint_token` for u-alice, but under the JOSE header `header_json` verbatim: a token
/// whose only fault, if any, is its header.
pub fn mint_token_with_header(header_json: &str) -> String {
    keyring::Keyring::from_yaml(TEST_KEYS)
        .unwrap()
        .sign_with_header(
            header_json,
            "u-alice",
            Duration::from_secs(600),
            SystemTime::now(),
        )
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHash, PasswordVerifier};

    #[test]
    fn users_yaml_hashes_verify_and_only_with_the_right_password() {
        let users = [("alice", "u-a", "pw-a"), ("bob", "u-b", "pw-b")];
        let yaml = super::users_yaml(&users);
        let hashes: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("password_hash: "))
            .map(|h| h.trim_matches('"'))
            .collect();
        assert_eq!(hashes.len(), 2, "{yaml}");
        for ((_, _, pw), hash) in users.iter().zip(&hashes) {
            let parsed = PasswordHash::new(hash).unwrap();
            let argon = argon2::Argon2::default();
            assert!(argon.verify_password(pw.as_bytes(), &parsed).is_ok());
            assert!(argon.verify_password(b"wrong", &parsed).is_err());
        }
    }
}
