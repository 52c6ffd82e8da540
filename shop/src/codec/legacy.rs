//! Format 1, how the shop stored data before protobuf: JSON records (serde derives of the
//! domain types) and WAL entries in a hand-written binary layout. Only read here, to
//! migrate (see the parent module); [`encode_wal_v1`] exists for the tests that build an
//! old store and for `benches/record_codec.rs`, never for the shop.
//!
//! The old WAL payload (integers big-endian, version byte first):
//!
//! ```text
//! u8  version = 1
//! u64 lsn | u64 term | i64 committed_at_ms
//! u32 mutation count
//! per mutation:
//!   u8  tree id (TreeName discriminant)
//!   u32 key length, key bytes
//!   u8  0 = delete | 1 = put
//!   u32 value length, value bytes      (put only)
//! ```

use serde::de::DeserializeOwned;

use super::upgrade_value;
use crate::error::{Result, ShopError};
use crate::wal::{Mutation, TreeName, WalEntry};

/// First byte of every JSON record (an object).
const JSON_OPEN: u8 = b'{';
/// First byte of an old WAL payload.
const WAL_V1: u8 = 1;

/// Whether a stored record is the JSON of format 1.
pub fn is_json(bytes: &[u8]) -> bool {
    bytes.first() == Some(&JSON_OPEN)
}

/// A format-1 JSON record of `tree`; one that does not decode is `Internal`.
pub fn decode_json<T: DeserializeOwned>(tree: TreeName, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ShopError::internal(format!("corrupt {} record (JSON): {e}", tree.as_str())))
}

/// Whether a WAL payload is in the format-1 layout.
pub fn is_wal_v1(bytes: &[u8]) -> bool {
    bytes.first() == Some(&WAL_V1)
}

/// Decodes a format-1 WAL payload, upgrading the JSON records it carries to protobuf
/// ([`upgrade_value`]). Any truncation, unknown tree id or tag is `Internal`.
pub fn decode_wal_v1(bytes: &[u8]) -> Result<WalEntry> {
    let mut r = Reader { bytes, pos: 0 };
    if r.u8()? != WAL_V1 {
        return Err(ShopError::internal("not a format-1 WAL entry"));
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
                Some(upgrade_value(tree, r.take(len)?.to_vec())?)
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

/// Encodes `entry` in the format-1 layout, values as they are. The shop never writes
/// this: tests build old stores with it, and the codec bench compares the formats.
pub fn encode_wal_v1(entry: &WalEntry) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).expect("a test entry under 4 GiB");
    let mut out = vec![WAL_V1];
    out.extend_from_slice(&entry.lsn.to_be_bytes());
    out.extend_from_slice(&entry.term.to_be_bytes());
    out.extend_from_slice(&entry.committed_at_ms.to_be_bytes());
    out.extend_from_slice(&len(entry.mutations.len()).to_be_bytes());
    for m in &entry.mutations {
        out.push(m.tree as u8);
        out.extend_from_slice(&len(m.key.len()).to_be_bytes());
        out.extend_from_slice(&m.key);
        match &m.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&len(v.len()).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
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
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Corruptions of a format-1 entry that a cut does not cover: an unknown tree id, an
    /// unknown put/delete tag, trailing bytes and an absurd mutation count.
    #[test]
    fn corrupt_v1_entries_are_errors() {
        let entry = WalEntry {
            lsn: 42,
            term: 3,
            committed_at_ms: 1,
            mutations: vec![Mutation {
                tree: TreeName::Counters,
                key: b"k".to_vec(),
                value: Some(b"v".to_vec()),
            }],
        };
        let bytes = encode_wal_v1(&entry);
        assert_eq!(decode_wal_v1(&bytes).expect("decode"), entry);
        let mut bad_tree = bytes.clone();
        bad_tree[29] = 200;
        let mut bad_tag = bytes.clone();
        bad_tag[35] = 7;
        let mut trailing = bytes.clone();
        trailing.push(0);
        let mut huge_count = bytes[..25].to_vec();
        huge_count.extend_from_slice(&u32::MAX.to_be_bytes());
        for bad in [bad_tree, bad_tag, trailing, huge_count] {
            assert!(decode_wal_v1(&bad).is_err(), "{bad:?}");
        }
    }
}
