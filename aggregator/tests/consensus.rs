//! The consensus over loopback: a real registry, real nodes and the aggregator, each on
//! 127.0.0.1:0. Nodes run in their own tokio runtime on their own thread, so a test can
//! "kill -9" one by dropping that runtime: sockets close, nothing deregisters, the lease
//! has to expire, exactly as with a SIGKILLed process.

use std::net::SocketAddr;
use std::time::Duration;

use concord::pb::predict::v1::{
    predictor_client::PredictorClient, GetModelInfoRequest, NodeVote, Policy as PbPolicy,
    PredictBatchRequest, PredictRequest, PredictResponse, Row, VoteStatus,
};
use concord_aggregator::ledger::Ledger;
use concord_aggregator::policy::ScoringParams;
use concord_aggregator::{AggregatorConfig, ConsensusConfig};
use concord_node::{default_fleet, Behaviour, Iris, KnnModel, NodeConfig};
use concord_testkit::{channel, registered, NodeProcess};
use tokio::task::JoinHandle;
use tonic::{transport::Channel, Code};

/// How long a test waits for the cluster to reach an expected state.
const WAIT: Duration = Duration::from_secs(10);

fn client(addr: SocketAddr) -> PredictorClient<Channel> {
    PredictorClient::new(channel(addr))
}

fn mean_config(registry: SocketAddr, deadline: Duration, min_answers: usize) -> AggregatorConfig {
    let mut config = AggregatorConfig::mean_only(registry.to_string());
    config.consensus = ConsensusConfig {
        deadline,
        min_answers,
        ..config.consensus
    };
    config
}

fn request(features: &[f64]) -> PredictRequest {
    PredictRequest {
        features: features.to_vec(),
        policy: 0,
    }
}

const VERSICOLOR: [f64; 4] = [6.0, 2.9, 4.5, 1.5];

