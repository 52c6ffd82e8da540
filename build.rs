//! Compiles every `.proto` under `proto/` once, in pure Rust (`protox`, no system `protoc`),
//! into the `concord::pb` stubs, and writes the descriptor set that server reflection serves.
//! The etcd subset under `proto/etcd/` is compiled apart, client only, and kept out of that
//! descriptor set: it is etcd's API (for the registry's etcd store), not Concord's.
//!
//! JSON: the messages the web gateway serves as they are ([`JSON_MESSAGES`]) and every
//! Concord enum get serde and `utoipa::ToSchema` derives behind the `json` feature, so the
//! gateway needs no hand-written twin of them. Enums travel as their lower-case snake_case
//! word (`"pending"`, `"timed_out"`), not proto3-JSON's `ORDER_STATUS_PENDING`; 64-bit
//! integers as JSON numbers; field names as in the `.proto` (snake_case). The enum-typed
//! fields (an `i32` in prost) are found in the descriptors and written through
//! `concord::pb::json::EnumField`.

use std::{collections::BTreeSet, env, path::PathBuf};

use prost_types::{field_descriptor_proto::Type, FileDescriptorSet};

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "proto/concord/registry/v1/registry.proto",
    "proto/concord/predict/v1/predict.proto",
    "proto/concord/stake/v1/stake.proto",
    "proto/concord/shop/v1/shop.proto",
    "proto/concord/shop/v1/replication.proto",
    STORAGE_PROTO,
];
/// The shop's stored records: compiled with the rest, but not served by reflection (no
/// service uses them; they are how the shop stores data, not an API).
const STORAGE_PROTO: &str = "proto/concord/shop/storage/v1/records.proto";
/// etcd's v3 API, the subset `concord::etcd` uses.
const ETCD_PROTO_FILES: &[&str] = &[
    "proto/etcd/mvccpb/kv_subset.proto",
    "proto/etcd/etcdserverpb/rpc_subset.proto",
];

/// Messages the web gateway reads or answers as JSON exactly as they are, with the name of
/// their schema in its OpenAPI document (the HTTP API's names, kept for its clients; several
/// replies of one shape share one name). A message a listed one contains must be listed too.
const JSON_MESSAGES: &[(&str, &str)] = &[
    ("concord.shop.v1.WriteInfo", "WriteInfo"),
    ("concord.shop.v1.Product", "Product"),
    ("concord.shop.v1.CreateProductRequest", "NewProduct"),
    ("concord.shop.v1.CreateProductResponse", "ProductWrite"),
    ("concord.shop.v1.UpdateProductResponse", "ProductWrite"),
    ("concord.shop.v1.DeleteProductResponse", "WriteResult"),
    ("concord.shop.v1.ListProductsResponse", "ProductPage"),
    ("concord.shop.v1.Cart", "Cart"),
    ("concord.shop.v1.CartLine", "CartLine"),
    ("concord.shop.v1.AddCartItemResponse", "CartWrite"),
    ("concord.shop.v1.SetCartItemQuantityResponse", "CartWrite"),
    ("concord.shop.v1.RemoveCartItemResponse", "CartWrite"),
    ("concord.shop.v1.ClearCartResponse", "CartWrite"),
    ("concord.shop.v1.Order", "Order"),
    ("concord.shop.v1.OrderLine", "OrderLine"),
    ("concord.shop.v1.PlaceOrderResponse", "OrderPlaced"),
    ("concord.shop.v1.UpdateOrderStatusResponse", "OrderWrite"),
    ("concord.shop.v1.ListOrdersResponse", "OrderPage"),
    ("concord.shop.v1.ListAllOrdersResponse", "OrderPage"),
    ("concord.shop.v1.Account", "CustomerAccount"),
    ("concord.predict.v1.PredictResponse", "Prediction"),
    ("concord.predict.v1.NodeVote", "NodeVote"),
    ("concord.stake.v1.ReportOutcomeRequest", "Outcome"),
    ("concord.stake.v1.ReportOutcomeResponse", "OutcomeResult"),
    ("concord.stake.v1.NodeScore", "NodeScore"),
    ("concord.stake.v1.Account", "Account"),
    ("concord.stake.v1.Totals", "Totals"),
    ("concord.stake.v1.ListAccountsResponse", "Stakes"),
    ("concord.stake.v1.Event", "LedgerEvent"),
    ("concord.stake.v1.ListEventsResponse", "LedgerPage"),
    (
        "concord.stake.v1.VerifyLedgerResponse",
        "LedgerVerification",
    ),
    ("concord.registry.v1.Instance", "Instance"),
];

