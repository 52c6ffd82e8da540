//! A primary that steps down keeps its two streams apart: shop `a` is frozen (SIGSTOP)
//! past its lease, shop `b` claims the next term, and when `a` wakes up it steps down and
//! follows `b` — while `c`, a replica of `a` that knows no registry, still streams from
//! `a`. When that old stream ends, `a`'s stream to `b` must still count as connected
//! (issue 15: one flag for both sides made the dying stream clear the live one).
//!
//! Real processes: a registry and three shops, each with a shop credential.

use std::time::Duration;

use concord::pb::shop::v1::{self as pb, replication_client::ReplicationClient};
use concord_testkit::eventually;
use concord_testkit::process::Process;

/// Longest wait for start-up, pairing, promotion and step-down.
const WAIT: Duration = Duration::from_secs(30);

async fn spawn(args: Vec<String>) -> Process {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let credential = concord_testkit::credential(concord::identity::Principal::Shop).encode();
        Process::spawn_with_env(
            &args,
            &[
                ("CONCORD_CREDENTIAL", credential.as_str()),
                ("CONCORD_CLUSTER_SECRET", concord_testkit::CLUSTER_SECRET),
                ("CONCORD_ADMIN_TOKEN", "step-down-test-admin"),
            ],
        )
    })
    .await
    .expect("spawn task")
}

async fn status(addr: &str) -> Option<pb::GetReplicationStatusResponse> {
    ReplicationClient::new(concord::grpc::lazy_channel(addr).expect("channel"))
        .get_replication_status(pb::GetReplicationStatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

fn signal(process: &Process, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(process.pid()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal");
}

/// `a` steps down to follow `b` while its own replica `c` streams from it; `c` going away
/// leaves `a` connected to `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_stream_ending_leaves_the_new_one_connected() {
    let registry = spawn(
        ["registry", "--listen", "127.0.0.1:0"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let registry_addr = registry.addr.to_string();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let shop = |dir: &tempfile::TempDir, extra: &[&str]| {
        let mut args: Vec<String> = [
            "shop",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().expect("utf-8 path"),
            "--lease-ttl",
            "1s",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let a = spawn(shop(
        &dirs[0],
        &["--registry", &registry_addr, "--replication", "async"],
    ))
    .await;
    let a_addr = a.addr.to_string();
    // c follows a and knows no registry: it stays on a after a steps down.
    let c = spawn(shop(
        &dirs[2],
        &["--replica-of", &a_addr, "--replica-id", "c"],
    ))
    .await;
    assert!(
        eventually(WAIT, || async {
            status(&a_addr).await.is_some_and(|s| s.peer_connected)
        })
        .await,
        "c did not connect to a"
    );
    // b is registered and follows nobody reachable, so it claims the primary role as soon
    // as the registry has no live primary.
    let b = spawn(shop(
        &dirs[1],
        &[
            "--registry",
            &registry_addr,
            "--replica-of",
            "127.0.0.1:9",
            "--replica-id",
            "b",
            "--replication",
            "async",
        ],
    ))
    .await;
    let b_addr = b.addr.to_string();

    signal(&a, nix::sys::signal::Signal::SIGSTOP);
    let promoted = eventually(WAIT, || async {
        status(&b_addr)
            .await
            .is_some_and(|s| s.role == pb::Role::Primary as i32 && s.term >= 2)
    })
    .await;
    signal(&a, nix::sys::signal::Signal::SIGCONT);
    assert!(
        promoted,
        "b did not claim the primary role while a was frozen"
    );
    assert!(
        eventually(WAIT, || async {
            status(&a_addr).await.is_some_and(|s| {
                s.role == pb::Role::Replica as i32
                    && s.primary_address == b_addr
                    && s.peer_connected
            })
        })
        .await,
        "a did not step down and connect to b: {:?}",
        status(&a_addr).await
    );

    drop(c); // SIGKILL: ends a's old stream to c
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = status(&a_addr).await.expect("a's status");
    assert!(
        s.peer_connected && s.primary_address == b_addr,
        "a's dying stream to c cleared the state of its stream to b: {s:?}"
    );
    drop(registry);
}