/// Sends requests until `done` holds for a reply, or fails after [`WAIT`]. Every reply
/// must be a success (the point of several tests: no failed requests meanwhile).
async fn until(
    agg: &mut PredictorClient<Channel>,
    done: impl Fn(&PredictResponse) -> bool,
) -> PredictResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = agg
            .predict(request(&VERSICOLOR))
            .await
            .expect("consensus request failed")
            .into_inner();
        if done(&reply) {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster never reached the expected state; last reply {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `nodes` answered, tolerating UNAVAILABLE while nodes are still registering.
async fn until_ready(agg: &mut PredictorClient<Channel>, nodes: u32) -> PredictResponse {
    until_ready_with(agg, |r| r.answered == nodes).await
}

/// Polls until `done` holds, tolerating UNAVAILABLE while nodes are still registering.
async fn until_ready_with(
    agg: &mut PredictorClient<Channel>,
    done: impl Fn(&PredictResponse) -> bool,
) -> PredictResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match agg.predict(request(&VERSICOLOR)).await {
            Ok(reply) if done(reply.get_ref()) => return reply.into_inner(),
            Ok(_) => {}
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => panic!("unexpected {status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fleet never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn vote<'a>(reply: &'a PredictResponse, node_id: &str) -> Option<&'a NodeVote> {
    reply.votes.iter().find(|v| v.node_id == node_id)
}

/// The mean consensus of the five default nodes is at least as accurate on the shared
/// hold-out set as the median node, and GetModelInfo reports the same figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consensus_at_least_as_accurate_as_median_node() {
    let registry = concord_testkit::registry().await;
    let nodes: Vec<NodeProcess> = default_fleet()
        .into_iter()
        .map(|c| NodeProcess::start(registered(c, registry.addr)))
        .collect();
    let aggregator =
        concord_testkit::aggregator(mean_config(registry.addr, Duration::from_millis(250), 5))
            .await;
    let mut agg = client(aggregator.addr);
    until_ready(&mut agg, 5).await;

    let iris = Iris::get();
    let holdout = iris.split(0).holdout;
    let rows: Vec<Row> = holdout
        .iter()
        .map(|&r| Row {
            features: iris.features().row(r).to_vec(),
        })
        .collect();
    let batch = agg
        .predict_batch(PredictBatchRequest {
            rows,
            policy: PbPolicy::Mean as i32,
        })
        .await
        .expect("batch")
        .into_inner();
    let correct = batch
        .predictions
        .iter()
        .zip(&holdout)
        .filter(|(p, &r)| p.label as usize == iris.labels()[r])
        .count();
    let consensus = correct as f64 / holdout.len() as f64;
    let mut node_accuracies: Vec<f64> = default_fleet()
        .into_iter()
        .map(|c| KnnModel::train(c.model).expect("train").holdout_accuracy())
        .collect();
    node_accuracies.sort_by(f64::total_cmp);
    let median = node_accuracies[node_accuracies.len() / 2];
    assert!(
        consensus >= median,
        "consensus {consensus} < median node {median} ({node_accuracies:?})"
    );
    assert!(batch
        .predictions
        .iter()
        .all(|p| p.answered == 5 && !p.request_id.is_empty()));

    let info = agg
        .get_model_info(GetModelInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, "aggregator");
    assert_eq!(info.holdout_size as usize, holdout.len());
    assert!((info.holdout_accuracy - consensus).abs() < 1e-12);

    aggregator.stop().await;
    drop(nodes);
    registry.stop().await;
}

/// A slow node is cut by the deadline: the request still succeeds in about the deadline,
/// with the slow node listed as TIMED_OUT and the others' probabilities averaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_node_cut_by_deadline() {
    let registry = concord_testkit::registry().await;
    let mut configs = default_fleet();
    configs[4].behaviour = Behaviour::Slow(Duration::from_secs(3));
    let _nodes: Vec<NodeProcess> = configs
        .into_iter()
        .map(|c| NodeProcess::start(registered(c, registry.addr)))
        .collect();
    let deadline = Duration::from_millis(200);
    let aggregator = concord_testkit::aggregator(mean_config(registry.addr, deadline, 3)).await;
    let mut agg = client(aggregator.addr);
    let reply = until_ready_with(&mut agg, |r| r.asked == 5).await;

    let start = tokio::time::Instant::now();
    let reply2 = agg
        .predict(request(&VERSICOLOR))
        .await
        .expect("predict")
        .into_inner();
    let elapsed = start.elapsed();
    assert!(
        elapsed < deadline + Duration::from_millis(300),
        "took {elapsed:?}"
    );
    for reply in [reply, reply2] {
        assert_eq!((reply.answered, reply.asked), (4, 5));
        let slow = vote(&reply, "node-5").expect("slow node listed");
        assert_eq!(slow.status, VoteStatus::TimedOut as i32);
        assert_eq!(slow.weight, 0.0);
        let weights: f64 = reply.votes.iter().map(|v| v.weight).sum();
        assert!((weights - 1.0).abs() < 1e-9);
        assert_eq!(reply.label, 1, "versicolor");
    }
    aggregator.stop().await;
    registry.stop().await;
}

/// A node killed without warning in the middle of concurrent load never fails a request:
/// it is reported FAILED or TIMED_OUT until its lease expires, then it leaves the
/// consensus; when it comes back (new process, new port) it re-registers and votes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_node_dropped_then_rejoins() {
    let registry = concord_testkit::registry().await;
    let configs: Vec<NodeConfig> = default_fleet()
        .into_iter()
        .map(|c| registered(c, registry.addr))
        .collect();
    let mut nodes: Vec<NodeProcess> = configs.iter().cloned().map(NodeProcess::start).collect();
    let aggregator =
        concord_testkit::aggregator(mean_config(registry.addr, Duration::from_millis(250), 3))
            .await;
    let mut agg = client(aggregator.addr);
    until_ready(&mut agg, 5).await;

    // Background load: 8 clients in a loop until told to stop; every failure is kept.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load: Vec<JoinHandle<(usize, Vec<tonic::Status>)>> = (0..8)
        .map(|_| {
            let mut agg = agg.clone();
            let stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0, Vec::new());
                while !*stop_rx.borrow() {
                    match agg.predict(request(&VERSICOLOR)).await {
                        Ok(_) => ok += 1,
                        Err(status) => failures.push(status),
                    }
                }
                (ok, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let victim = nodes.remove(2);
    let victim_id = victim.node_id.clone();
    let old_addr = victim.addr.to_string();
    victim.kill();
    // Every request meanwhile succeeds; the dead node is first reported failed, then gone.
    let reply = until(&mut agg, |r| vote(r, &victim_id).is_none()).await;
    assert_eq!((reply.answered, reply.asked), (4, 4));

    let reborn = NodeProcess::start(configs[2].clone());
    let reply = until(&mut agg, |r| {
        vote(r, &victim_id).is_some_and(|v| v.status == VoteStatus::Answered as i32)
    })
    .await;
    assert_eq!((reply.answered, reply.asked), (5, 5));
    let v = vote(&reply, &victim_id).expect("rejoined");
    assert_eq!(v.address, reborn.addr.to_string());
    assert_ne!(v.address, old_addr);

    let _ = stop_tx.send(true);
    let mut total = 0;
    for worker in load {
        let (ok, failures) = worker.await.expect("load worker");
        assert!(
            failures.is_empty(),
            "failed requests under load: {failures:?}"
        );
        total += ok;
    }
    assert!(total > 0);

    aggregator.stop().await;
    drop(nodes);
    drop(reborn);
    registry.stop().await;
}

/// Fewer answers than the minimum is UNAVAILABLE, and the message says how many
/// answered: timeouts and a small fleet never shrink the quorum (only ejections do).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_answers_is_unavailable() {
    let registry = concord_testkit::registry().await;
    let mut configs: Vec<NodeConfig> = default_fleet().into_iter().take(3).collect();
    configs[2].behaviour = Behaviour::Slow(Duration::from_secs(3));
    let _nodes: Vec<NodeProcess> = configs
        .into_iter()
        .map(|c| NodeProcess::start(registered(c, registry.addr)))
        .collect();
    let aggregator =
        concord_testkit::aggregator(mean_config(registry.addr, Duration::from_millis(200), 3))
            .await;
    let mut agg = client(aggregator.addr);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = agg
            .predict(request(&VERSICOLOR))
            .await
            .expect_err("one of three nodes is too slow");
        assert_eq!(status.code(), Code::Unavailable);
        if status.message().contains("only 2 of 3 nodes answered") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    aggregator.stop().await;
    registry.stop().await;
}

/// Bad input is INVALID_ARGUMENT with a reason, for Predict and PredictBatch, and an
/// unconfigured policy is FAILED_PRECONDITION (table-driven).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input() {
    let registry = concord_testkit::registry().await;
    let aggregator =
        concord_testkit::aggregator(mean_config(registry.addr, Duration::from_millis(250), 1))
            .await;
    let mut agg = client(aggregator.addr);
    let cases: Vec<(PredictRequest, Code)> = vec![
        (request(&[]), Code::InvalidArgument),
        (request(&[1.0, 2.0, 3.0]), Code::InvalidArgument),
        (request(&[1.0; 5]), Code::InvalidArgument),
        (request(&[1.0, f64::NAN, 1.0, 1.0]), Code::InvalidArgument),
        (
            request(&[1.0, 1.0, f64::INFINITY, 1.0]),
            Code::InvalidArgument,
        ),
        // Finite but far outside any flower: distances would overflow.
        (request(&[1e308; 4]), Code::InvalidArgument),
        (request(&[1.0, -1e7, 1.0, 1.0]), Code::InvalidArgument),
        (
            PredictRequest {
                features: vec![1.0; 4],
                policy: 99,
            },
            Code::InvalidArgument,
        ),
        (
            PredictRequest {
                features: vec![1.0; 4],
                policy: PbPolicy::Stake as i32,
            },
            Code::FailedPrecondition,
        ),
    ];
    for (req, code) in cases {
        let status = agg.predict(req.clone()).await.expect_err("rejected");
        assert_eq!(status.code(), code, "{req:?}: {status:?}");
        assert!(!status.message().is_empty());
    }
    let row = |n: usize| Row {
        features: vec![1.0; n],
    };
    let huge = Row {
        features: vec![1.0, 1.0, 1.0, 2e6],
    };
    for rows in [
        vec![],
        vec![row(4); 1025],
        vec![row(4), row(3)],
        vec![row(4), huge],
    ] {
        let status = agg
            .predict_batch(PredictBatchRequest { rows, policy: 0 })
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    aggregator.stop().await;
    registry.stop().await;
}

/// With a ledger, the default policy is stake: votes carry each node's trust (0.5) and
/// the stake it deposited for itself, and the weights still sum to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stake_policy_with_ledger() {
    let registry = concord_testkit::registry().await;
    let configs: Vec<NodeConfig> = default_fleet().into_iter().take(3).collect();
    let ids: Vec<String> = configs.iter().map(|c| c.node_id.clone()).collect();
    let _nodes: Vec<NodeProcess> = configs
        .into_iter()
        .map(|c| NodeProcess::start(registered(c, registry.addr)))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let aggregator = concord_testkit::aggregator(AggregatorConfig::with_ledger(
        registry.addr.to_string(),
        dir.path().join("ledger"),
        concord_testkit::staking_auth(),
    ))
    .await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    concord_testkit::stake_nodes(aggregator.channel(), &ids, 1000).await;
    let mut agg = client(aggregator.addr);
    let reply = until_ready(&mut agg, 3).await;
    assert_eq!(reply.policy, PbPolicy::Stake as i32);
    for v in &reply.votes {
        assert_eq!((v.trust, v.stake), (0.5, 1000), "{v:?}");
        assert!((v.weight - 1.0 / 3.0).abs() < 1e-9);
    }
    aggregator.stop().await;
    registry.stop().await;
}

