//! A node over loopback: it serves Predictor, registers in a real registry with its model
//! in the metadata, and deregisters on clean shutdown; every default node is accurate.

use std::net::SocketAddr;
use std::time::Duration;

use concord::pb::predict::v1::{
    predictor_client::PredictorClient, GetModelInfoRequest, PredictBatchRequest, PredictRequest,
    Row,
};
use concord::pb::registry::v1::{registry_client::RegistryClient, Instance, ResolveRequest};
use concord_node::{
    default_fleet, Iris, KnnModel, NodeConfig, METADATA_MODEL, METADATA_NODE_ID, PREDICTOR_SERVICE,
};
use concord_testkit::{channel, free_addr};
use tonic::{transport::Channel, Code};

/// How long a test waits for something to become true before failing.
const WAIT: Duration = Duration::from_secs(5);

fn predictor(addr: SocketAddr) -> PredictorClient<Channel> {
    PredictorClient::new(channel(addr))
}

async fn resolve(registry: SocketAddr) -> Vec<Instance> {
    let mut client = RegistryClient::new(channel(registry));
    client
        .resolve(ResolveRequest {
            service: PREDICTOR_SERVICE.into(),
        })
        .await
        .expect("resolve")
        .into_inner()
        .instances
}

/// Polls the registry until `done` holds for the predictor instance set, or fails.
async fn wait_for(registry: SocketAddr, done: impl Fn(&[Instance]) -> bool) -> Vec<Instance> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let instances = resolve(registry).await;
        if done(&instances) {
            return instances;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "registry never reached the expected state: {instances:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node registers with its id and model, answers Predict/PredictBatch/GetModelInfo over
/// the wire, and is gone from the registry right after a clean shutdown (well before TTL).
#[tokio::test]
async fn serves_registers_and_deregisters() {
    let registry = concord_testkit::registry().await;
    let config = NodeConfig {
        registry: Some(registry.addr.to_string()),
        lease_ttl: Duration::from_secs(30),
        ..default_fleet().remove(1)
    };
    let node = concord_testkit::node(config.clone()).await;

    let instances = wait_for(registry.addr, |i| !i.is_empty()).await;
    assert_eq!(instances[0].address, node.addr.to_string());
    assert_eq!(
        instances[0]
            .metadata
            .get(METADATA_NODE_ID)
            .map(String::as_str),
        Some("node-2")
    );
    let model = instances[0]
        .metadata
        .get(METADATA_MODEL)
        .expect("model metadata");
    assert_eq!(model, &config.model.to_string());

    let mut client = predictor(node.addr);
    let reply = client
        .predict(PredictRequest {
            features: vec![5.1, 3.5, 1.4, 0.2],
            policy: 0,
        })
        .await
        .expect("predict")
        .into_inner();
    assert_eq!((reply.label, reply.class_name.as_str()), (0, "setosa"));
    assert_eq!(reply.node_id, "node-2");
    assert_eq!(reply.probabilities.len(), 3);

    let status = client
        .predict(PredictRequest {
            features: vec![1.0, f64::NAN, 1.0, 1.0],
            policy: 0,
        })
        .await
        .expect_err("NaN is rejected");
    assert_eq!(status.code(), Code::InvalidArgument);

    // The review's case: finite, but so large the distances overflowed to infinity.
    let status = client
        .predict(PredictRequest {
            features: vec![1e308; 4],
            policy: 0,
        })
        .await
        .expect_err("huge features are rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("feature 0") && status.message().contains("[-1e6, 1e6]"),
        "{status:?}"
    );

    let rows = vec![
        Row {
            features: vec![6.7, 3.0, 5.2, 2.3]
        };
        10
    ];
    let batch = client
        .predict_batch(PredictBatchRequest { rows, policy: 0 })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.predictions.len(), 10);

    let info = client
        .get_model_info(GetModelInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        (info.node_id.as_str(), info.k, info.seed),
        ("node-2", 15, 2)
    );
    assert!(info.holdout_accuracy >= 0.9);

    node.stop().await;
    wait_for(registry.addr, |i| i.is_empty()).await;
    registry.stop().await;
}

/// Every honest default node scores ≥ 0.90 on the shared hold-out set, measured over the
/// wire (not only the number the node reports about itself).
#[tokio::test]
async fn default_fleet_accurate_over_the_wire() {
    let iris = Iris::get();
    let holdout = iris.split(0).holdout;
    for config in default_fleet() {
        let expected = KnnModel::train(config.model.clone())
            .expect("train")
            .holdout_accuracy();
        let node = concord_testkit::node(config.clone()).await;
        let rows = holdout
            .iter()
            .map(|&r| Row {
                features: iris.features().row(r).to_vec(),
            })
            .collect();
        let batch = predictor(node.addr)
            .predict_batch(PredictBatchRequest { rows, policy: 0 })
            .await
            .expect("batch")
            .into_inner();
        let correct = batch
            .predictions
            .iter()
            .zip(&holdout)
            .filter(|(p, &r)| p.label as usize == iris.labels()[r])
            .count();
        let accuracy = correct as f64 / holdout.len() as f64;
        assert!(accuracy >= 0.90, "{}: {accuracy}", config.node_id);
        assert!((accuracy - expected).abs() < 1e-12, "{}", config.node_id);
        node.stop().await;
    }
}

/// A node whose registry is down still serves, and registers once the registry appears.
#[tokio::test]
async fn registers_when_registry_comes_up() {
    // Reserve a port for the registry, then free it so nothing listens there yet.
    let registry_addr = free_addr().await;
    let node = concord_testkit::node(NodeConfig {
        registry: Some(registry_addr.to_string()),
        ..NodeConfig::default()
    })
    .await;
    let reply = predictor(node.addr)
        .predict(PredictRequest {
            features: vec![5.1, 3.5, 1.4, 0.2],
            policy: 0,
        })
        .await
        .expect("serves without a registry");
    assert_eq!(reply.into_inner().label, 0);

    let registry = concord_testkit::registry_on(registry_addr).await;
    wait_for(registry.addr, |i| i.len() == 1).await;
    node.stop().await;
    registry.stop().await;
}
