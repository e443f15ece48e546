//! Operator block list: client CIDRs and user ids answered 403 at the edge, before
//! any rate-limit or upstream work. Edited in the `block:` section and hot-reloaded.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::admit::net::{canonical_ip, canonical_nets};
use crate::config::invalid::Invalid;

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    /// Client addresses (as resolved by the client-IP stage) to refuse.
    #[schemars(schema_with = "crate::config::field_schema::cidr_list")]
    pub clients: Vec<IpNet>,
    /// User ids (the token's `sub`) to refuse, even with a valid token.
    pub users: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    Client,
    User,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Client => "client",
            BlockReason::User => "user",
        }
    }
}

#[derive(Debug, Default)]
pub struct Blocklist {
    clients: Vec<IpNet>,
    users: HashSet<String>,
}

impl Blocklist {
    pub fn new(config: &BlockConfig) -> Blocklist {
        Blocklist {
            // Canonical first, so `::ffff:a.b.c.d/128` matches the IPv4 client; overlapping
            // entries are harmless, aggregating keeps the per-request walk short.
            clients: IpNet::aggregate(&canonical_nets(&config.clients)),
            users: config.users.iter().cloned().collect(),
        }
    }

    pub fn client(&self, ip: IpAddr) -> Option<BlockReason> {
        let ip = canonical_ip(ip);
        self.clients
            .iter()
            .any(|net| net.contains(&ip))
            .then_some(BlockReason::Client)
    }

    pub fn user(&self, user_id: Option<&str>) -> Option<BlockReason> {
        let id = user_id?;
        self.users.contains(id).then_some(BlockReason::User)
    }
}

/// Checks entries at load time: user ids must be non-empty and printable.
pub fn validate(config: &BlockConfig) -> Result<(), Invalid> {
    for (i, user) in config.users.iter().enumerate() {
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return Err(Invalid::new(
                format!("block.users[{i}]"),
                "must be 1 to 256 printable characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(clients: &[&str], users: &[&str]) -> Blocklist {
        Blocklist::new(&BlockConfig {
            clients: clients.iter().map(|c| c.parse().unwrap()).collect(),
            users: users.iter().map(|u| u.to_string()).collect(),
        })
    }

    #[test]
    fn clients_table() {
        let b = list(
            &["203.0.113.7/32", "198.51.100.0/24", "2001:db8:bad::/48"],
            &[],
        );
        let mapped = list(&["::ffff:203.0.113.7/128", "::ffff:198.51.100.0/120"], &[]);
        // (list, address, blocked?)
        let cases = [
            (&b, "203.0.113.7", true),
            (&b, "203.0.113.8", false),
            (&b, "198.51.100.255", true),
            (&b, "198.51.101.0", false),
            (&b, "::ffff:203.0.113.7", true), // mapped form of a blocked IPv4 client
            (&b, "::ffff:203.0.113.9", false),
            (&b, "2001:db8:bad:1::1", true),
            (&b, "2001:db8:bae::1", false),
            (&b, "::", false),
            (&b, "0.0.0.0", false),
            // Entries written IPv4-mapped are canonicalised at load and match either spelling.
            (&mapped, "203.0.113.7", true),
            (&mapped, "::ffff:203.0.113.7", true),
            (&mapped, "203.0.113.8", false),
            (&mapped, "198.51.100.200", true),
            (&mapped, "198.51.101.1", false),
        ];
        for (list, ip, blocked) in cases {
            let got = list.client(ip.parse().unwrap());
            assert_eq!(got.is_some(), blocked, "{ip} against {:?}", list.clients);
        }
        assert_eq!(list(&[], &[]).client("1.2.3.4".parse().unwrap()), None);
        assert_eq!(
            list(&["0.0.0.0/0"], &[]).client("1.2.3.4".parse().unwrap()),
            Some(BlockReason::Client)
        );
    }

    #[test]
    fn users_table() {
        let b = list(&[], &["u-mallory", "u-eve"]);
        let cases = [
            (Some("u-mallory"), true),
            (Some("u-eve"), true),
            (Some("u-alice"), false),
            (Some("U-MALLORY"), false), // ids are exact, case-sensitive
            (Some("u-mallory "), false),
            (Some(""), false),
            (None, false), // anonymous requests are never user-blocked
        ];
        for (user, blocked) in cases {
            assert_eq!(b.user(user).is_some(), blocked, "{user:?}");
        }
    }

    #[test]
    fn validation_rejects_unusable_user_ids() {
        let bad = ["", "a\nb", &"x".repeat(257)];
        for user in bad {
            let config = BlockConfig {
                clients: vec![],
                users: vec!["ok".into(), user.to_string()],
            };
            let Invalid { field, .. } = validate(&config).unwrap_err();
            assert_eq!(field, "block.users[1]");
        }
        assert!(validate(&BlockConfig {
            clients: vec![],
            users: vec!["u-alice".into()]
        })
        .is_ok());
    }
}
