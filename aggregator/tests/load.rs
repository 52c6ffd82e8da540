//! Throughput and latency of the consensus over 5 in-process nodes at concurrency 64.
//! Ignored by default (it is a measurement, meaningful only in release):
//! `cargo test --release -p concord-aggregator --test load -- --ignored --nocapture`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::pb::predict::v1::{predictor_client::PredictorClient, Policy, PredictRequest};
use concord_aggregator::AggregatorConfig;
use concord_node::{default_fleet, NodeConfig};

const CONCURRENCY: usize = 64;
const DURATION: Duration = Duration::from_secs(5);

async fn load(target: SocketAddr, policy: Policy) -> (f64, Vec<Duration>, usize) {
    let channel = concord::grpc::lazy_channel(&target.to_string()).expect("channel");
    let stop_at = Instant::now() + DURATION;
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = PredictorClient::new(channel.clone());
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < stop_at {
                    let start = Instant::now();
                    let request = PredictRequest {
                        features: vec![6.0, 2.9, 4.5, 1.5],
                        policy: policy as i32,
                    };
                    match client.predict(request).await {
                        Ok(_) => latencies.push(start.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all.sort();
    let rate = all.len() as f64 / DURATION.as_secs_f64();
    (rate, all, errors.load(std::sync::atomic::Ordering::Relaxed))
}

/// Prints one result line; stderr on purpose: this is a measurement read by a human.
fn report(what: &str, (rate, latencies, errors): (f64, Vec<Duration>, usize)) {
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "{what}: {rate:.0} req/s, p50 {:?}, p99 {:?}, max {:?}, errors {errors}",
        p(0.50),
        p(0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

/// Measures one node alone, then the mean and stake consensus over five nodes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn throughput() {
    let registry = concord_testkit::registry().await;
    let mut nodes = Vec::new();
    for config in default_fleet() {
        let config = NodeConfig {
            registry: Some(registry.addr.to_string()),
            ..config
        };
        nodes.push(concord_testkit::node(config).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = AggregatorConfig::with_ledger(
        registry.addr.to_string(),
        dir.path().join("ledger"),
        concord_testkit::staking_auth(),
    );
    let aggregator = concord_testkit::aggregator(config).await;
    let ids: Vec<String> = default_fleet().into_iter().map(|c| c.node_id).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    concord_testkit::stake_nodes(aggregator.channel(), &ids, 1000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    report(
        "node-1 alone",
        load(nodes[0].addr, Policy::Unspecified).await,
    );
    report(
        "aggregator mean x5",
        load(aggregator.addr, Policy::Mean).await,
    );
    report(
        "aggregator stake x5",
        load(aggregator.addr, Policy::Stake).await,
    );
}
