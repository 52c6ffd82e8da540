//! How the shop's data is encoded on disk, in this one place: the records of the data trees
//! and the WAL's entries are protobuf (prost), the encoding the replication stream and
//! every API already use.
//!
//! # What is stored how
//!
//! | where | value | message |
//! |---|---|---|
//! | `products` tree | [`Product`] | `concord.shop.storage.v1.Product` |
//! | `carts` tree | [`StoredCart`] | `concord.shop.storage.v1.Cart` |
//! | `orders` tree | [`Order`] | `concord.shop.storage.v1.Order` |
//! | `accounts` tree | [`Account`] | `concord.shop.storage.v1.Account` |
//! | WAL record payload | [`WalEntry`] | `concord.shop.v1.WalEntry` (the replication message) |
//!
//! The WAL entry reuses the replication stream's `pb::WalEntry`: the stored shape is the
//! same, so a record on disk and an entry on the wire are one message. The four records
//! have private stored messages (`proto/concord/shop/storage/v1/records.proto`): the
//! public messages of `shop.proto` are views (string ids, no creation time, no password
//! hash, a cart priced at read time), not what is stored. The other trees hold no
//! records: ids and counters are 8-byte big-endian integers, `user_orders` values are
//! empty (see `keys`).
//!
//! prost encodes a message the same way every time (fields in tag order, no maps), so the
//! same record is the same bytes on a primary, its replica and after a re-encode:
//! `Store::digest` stays comparable.
//!
//! # Why protobuf
//!
//! One encoding for stored data and the wire (issue 18), and smaller, cheaper records.
//! Measured by `benches/record_codec.rs` (docs/BENCHMARKS.md, "Stored records"): a
//! product record is 87 bytes instead of 201 JSON, an order 149 instead of 469, and each
//! costs 2.4–2.6× fewer instructions to encode + decode; a PlaceOrder WAL payload is 599
//! bytes instead of 1,116. Decoding a WAL entry costs more than the old hand-written
//! layout did (prost copies every key and value into its own `Vec`), but a PlaceOrder's
//! records and entry together still cost about a third fewer instructions than before,
//! and the write path only encodes (entries are decoded at replay and when the shipper
//! reads old entries from the files).
//!
//! # Data written before (format 1), and how it is read
//!
//! The old shop stored records as JSON and framed WAL entries in a hand-written binary
//! layout ([`legacy`]). Both are told apart from protobuf by their first byte, per record:
//! - a JSON record starts with `{` (0x7B), which no stored message starts with (its first
//!   byte is the key of a field numbered below 15);
//! - an old WAL payload starts with its version byte 1, a protobuf `WalEntry` with the key
//!   of field 1 (`lsn`, never 0): 0x08.
//!
//! So old data stays readable, and [`migrate_store`] rewrites it on open:
//! - every JSON record of the data trees is re-encoded in protobuf, then the store is
//!   marked as format 2 in `meta` so later opens skip the scan. A migration cut short by a
//!   crash is finished by the next open (the mark is written last).
//! - old WAL records are not rewritten: the segment files are the log of record and stay
//!   as they were synced. An old record is decoded by [`legacy::decode_wal_v1`], and the
//!   JSON values in its mutations are re-encoded as they are read ([`upgrade_value`]), so
//!   a replay after the upgrade, the replica it is shipped to and a snapshot all see
//!   protobuf records only. Old segments go when the WAL is trimmed.
//! - a store marked with a format newer than [`RECORD_FORMAT`] (written by a newer shop)
//!   refuses to open, naming the store and what to do: it is never half-read.
//! - a replica applies what its primary sends byte for byte, so upgrade both: a new
//!   replica of a primary still on the old shop stores the JSON it is sent (and reads it,
//!   records are decoded in either form), and a snapshot from such a primary is not
//!   migrated until the store's mark is cleared.
//!
//! A record that decodes as neither is corruption: `Internal`, naming the tree.

pub mod legacy;

use concord::pb::shop::storage::v1 as stored;
use concord::pb::shop::v1 as pb;
use prost::Message;

use crate::account::Account;
use crate::cart::{CartItem, StoredCart};
use crate::catalog::Product;
use crate::convert::{order_status_from_pb, order_status_to_pb};
use crate::error::{Result, ShopError};
use crate::keys::{OrderId, ProductId, UserId};
use crate::order::{Order, OrderLine};
use crate::wal::{Mutation, TreeName, WalEntry};