/// Every policy reports each vote's real trust and stake from the ledger at combination
/// time (only the weighting differs): `mean` used to report trust 0.5 and stake 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_policy_reports_ledger_standing() {
    let registry = concord_testkit::registry().await;
    let configs: Vec<NodeConfig> = default_fleet().into_iter().take(3).collect();
    let ids: Vec<String> = configs.iter().map(|c| c.node_id.clone()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    // Give every node a standing other than the defaults before the aggregator opens the
    // ledger: one right answer (trust 0.55, +10) and a deposit of 35 (stake 1045).
    {
        let ledger = Ledger::open(&path, ScoringParams::default()).expect("ledger");
        for id in &ids {
            ledger.stake(id, 1000).expect("stake");
        }
        let outcomes: Vec<(String, bool)> = ids.iter().map(|id| (id.clone(), true)).collect();
        ledger.score("warm-up", &outcomes).expect("score");
        for id in &ids {
            ledger.stake(id, 35).expect("stake");
        }
    }
    let _nodes: Vec<NodeProcess> = configs
        .into_iter()
        .map(|c| NodeProcess::start(registered(c, registry.addr)))
        .collect();
    let aggregator = concord_testkit::aggregator(AggregatorConfig::with_ledger(
        registry.addr.to_string(),
        path,
        concord_testkit::staking_auth(),
    ))
    .await;
    let mut agg = client(aggregator.addr);
    until_ready(&mut agg, 3).await;
    for policy in [PbPolicy::Mean, PbPolicy::Trust, PbPolicy::Stake] {
        let reply = agg
            .predict(PredictRequest {
                features: VERSICOLOR.to_vec(),
                policy: policy as i32,
            })
            .await
            .expect("predict")
            .into_inner();
        assert_eq!(reply.policy, policy as i32);
        assert_eq!(reply.votes.len(), 3, "{policy:?}: {reply:?}");
        for v in &reply.votes {
            assert!((v.trust - 0.55).abs() < 1e-9, "{policy:?}: {v:?}");
            assert_eq!(v.stake, 1045, "{policy:?}: {v:?}");
            assert!((v.weight - 1.0 / 3.0).abs() < 1e-9, "{policy:?}: {v:?}");
        }
    }
    aggregator.stop().await;
    registry.stop().await;
}

/// Three colluding inverted nodes outvote two honest ones under `mean`: the plain
/// average is no defence, which is what trust and stake are for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inverted_majority_wins_mean() {
    let registry = concord_testkit::registry().await;
    let mut configs = default_fleet();
    for c in &mut configs[..3] {
        c.behaviour = Behaviour::Inverted;
    }
    let _nodes: Vec<NodeProcess> = configs
        .into_iter()
        .map(|c| NodeProcess::start(registered(c, registry.addr)))
        .collect();
    let aggregator =
        concord_testkit::aggregator(mean_config(registry.addr, Duration::from_millis(250), 5))
            .await;
    let mut agg = client(aggregator.addr);
    let reply = until_ready(&mut agg, 5).await;
    assert_eq!(reply.label, 2, "versicolor inverted to virginica");
    aggregator.stop().await;
    registry.stop().await;
}
