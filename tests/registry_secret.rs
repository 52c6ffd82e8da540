//! `concord registry` without `--cluster-secret` checks credentials against the secret in
//! its data directory (created on first start), never against a public default.

use std::{process::Stdio, time::Duration};

use concord::{
    identity::{ClusterSecret, Principal},
    pb::registry::v1::{registry_client::RegistryClient, RegisterRequest},
};
use concord_testkit::process;
use tonic::Code;

/// The registry creates `<data-dir>/secrets/cluster-secret`, accepts a credential issued
/// from it and refuses one from any other secret.
#[tokio::test]
async fn registry_uses_the_data_dir_secret_when_given_none() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let mut child = process::command(&[
        "registry",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
    ])
    .env_remove("CONCORD_CLUSTER_SECRET")
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn concord registry");
    let lines = process::follow_stdout(&mut child);
    let addr = process::wait_for_line(&lines, process::START_TIMEOUT, |line| {
        concord::config::parse_listening_line(line)
    });
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("concord registry did not announce its address");
    };
    let stored = std::fs::read_to_string(data.path().join("secrets/cluster-secret"))
        .expect("the registry created the cluster secret");
    let secret = ClusterSecret::new(stored.trim()).expect("secret");

    let mut client =
        RegistryClient::new(concord::grpc::lazy_channel(&addr.to_string()).expect("channel"));
    let request = |credential: &concord::identity::Credential| {
        let mut request = tonic::Request::new(RegisterRequest {
            service: "demo".into(),
            address: "127.0.0.1:9999".into(),
            metadata: Default::default(),
            ttl_ms: 5_000,
        });
        credential.attach(&mut request);
        request
    };
    let other = concord_testkit::credential(Principal::Gateway);
    let err = tokio::time::timeout(Duration::from_secs(10), client.register(request(&other)))
        .await
        .expect("answer in time")
        .expect_err("another secret's credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    tokio::time::timeout(
        Duration::from_secs(10),
        client.register(request(&secret.issue(Principal::Gateway))),
    )
    .await
    .expect("answer in time")
    .expect("the data directory's secret");
    let _ = child.kill();
    let _ = child.wait();
}
