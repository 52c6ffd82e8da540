//! `--initial-stake`: a node pays its own start-up stake once, with its credential,
//! through the aggregator it finds in the registry — also when the aggregator comes up
//! after the node, and never again after a restart.

use std::time::Duration;

use concord::identity::Principal;
use concord::pb::stake::v1::{
    staking_client::StakingClient, GetAccountRequest, ListAccountsRequest,
};
use concord_aggregator::AggregatorConfig;
use concord_node::{default_fleet, NodeConfig};
use concord_testkit::registered;
use tonic::{transport::Channel, Code};

/// How long the test waits for the stake to land.
const WAIT: Duration = Duration::from_secs(20);

/// node-1 of the default fleet, registered, staking `amount` at start-up.
fn staking_node(registry: std::net::SocketAddr, amount: u64) -> NodeConfig {
    NodeConfig {
        initial_stake: amount,
        ..registered(default_fleet().remove(0), registry)
    }
}

/// Polls until node-1's account holds `stake`.
async fn wait_for_stake(staking: &mut StakingClient<Channel>, stake: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = staking
            .get_account(GetAccountRequest {
                node_id: "node-1".into(),
            })
            .await;
        match &reply {
            Ok(r) if r.get_ref().account.as_ref().map(|a| a.stake) == Some(stake) => return,
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => panic!("GetAccount: {status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-1 never held {stake}: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node started before the aggregator stakes 1000 for itself once the aggregator is
/// registered; restarted, it pays nothing again (one STAKE event in the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_stake_is_paid_once() {
    let registry = concord_testkit::registry().await;
    let node = concord_testkit::node(staking_node(registry.addr, 1000)).await;
    // The aggregator appears only now: the node has been retrying.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = AggregatorConfig::with_ledger(
        registry.addr.to_string(),
        dir.path().join("ledger"),
        concord_testkit::staking_auth(),
    );
    config.credential = Some(concord_testkit::credential(Principal::Aggregator));
    let aggregator = concord_testkit::aggregator(config).await;
    let mut staking = StakingClient::new(aggregator.channel());
    wait_for_stake(&mut staking, 1000).await;

    node.stop().await;
    let node = concord_testkit::node(staking_node(registry.addr, 1000)).await;
    // Give the restarted node time to try (it gets ALREADY_EXISTS and stops).
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_for_stake(&mut staking, 1000).await;
    let totals = staking
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner()
        .totals
        .expect("totals");
    assert_eq!((totals.deposited, totals.events), (1000, 1), "{totals:?}");

    node.stop().await;
    aggregator.stop().await;
    registry.stop().await;
}

/// An initial stake without a credential or a registry is a configuration error at start.
#[test]
fn initial_stake_needs_credential_and_registry() {
    let mut config = staking_node("127.0.0.1:1".parse().expect("addr"), 1000);
    assert!(config.validate().is_ok());
    config.credential = Some(concord_testkit::credential(Principal::Node(
        "node-2".into(),
    )));
    assert!(config.validate().is_err(), "another node's credential");
    config.credential = None;
    assert!(config.validate().is_err(), "no credential");
    let config = NodeConfig {
        registry: None,
        ..staking_node("127.0.0.1:1".parse().expect("addr"), 1000)
    };
    assert!(config.validate().is_err(), "no registry");
}
