//! The replication stream's conversions. WAL entries and mutations ↔ their protobuf
//! messages are `codec`'s (the same message is the WAL's record on disk), re-exported here
//! for the shipper and the follower, so neither can disagree with the WAL on the encoding.

use concord::pb::shop::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

// The WAL ↔ proto mapping is the WAL's on-disk encoding too: it lives in `codec`.
pub(super) use crate::codec::{entry_from_pb, entry_to_pb, mutation_from_pb, mutation_to_pb};

/// The primary's half of a `Replicate` stream: what the shipper queues.
pub(super) type Outbound = mpsc::Sender<std::result::Result<pb::ReplicateResponse, Status>>;

/// One `ReplicateResponse` of `kind`, as the stream item.
pub(super) fn response(
    kind: pb::replicate_response::Kind,
) -> std::result::Result<pb::ReplicateResponse, Status> {
    Ok(pb::ReplicateResponse { kind: Some(kind) })
}
