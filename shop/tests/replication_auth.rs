//! Who may replicate, and what a replication peer cannot make the shop do: only a shop may
//! open `Replicate` (anonymous or other principals get nothing); forged acks close the
//! stream and never satisfy a sync write; a replica's term cannot step the primary down;
//! a replica never installs anything from a server that does not prove it is a shop.

use std::time::Duration;

use concord::identity::{ClusterSecret, Credential, Principal};
use concord::pb::shop::v1 as pb;

use concord_shop::{OnReplicaLoss, ReplicationMode};
use concord_testkit::eventually;
use concord_testkit::fake_primary::FakePrimary;
use concord_testkit::shop::{admin, create, start, TestShop};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// A Hello from an empty replica at `term`.
fn hello(term: u64) -> pb::ReplicateRequest {
    pb::ReplicateRequest {
        kind: Some(pb::replicate_request::Kind::Hello(pb::Hello {
            replica_id: "intruder".into(),
            applied_lsn: 0,
            term,
            applied_term: 0,
        })),
    }
}

fn ack(durable_lsn: u64) -> pb::ReplicateRequest {
    pb::ReplicateRequest {
        kind: Some(pb::replicate_request::Kind::Ack(pb::Ack { durable_lsn })),
    }
}

/// An open Replicate call: what the test sends, and what the primary answered.
struct Stream {
    out_tx: tokio::sync::mpsc::Sender<pb::ReplicateRequest>,
    reply: Result<tonic::Streaming<pb::ReplicateResponse>, Status>,
}

/// Opens `Replicate` on `shop` with `credential` (none: anonymous) and sends `first`.
async fn open(
    shop: &TestShop,
    credential: Option<&Credential>,
    first: pb::ReplicateRequest,
) -> Stream {
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
    out_tx.send(first).await.expect("queue the first message");
    let mut request = Request::new(ReceiverStream::new(out_rx));
    if let Some(credential) = credential {
        credential.attach(&mut request);
    }
    let reply = shop
        .replication()
        .replicate(request)
        .await
        .map(Response::into_inner);
    Stream { out_tx, reply }
}

/// Everything the primary sent within `within` (or until the stream ended), and the
/// status it ended with (`None`: still open / ended OK).
async fn drain(
    stream: &mut Stream,
    within: Duration,
) -> (Vec<pb::ReplicateResponse>, Option<Status>) {
    let inbound = match &mut stream.reply {
        Ok(inbound) => inbound,
        Err(status) => return (Vec::new(), Some(status.clone())),
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Ok(Ok(Some(message))) => got.push(message),
            Ok(Ok(None)) | Err(_) => return (got, None),
            Ok(Err(status)) => return (got, Some(status)),
        }
    }
}

/// Whether a primary message carries data (entries or a snapshot), not just a heartbeat.
fn carries_data(message: &pb::ReplicateResponse) -> bool {
    !matches!(
        message.kind,
        Some(pb::replicate_response::Kind::Heartbeat(_)) | None
    )
}

/// A primary holding one product, in `mode` (sync: 500 ms timeout, fail).
async fn primary_with_data(dir: &tempfile::TempDir, mode: ReplicationMode) -> TestShop {
    let primary = start(&dir.path().join("primary"), |c| {
        c.replication.mode = mode;
        c.replication.on_replica_loss = OnReplicaLoss::Fail;
        c.replication.sync_timeout = Duration::from_millis(500);
    })
    .await;
    // In sync mode without a replica this write is committed but not acknowledged.
    let _ = primary
        .client()
        .create_product(admin(concord_testkit::shop::new_product(
            "Secret tea",
            1,
            1,
        )))
        .await;
    assert!(primary.last_lsn().await >= 1);
    primary
}

/// Anonymous callers, other principals and shop credentials of another cluster cannot open
/// `Replicate`: refused as unauthenticated / permission denied, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_shop_may_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let primary = primary_with_data(&dir, ReplicationMode::Async).await;
    let other_cluster = ClusterSecret::new("another cluster").unwrap();
    let callers: Vec<(&str, Option<Credential>)> = vec![
        ("anonymous", None),
        (
            "gateway",
            Some(concord_testkit::credential(Principal::Gateway)),
        ),
        (
            "node",
            Some(concord_testkit::credential(Principal::Node(
                "node-1".into(),
            ))),
        ),
        (
            "shop of another cluster",
            Some(other_cluster.issue(Principal::Shop)),
        ),
    ];
    for (label, credential) in callers {
        let mut stream = open(&primary, credential.as_ref(), hello(0)).await;
        let (got, status) = drain(&mut stream, Duration::from_millis(700)).await;
        assert!(
            got.is_empty(),
            "{label}: the primary sent {} messages",
            got.len()
        );
        let status = status.unwrap_or_else(|| panic!("{label}: the stream was not refused"));
        assert!(
            matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "{label}: {status:?}"
        );
    }
    assert_eq!(primary.status().await.replica_acked_lsn, 0);
    primary.stop().await;
}