/// The record format this build writes: 2 = protobuf. (1, never written as a mark, was
/// JSON records and the hand-written WAL layout.)
pub const RECORD_FORMAT: u64 = 2;

/// `meta` key: the record format the whole store is in (absent on a store written before
/// formats were marked; see the module docs).
pub const META_RECORD_FORMAT: &[u8] = b"record_format";

/// The trees whose values are records (the others hold integers or nothing).
pub const RECORD_TREES: [TreeName; 4] = [
    TreeName::Products,
    TreeName::Carts,
    TreeName::Orders,
    TreeName::Accounts,
];

/// A value stored in one data tree, encoded as its protobuf message.
pub trait Record: Sized {
    /// The tree the record lives in (named in errors).
    const TREE: TreeName;

    /// The stored bytes (protobuf).
    fn encode(&self) -> Vec<u8>;

    /// Decodes stored bytes: protobuf, or JSON written by an older shop (module docs).
    /// Anything else is `Internal` naming the tree.
    fn decode(bytes: &[u8]) -> Result<Self>;
}

fn corrupt(tree: TreeName, cause: impl std::fmt::Display) -> ShopError {
    ShopError::internal(format!("corrupt {} record: {cause}", tree.as_str()))
}

/// The protobuf message `M` in `bytes`, or the JSON record of an older shop as `T`.
fn decode_with<M, T>(tree: TreeName, bytes: &[u8], from: impl FnOnce(M) -> Result<T>) -> Result<T>
where
    M: Message + Default,
    T: serde::de::DeserializeOwned,
{
    if legacy::is_json(bytes) {
        return legacy::decode_json(tree, bytes);
    }
    from(M::decode(bytes).map_err(|e| corrupt(tree, e))?)
}

impl Record for Product {
    const TREE: TreeName = TreeName::Products;

    fn encode(&self) -> Vec<u8> {
        stored::Product {
            id: self.id.0,
            name: self.name.clone(),
            description: self.description.clone(),
            price_minor: self.price_minor,
            currency: self.currency.clone(),
            stock: self.stock,
            created_at_unix_ms: self.created_at_ms,
            updated_at_unix_ms: self.updated_at_ms,
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        decode_with(Self::TREE, bytes, |p: stored::Product| {
            Ok(Product {
                id: ProductId(p.id),
                name: p.name,
                description: p.description,
                price_minor: p.price_minor,
                currency: p.currency,
                stock: p.stock,
                created_at_ms: p.created_at_unix_ms,
                updated_at_ms: p.updated_at_unix_ms,
            })
        })
    }
}

impl Record for StoredCart {
    const TREE: TreeName = TreeName::Carts;

