//! Prediction over real processes: grpcurl against a node and the aggregator, and a node
//! killed with SIGKILL in the middle of load.

use std::time::Duration;

// The cluster secret of these processes: the one `process::command` gives the registry.
use concord::identity::{ClusterSecret, Principal};
use concord::pb::predict::v1::{
    predictor_client::PredictorClient, Policy, PredictRequest, VoteStatus,
};
use concord_testkit::process;
use concord_testkit::process::{run_grpcurl, Process};
use concord_testkit::CLUSTER_SECRET;

/// A registry, `nodes` nodes that each stake 1000 for themselves with their credential
/// (the ledger grants nothing), and the aggregator.
fn start_cluster(nodes: usize) -> (Process, Vec<Process>, Process, tempfile::TempDir) {
    let secret = ClusterSecret::new(CLUSTER_SECRET).expect("secret");
    let registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    let registry_addr = registry.addr.to_string();
    let nodes: Vec<Process> = (1..=nodes)
        .map(|n| {
            let id = format!("node-{n}");
            let credential = secret.issue(Principal::Node(id.clone())).encode();
            Process::spawn(&[
                "node",
                "--listen",
                "127.0.0.1:0",
                "--id",
                &id,
                "--preset",
                &n.to_string(),
                "--registry",
                &registry_addr,
                "--credential",
                &credential,
                "--initial-stake",
                "1000",
            ])
        })
        .collect();
    let data = tempfile::tempdir().expect("tempdir");
    let ledger = data.path().join("ledger");
    let aggregator = Process::spawn(&[
        "aggregator",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        &registry_addr,
        "--min-answers",
        "2",
        "--ledger-path",
        ledger.to_str().expect("utf-8 path"),
        "--cluster-secret",
        CLUSTER_SECRET,
    ]);
    (registry, nodes, aggregator, data)
}

async fn wait_for_answers(client: &mut PredictorClient<tonic::transport::Channel>, want: u32) {
    wait_for_answers_under(client, want, request()).await;
}

/// Polls `probe` until `want` nodes answer it (under `stake`: until they have staked).
async fn wait_for_answers_under(
    client: &mut PredictorClient<tonic::transport::Channel>,
    want: u32,
    probe: PredictRequest,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = client.predict(probe.clone()).await;
        if let Ok(reply) = reply {
            if reply.get_ref().answered == want {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the aggregator never saw {want} answering nodes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request() -> PredictRequest {
    PredictRequest {
        features: vec![6.3, 3.3, 6.0, 2.5],
        policy: Policy::Mean as i32,
    }
}

/// grpcurl calls Predict on one node and on the aggregator; both answer `virginica` with
/// three probabilities, and the consensus lists every node's vote.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_predicts_on_a_node_and_on_the_aggregator() {
    let (_registry, nodes, aggregator, _data) = start_cluster(3);
    let mut client = PredictorClient::new(
        concord::grpc::lazy_channel(&aggregator.addr.to_string()).expect("channel"),
    );
    // Under stake a node answers only once its initial stake has landed.
    let staked = PredictRequest {
        policy: Policy::Stake as i32,
        ..request()
    };
    wait_for_answers_under(&mut client, 3, staked).await;

    let body = r#"{"features":[6.3,3.3,6.0,2.5]}"#;
    let node_reply = run_grpcurl(
        nodes[0].addr,
        &["-d", body],
        &["concord.predict.v1.Predictor/Predict"],
    );
    assert!(
        node_reply.contains(r#""className": "virginica""#),
        "{node_reply}"
    );
    assert!(node_reply.contains(r#""nodeId": "node-1""#), "{node_reply}");

    let consensus = run_grpcurl(
        aggregator.addr,
        &[
            "-d",
            r#"{"features":[6.3,3.3,6.0,2.5],"policy":"POLICY_STAKE"}"#,
        ],
        &["concord.predict.v1.Predictor/Predict"],
    );
    assert!(
        consensus.contains(r#""className": "virginica""#),
        "{consensus}"
    );
    assert!(consensus.contains(r#""requestId""#), "{consensus}");
    assert_eq!(
        consensus.matches("VOTE_STATUS_ANSWERED").count(),
        3,
        "{consensus}"
    );

    let bad = std::process::Command::new(process::grpcurl())
        .args(["-plaintext", "-d", r#"{"features":[1,2,3]}"#])
        .arg(aggregator.addr.to_string())
        .arg("concord.predict.v1.Predictor/Predict")
        .output()
        .expect("grpcurl");
    let stderr =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
}

/// A node killed with SIGKILL during concurrent load fails no request: its calls time out
/// at the deadline and the consensus goes on with the others; once its lease expires it is
/// no longer asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_load_fails_no_request() {
    let (_registry, mut nodes, aggregator, _data) = start_cluster(4);
    let channel = concord::grpc::lazy_channel(&aggregator.addr.to_string()).expect("channel");
    let mut client = PredictorClient::new(channel.clone());
    wait_for_answers(&mut client, 4).await;

    let load_until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut client = PredictorClient::new(channel.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while tokio::time::Instant::now() < load_until {
                match client.predict(request()).await {
                    Ok(_) => ok += 1,
                    Err(status) => failed.push(status),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    nodes[3].kill9();

    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.expect("worker");
        assert!(failed.is_empty(), "requests failed: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests in 5 s");

    let after = client
        .predict(request())
        .await
        .expect("predict")
        .into_inner();
    assert_eq!(after.answered, 3);
    assert!(
        after
            .votes
            .iter()
            .all(|v| v.status == VoteStatus::Answered as i32),
        "the dead node's lease expired, so it is no longer asked: {:?}",
        after.votes
    );
}
