//! Ids, sled key layout and page tokens.
//!
//! Key layout (all integers big-endian so byte order = numeric order):
//! - `products`: product id → product record. Ids are allocated in increasing order, so
//!   "list in id order after cursor" is a range scan starting just past the cursor: its cost depends
//!   on the page size, not on the catalogue size.
//! - `orders`: order id → order record.
//! - `user_orders`: `user ‖ 0x00 ‖ order id` → empty. A user's orders, newest first, are a
//!   reverse range scan inside that prefix. User ids cannot contain 0x00 (validated).
//! - `idempotency`: `user ‖ 0x00 ‖ key` → order id.
//! - `carts`: user → cart record.
//! - `accounts`: user id (u64 BE) → account record (username, password hash).
//! - `usernames`: lower-cased username → user id (u64 BE); makes usernames unique
//!   regardless of case.
//!
//! Records are protobuf (see `codec`); the serde derives here and on the record types
//! only read the JSON an older shop stored (`codec::legacy`).
//!
//! External ids are `p-` / `o-` followed by the decimal id zero-padded to 12 digits; the
//! parser accepts 1..=20 digits after the prefix and nothing else, so anything malformed
//! is `InvalidArgument` (distinct from a well-formed unknown id, which is `NotFound`).
//! Page tokens are the external id of the last item examined.

use std::fmt;
use std::str::FromStr;

use concord::error::quote;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShopError};

fn parse_prefixed(kind: &str, prefix: &str, s: &str) -> Result<u64> {
    let digits = s.strip_prefix(prefix).ok_or_else(|| {
        ShopError::invalid(format!(
            "{kind} id {} is malformed (expected {prefix}<digits>)",
            quote(s)
        ))
    })?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ShopError::invalid(format!(
            "{kind} id {} is malformed (expected {prefix}<digits>)",
            quote(s)
        )));
    }
    digits
        .parse::<u64>()
        .map_err(|_| ShopError::invalid(format!("{kind} id {} is out of range", quote(s))))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The sled key: the id big-endian.
            pub fn key(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }

            /// Decodes a sled key written by [`key`](Self::key).
            pub fn from_key(key: &[u8]) -> Result<Self> {
                let bytes: [u8; 8] = key.try_into().map_err(|_| {
                    ShopError::internal(format!("{} key has {} bytes", $kind, key.len()))
                })?;
                Ok(Self(u64::from_be_bytes(bytes)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:012}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ShopError;
            fn from_str(s: &str) -> Result<Self> {
                parse_prefixed($kind, $prefix, s).map(Self)
            }
        }
    };
}

id_type!(
    /// Identifies a product; allocated from a replicated counter, never reused.
    ProductId,
    "product",
    "p-"
);
id_type!(
    /// Identifies an order; allocated from a replicated counter, never reused.
    OrderId,
    "order",
    "o-"
);

id_type!(
    /// Identifies a customer account; allocated from a replicated counter, never reused (so
    /// a session token for an account lost in an async failover names nobody).
    UserId,
    "user",
    "u-"
);

/// Separator between a user id and the rest of a composite key.
const SEP: u8 = 0;

/// `user ‖ 0x00`: the prefix of all of a user's `user_orders` / `idempotency` keys.
pub fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 9);
    k.extend_from_slice(user.as_bytes());
    k.push(SEP);
    k
}

/// `user_orders` key of one order.
pub fn user_order_key(user: &str, order: OrderId) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(&order.key());
    k
}

/// `idempotency` key of one (user, idempotency key) pair.
pub fn idempotency_key(user: &str, key: &str) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `counters` key of the last allocated product id.
pub const LAST_PRODUCT_ID: &[u8] = b"last_product_id";
/// `counters` key of the last allocated order id.
pub const LAST_ORDER_ID: &[u8] = b"last_order_id";

/// `counters` key of the last allocated user id.
pub const LAST_USER_ID: &[u8] = b"last_user_id";

/// `usernames` key of a username: lower case, so `Alice` and `alice` are one account.
pub fn username_key(username: &str) -> Vec<u8> {
    username.to_ascii_lowercase().into_bytes()
}

/// Parses an optional page token (empty = first page) into the id to continue after.
pub fn page_after<T: FromStr<Err = ShopError>>(token: &str) -> Result<Option<T>> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|_| ShopError::invalid(format!("page token {} is malformed", quote(token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids print and parse symmetrically; malformed ids are InvalidArgument.
    #[test]
    fn id_parsing_table() {
        assert_eq!(ProductId(42).to_string(), "p-000000000042");
        assert_eq!(OrderId(7).to_string(), "o-000000000007");
        let cases: &[(&str, Option<u64>)] = &[
            ("p-000000000042", Some(42)),
            ("p-1", Some(1)),
            ("p-18446744073709551615", Some(u64::MAX)),
            ("p-18446744073709551616", None),
            ("p-", None),
            ("p--1", None),
            ("p-+1", None),
            ("p-1 ", None),
            ("o-1", None),
            ("", None),
            ("42", None),
            ("p-１", None),
            ("p-000000000000000000001", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<ProductId>();
            match want {
                Some(v) => assert_eq!(got.unwrap().0, *v, "{input}"),
                None => assert!(
                    matches!(got, Err(ShopError::InvalidArgument(_))),
                    "{input}: {got:?}"
                ),
            }
        }
    }

    /// Keys sort like ids, and per-user prefixes cannot collide.
    #[test]
    fn key_order() {
        assert!(ProductId(2).key() < ProductId(256).key());
        assert_eq!(
            ProductId::from_key(&ProductId(9).key()).unwrap(),
            ProductId(9)
        );
        assert!(ProductId::from_key(b"short").is_err());
        assert!(!user_order_key("alice", OrderId(1)).starts_with(&user_prefix("al")));
    }
}
