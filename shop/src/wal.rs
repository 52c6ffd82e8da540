//! The write-ahead log entry format: what a replica consumes.
//!
//! Every committed write transaction appends exactly one [`WalEntry`] to the WAL's segment
//! files (`segments`), in LSN order, so a replica can resume from any LSN still stored.
//! An entry is the list of physical key/value mutations of that transaction:
//! `(tree, key, Some(value))` is a put, `(tree, key, None)` a delete. Replaying entries
//! in LSN order onto an empty store reproduces the primary's data trees byte for byte;
//! replaying an entry twice is harmless because a store skips entries at or below its
//! last LSN (see `Store::apply_wal_entry`).
//!
//! On disk an entry is the protobuf `pb::WalEntry`, the message the replication stream
//! carries, inside the segment file's length + checksum frame (see `codec` and
//! `segments`). Entries written by an older shop in its own binary layout are still read
//! (`codec::legacy`).
//!
//! The `wal` and `meta` trees themselves never appear in an entry: each store maintains
//! its own log and LSN counter while applying.

use crate::error::{Result, ShopError};

/// Log sequence number: 1 for the first committed write, gap-free, in commit order.
pub type Lsn = u64;

/// The data trees whose mutations are logged. The discriminant is the tree id of the old
/// WAL layout (`codec::legacy`); never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeName {
    /// Product id (u64 BE) → product record.
    Products = 0,
    /// User id → cart record.
    Carts = 1,
    /// Order id (u64 BE) → order record.
    Orders = 2,
    /// User id ‖ 0x00 ‖ order id (u64 BE) → empty; serves per-user order listing.
    UserOrders = 3,
    /// User id ‖ 0x00 ‖ idempotency key → order id (u64 BE).
    Idempotency = 4,
    /// Id counters (last product / order id) that must replicate with the data.
    Counters = 5,
    /// User id (u64 BE) → account record (username, Argon2 password hash).
    Accounts = 6,
    /// Lower-cased username → user id (u64 BE).
    Usernames = 7,
}

impl TreeName {
    /// All logged trees, in discriminant order (the store opens them in this order).
    pub const ALL: [TreeName; 8] = [
        TreeName::Products,
        TreeName::Carts,
        TreeName::Orders,
        TreeName::UserOrders,
        TreeName::Idempotency,
        TreeName::Counters,
        TreeName::Accounts,
        TreeName::Usernames,
    ];

    /// The sled tree name.
    pub fn as_str(self) -> &'static str {
        match self {
            TreeName::Products => "products",
            TreeName::Carts => "carts",
            TreeName::Orders => "orders",
            TreeName::UserOrders => "user_orders",
            TreeName::Idempotency => "idempotency",
            TreeName::Counters => "counters",
            TreeName::Accounts => "accounts",
            TreeName::Usernames => "usernames",
        }
    }

    /// Decodes a tree id of the old WAL layout.
    pub fn from_id(id: u8) -> Result<Self> {
        Self::ALL
            .get(id as usize)
            .copied()
            .ok_or_else(|| ShopError::internal(format!("WAL names unknown tree id {id}")))
    }

    /// Looks a tree up by its sled name (the replication proto names trees by string).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                ShopError::invalid(format!("unknown shop tree {}", concord::error::quote(name)))
            })
    }

    /// Index of this tree in `ALL` (and in a transaction's view vector).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One physical change: a put (`value: Some`) or a delete (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// Which data tree.
    pub tree: TreeName,
    /// The raw key.
    pub key: Vec<u8>,
    /// New value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// All mutations of one committed transaction, under its LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// The entry's log sequence number.
    pub lsn: Lsn,
    /// Term of the primary that committed it (lets a replica detect divergence).
    pub term: u64,
    /// Commit time on the primary, ms since the Unix epoch (replication lag in ms).
    pub committed_at_ms: i64,
    /// Mutations in the order the transaction made them (later ones win on the same key).
    pub mutations: Vec<Mutation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree ids are stable and round-trip.
    #[test]
    fn tree_ids_round_trip() {
        for t in TreeName::ALL {
            assert_eq!(TreeName::from_id(t as u8).unwrap(), t);
            assert_eq!(TreeName::ALL[t.index()], t);
            assert_eq!(TreeName::from_name(t.as_str()).unwrap(), t);
        }
        assert!(TreeName::from_id(8).is_err());
        assert!(TreeName::from_name("wal").is_err());
    }
}