    fn encode(&self) -> Vec<u8> {
        stored::Cart {
            items: self
                .items
                .iter()
                .map(|i| stored::CartItem {
                    product_id: i.product_id.0,
                    quantity: i.quantity,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        decode_with(Self::TREE, bytes, |c: stored::Cart| {
            Ok(StoredCart {
                items: c
                    .items
                    .into_iter()
                    .map(|i| CartItem {
                        product_id: ProductId(i.product_id),
                        quantity: i.quantity,
                    })
                    .collect(),
            })
        })
    }
}

impl Record for Order {
    const TREE: TreeName = TreeName::Orders;

    fn encode(&self) -> Vec<u8> {
        stored::Order {
            id: self.id.0,
            user_id: self.user_id.clone(),
            lines: self
                .lines
                .iter()
                .map(|l| stored::OrderLine {
                    product_id: l.product_id.0,
                    name: l.name.clone(),
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                    line_total_minor: l.line_total_minor,
                })
                .collect(),
            total_minor: self.total_minor,
            currency: self.currency.clone(),
            status: order_status_to_pb(self.status) as i32,
            idempotency_key: self.idempotency_key.clone(),
            created_at_unix_ms: self.created_at_ms,
            updated_at_unix_ms: self.updated_at_ms,
            placed_lsn: self.placed_lsn,
            placed_term: self.placed_term,
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        decode_with(Self::TREE, bytes, |o: stored::Order| {
            let status = order_status_from_pb(o.status).map_err(|e| corrupt(Self::TREE, e))?;
            Ok(Order {
                id: OrderId(o.id),
                user_id: o.user_id,
                lines: o
                    .lines
                    .into_iter()
                    .map(|l| OrderLine {
                        product_id: ProductId(l.product_id),
                        name: l.name,
                        quantity: l.quantity,
                        unit_price_minor: l.unit_price_minor,
                        line_total_minor: l.line_total_minor,
                    })
                    .collect(),
                total_minor: o.total_minor,
                currency: o.currency,
                status,
                idempotency_key: o.idempotency_key,
                created_at_ms: o.created_at_unix_ms,
                updated_at_ms: o.updated_at_unix_ms,
                placed_lsn: o.placed_lsn,
                placed_term: o.placed_term,
            })
        })
    }
}

impl Record for Account {
    const TREE: TreeName = TreeName::Accounts;

    fn encode(&self) -> Vec<u8> {
        stored::Account {
            id: self.id.0,
            username: self.username.clone(),
            password_hash: self.password_hash.clone(),
            created_at_unix_ms: self.created_at_ms,
            session_generation: self.session_generation,
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        decode_with(Self::TREE, bytes, |a: stored::Account| {
            Ok(Account {
                id: UserId(a.id),
                username: a.username,
                password_hash: a.password_hash,
                created_at_ms: a.created_at_unix_ms,
                session_generation: a.session_generation,
            })
        })
    }
}

/// A record of `tree` as this build stores it: a JSON record (an older shop's) decoded and
/// re-encoded in protobuf, anything else as it is (protobuf already, or a tree that holds
/// no records). A JSON record that does not decode is `Internal`.
pub fn upgrade_value(tree: TreeName, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if !legacy::is_json(&bytes) {
        return Ok(bytes);
    }
    Ok(match tree {
        TreeName::Products => Product::decode(&bytes)?.encode(),
        TreeName::Carts => StoredCart::decode(&bytes)?.encode(),
        TreeName::Orders => Order::decode(&bytes)?.encode(),
        TreeName::Accounts => Account::decode(&bytes)?.encode(),
        TreeName::UserOrders | TreeName::Idempotency | TreeName::Counters | TreeName::Usernames => {
            bytes
        }
    })
}

/// A WAL entry as the replication message (by value: no copy of keys and values).
pub fn entry_to_pb(e: WalEntry) -> pb::WalEntry {
    pb::WalEntry {
        lsn: e.lsn,
        term: e.term,
        committed_at_unix_ms: e.committed_at_ms,
        mutations: e.mutations.into_iter().map(mutation_to_pb).collect(),
    }
}

/// A mutation as its message: a delete is `delete = true`, never an empty value.
pub fn mutation_to_pb(m: Mutation) -> pb::Mutation {
    let delete = m.value.is_none();
    pb::Mutation {
        tree: m.tree.as_str().to_string(),
        key: m.key,
        value: m.value.unwrap_or_default(),
        delete,
    }
}

/// A mutation from its message; an unknown tree name is `InvalidArgument`.
pub fn mutation_from_pb(m: pb::Mutation) -> Result<Mutation> {
    Ok(Mutation {
        tree: TreeName::from_name(&m.tree)?,
        key: m.key,
        value: if m.delete { None } else { Some(m.value) },
    })
}

/// A WAL entry from the replication message; an unknown tree name is `InvalidArgument`.
pub fn entry_from_pb(e: pb::WalEntry) -> Result<WalEntry> {
    Ok(WalEntry {
        lsn: e.lsn,
        term: e.term,
        committed_at_ms: e.committed_at_unix_ms,
        mutations: e
            .mutations
            .into_iter()
            .map(mutation_from_pb)
            .collect::<Result<_>>()?,
    })
}

/// The payload of a WAL record: the entry as `pb::WalEntry`, byte for byte what
/// `entry_to_pb(entry).encode_to_vec()` gives (a test holds them equal), written from the
/// borrowed entry: building the message first would copy every key and value and allocate
/// every tree name, which cost the write path more than the encoding itself
/// (`benches/record_codec.rs`).
pub fn encode_entry(entry: &WalEntry) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

    /// A length-delimited field (skipped when empty, as proto3 does).
    fn field_len(tag: u32, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(len as u64) + len
        }
    }
    fn put_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
        if !bytes.is_empty() {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
    }
    fn put_varint(tag: u32, value: u64, out: &mut Vec<u8>) {
        if value != 0 {
            encode_key(tag, WireType::Varint, out);
            encode_varint(value, out);
        }
    }
    // pb::Mutation: tree = 1, key = 2, value = 3, delete = 4 (two bytes when true).
    let body_len = |m: &Mutation| {
        field_len(1, m.tree.as_str().len())
            + field_len(2, m.key.len())
            + m.value.as_ref().map_or(2, |v| field_len(3, v.len()))
    };
    let varint_len = |tag: u32, value: u64| {
        if value == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(value)
        }
    };
    // int64 is the two's complement as a u64 varint, like prost's.
    let committed_at = entry.committed_at_ms as u64;
    let len = varint_len(1, entry.lsn)
        + varint_len(2, entry.term)
        + varint_len(3, committed_at)
        + entry
            .mutations
            .iter()
            .map(|m| {
                let body = body_len(m);
                key_len(4) + encoded_len_varint(body as u64) + body
            })
            .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    put_varint(1, entry.lsn, &mut out);
    put_varint(2, entry.term, &mut out);
    put_varint(3, committed_at, &mut out);
    for m in &entry.mutations {
        encode_key(4, WireType::LengthDelimited, &mut out);
        encode_varint(body_len(m) as u64, &mut out);
        put_field(1, m.tree.as_str().as_bytes(), &mut out);
        put_field(2, &m.key, &mut out);
        match &m.value {
            Some(v) => put_field(3, v, &mut out),
            None => put_varint(4, 1, &mut out),
        }
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// A WAL record's payload: protobuf, or the old binary layout (module docs), whose JSON
/// values are upgraded on the way. Anything that decodes as neither is `Internal`.
pub fn decode_entry(bytes: &[u8]) -> Result<WalEntry> {
    if legacy::is_wal_v1(bytes) {
        return legacy::decode_wal_v1(bytes);
    }
    // From `Bytes`, prost slices each key and value out of one buffer instead of copying
    // it into a `Bytes` of its own first (≈ 2 k instructions less for a PlaceOrder entry,
    // `benches/record_codec.rs`).
    let message = pb::WalEntry::decode(prost::bytes::Bytes::copy_from_slice(bytes))
        .map_err(|e| ShopError::internal(format!("undecodable WAL entry: {e}")))?;
    if message.lsn == 0 {
        // Only an old entry or garbage lacks field 1; never a record this shop wrote.
        return Err(ShopError::internal("WAL entry has no LSN"));
    }
    entry_from_pb(message).map_err(|e| ShopError::internal(format!("WAL entry: {e}")))
}

/// Brings a store's data trees to [`RECORD_FORMAT`] (module docs): every JSON record is
/// re-encoded in protobuf, then `meta` is marked. Returns how many records were rewritten
/// (0 for a store already marked). A store marked newer than this build is refused, and so
/// is a JSON record that does not decode (naming the tree and key; nothing is marked, so
/// the next open tries again). The caller flushes.
pub fn migrate_store(
    trees: &[sled::Tree],
    meta: &sled::Tree,
    store: &std::path::Path,
) -> Result<u64> {
    let format = match meta.get(META_RECORD_FORMAT)? {
        None => 1,
        Some(raw) => u64::from_be_bytes(raw.as_ref().try_into().map_err(|_| {
            ShopError::internal(format!(
                "store {}: record format mark has {} bytes, not 8",
                store.display(),
                raw.len()
            ))
        })?),
    };
    if format == RECORD_FORMAT {
        return Ok(0);
    }
    if format > RECORD_FORMAT {
        return Err(ShopError::internal(format!(
            "store {} holds records in format {format}, written by a newer shop; this build \
             reads formats up to {RECORD_FORMAT}: run the newer shop on it (or restore a \
             backup made before the upgrade)",
            store.display()
        )));
    }
    let mut migrated = 0;
    for name in RECORD_TREES {
        let tree = &trees[name.index()];
        for item in tree.iter() {
            let (key, value) = item?;
            if !legacy::is_json(&value) {
                continue;
            }
            let upgraded = upgrade_value(name, value.to_vec()).map_err(|e| {
                ShopError::internal(format!(
                    "store {}: cannot migrate the {} record under key {key:?} from JSON: {e}; \
                     restore that record from a backup or delete it, then start again",
                    store.display(),
                    name.as_str(),
                ))
            })?;
            tree.insert(key, upgraded)?;
            migrated += 1;
        }
    }
    meta.insert(META_RECORD_FORMAT, &RECORD_FORMAT.to_be_bytes())?;
    if migrated > 0 {
        tracing::info!(store = %store.display(), records = migrated,
            "migrated JSON records to protobuf (record format {RECORD_FORMAT})");
    }
    Ok(migrated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::OrderStatus;

    pub(crate) fn product() -> Product {
        Product {
            id: ProductId(42),
            name: "Green tea".into(),
            description: "Sencha, 100 g".into(),
            price_minor: 1250,
            currency: "EUR".into(),
            stock: 37,
            created_at_ms: 1_796_443_600_176,
            updated_at_ms: 1_796_443_600_202,
        }
    }

    pub(crate) fn order() -> Order {
        Order {
            id: OrderId(7),
            user_id: "u-000000000001".into(),
            lines: vec![OrderLine {
                product_id: ProductId(42),
                name: "Green tea".into(),
                quantity: 3,
                unit_price_minor: 1250,
                line_total_minor: 3750,
            }],
            total_minor: 3750,
            currency: "EUR".into(),
            status: OrderStatus::Shipped,
            idempotency_key: "checkout-1".into(),
            created_at_ms: 1_796_443_600_202,
            updated_at_ms: 1_796_443_600_207,
            placed_lsn: 6,
            placed_term: 1,
        }
    }

    fn cart() -> StoredCart {
        StoredCart {
            items: vec![
                CartItem {
                    product_id: ProductId(2),
                    quantity: 2,
                },
                CartItem {
                    product_id: ProductId(3),
                    quantity: 1,
                },
            ],
        }
    }

    fn account() -> Account {
        Account {
            id: UserId(1),
            username: "Alice".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_at_ms: 1_796_443_600_190,
            session_generation: 3,
        }
    }

    /// `record` survives protobuf and the old JSON unchanged, its protobuf never looks
    /// like JSON, and upgrading its JSON gives exactly its protobuf.
    fn round_trips<R>(tree: TreeName, record: R)
    where
        R: Record + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        assert_eq!(R::TREE, tree);
        let proto = record.encode();
        assert!(!legacy::is_json(&proto), "{tree:?}");
        assert_eq!(R::decode(&proto).expect("protobuf"), record);
        let json = serde_json::to_vec(&record).expect("json");
        assert!(legacy::is_json(&json));
        assert_eq!(R::decode(&json).expect("json"), record);
        assert_eq!(upgrade_value(tree, json).expect("upgrade"), proto);
        assert_eq!(upgrade_value(tree, proto.clone()).expect("no-op"), proto);
    }

    /// Every record type round-trips in both encodings (table of one sample per tree).
    #[test]
    fn records_round_trip() {
        round_trips(TreeName::Products, product());
        round_trips(TreeName::Carts, cart());
        round_trips(TreeName::Orders, order());
        round_trips(TreeName::Accounts, account());
        for status in OrderStatus::ALL {
            round_trips(TreeName::Orders, Order { status, ..order() });
        }
    }

    /// Bytes that are neither protobuf nor JSON of the record are `Internal` naming the
    /// tree, never a panic; an order with no valid status is corrupt too.
    #[test]
    fn garbage_is_corrupt() {
        for bytes in [
            &b"{not json"[..],
            &[0xff, 0xff, 0xff][..],
            &[0x0a, 0x63][..],
        ] {
            match Product::decode(bytes) {
                Err(ShopError::Internal(msg)) => assert!(msg.contains("products"), "{msg}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let no_status = stored::Order {
            id: 1,
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            Order::decode(&no_status),
            Err(ShopError::Internal(_))
        ));
        assert!(upgrade_value(TreeName::Orders, b"{\"id\":1}".to_vec()).is_err());
    }

    fn entry() -> WalEntry {
        WalEntry {
            lsn: 42,
            term: 3,
            committed_at_ms: 1_700_000_000_000,
            mutations: vec![
                Mutation {
                    tree: TreeName::Products,
                    key: 42u64.to_be_bytes().to_vec(),
                    value: Some(product().encode()),
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

    /// A WAL entry's payload is exactly prost's encoding of the replication message and
    /// decodes back to the entry: a table of entries with every default and edge value
    /// (term 0, negative and zero times, empty key, empty value, a delete, a value longer
    /// than 127 bytes, no mutations).
    #[test]
    fn wal_entries_round_trip() {
        let mut long_value = entry();
        long_value.mutations[0].value = Some(vec![7; 300]);
        let mut empty_value = entry();
        empty_value.mutations[2].key = b"k".to_vec();
        let table = [
            entry(),
            long_value,
            empty_value,
            WalEntry {
                lsn: 1,
                term: 0,
                committed_at_ms: -5,
                mutations: vec![],
            },
            WalEntry {
                lsn: u64::MAX,
                term: u64::MAX,
                committed_at_ms: 0,
                mutations: entry().mutations,
            },
        ];
        for e in table {
            let bytes = encode_entry(&e);
            assert_eq!(bytes[0], 0x08, "field 1 (lsn) first");
            assert_eq!(bytes, entry_to_pb(e.clone()).encode_to_vec(), "{e:?}");
            assert_eq!(decode_entry(&bytes).expect("decode"), e);
        }
    }

    /// An old-format entry is read, its JSON values upgraded to protobuf and every other
    /// value left as it was; the same entry in protobuf carries the same mutations.
    #[test]
    fn old_wal_entries_are_read_and_upgraded() {
        let mut old = entry();
        old.mutations[0].value = Some(serde_json::to_vec(&product()).expect("json"));
        let v1 = legacy::encode_wal_v1(&old);
        assert_eq!(v1[0], 1);
        assert_eq!(decode_entry(&v1).expect("decode v1"), entry());
    }

    /// Cuts and corruptions are errors or lesser entries, never panics: every cut of an
    /// old entry is an error; a protobuf cut at a field boundary is a valid message (the
    /// segment frame's length and checksum catch it) but never the whole entry. An entry
    /// naming an unknown tree or without an LSN is refused.
    #[test]
    fn corrupt_entries_are_errors() {
        let v1 = legacy::encode_wal_v1(&entry());
        for cut in 0..v1.len() {
            assert!(decode_entry(&v1[..cut]).is_err(), "v1 cut at {cut}");
        }
        let proto = encode_entry(&entry());
        for cut in 0..proto.len() {
            if let Ok(partial) = decode_entry(&proto[..cut]) {
                assert_ne!(partial, entry(), "cut at {cut}");
            }
        }
        let mut unknown_tree = entry_to_pb(entry());
        unknown_tree.mutations[0].tree = "wal".into();
        assert!(decode_entry(&unknown_tree.encode_to_vec()).is_err());
        let no_lsn = pb::WalEntry {
            term: 1,
            ..Default::default()
        };
        assert!(decode_entry(&no_lsn.encode_to_vec()).is_err());
    }

    /// A store of JSON records is rewritten in protobuf once and marked; a second run
    /// finds nothing to do; a store marked by a newer shop is refused naming the store.
    #[test]
    fn migrate_store_rewrites_json_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        let trees: Vec<sled::Tree> = TreeName::ALL
            .iter()
            .map(|t| db.open_tree(t.as_str()).expect("tree"))
            .collect();
        let meta = db.open_tree("meta").expect("meta");
        let p = product();
        let tree = &trees[TreeName::Products.index()];
        tree.insert(p.id.key(), serde_json::to_vec(&p).expect("json"))
            .expect("insert");
        let counters = &trees[TreeName::Counters.index()];
        counters
            .insert(b"last_product_id", &42u64.to_be_bytes())
            .expect("insert");
        let o = order();
        trees[TreeName::Orders.index()]
            .insert(o.id.key(), o.encode())
            .expect("insert");

        assert_eq!(
            migrate_store(&trees, &meta, dir.path()).expect("migrate"),
            1
        );
        assert_eq!(
            tree.get(p.id.key()).expect("get").as_deref(),
            Some(&p.encode()[..])
        );
        assert_eq!(
            counters.get(b"last_product_id").expect("get").as_deref(),
            Some(&42u64.to_be_bytes()[..])
        );
        assert_eq!(migrate_store(&trees, &meta, dir.path()).expect("again"), 0);

        meta.insert(META_RECORD_FORMAT, &3u64.to_be_bytes())
            .expect("mark");
        let err = migrate_store(&trees, &meta, dir.path())
            .expect_err("newer format")
            .to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("format 3"), "{err}");
    }

    /// A JSON record that does not decode stops the migration with an error naming the
    /// tree and what to do, and the store is not marked.
    #[test]
    fn migrate_store_refuses_a_broken_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        let trees: Vec<sled::Tree> = TreeName::ALL
            .iter()
            .map(|t| db.open_tree(t.as_str()).expect("tree"))
            .collect();
        let meta = db.open_tree("meta").expect("meta");
        trees[TreeName::Carts.index()]
            .insert(b"alice", &b"{\"items\":7}"[..])
            .expect("insert");
        let err = migrate_store(&trees, &meta, dir.path())
            .expect_err("broken record")
            .to_string();
        assert!(err.contains("carts record"), "{err}");
        assert!(err.contains("restore"), "{err}");
        assert_eq!(meta.get(META_RECORD_FORMAT).expect("get"), None);
    }
}
