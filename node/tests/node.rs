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
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{transport::Channel, Code};

/// How long a test waits for something to become true before failing.
const WAIT: Duration = Duration::from_secs(5);

/// A server task in this process; `stop` signals shutdown and joins it.
struct Running<E> {
    addr: SocketAddr,
    stop_tx: oneshot::Sender<()>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: std::fmt::Debug> Running<E> {
    async fn stop(self) {
        let _ = self.stop_tx.send(());
        self.task.await.expect("join").expect("serve");
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    concord::telemetry::init_for_tests();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

async fn start_registry() -> Running<tonic::transport::Error> {
    let (listener, addr) = listener().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(concord_registry::serve(
        concord_registry::Config::default(),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    Running {
        addr,
        stop_tx,
        task,
    }
}

async fn start_node(config: NodeConfig) -> Running<concord_node::Error> {
    let (listener, addr) = listener().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(concord_node::serve(config, listener, async move {
        let _ = stop_rx.await;
    }));
    Running {
        addr,
        stop_tx,
        task,
    }
}

fn predictor(addr: SocketAddr) -> PredictorClient<Channel> {
    PredictorClient::new(concord::grpc::lazy_channel(&addr.to_string()).expect("channel"))
}

async fn resolve(registry: SocketAddr) -> Vec<Instance> {
    let mut client =
        RegistryClient::new(concord::grpc::lazy_channel(&registry.to_string()).expect("channel"));
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
    let registry = start_registry().await;
    let config = NodeConfig {
        registry: Some(registry.addr.to_string()),
        lease_ttl: Duration::from_secs(30),
        ..default_fleet().remove(1)
    };
    let node = start_node(config.clone()).await;

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
        let node = start_node(config.clone()).await;
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
    let (reserved, registry_addr) = listener().await;
    drop(reserved);
    let node = start_node(NodeConfig {
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

    let registry = start_registry_on(registry_addr).await;
    wait_for(registry.addr, |i| i.len() == 1).await;
    node.stop().await;
    registry.stop().await;
}

async fn start_registry_on(addr: SocketAddr) -> Running<tonic::transport::Error> {
    let listener = TcpListener::bind(addr)
        .await
        .expect("re-bind reserved port");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(concord_registry::serve(
        concord_registry::Config::default(),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    Running {
        addr,
        stop_tx,
        task,
    }
}
