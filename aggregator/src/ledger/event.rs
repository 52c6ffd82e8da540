//! One entry of the append-only log, and the hash that chains it to its predecessor.
//!
//! `hash = SHA-256(canonical bytes of every other field, including prev_hash)` and
//! `prev_hash` is the previous event's hash ([`GENESIS_HASH`] for event 1). The hash is
//! computed over the fields, never over the stored bytes, so the chain does not depend on
//! how a record is encoded on disk.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::TRUST_SCALE;
use crate::policy::{NodeId, Stake, Trust};

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an event did. Its snake-case name is the log/JSON name and part of the hash.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    /// Legacy: the default stake minted for a node on first sight. No longer written
    /// (accounts open with a credentialed `Stake`); kept so older ledgers still verify.
    Grant,
    /// Node deposited tokens.
    Stake,
    /// Node withdrew tokens.
    Unstake,
    /// Right answer: tokens minted.
    Reward,
    /// Wrong answer: tokens burned.
    Slash,
    /// Fell below the minimum stake.
    Eject,
    /// Staked back to at least the minimum.
    Rejoin,
}

impl EventKind {
    /// Wire/log name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One entry of the append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1, no gaps.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// Whose account.
    pub node_id: NodeId,
    /// Tokens moved (0 for eject/rejoin).
    pub amount: Stake,
    /// Balance right after this event.
    pub stake_after: Stake,
    /// Trust (ppb) right after this event.
    pub trust_after_ppb: u64,
    /// The scored request, for reward/slash (and the eject they cause).
    pub request_id: Option<String>,
    /// Wall-clock time of the commit, ms since the Unix epoch (informational).
    pub at_ms: u64,
    /// Hash of event `seq − 1`.
    pub prev_hash: String,
    /// SHA-256 of this event, see [`event_hash`].
    pub hash: String,
}

impl Event {
    /// Trust after this event as a float in `[0, 1]`.
    pub fn trust_after(&self) -> Trust {
        self.trust_after_ppb as f64 / TRUST_SCALE as f64
    }
}

/// Canonical SHA-256 of an event: every field except `hash`, length-prefixed, in order.
pub fn event_hash(e: &Event) -> String {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    field(&mut h, b"concord.stake.event.v1");
    field(&mut h, &e.seq.to_be_bytes());
    field(&mut h, e.kind.as_str().as_bytes());
    field(&mut h, e.node_id.as_bytes());
    field(&mut h, &e.amount.to_be_bytes());
    field(&mut h, &e.stake_after.to_be_bytes());
    field(&mut h, &e.trust_after_ppb.to_be_bytes());
    match &e.request_id {
        Some(r) => {
            field(&mut h, b"1");
            field(&mut h, r.as_bytes());
        }
        None => field(&mut h, b"0"),
    }
    field(&mut h, &e.at_ms.to_be_bytes());
    field(&mut h, e.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    /// The derived names are the serde names (both are hashed or stored, so they must agree).
    #[test]
    fn kind_names_match_serde() {
        for kind in EventKind::iter() {
            let json = serde_json::to_string(&kind).expect("json");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(EventKind::Unstake.as_str(), "unstake");
    }
}
