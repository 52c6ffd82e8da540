//! WAL entries and mutations ↔ their protobuf messages, in one place, so the shipper and
//! the follower cannot disagree on the encoding (a delete is `delete = true`, never an
//! empty value).

use concord::pb::shop::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::Result;
use crate::wal::{Mutation, TreeName, WalEntry};

/// WAL entry → proto.
pub fn entry_to_pb(e: WalEntry) -> pb::WalEntry {
    pb::WalEntry {
        lsn: e.lsn,
        term: e.term,
        committed_at_unix_ms: e.committed_at_ms,
        mutations: e.mutations.into_iter().map(mutation_to_pb).collect(),
    }
}

pub(super) fn mutation_to_pb(m: Mutation) -> pb::Mutation {
    let delete = m.value.is_none();
    pb::Mutation {
        tree: m.tree.as_str().to_string(),
        key: m.key,
        value: m.value.unwrap_or_default(),
        delete,
    }
}

pub(super) fn mutation_from_pb(m: pb::Mutation) -> Result<Mutation> {
    Ok(Mutation {
        tree: TreeName::from_name(&m.tree)?,
        key: m.key,
        value: if m.delete { None } else { Some(m.value) },
    })
}

/// Proto → WAL entry; an unknown tree name is `InvalidArgument`.
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

/// The primary's half of a `Replicate` stream: what the shipper queues.
pub(super) type Outbound = mpsc::Sender<std::result::Result<pb::ReplicateResponse, Status>>;

/// One `ReplicateResponse` of `kind`, as the stream item.
pub(super) fn response(
    kind: pb::replicate_response::Kind,
) -> std::result::Result<pb::ReplicateResponse, Status> {
    Ok(pb::ReplicateResponse { kind: Some(kind) })
}
