//! Generated protocol stubs, one module per versioned proto package.
//!
//! Everything here is produced by `build.rs` from `proto/`; do not edit by hand. Clients in
//! other languages are generated from the same files.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `concord.registry.v1`: service discovery with TTL leases.
pub mod registry {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("concord.registry.v1");
    }
}

/// `concord.predict.v1`: the Predictor service of nodes and the aggregator.
pub mod predict {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("concord.predict.v1");
    }
}

/// `concord.stake.v1`: the Staking service and its ledger.
pub mod stake {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("concord.stake.v1");
    }
}

/// `concord.shop.v1`: the Shop and Replication services.
pub mod shop {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("concord.shop.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Concord proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));
