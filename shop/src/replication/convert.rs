//! The replication stream's conversions. WAL entries and mutations ↔ their protobuf
//! messages are `codec`'s (the same message is the WAL's record on disk), re-exported here
//! for the shipper and the follower, so neither can disagree with the WAL on the encoding.

// The WAL ↔ proto mapping is the WAL's on-disk encoding too: it lives in `codec`.
pub(super) use crate::codec::{entry_from_pb, entry_to_pb, mutation_from_pb, mutation_to_pb};
