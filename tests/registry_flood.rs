//! A registration flood cannot blind failover: anonymous registrations are refused,
//! credentialed ones hit the registry's caps, List and Watch still fit in one message, and
//! when the primary then freezes (SIGSTOP) the replica promotes within 3 s.
//!
//! Real processes: a registry and two shops (sync), each with its own credential.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use concord::{
    identity::{ClusterSecret, Principal},
    pb::{
        registry::v1::{
            registry_client::RegistryClient, ListRequest, RegisterRequest, WatchRequest,
        },
        shop::v1::{self as pb, replication_client::ReplicationClient},
    },
};
use concord_testkit::eventually;
use concord_testkit::process::Process;
use tonic::{transport::Channel, Code};

/// Registrations the flood tries (half anonymous, half with valid credentials of new ids).
const FLOOD: usize = 600;
/// Promised time from the primary's freeze to the replica's promotion.
const PROMOTION_LIMIT: Duration = Duration::from_secs(3);
/// Longest wait for start-up and pairing.
const WAIT: Duration = Duration::from_secs(20);

fn channel(addr: &str) -> Channel {
    concord::grpc::lazy_channel(addr).expect("channel")
}

async fn spawn(args: Vec<String>, env: Vec<(String, String)>) -> Process {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Process::spawn_with_env(&args, &env)
    })
    .await
    .expect("spawn task")
}

async fn status(addr: &str) -> Option<pb::GetReplicationStatusResponse> {
    ReplicationClient::new(channel(addr))
        .get_replication_status(pb::GetReplicationStatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// One flood registration: `credential` None = anonymous.
async fn flood_one(
    registry: Channel,
    secret: ClusterSecret,
    i: usize,
    anonymous: bool,
) -> Result<(), Code> {
    let id = format!("flood-{i}");
    let mut metadata = HashMap::from([("node_id".to_owned(), id.clone())]);
    for k in 0..7 {
        metadata.insert(format!("pad-{k}"), "x".repeat(250));
    }
    let mut request = tonic::Request::new(RegisterRequest {
        service: "predictor".into(),
        address: format!("127.0.0.1:{}", 20_000 + i),
        metadata,
        ttl_ms: 60_000,
    });
    if !anonymous {
        secret.issue(Principal::Node(id)).attach(&mut request);
    }
    RegistryClient::new(registry)
        .register(request)
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

/// Flood the registry, then freeze the primary: the replica still promotes in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flood_then_primary_freeze_still_fails_over() {
    let secret_text = concord::secrets::random_token();
    let secret = ClusterSecret::new(secret_text.clone()).expect("secret");
    let registry = spawn(
        vec!["registry".into(), "--listen".into(), "127.0.0.1:0".into()],
        vec![("CONCORD_CLUSTER_SECRET".into(), secret_text.clone())],
    )
    .await;
    let registry_addr = registry.addr.to_string();
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let shop_env = vec![
        (
            "CONCORD_CREDENTIAL".to_owned(),
            secret.issue(Principal::Shop).encode(),
        ),
        (
            "CONCORD_ADMIN_TOKEN".to_owned(),
            "flood-test-admin".to_owned(),
        ),
    ];
    let shop_args = |dir: &tempfile::TempDir, replica_of: Option<&str>| {
        let mut args: Vec<String> = [
            "shop",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().expect("utf-8 path"),
            "--registry",
            &registry_addr,
            "--replication",
            "sync",
            "--lease-ttl",
            "1s",
        ]
        .map(String::from)
        .to_vec();
        if let Some(primary) = replica_of {
            args.extend(["--replica-of", primary, "--replica-id", "shop-2"].map(String::from));
        }
        args
    };
    let primary = spawn(shop_args(&dirs[0], None), shop_env.clone()).await;
    let primary_addr = primary.addr.to_string();
    let replica = spawn(shop_args(&dirs[1], Some(&primary_addr)), shop_env).await;
    let replica_addr = replica.addr.to_string();
    let paired = eventually(WAIT, || async {
        status(&primary_addr)
            .await
            .is_some_and(|s| s.peer_connected)
            && status(&replica_addr)
                .await
                .is_some_and(|s| s.role == pb::Role::Replica as i32)
    })
    .await;
    assert!(paired, "primary and replica did not pair up");

    // The flood: every anonymous registration is refused; credentialed ones (ids the
    // operator issued but nobody staked) stop at the caps.
    let registry_channel = channel(&registry_addr);
    let mut tasks = Vec::new();
    for i in 0..FLOOD {
        tasks.push(tokio::spawn(flood_one(
            registry_channel.clone(),
            secret.clone(),
            i,
            i % 2 == 0,
        )));
    }
    let mut outcomes: HashMap<Result<(), Code>, usize> = HashMap::new();
    for task in tasks {
        *outcomes.entry(task.await.expect("flood task")).or_default() += 1;
    }
    println!("flood outcomes: {outcomes:?}");
    assert_eq!(
        outcomes
            .get(&Err(Code::Unauthenticated))
            .copied()
            .unwrap_or(0),
        FLOOD / 2,
        "every anonymous registration is refused: {outcomes:?}"
    );

    // List and Watch still answer within the message limit.
    let mut client = RegistryClient::new(registry_channel.clone());
    let listed = client
        .list(ListRequest {})
        .await
        .expect("List answers after the flood");
    let listed = listed.into_inner();
    assert!(
        listed.instances.iter().all(|i| i.lease_id.is_empty()),
        "no lease id is published"
    );
    let size = prost::Message::encoded_len(&listed);
    println!(
        "List after the flood: {} instances, {size} bytes",
        listed.instances.len()
    );
    assert!(size < concord::grpc::MAX_MESSAGE_BYTES);
    let mut watch = client
        .watch(WatchRequest {
            service: "predictor".into(),
        })
        .await
        .expect("Watch opens after the flood")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("Watch message")
        .expect("a set");
    assert!(prost::Message::encoded_len(&first) < concord::grpc::MAX_MESSAGE_BYTES);

    // Freeze the primary: the replica must promote within the limit.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(primary.pid()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let frozen_at = Instant::now();
    let promoted = eventually(WAIT, || async {
        status(&replica_addr)
            .await
            .is_some_and(|s| s.role == pb::Role::Primary as i32)
    })
    .await;
    let took = frozen_at.elapsed();
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    println!("replica promoted {took:?} after the primary froze");
    assert!(promoted, "the replica never promoted after the flood");
    assert!(
        took <= PROMOTION_LIMIT,
        "promotion took {took:?}, more than {PROMOTION_LIMIT:?}"
    );
}
