//! Users file: loading, validation and (blocking) argon2id password checks.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;

use crate::validate::is_valid_user_id;

/// Why the users file could not be loaded (shared wording: `edgekit::FileError`).
pub type UsersError = edgekit::FileError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    user_id: String,
    password_hash: String,
}

struct User {
    user_id: String,
    password_hash: String,
}

pub struct Users {
    by_name: HashMap<String, User>,
    /// Verified against for unknown usernames so timing does not reveal which names exist.
    dummy_hash: String,
}

impl std::fmt::Debug for Users {
    // Never print hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("count", &self.by_name.len())
            .finish()
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        edgekit::load_file(path, "users file", Users::from_yaml)
    }

    pub fn from_yaml(text: &str) -> Result<Users, String> {
        let file: UsersFile = edgekit::parse_yaml(text)?;
        let mut by_name = HashMap::new();
        let mut ids = HashSet::new();
        let mut dummy_params = None;
        for (i, entry) in file.users.into_iter().enumerate() {
            let UserEntry {
                username,
                user_id,
                password_hash,
            } = entry;
            if username.is_empty() || username.len() > 128 || username.chars().any(char::is_control)
            {
                return Err(format!(
                    "users[{i}].username must be 1 to 128 printable characters"
                ));
            }
            if !is_valid_user_id(&user_id) {
                return Err(format!(
                    "users[{i}].user_id must match ^[A-Za-z0-9_-]{{1,64}}$"
                ));
            }
            let parsed = PasswordHash::new(&password_hash)
                .map_err(|e| format!("users[{i}].password_hash is not a PHC string: {e}"))?;
            if parsed.algorithm != Algorithm::Argon2id.ident() {
                return Err(format!("users[{i}].password_hash must be argon2id"));
            }
            let params = Params::try_from(&parsed)
                .map_err(|e| format!("users[{i}].password_hash has bad parameters: {e}"))?;
            dummy_params.get_or_insert(params);
            // Two names sharing an id would share documents: refuse.
            if !ids.insert(user_id.clone()) {
                return Err(format!("user_id {user_id:?} is listed twice"));
            }
            if by_name
                .insert(
                    username.clone(),
                    User {
                        user_id,
                        password_hash,
                    },
                )
                .is_some()
            {
                return Err(format!("username {username:?} is listed twice"));
            }
        }
        // Same cost parameters as the real hashes, so both paths take as long.
        let dummy_password = format!("{:032x}", rand::random::<u128>());
        let dummy_hash = hash_with(&dummy_password, dummy_params.unwrap_or_default());
        Ok(Users {
            by_name,
            dummy_hash,
        })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the user id when the credentials match. CPU-heavy (argon2): call it from
    /// `spawn_blocking`. Unknown names still pay for one verification.
    pub fn authenticate(&self, username: &str, password: &str) -> Option<String> {
        let (hash, user_id) = match self.by_name.get(username) {
            Some(user) => (user.password_hash.as_str(), Some(&user.user_id)),
            None => (self.dummy_hash.as_str(), None),
        };
        let ok = verify(hash, password);
        match user_id {
            Some(id) if ok => Some(id.clone()),
            _ => None,
        }
    }
}

fn verify(hash: &str, password: &str) -> bool {
    // Hashes were parsed at load time; a parse failure here just means "no".
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

fn hash_with(password: &str, params: Params) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16-byte salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid params")
        .to_string()
}

/// argon2id with the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> String {
    hash_with(password, Params::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_hash(password: &str) -> String {
        hash_with(password, Params::new(1024, 1, 1, None).unwrap())
    }

    fn file(entries: &[(&str, &str, &str)]) -> String {
        let mut s = String::from("users:\n");
        for (name, id, hash) in entries {
            s.push_str(&format!(
                "  - username: {name:?}\n    user_id: {id:?}\n    password_hash: {hash:?}\n"
            ));
        }
        s
    }

    #[test]
    fn authenticates() {
        let h = cheap_hash("pw-a");
        let users = Users::from_yaml(&file(&[("alice", "u-alice", &h)])).unwrap();
        assert_eq!(
            users.authenticate("alice", "pw-a").as_deref(),
            Some("u-alice")
        );
        assert_eq!(users.authenticate("alice", "pw-b"), None);
        assert_eq!(users.authenticate("mallory", "pw-a"), None);
        assert_eq!(users.authenticate("", ""), None);
        assert!(
            users.dummy_hash.contains("m=1024,t=1,p=1"),
            "dummy matches real cost"
        );
    }

    #[test]
    fn default_hash_is_argon2id() {
        let h = hash_password("x");
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify(&h, "x"));
        assert!(!verify(&h, "y"));
    }

    #[test]
    fn rejects_bad_files() {
        let h = cheap_hash("pw");
        let argon2i = {
            let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
            Argon2::new(
                Algorithm::Argon2i,
                Version::V0x13,
                Params::new(1024, 1, 1, None).unwrap(),
            )
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string()
        };
        let cases = [
            ("dup username", file(&[("a", "u1", &h), ("a", "u2", &h)])),
            ("dup user id", file(&[("a", "u1", &h), ("b", "u1", &h)])),
            ("traversal id", file(&[("a", "../etc", &h)])),
            ("dot id", file(&[("a", "..", &h)])),
            ("empty id", file(&[("a", "", &h)])),
            ("long id", file(&[("a", &"x".repeat(65), &h)])),
            ("unicode id", file(&[("a", "ü", &h)])),
            ("nul id", file(&[("a", "a\0", &h)])),
            ("empty username", file(&[("", "u1", &h)])),
            ("bad hash", file(&[("a", "u1", "plaintext")])),
            ("argon2i hash", file(&[("a", "u1", &argon2i)])),
            (
                "unknown field",
                format!("{}    role: admin\n", file(&[("a", "u1", &h)])),
            ),
            ("not yaml", "{{".into()),
        ];
        for (name, yaml) in cases {
            assert!(Users::from_yaml(&yaml).is_err(), "case {name}");
        }
    }
}
