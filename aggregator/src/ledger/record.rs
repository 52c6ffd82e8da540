//! How the ledger's records are stored in sled: protobuf (prost), the encoding the rest
//! of Concord's wire already uses, for events, accounts and the head, in this one place.
//!
//! Why protobuf and not the JSON this ledger was first written in: one encoding for
//! stored records across the workspace (issue 18), and it is smaller and no slower.
//! `benches/ledger_codec.rs` measured (dev profile, shared 2-core machine): a scoring
//! event is 142 bytes instead of 337 (−58 %), encode + decode ≈ 38 µs against 40 µs for
//! JSON, and either is a few percent of the ≈ 1.1 ms a flushed `stake` transaction
//! takes — so the choice is about one encoding and size on disk, not speed.
//!
//! The hash chain does not depend on the encoding: [`super::event_hash`] hashes the
//! fields, never the stored bytes, so re-encoding a record keeps every hash valid.
//!
//! **Old ledgers** (JSON records, written before this change) migrate on open:
//! [`migrate_json`] rewrites every JSON record of the `events`, `accounts` and `meta`
//! trees as protobuf and flushes. A JSON record always starts with `{`, which no record
//! here encodes to (its first byte is the key of field 1), so the two are told apart per
//! record; a migration cut short by a crash is finished by the next open, and until then
//! [`decode_event`] and friends read either form.

use prost::Message;
use serde::de::DeserializeOwned;

use super::error::LedgerError;
use super::event::Event;
use super::state::{Account, Head, Totals};
use crate::convert::{event_kind_from_pb, event_kind_to_pb};

/// An [`Event`] as stored. Hashes are stored as their 32 raw bytes.
#[derive(Clone, PartialEq, Message)]
struct EventRecord {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(enumeration = "concord::pb::stake::v1::EventKind", tag = "2")]
    kind: i32,
    #[prost(string, tag = "3")]
    node_id: String,
    #[prost(uint64, tag = "4")]
    amount: u64,
    #[prost(uint64, tag = "5")]
    stake_after: u64,
    #[prost(uint64, tag = "6")]
    trust_after_ppb: u64,
    #[prost(string, optional, tag = "7")]
    request_id: Option<String>,
    #[prost(uint64, tag = "8")]
    at_ms: u64,
    #[prost(bytes = "vec", tag = "9")]
    prev_hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    hash: Vec<u8>,
}

/// An [`Account`] as stored.
#[derive(Clone, PartialEq, Message)]
struct AccountRecord {
    #[prost(string, tag = "1")]
    node_id: String,
    #[prost(uint64, tag = "2")]
    stake: u64,
    #[prost(uint64, tag = "3")]
    trust_ppb: u64,
    #[prost(bool, tag = "4")]
    ejected: bool,
    #[prost(uint64, tag = "5")]
    right: u64,
    #[prost(uint64, tag = "6")]
    wrong: u64,
    #[prost(uint64, tag = "7")]
    last_seq: u64,
}

/// The [`Head`] (with its [`Totals`]) as stored.
#[derive(Clone, PartialEq, Message)]
struct HeadRecord {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    hash: Vec<u8>,
    #[prost(uint64, tag = "3")]
    granted: u64,
    #[prost(uint64, tag = "4")]
    rewarded: u64,
    #[prost(uint64, tag = "5")]
    burned: u64,
    #[prost(uint64, tag = "6")]
    deposited: u64,
    #[prost(uint64, tag = "7")]
    withdrawn: u64,
}

/// First byte of every JSON record (an object); never the first byte of a record here.
const JSON_OPEN: u8 = b'{';

fn is_json(bytes: &[u8]) -> bool {
    bytes.first() == Some(&JSON_OPEN)
}

fn corrupt(what: &str, cause: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(format!("{what}: {cause}"))
}

fn decode_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

/// A hex hash as its raw bytes; a hash that is not hex (only a hand-edited JSON record
/// can hold one) is refused as corrupt.
fn hash_to_bytes(what: &str, hash: &str) -> Result<Vec<u8>, LedgerError> {
    hex::decode(hash).map_err(|e| corrupt(what, format!("hash {hash:?} is not hex: {e}")))
}

/// A stored event (protobuf, or JSON not yet migrated).
pub fn decode_event(bytes: &[u8]) -> Result<Event, LedgerError> {
    if is_json(bytes) {
        return decode_json("event", bytes);
    }
    let r = EventRecord::decode(bytes).map_err(|e| corrupt("event", e))?;
    let kind = event_kind_from_pb(r.kind)
        .ok_or_else(|| corrupt("event", format!("unknown kind {}", r.kind)))?;
    Ok(Event {
        seq: r.seq,
        kind,
        node_id: r.node_id,
        amount: r.amount,
        stake_after: r.stake_after,
        trust_after_ppb: r.trust_after_ppb,
        request_id: r.request_id,
        at_ms: r.at_ms,
        prev_hash: hex::encode(r.prev_hash),
        hash: hex::encode(r.hash),
    })
}

/// An event as stored. Fails only for a hash that is not hex (never one the ledger made).
pub fn encode_event(e: &Event) -> Result<Vec<u8>, LedgerError> {
    Ok(EventRecord {
        seq: e.seq,
        kind: event_kind_to_pb(e.kind) as i32,
        node_id: e.node_id.clone(),
        amount: e.amount,
        stake_after: e.stake_after,
        trust_after_ppb: e.trust_after_ppb,
        request_id: e.request_id.clone(),
        at_ms: e.at_ms,
        prev_hash: hash_to_bytes("event", &e.prev_hash)?,
        hash: hash_to_bytes("event", &e.hash)?,
    }
    .encode_to_vec())
}

