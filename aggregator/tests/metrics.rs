//! The aggregator's metrics page, scraped from a real cluster (registry, three nodes, one
//! of them a liar, an aggregator with a ledger) after real predictions and outcomes.

use std::time::Duration;

use concord::auth::attach_bearer;
use concord::pb::predict::v1::{predictor_client::PredictorClient, PredictRequest};
use concord::pb::stake::v1::{staking_client::StakingClient, ReportOutcomeRequest};
use concord_node::{default_fleet, Behaviour, Iris};
use concord_testkit::{cluster::Consensus, metrics};
use tonic::{Code, Request};

/// How long the test waits for the fleet to register.
const WAIT: Duration = Duration::from_secs(10);
/// Scored rounds.
const ROUNDS: usize = 6;

/// After predictions and outcomes the page has consensus latency per policy, each node's
/// call latency and results, its stake and trust as the ledger has them, the liar's
/// slashes and the honest nodes' rewards, and the gRPC layer's per-method counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_after_predictions_and_outcomes() {
    let registry = concord_testkit::registry().await;
    let mut configs: Vec<_> = default_fleet().into_iter().take(3).collect();
    configs[2].behaviour = Behaviour::Inverted;
    let liar = configs[2].node_id.clone();
    let honest = configs[0].node_id.clone();
    let cluster = Consensus::start_registered(registry.addr, configs, |config| {
        config.consensus.min_answers = 2;
    })
    .await;
    let aggregator = &cluster.aggregator;
    let ids = cluster.node_ids.clone();
    let mut agg = PredictorClient::new(aggregator.channel());
    let mut staking = StakingClient::new(aggregator.channel());
    let iris = Iris::get();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let request = PredictRequest {
            features: iris.features().row(0).to_vec(),
            policy: 0,
        };
        match agg.predict(request).await {
            Ok(r) if r.get_ref().answered == 3 => break,
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
    for row in 0..ROUNDS {
        let reply = agg
            .predict(PredictRequest {
                features: iris.features().row(row * 20).to_vec(),
                policy: 0,
            })
            .await
            .expect("predict")
            .into_inner();
        let mut report = Request::new(ReportOutcomeRequest {
            request_id: reply.request_id,
            true_label: iris.labels()[row * 20] as u32,
        });
        attach_bearer(&mut report, concord_testkit::ORACLE_TOKEN);
        staking.report_outcome(report).await.expect("report");
    }

    let (addr, _stop) = metrics::serve().await;
    let page = metrics::scrape(addr).await;
    assert!(
        page.value(
            "concord_aggregator_consensus_seconds_count",
            &[("policy", "stake"), ("outcome", "ok")]
        ) >= ROUNDS as f64
    );
    for id in &ids {
        let node = [("node", id.as_str())];
        assert!(page.value("concord_aggregator_node_call_seconds_count", &node) >= ROUNDS as f64);
        assert!(
            page.value(
                "concord_aggregator_node_calls_total",
                &[("node", id.as_str()), ("result", "answered")]
            ) >= ROUNDS as f64
        );
    }
    // Stake and trust are the ledger's: the liar lost stake and trust, the honest node
    // gained; their scored answers are counted as slashes and rewards.
    let stake = |id: &str| page.value("concord_aggregator_node_stake", &[("node", id)]);
    let trust = |id: &str| page.value("concord_aggregator_node_trust", &[("node", id)]);
    assert!(
        stake(&liar) < 1000.0 && stake(&honest) > 1000.0,
        "{}",
        page.text
    );
    assert!(trust(&liar) < 0.5 && trust(&honest) > 0.5, "{}", page.text);
    let scored = |id: &str, outcome: &str| {
        page.value(
            "concord_aggregator_node_scored_total",
            &[("node", id), ("outcome", outcome)],
        )
    };
    assert_eq!(scored(&liar, "wrong"), ROUNDS as f64, "{}", page.text);
    assert_eq!(scored(&honest, "right"), ROUNDS as f64, "{}", page.text);
    assert!(page.value("concord_aggregator_tokens_slashed_total", &[]) > 0.0);
    assert!(page.value("concord_aggregator_tokens_rewarded_total", &[]) > 0.0);
    assert_eq!(
        page.value(
            "concord_grpc_server_handled_total",
            &[
                ("service", "concord.stake.v1.Staking"),
                ("method", "ReportOutcome"),
                ("code", "OK")
            ]
        ),
        ROUNDS as f64
    );
    drop(cluster);
}
