//! pb ↔ domain conversions for the node's Predictor service, in one place.
//!
//! Only shapes change here; validation of the features is the model's job
//! ([`crate::validate_sample`]) so the node and the aggregator accept exactly the same input.

use concord::pb::predict::v1::{GetModelInfoResponse, PredictResponse};

use crate::behaviour::Behaviour;
use crate::dataset::{CLASS_NAMES, HOLDOUT_FRACTION, NUM_CLASSES};
use crate::model::{Prediction, Weighting};
use crate::node::Node;

/// A node's answer as a `PredictResponse` (consensus-only fields left empty).
pub fn prediction_to_pb(prediction: &Prediction, node_id: &str, model: &str) -> PredictResponse {
    PredictResponse {
        label: label_to_pb(prediction.label),
        class_name: class_name(prediction.label).to_owned(),
        probabilities: prediction.probabilities.to_vec(),
        node_id: node_id.to_owned(),
        model: model.to_owned(),
        ..Default::default()
    }
}

/// Everything `GetModelInfo` reports about a node.
pub fn model_info_to_pb(node: &Node) -> GetModelInfoResponse {
    let model = node.model();
    let config = model.config();
    GetModelInfoResponse {
        node_id: node.id().to_owned(),
        model: model.description().to_owned(),
        k: u32::try_from(config.k).unwrap_or(u32::MAX),
        metric: config.metric.to_string(),
        features: config.features.iter().map(|f| f.column() as u32).collect(),
        seed: config.seed,
        distance_weighted: config.weighting == Weighting::Distance,
        training_size: u32::try_from(model.training_size()).unwrap_or(u32::MAX),
        holdout_size: holdout_size(),
        holdout_accuracy: model.holdout_accuracy(),
        behaviour: behaviour_to_pb(node.behaviour()),
        class_names: CLASS_NAMES.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A label on the wire; labels are < [`NUM_CLASSES`], so the cast cannot truncate.
pub fn label_to_pb(label: usize) -> u32 {
    debug_assert!(label < NUM_CLASSES);
    label as u32
}

/// The name of a class, or `"unknown"` for a label out of range (never produced here).
pub fn class_name(label: usize) -> &'static str {
    CLASS_NAMES.get(label).copied().unwrap_or("unknown")
}

fn behaviour_to_pb(behaviour: Behaviour) -> String {
    behaviour.to_string()
}

fn holdout_size() -> u32 {
    let iris = crate::dataset::Iris::get();
    // Same arithmetic as the split itself, checked against it in the tests.
    let per_class = (iris.len() / NUM_CLASSES) as f64 * HOLDOUT_FRACTION;
    (per_class.round() as u32) * NUM_CLASSES as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    /// Model info reports the configuration, sizes and class names.
    #[test]
    fn model_info() {
        let node = Node::new(NodeConfig::default()).unwrap();
        let info = model_info_to_pb(&node);
        assert_eq!(info.node_id, "node-1");
        assert_eq!(info.k, 5);
        assert_eq!(info.metric, "euclidean");
        assert_eq!(info.features, vec![0, 1, 2, 3]);
        assert_eq!(info.training_size, 84);
        assert_eq!(
            info.holdout_size as usize,
            crate::dataset::Iris::get().split(1).holdout.len()
        );
        assert_eq!(info.behaviour, "honest");
        assert_eq!(info.class_names, CLASS_NAMES);
        assert!(info.holdout_accuracy >= 0.9);
    }

    /// A prediction keeps its label, class name and all three probabilities.
    #[test]
    fn prediction() {
        let p = Prediction::from_votes([0.0, 1.0, 3.0]);
        let pb = prediction_to_pb(&p, "n", "m");
        assert_eq!((pb.label, pb.class_name.as_str()), (2, "virginica"));
        assert_eq!(pb.probabilities, vec![0.0, 0.25, 0.75]);
        assert!(pb.request_id.is_empty() && pb.votes.is_empty());
    }
}