/// A stored account (protobuf, or JSON not yet migrated).
pub fn decode_account(bytes: &[u8]) -> Result<Account, LedgerError> {
    if is_json(bytes) {
        return decode_json("account", bytes);
    }
    let r = AccountRecord::decode(bytes).map_err(|e| corrupt("account", e))?;
    Ok(Account {
        node_id: r.node_id,
        stake: r.stake,
        trust_ppb: r.trust_ppb,
        ejected: r.ejected,
        right: r.right,
        wrong: r.wrong,
        last_seq: r.last_seq,
    })
}

/// An account as stored.
pub fn encode_account(a: &Account) -> Vec<u8> {
    AccountRecord {
        node_id: a.node_id.clone(),
        stake: a.stake,
        trust_ppb: a.trust_ppb,
        ejected: a.ejected,
        right: a.right,
        wrong: a.wrong,
        last_seq: a.last_seq,
    }
    .encode_to_vec()
}

/// The stored head (protobuf, or JSON not yet migrated).
pub fn decode_head(bytes: &[u8]) -> Result<Head, LedgerError> {
    if is_json(bytes) {
        return decode_json("head", bytes);
    }
    let r = HeadRecord::decode(bytes).map_err(|e| corrupt("head", e))?;
    Ok(Head {
        seq: r.seq,
        hash: hex::encode(r.hash),
        totals: Totals {
            granted: r.granted,
            rewarded: r.rewarded,
            burned: r.burned,
            deposited: r.deposited,
            withdrawn: r.withdrawn,
        },
    })
}

/// The head as stored. Fails only for a hash that is not hex (never one the ledger made).
pub fn encode_head(h: &Head) -> Result<Vec<u8>, LedgerError> {
    Ok(HeadRecord {
        seq: h.seq,
        hash: hash_to_bytes("head", &h.hash)?,
        granted: h.totals.granted,
        rewarded: h.totals.rewarded,
        burned: h.totals.burned,
        deposited: h.totals.deposited,
        withdrawn: h.totals.withdrawn,
    }
    .encode_to_vec())
}

/// Rewrites every JSON record of `tree` in protobuf through `reencode`; returns how many.
fn migrate_tree(
    tree: &sled::Tree,
    reencode: impl Fn(&[u8]) -> Result<Vec<u8>, LedgerError>,
) -> Result<u64, LedgerError> {
    let mut migrated = 0;
    for r in tree.iter() {
        let (key, value) = r?;
        if is_json(&value) {
            tree.insert(key, reencode(&value)?)?;
            migrated += 1;
        }
    }
    Ok(migrated)
}

/// Migrates a ledger written in JSON to protobuf, record by record (see the module doc);
/// returns how many records were rewritten (0 for a ledger already in protobuf). A JSON
/// record that does not decode is refused with [`LedgerError::Corrupt`] naming it, and
/// nothing after it is rewritten.
pub fn migrate_json(
    events: &sled::Tree,
    accounts: &sled::Tree,
    meta: &sled::Tree,
) -> Result<u64, LedgerError> {
    let migrated = migrate_tree(events, |b| encode_event(&decode_event(b)?))?
        + migrate_tree(accounts, |b| Ok(encode_account(&decode_account(b)?)))?
        + migrate_tree(meta, |b| encode_head(&decode_head(b)?))?;
    Ok(migrated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{event_hash, EventKind, GENESIS_HASH};

    fn event() -> Event {
        let mut e = Event {
            seq: 7,
            kind: EventKind::Slash,
            node_id: "node-1".into(),
            amount: 20,
            stake_after: 980,
            trust_after_ppb: 450_000_000,
            request_id: Some("req-1".into()),
            at_ms: 1_700_000_000_000,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        e
    }

    /// Every record survives protobuf and JSON (the old format) unchanged, and the hash
    /// still verifies after the round trip.
    #[test]
    fn records_round_trip_in_both_encodings() {
        let e = event();
        let proto = encode_event(&e).expect("encode");
        assert_ne!(proto.first(), Some(&JSON_OPEN));
        assert_eq!(decode_event(&proto).expect("decode"), e);
        let json = serde_json::to_vec(&e).expect("json");
        assert_eq!(decode_event(&json).expect("decode json"), e);
        assert_eq!(event_hash(&decode_event(&proto).expect("decode")), e.hash);

        let mut a = Account::unopened("node-1");
        a.last_seq = 7;
        let bytes = encode_account(&a);
        assert_ne!(bytes.first(), Some(&JSON_OPEN));
        assert_eq!(decode_account(&bytes).expect("decode"), a);

        let h = Head {
            seq: 7,
            hash: e.hash.clone(),
            totals: Totals {
                deposited: 1000,
                burned: 20,
                ..Totals::default()
            },
        };
        let bytes = encode_head(&h).expect("encode");
        assert_ne!(bytes.first(), Some(&JSON_OPEN));
        assert_eq!(decode_head(&bytes).expect("decode"), h);
        // The head of an empty ledger (seq 0, genesis hash) round-trips too.
        let empty = Head {
            seq: 0,
            hash: GENESIS_HASH.into(),
            totals: Totals::default(),
        };
        assert_eq!(
            decode_head(&encode_head(&empty).expect("encode")).expect("decode"),
            empty
        );
    }

    /// A record that is neither valid JSON nor valid protobuf is corrupt, not a panic.
    #[test]
    fn garbage_is_corrupt() {
        for bytes in [
            &b"{not json"[..],
            &[0xff, 0xff, 0xff][..],
            &[0x10, 0x63][..],
        ] {
            assert!(
                matches!(decode_event(bytes), Err(LedgerError::Corrupt(_))),
                "{bytes:?}"
            );
        }
    }
}
