//! Attack (sybils), end to end over loopback: a registry, five honest nodes that staked
//! for themselves, and 100 colluding liars registered under new node ids with valid
//! credentials that nobody staked for. Nothing is minted on first sight, so under `trust`
//! and `stake` the sybils have no stake and no weight and the consensus does not move;
//! under `mean` (the unweighted baseline, no sybil resistance by definition) they win.
//! Once the operator stakes for one of them with its credential, it counts.

use std::time::Duration;

use concord::auth::attach_bearer;
use concord::pb::predict::v1::{
    predictor_client::PredictorClient, Policy as PbPolicy, PredictRequest, PredictResponse,
    VoteStatus,
};
use concord::pb::stake::v1::{
    staking_client::StakingClient, ListAccountsRequest, ReportOutcomeRequest, VerifyLedgerRequest,
};
use concord_node::{default_fleet, Behaviour, NodeConfig};
use concord_testkit::{cluster::Consensus, registered};
use tonic::{transport::Channel, Request};

/// How long the test waits for the fleet to register.
const WAIT: Duration = Duration::from_secs(30);
/// Sybil node ids registered.
const SYBILS: usize = 100;
/// Lease of every node here: long, so 105 keep-alives on a busy CPU never let one lapse.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// A versicolor flower (label 1): the honest nodes agree on it.
const VERSICOLOR: [f64; 4] = [6.0, 2.9, 4.5, 1.5];

async fn predict(agg: &mut PredictorClient<Channel>, policy: PbPolicy) -> PredictResponse {
    agg.predict(PredictRequest {
        features: VERSICOLOR.to_vec(),
        policy: policy as i32,
    })
    .await
    .expect("predict")
    .into_inner()
}

/// `config` registered at `registry` with its node's credential and [`LEASE_TTL`].
fn long_lease(config: NodeConfig, registry: std::net::SocketAddr) -> NodeConfig {
    NodeConfig {
        lease_ttl: LEASE_TTL,
        ..registered(config, registry)
    }
}

/// Polls `policy` until `done` holds.
async fn until(
    agg: &mut PredictorClient<Channel>,
    policy: PbPolicy,
    done: impl Fn(&PredictResponse) -> bool,
) -> PredictResponse {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = agg
            .predict(PredictRequest {
                features: VERSICOLOR.to_vec(),
                policy: policy as i32,
            })
            .await;
        if let Ok(reply) = &reply {
            if done(reply.get_ref()) {
                return reply.get_ref().clone();
            }
        }
        let seen = reply.map(|r| (r.get_ref().answered, r.get_ref().votes.len()));
        assert!(
            tokio::time::Instant::now() < deadline,
            "{policy:?}: the cluster never reached the expected state; (answered, known): {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Attack: 100 registered sybils get no stake and no weight under trust and stake, the
/// consensus is unchanged, scoring opens no account for them; an operator-credentialed
/// Stake(1000) for one of them gives it weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sybils_get_no_stake_and_no_weight() {
    let registry = concord_testkit::registry().await;
    let honest: Vec<NodeConfig> = default_fleet();
    let honest = honest
        .into_iter()
        .map(|c| long_lease(c, registry.addr))
        .collect();
    let cluster = Consensus::start(registry.addr, honest, |config| {
        // 105 nodes on a shared CPU: a generous deadline, so nobody is late by accident.
        config.consensus.deadline = Duration::from_secs(3);
    })
    .await;
    let aggregator = &cluster.aggregator;
    let mut agg = PredictorClient::new(aggregator.channel());
    let mut staking = StakingClient::new(aggregator.channel());

    let mut before = Vec::new();
    for policy in [PbPolicy::Trust, PbPolicy::Stake] {
        before.push(until(&mut agg, policy, |r| r.answered == 5).await);
    }
    let honest_label = before[1].label;

    // The attack: 100 new node ids, each registered with its own valid credential,
    // answering with colluding lies. Nobody staked for them.
    let mut sybils = Vec::new();
    for i in 0..SYBILS {
        let mut c = default_fleet()[i % 5].clone();
        c.node_id = format!("sybil-{i:03}");
        c.behaviour = Behaviour::Inverted;
        sybils.push(concord_testkit::node(long_lease(c, registry.addr)).await);
    }
    // Every sybil known, and (nearly) all of them answering in time.
    let mean = until(&mut agg, PbPolicy::Mean, |r| {
        r.votes.len() == 5 + SYBILS && r.answered as usize >= 5 + SYBILS * 9 / 10
    })
    .await;
    assert_ne!(
        mean.label, honest_label,
        "mean counts every node: 100 sybils outvote 5 (documented, no sybil resistance)"
    );

    for (policy, before) in [PbPolicy::Trust, PbPolicy::Stake].into_iter().zip(&before) {
        let reply = predict(&mut agg, policy).await;
        assert_eq!(reply.votes.len(), 5 + SYBILS, "{policy:?}");
        assert_eq!(reply.answered, 5, "{policy:?}: only staked nodes are asked");
        assert_eq!(reply.label, before.label, "{policy:?}: consensus moved");
        for (p, q) in reply.probabilities.iter().zip(&before.probabilities) {
            assert!((p - q).abs() < 1e-9, "{policy:?}: {reply:?} vs {before:?}");
        }
        let sybil_weight: f64 = reply
            .votes
            .iter()
            .filter(|v| v.node_id.starts_with("sybil-"))
            .inspect(|v| {
                assert_eq!(v.status(), VoteStatus::Ejected, "{policy:?}: {v:?}");
                assert_eq!(v.stake, 0, "{policy:?}: {v:?}");
                assert!(v.error.starts_with("not staked"), "{policy:?}: {v:?}");
            })
            .map(|v| v.weight)
            .sum();
        assert_eq!(sybil_weight, 0.0, "{policy:?}");
    }

    // Scoring the mean request (where the sybils answered) opens no account for them.
    let mut report = Request::new(ReportOutcomeRequest {
        request_id: mean.request_id.clone(),
        true_label: honest_label,
    });
    attach_bearer(&mut report, concord_testkit::ORACLE_TOKEN);
    let scored = staking
        .report_outcome(report)
        .await
        .expect("report")
        .into_inner();
    assert_eq!(scored.scores.len(), 5, "only staked nodes are scored");
    let list = staking
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.accounts.len(), 5, "no account for any sybil");
    let totals = list.totals.expect("totals");
    assert!(
        totals.deposited == 5000 && totals.minted <= 50,
        "only the honest nodes' deposits and rewards: {totals:?}"
    );
    let verify = staking
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok, "{}", verify.problem);

    // The operator stakes for one new node with its credential: now it counts.
    concord_testkit::stake_nodes(aggregator.channel(), &["sybil-000"], 1000).await;
    let reply = predict(&mut agg, PbPolicy::Stake).await;
    let vote = reply
        .votes
        .iter()
        .find(|v| v.node_id == "sybil-000")
        .expect("vote");
    assert_eq!(vote.status(), VoteStatus::Answered, "{vote:?}");
    assert!(vote.weight > 0.0 && vote.stake == 1000, "{vote:?}");
    assert_eq!(reply.answered, 6);

    drop((agg, staking));
    cluster.stop().await;
    for n in sybils {
        n.stop().await;
    }
    registry.stop().await;
}