/// The few fields whose JSON is not the field taken one to one (inside `cfg_attr(json, …)`).
const JSON_FIELD_ATTRIBUTES: &[(&str, &str)] = &[
    // A new product's optional fields: absent means the shop's default.
    (
        "concord.shop.v1.CreateProductRequest.description",
        "serde(default)",
    ),
    (
        "concord.shop.v1.CreateProductRequest.currency",
        "serde(default)",
    ),
    (
        "concord.shop.v1.CreateProductRequest.stock",
        "serde(default)",
    ),
    // The lease id is its holder's handle on the lease: never shown.
    ("concord.registry.v1.Instance.lease_id", "serde(skip)"),
    // The totals are always an object: zeros when the reply had none.
    (
        "concord.stake.v1.ListAccountsResponse.totals",
        r#"serde(serialize_with = "crate::pb::json::some_or_default"), schema(value_type = Totals, required = true)"#,
    ),
    (
        "concord.stake.v1.VerifyLedgerResponse.totals",
        r#"serde(serialize_with = "crate::pb::json::some_or_default"), schema(value_type = Totals, required = true)"#,
    ),
];

/// Adds the JSON derives (see the module doc) to `builder`, checked against `descriptors`.
fn json_attributes(
    mut builder: tonic_prost_build::Builder,
    descriptors: &FileDescriptorSet,
) -> Result<tonic_prost_build::Builder, Box<dyn std::error::Error>> {
    const DERIVE: &str = "derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)";
    let listed: BTreeSet<&str> = JSON_MESSAGES.iter().map(|(path, _)| *path).collect();
    for file in &descriptors.file {
        let package = file.package();
        for enumeration in &file.enum_type {
            builder = builder.enum_attribute(
                format!(".{package}.{}", enumeration.name()),
                format!(
                    r#"#[cfg_attr(feature = "json", {DERIVE}, serde(rename_all = "snake_case"))]"#
                ),
            );
        }
        for message in &file.message_type {
            let path = format!("{package}.{}", message.name());
            let Some((_, schema)) = JSON_MESSAGES.iter().find(|(p, _)| *p == path) else {
                continue;
            };
            builder = builder.message_attribute(
                format!(".{path}"),
                format!(r#"#[cfg_attr(feature = "json", {DERIVE}, schema(as = {schema}))]"#),
            );
            for field in &message.field {
                let type_name = field.type_name().trim_start_matches('.');
                match field.r#type() {
                    Type::Enum => {
                        let name =
                            type_name
                                .strip_prefix(&format!("{package}."))
                                .ok_or_else(|| {
                                    format!(
                                        "{path}.{}: JSON needs an enum of its own package",
                                        field.name()
                                    )
                                })?;
                        builder = builder.field_attribute(
                            format!(".{path}.{}", field.name()),
                            format!(
                                r#"#[cfg_attr(feature = "json", serde(with = "crate::pb::json::EnumField::<{name}>"), schema(value_type = {name}))]"#
                            ),
                        );
                    }
                    // A map's entry type is nested in the message; serde writes a map.
                    Type::Message
                        if !listed.contains(type_name)
                            && !type_name.starts_with(&format!("{path}.")) =>
                    {
                        return Err(format!(
                            "{path}.{}: JSON needs {type_name} in JSON_MESSAGES",
                            field.name()
                        )
                        .into());
                    }
                    _ => {}
                }
            }
        }
    }
    for (path, attribute) in JSON_FIELD_ATTRIBUTES {
        builder = builder.field_attribute(
            format!(".{path}"),
            format!(r#"#[cfg_attr(feature = "json", {attribute})]"#),
        );
    }
    Ok(builder)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let descriptor_path = out_dir.join("concord_descriptor.bin");
    let mut served = descriptors.clone();
    let storage = STORAGE_PROTO.trim_start_matches("proto/");
    served.file.retain(|file| file.name() != storage);
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&served))?;

    let builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    json_attributes(builder, &descriptors)?.compile_fds(descriptors)?;

    let etcd = protox::compile(ETCD_PROTO_FILES, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}
