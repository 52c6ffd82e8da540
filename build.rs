//! Compiles every `.proto` under `proto/` once, in pure Rust (`protox`, no system `protoc`),
//! into the `concord::pb` stubs, and writes the descriptor set that server reflection serves.
//! The etcd subset under `proto/etcd/` is compiled apart, client only, and kept out of that
//! descriptor set: it is etcd's API (for the registry's etcd store), not Concord's.

use std::{env, path::PathBuf};

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "proto/concord/registry/v1/registry.proto",
    "proto/concord/predict/v1/predict.proto",
    "proto/concord/stake/v1/stake.proto",
    "proto/concord/shop/v1/shop.proto",
    "proto/concord/shop/v1/replication.proto",
];
/// etcd's v3 API, the subset `concord::etcd` uses.
const ETCD_PROTO_FILES: &[&str] = &[
    "proto/etcd/mvccpb/kv_subset.proto",
    "proto/etcd/etcdserverpb/rpc_subset.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let descriptor_path = out_dir.join("concord_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;

    let etcd = protox::compile(ETCD_PROTO_FILES, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}
