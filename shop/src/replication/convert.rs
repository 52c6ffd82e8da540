//! The replication stream's conversions. WAL entries and mutations ↔ their protobuf
//! messages are `codec`'s (the same message is the WAL's record on disk), re-exported here
//! for the shipper and the follower, so neither can disagree with the WAL on the encoding.

use concord::pb::shop::v1 as pb;

use super::follower_core::Message;
use crate::error::Result;
use crate::wal::WalEntry;

// The WAL ↔ proto mapping is the WAL's on-disk encoding too: it lives in `codec`.
pub(super) use crate::codec::{entry_from_pb, entry_to_pb, mutation_from_pb, mutation_to_pb};

/// A primary's stream message as the follower core's [`Message`]. A batch's entries are
/// decoded into the vector taken from `spare` (the follower hands the same one back from
/// batch to batch), so a message needs no vector of its own.
pub(super) fn message_from_pb(
    kind: pb::replicate_response::Kind,
    spare: &mut Vec<WalEntry>,
) -> Result<Message> {
    use pb::replicate_response::Kind;
    Ok(match kind {
        Kind::Entries(batch) => {
            let mut entries = std::mem::take(spare);
            entries.clear();
            entries.reserve(batch.entries.len());
            for entry in batch.entries {
                entries.push(entry_from_pb(entry)?);
            }
            Message::Entries(entries)
        }
        Kind::SnapshotBegin(begin) => Message::SnapshotBegin {
            lsn: begin.lsn,
            term: begin.term,
        },
        Kind::SnapshotChunk(chunk) => Message::SnapshotChunk(
            chunk
                .mutations
                .into_iter()
                .map(mutation_from_pb)
                .collect::<Result<_>>()?,
        ),
        Kind::SnapshotEnd(end) => Message::SnapshotEnd {
            lsn: end.lsn,
            lsn_term: end.lsn_term,
        },
        Kind::Heartbeat(hb) => Message::Heartbeat {
            last_lsn: hb.last_lsn,
            term: hb.term,
        },
    })
}