/// A shop-credentialed stream (standing in for a replica that stopped acking) is sent the
/// WAL and forges an ack of `forged`, beyond anything it was sent. A sync write must then
/// fail UNAVAILABLE after its timeout instead of returning `replicated = true`, the stream
/// must be closed with INVALID_ARGUMENT, and the acked LSN must stay in range.
async fn forged_ack_satisfies_no_sync_write(forged: u64) {
    let dir = tempfile::tempdir().unwrap();
    let primary = primary_with_data(&dir, ReplicationMode::Sync).await;
    let shop = concord_testkit::shop::shop_credential();
    let mut stream = open(&primary, Some(&shop), hello(0)).await;
    let (got, status) = drain(&mut stream, Duration::from_millis(300)).await;
    assert!(status.is_none(), "a shop is refused: {status:?}");
    assert!(got.iter().any(carries_data), "the replica got no data");

    stream
        .out_tx
        .send(ack(forged))
        .await
        .expect("send the forged ack");
    // Let the primary read the ack before the write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let reply = primary
        .client()
        .create_product(admin(concord_testkit::shop::new_product(
            "After the forgery",
            1,
            1,
        )))
        .await;
    match reply {
        Ok(reply) => panic!(
            "a sync write was acknowledged with nobody acking it: {:?}",
            reply.into_inner().write
        ),
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "the write hung");

    let (_, status) = drain(&mut stream, Duration::from_secs(2)).await;
    let status = status.expect("the stream stayed open");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let acked = primary.status().await.replica_acked_lsn;
    assert!(acked <= primary.last_lsn().await, "acked LSN {acked}");
    primary.stop().await;
}

/// `Ack{2^62}`: the stream is closed and no sync write is satisfied by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ack_far_ahead_satisfies_no_sync_write() {
    forged_ack_satisfies_no_sync_write(1 << 62).await;
}

/// `Ack{u64::MAX}` (it overflowed `lsn + 1`): the stream is closed and no sync write is
/// satisfied by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ack_of_u64_max_satisfies_no_sync_write() {
    forged_ack_satisfies_no_sync_write(u64::MAX).await;
}

/// A replica's Hello naming a term far above the primary's (one the registry never
/// accepted) is refused as a protocol error; the primary does not step down and keeps
/// taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_from_the_future_does_not_step_the_primary_down() {
    let dir = tempfile::tempdir().unwrap();
    let primary = primary_with_data(&dir, ReplicationMode::Async).await;
    let term = primary.status().await.term;
    for credential in [None, Some(concord_testkit::shop::shop_credential())] {
        let mut stream = open(&primary, credential.as_ref(), hello(term + 1000)).await;
        let (got, status) = drain(&mut stream, Duration::from_millis(500)).await;
        assert!(
            got.is_empty(),
            "the primary shipped to a replica from the future"
        );
        assert!(status.is_some(), "the stream was not refused");
        let s = primary.status().await;
        assert_eq!(s.role, pb::Role::Primary as i32, "the primary stepped down");
        assert_eq!(s.term, term);
    }
    create(&mut primary.client(), "Still the primary", 1, 1).await;
    primary.stop().await;
}

/// A fake primary answering every `Replicate` with an empty snapshot at a high LSN
/// (which would wipe a replica that installed it), presenting `credential` (or none).
async fn fake_primary(credential: Option<Credential>) -> FakePrimary {
    use concord_testkit::fake_primary::Step;
    use pb::replicate_response::Kind;
    let script = vec![
        Step::Send(Kind::SnapshotBegin(pb::SnapshotBegin {
            lsn: 1000,
            term: 1000,
        })),
        Step::Send(Kind::SnapshotEnd(pb::SnapshotEnd {
            lsn: 1000,
            lsn_term: 1000,
        })),
    ];
    FakePrimary::serve(credential, vec![script]).await
}

/// A replica pointed at a server that does not prove it is a shop (no credential, a
/// gateway's, a shop credential of another cluster) never installs its empty snapshot:
/// the replica's data stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_installs_a_snapshot_from_an_unauthenticated_primary() {
    let dir = tempfile::tempdir().unwrap();
    let primary = start(&dir.path().join("primary"), |c| {
        c.replication.mode = ReplicationMode::Async;
    })
    .await;
    let primary_addr = primary.addr.to_string();
    let replica_dir = dir.path().join("replica");
    let replica = start(&replica_dir, |c| {
        c.replication.primary_addr = Some(primary_addr);
    })
    .await;
    let tea = create(&mut primary.client(), "Tea", 250, 10).await;
    let want = primary.last_lsn().await;
    assert!(eventually(WAIT, || async { replica.last_lsn().await >= want }).await);
    replica.stop().await;
    primary.stop().await;

    let other_cluster = ClusterSecret::new("another cluster").unwrap();
    let fakes: Vec<(&str, Option<Credential>)> = vec![
        ("no credential", None),
        (
            "a gateway's credential",
            Some(concord_testkit::credential(Principal::Gateway)),
        ),
        (
            "a shop credential of another cluster",
            Some(other_cluster.issue(Principal::Shop)),
        ),
    ];
    for (label, credential) in fakes {
        let fake = fake_primary(credential).await;
        let replica = start(&replica_dir, |c| {
            c.replication.primary_addr = Some(fake.addr.clone());
        })
        .await;
        assert!(
            eventually(WAIT, || async { fake.calls() >= 2 }).await,
            "{label}: the replica kept the fake primary's stream (it never redialled)"
        );
        let product = replica
            .client()
            .get_product(pb::GetProductRequest { id: tea.id.clone() })
            .await;
        assert!(
            product.is_ok(),
            "{label}: the replica lost its data: {product:?}"
        );
        let status = replica.status().await;
        assert_eq!(status.last_lsn, want, "{label}: {status:?}");
        assert!(
            status.term < 1000,
            "{label}: adopted the fake's term: {status:?}"
        );
        replica.stop().await;
        drop(fake);
    }
}
