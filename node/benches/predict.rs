//! One in-process prediction, measured three ways: the bare model (KNN + vote), the node
//! (model + behaviour), and the tonic handler called directly (adds pb conversion), for
//! each default node. The node target is ≥ 25 000 predictions/s, i.e. < 40 µs each.

use std::hint::black_box;
use std::sync::Arc;

use concord::pb::predict::v1::{predictor_server::Predictor, PredictRequest};
use concord_node::{default_fleet, KnnModel, Node, NodeService};
use criterion::{criterion_group, criterion_main, Criterion};

const SAMPLE: [f64; 4] = [6.0, 2.8, 4.9, 1.7];

fn bench_predict(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    for config in default_fleet() {
        let id = config.node_id.clone();
        let model = KnnModel::train(config.model.clone()).expect("default model trains");
        c.bench_function(&format!("model/{id}"), |b| {
            b.iter(|| model.predict(black_box(&SAMPLE)).expect("valid sample"))
        });
        let node = Arc::new(Node::new(config).expect("default node starts"));
        c.bench_function(&format!("node/{id}"), |b| {
            b.iter(|| node.predict(black_box(&SAMPLE)).expect("valid sample"))
        });
        let service = NodeService::new(node);
        c.bench_function(&format!("service/{id}"), |b| {
            b.iter(|| {
                let request = tonic::Request::new(PredictRequest {
                    features: SAMPLE.to_vec(),
                    policy: 0,
                });
                runtime
                    .block_on(service.predict(request))
                    .expect("valid sample")
            })
        });
    }
}

criterion_group!(benches, bench_predict);
criterion_main!(benches);
