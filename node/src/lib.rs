//! `concord-node`: one prediction node of the Concord consensus.
//!
//! A node trains a KNN classifier on its own seeded part of the Iris data at start-up
//! ([`KnnModel`]), optionally distorts its answers for fault-injection demos
//! ([`Behaviour`]), serves them over `concord.predict.v1.Predictor` ([`serve`]) and
//! publishes itself in the registry as service [`PREDICTOR_SERVICE`].
//!
//! Concept → file:
//! - Iris data, stratified seeded splits, shared hold-out set → `dataset.rs`
//! - KNN over `linfa-nn`, probabilities, accuracy, input validation → `model.rs`
//! - fault injection (`honest | random | inverted | slow:<ms>`, and the adaptive liars
//!   `intermittent:<p> | sleeper:<n> | sybil`) → `behaviour.rs`
//! - node configuration and the default fleet of five → `config.rs`
//! - a trained node, independent of gRPC → `node.rs`
//! - pb ↔ domain → `convert.rs`; tonic handlers → `service.rs`
//! - lifecycle (serve, register, shut down) → `server.rs`; errors → `error.rs`
//! - the start-up stake a node pays for itself once (`--initial-stake`) → `stake.rs`
//!
//! Non-goals: online learning, model persistence, datasets other than Iris.

mod behaviour;
mod config;
mod convert;
mod dataset;
mod error;
mod model;
mod node;
mod server;
mod service;
pub mod stake;

pub use behaviour::Behaviour;
pub use config::{default_fleet, NodeConfig, NodeId, DEFAULT_MAX_BATCH};
pub use convert::{class_name, prediction_to_pb};
pub use dataset::{
    Iris, Label, Split, CLASS_NAMES, HOLDOUT_FRACTION, HOLDOUT_SEED, NUM_CLASSES, NUM_FEATURES,
    TRAIN_FRACTION,
};
pub use error::{Error, Result};
pub use model::{
    argmax, validate_sample, Feature, KnnModel, Metric, ModelConfig, Prediction, Probabilities,
    Weighting, MAX_FEATURE_ABS_CM,
};
pub use node::Node;
pub use server::{
    advertised_address, serve, METADATA_HOLDOUT_ACCURACY, METADATA_MODEL, METADATA_NODE_ID,
    PREDICTOR_SERVICE,
};
pub use service::NodeService;
