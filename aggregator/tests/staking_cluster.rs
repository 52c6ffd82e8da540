//! Predict → ReportOutcome end to end over loopback: a registry, five real nodes (three
//! of them `inverted`), and the aggregator serving both Predictor and Staking with a sled
//! ledger in a tempdir. The liars lose their stake, get ejected, and the consensus is
//! right again — all through the public gRPC surface.

use std::time::Duration;

use concord::auth::attach_bearer;
use concord::pb::predict::v1::{
    predictor_client::PredictorClient, Policy as PbPolicy, PredictRequest, PredictResponse,
    VoteStatus,
};
use concord::pb::stake::v1::{
    staking_client::StakingClient, GetAccountRequest, ReportOutcomeRequest, VerifyLedgerRequest,
};
use concord_node::{default_fleet, Behaviour, Iris};
use concord_testkit::cluster::Consensus;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tonic::{transport::Channel, Code, Request};

/// How long the test waits for the fleet to register.
const WAIT: Duration = Duration::from_secs(10);
/// Rounds played; a liar is ejected after 22 wrong answers with the default knobs.
const ROUNDS: usize = 40;

fn oracle<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    attach_bearer(&mut req, concord_testkit::ORACLE_TOKEN);
    req
}

async fn predict(agg: &mut PredictorClient<Channel>, features: &[f64]) -> PredictResponse {
    agg.predict(PredictRequest {
        features: features.to_vec(),
        policy: PbPolicy::Stake as i32,
    })
    .await
    .expect("predict")
    .into_inner()
}

/// Three colluding liars out of five: scored through ReportOutcome they are slashed and
/// ejected (shown as EJECTED votes, not asked), the honest pair carries the consensus,
/// and the ledger still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liars_are_slashed_and_ejected_end_to_end() {
    let registry = concord_testkit::registry().await;
    let mut configs = default_fleet();
    for c in &mut configs[2..] {
        c.behaviour = Behaviour::Inverted;
    }
    let liars: Vec<String> = configs[2..].iter().map(|c| c.node_id.clone()).collect();
    // Every node stakes 1000 for itself, as `concord node --initial-stake 1000` does.
    let cluster = Consensus::start_registered(registry.addr, configs, |config| {
        // Once the three liars are ejected only two nodes are asked; the quorum must allow it.
        config.consensus.min_answers = 2;
    })
    .await;
    let aggregator = &cluster.aggregator;
    let channel = aggregator.channel();
    let mut agg = PredictorClient::new(channel.clone());
    let mut staking = StakingClient::new(channel);

    let iris = Iris::get();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match agg
            .predict(PredictRequest {
                features: iris.features().row(0).to_vec(),
                policy: 0,
            })
            .await
        {
            Ok(r) if r.get_ref().answered == 5 => break,
            Ok(_) => {}
            Err(s) if s.code() == Code::Unavailable => {}
            Err(s) => panic!("unexpected {s:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fleet never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut rng = StdRng::seed_from_u64(5);
    let mut tail_right = 0;
    let mut last = None;
    for round in 0..ROUNDS {
        let row = rng.gen_range(0..iris.len());
        let truth = iris.labels()[row] as u32;
        let reply = predict(&mut agg, &iris.features().row(row).to_vec()).await;
        let weights: f64 = reply.votes.iter().map(|v| v.weight).sum();
        assert!((weights - 1.0).abs() < 1e-6, "round {round}: {reply:?}");
        if round >= ROUNDS - 10 && reply.label == truth {
            tail_right += 1;
        }
        let report = staking
            .report_outcome(oracle(ReportOutcomeRequest {
                request_id: reply.request_id.clone(),
                true_label: truth,
            }))
            .await
            .expect("report")
            .into_inner();
        assert!(!report.already_reported);
        assert_eq!(report.consensus_correct, reply.label == truth);
        last = Some(reply);
    }
    assert!(
        tail_right >= 9,
        "only {tail_right}/10 right after the liars were ejected"
    );

    let last = last.expect("played");
    for liar in &liars {
        let account = staking
            .get_account(GetAccountRequest {
                node_id: liar.clone(),
            })
            .await
            .expect("account")
            .into_inner()
            .account
            .expect("account");
        assert!(account.ejected && account.stake < 200, "{account:?}");
        let vote = last
            .votes
            .iter()
            .find(|v| &v.node_id == liar)
            .expect("vote");
        assert_eq!(vote.status(), VoteStatus::Ejected, "{vote:?}");
        assert_eq!(vote.weight, 0.0);
    }
    let verify = staking
        .verify_ledger(VerifyLedgerRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok, "{}", verify.problem);

    drop((agg, staking));
    cluster.stop().await;
    registry.stop().await;
}
