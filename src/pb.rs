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

    /// The shop's stored records (not an API: see the `.proto`).
    pub mod storage {
        pub mod v1 {
            tonic::include_proto!("concord.shop.storage.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of every Concord proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));

/// JSON for the generated types (feature `json`): the web gateway serves many messages as
/// they are, with the derives `build.rs` adds. What serde cannot derive from a prost type
/// lives here: an enum-typed field is an `i32` in prost, and is written as the enum's word.
#[cfg(feature = "json")]
pub mod json {
    use std::marker::PhantomData;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// `#[serde(with = "EnumField::<E>")]` for a prost enum field (`i32`): written as `E`'s
    /// word; a value `E` does not know (a newer peer's) as `E`'s default, `unspecified`.
    pub struct EnumField<E>(PhantomData<E>);

    impl<E> EnumField<E>
    where
        E: TryFrom<i32> + Default + Serialize + Into<i32>,
    {
        /// Writes the word of the enum value `value`.
        pub fn serialize<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
            E::try_from(*value)
                .unwrap_or_default()
                .serialize(serializer)
        }

        /// Reads a word of `E` (any other is an error naming the words).
        pub fn deserialize<'de, D>(deserializer: D) -> Result<i32, D::Error>
        where
            D: Deserializer<'de>,
            E: Deserialize<'de>,
        {
            E::deserialize(deserializer).map(Into::into)
        }
    }

    /// `serialize_with` for an optional message that the JSON always shows: `None` is
    /// written as the default (all zeros).
    pub fn some_or_default<T, S>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Default + Serialize,
        S: Serializer,
    {
        match value {
            Some(value) => value.serialize(serializer),
            None => T::default().serialize(serializer),
        }
    }
}
