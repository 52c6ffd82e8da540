//! The write-ahead log entry format: what a replica consumes.
//!
//! Every committed write transaction appends exactly one [`WalEntry`] to the `wal` tree,
//! in the same sled transaction as the data it describes, under key `lsn.to_be_bytes()`
//! (so the tree iterates in LSN order and a replica can resume with a range scan).
//! An entry is the list of physical key/value mutations of that transaction:
//! `(tree, key, Some(value))` is a put, `(tree, key, None)` a delete. Replaying entries
//! in LSN order onto an empty store reproduces the primary's data trees byte for byte;
//! replaying an entry twice is harmless because a store skips entries at or below its
//! last LSN (see `Store::apply_wal_entry`).
//!
//! Binary layout (all integers big-endian), version byte first so the format can evolve:
//!
//! ```text
//! u8  version = 1
//! u64 lsn
//! u64 term                 (primary term that committed it)
//! i64 committed_at_ms      (primary clock, ms since the Unix epoch)
//! u32 mutation count
//! per mutation:
//!   u8  tree id (TreeName discriminant)
//!   u32 key length,  key bytes
//!   u8  0 = delete | 1 = put
//!   u32 value length, value bytes      (put only)
//! ```
//!
//! The `wal` and `meta` trees themselves never appear in an entry: each store maintains
//! its own log and LSN counter while applying.

use crate::error::{Result, ShopError};

/// Log sequence number: 1 for the first committed write, gap-free, in commit order.
pub type Lsn = u64;

const WAL_FORMAT_VERSION: u8 = 1;

/// The data trees whose mutations are logged. The discriminant is the on-disk tree id;
/// never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeName {
    /// Product id (u64 BE) → product JSON.
    Products = 0,
    /// User id → cart JSON.
    Carts = 1,
    /// Order id (u64 BE) → order JSON.
    Orders = 2,
    /// User id ‖ 0x00 ‖ order id (u64 BE) → empty; serves per-user order listing.
    UserOrders = 3,
    /// User id ‖ 0x00 ‖ idempotency key → order id (u64 BE).
    Idempotency = 4,
    /// Id counters (last product / order id) that must replicate with the data.
    Counters = 5,
    /// User id (u64 BE) → account JSON (username, Argon2 password hash).
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

    /// Decodes an on-disk tree id.
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

impl WalEntry {
    /// Encodes the entry in the binary layout described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = 29
            + self
                .mutations
                .iter()
                .map(|m| 10 + m.key.len() + m.value.as_ref().map_or(0, |v| 4 + v.len()))
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(WAL_FORMAT_VERSION);
        out.extend_from_slice(&self.lsn.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&self.committed_at_ms.to_be_bytes());
        out.extend_from_slice(&len_u32(self.mutations.len()).to_be_bytes());
        for m in &self.mutations {
            out.push(m.tree as u8);
            out.extend_from_slice(&len_u32(m.key.len()).to_be_bytes());
            out.extend_from_slice(&m.key);
            match &m.value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&len_u32(v.len()).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    /// Decodes an entry; any truncation, unknown version or tree id is `Internal`
    /// (a corrupt log is a broken invariant, not a client error).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8()?;
        if version != WAL_FORMAT_VERSION {
            return Err(ShopError::internal(format!(
                "unsupported WAL format version {version}"
            )));
        }
        let lsn = r.u64()?;
        let term = r.u64()?;
        let committed_at_ms = r.u64()? as i64;
        let count = r.u32()? as usize;
        // Each mutation needs at least 10 bytes: refuse absurd counts before allocating.
        if count > bytes.len() / 10 {
            return Err(ShopError::internal("WAL entry mutation count is corrupt"));
        }
        let mut mutations = Vec::with_capacity(count);
        for _ in 0..count {
            let tree = TreeName::from_id(r.u8()?)?;
            let key_len = r.u32()? as usize;
            let key = r.take(key_len)?.to_vec();
            let value = match r.u8()? {
                0 => None,
                1 => {
                    let len = r.u32()? as usize;
                    Some(r.take(len)?.to_vec())
                }
                tag => {
                    return Err(ShopError::internal(format!(
                        "WAL mutation has unknown tag {tag}"
                    )))
                }
            };
            mutations.push(Mutation { tree, key, value });
        }
        if r.pos != bytes.len() {
            return Err(ShopError::internal("WAL entry has trailing bytes"));
        }
        Ok(WalEntry {
            lsn,
            term,
            committed_at_ms,
            mutations,
        })
    }
}

/// Lengths are bounded by sled's value sizes and our validation limits, far below 4 GiB.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("WAL field longer than 4 GiB: validation limits were bypassed")
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| ShopError::internal("WAL entry is truncated"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WalEntry {
        WalEntry {
            lsn: 42,
            term: 3,
            committed_at_ms: 1_700_000_000_000,
            mutations: vec![
                Mutation {
                    tree: TreeName::Products,
                    key: 7u64.to_be_bytes().to_vec(),
                    value: Some(b"{\"name\":\"tea\"}".to_vec()),
                },
                Mutation {
                    tree: TreeName::Carts,
                    key: b"alice".to_vec(),
                    value: None,
                },
                Mutation {
                    tree: TreeName::Counters,
                    key: vec![],
                    value: Some(vec![]),
                },
            ],
        }
    }

    /// Encoding then decoding gives back the same entry.
    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(WalEntry::decode(&e.encode()).unwrap(), e);
        let empty = WalEntry {
            lsn: 1,
            term: 1,
            committed_at_ms: -5,
            mutations: vec![],
        };
        assert_eq!(WalEntry::decode(&empty.encode()).unwrap(), empty);
    }

    /// Every truncation and a few corruptions are errors, never panics.
    #[test]
    fn corrupt_input_is_an_error() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(WalEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_version = bytes.clone();
        bad_version[0] = 9;
        assert!(WalEntry::decode(&bad_version).is_err());
        let mut bad_tree = bytes.clone();
        bad_tree[29] = 200;
        assert!(WalEntry::decode(&bad_tree).is_err());
        let mut trailing = bytes;
        trailing.push(0);
        assert!(WalEntry::decode(&trailing).is_err());
        let mut huge_count = vec![WAL_FORMAT_VERSION];
        huge_count.extend_from_slice(&1u64.to_be_bytes());
        huge_count.extend_from_slice(&1u64.to_be_bytes());
        huge_count.extend_from_slice(&0i64.to_be_bytes());
        huge_count.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(WalEntry::decode(&huge_count).is_err());
    }

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
