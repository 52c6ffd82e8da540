//! `concord::discovery::LeaseKeeper` against a real `concord registry` process that stops
//! answering for a while (SIGSTOP, then SIGCONT): metadata whose KeepAlive got no answer
//! is sent again once the registry answers. A shop's primary claim travels this way, and
//! a claim that is silently dropped leaves a primary refusing every write for good.

use std::collections::HashMap;
use std::time::Duration;

use concord::discovery::{LeaseKeeper, Registration, CALL_TIMEOUT};
use concord::pb::registry::v1::{registry_client::RegistryClient, ResolveRequest};
use concord_testkit::process::Process;

/// How long the registry may take to show the metadata once it answers again.
const WAIT: Duration = Duration::from_secs(10);

fn labels(value: &str) -> HashMap<String, String> {
    HashMap::from([("claim".to_owned(), value.to_owned())])
}

fn signal(process: &Process, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}

/// The `claim` label the registry publishes for the probe instance, if it lists one.
async fn published_claim(registry: &str) -> Option<String> {
    let channel = concord::grpc::lazy_channel(registry).ok()?;
    let reply = tokio::time::timeout(
        Duration::from_secs(1),
        RegistryClient::new(channel).resolve(ResolveRequest {
            service: "probe".into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    reply
        .into_inner()
        .instances
        .into_iter()
        .next()
        .and_then(|i| i.metadata.get("claim").cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_sent_to_a_frozen_registry_reaches_it_once_it_answers() {
    concord::telemetry::init_for_tests();
    let registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    let addr = registry.addr.to_string();
    let mut keeper = LeaseKeeper::spawn(
        &addr,
        Registration {
            service: "probe".into(),
            address: "127.0.0.1:1".into(),
            metadata: labels("first"),
            // Long enough that the lease outlives the freeze: no re-registration, which
            // would carry the current metadata anyway.
            ttl: Duration::from_secs(30),
            credential: Some(concord_testkit::credential(
                concord::identity::Principal::Gateway,
            )),
        },
    )
    .expect("keeper");
    assert!(keeper.wait_registered(WAIT).await, "never registered");
    assert_eq!(published_claim(&addr).await.as_deref(), Some("first"));

    signal(&registry, "-STOP");
    keeper.set_metadata(labels("second"));
    // The KeepAlive carrying "second" times out while the registry is frozen.
    tokio::time::sleep(CALL_TIMEOUT + Duration::from_millis(700)).await;
    signal(&registry, "-CONT");

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = None;
    while tokio::time::Instant::now() < deadline {
        seen = published_claim(&addr).await;
        if seen.as_deref() == Some("second") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("second"),
        "the metadata sent while the registry was frozen never reached it"
    );
    let mut accepted = keeper.accepted_metadata();
    let confirmed = tokio::time::timeout(WAIT, accepted.wait_for(|m| *m == labels("second")))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(confirmed, "the keeper never saw its metadata accepted");
    keeper.deregister().await;
}
