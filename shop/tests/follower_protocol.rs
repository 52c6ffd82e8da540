//! What a primary that breaks the replication protocol cannot make a replica do: skip to a
//! snapshot's LSN without the snapshot, write snapshot data outside a snapshot, drop a
//! write it acked, append a log whose terms go back, or count itself caught up with a
//! deposed primary. A scripted fake primary (holding the real shop credential, so the
//! replica listens) plays each broken stream against a replica that holds real data.

use std::str::FromStr;
use std::time::Duration;

use concord::pb::shop::v1 as pb;
use concord_shop::{ProductId, ReplicationMode, TreeName};
use concord_testkit::eventually;
use concord_testkit::fake_primary::{FakePrimary, Step};
use concord_testkit::shop::{create, start, TestShop};
use pb::replicate_response::Kind;

const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits for the replica to redial after its session should have ended.
const REDIAL: Duration = Duration::from_secs(5);

/// A fake primary holding the real shop credential (so the replica listens), playing
/// `scripts`.
async fn fake_primary(scripts: Vec<Vec<Step>>) -> FakePrimary {
    FakePrimary::serve(Some(concord_testkit::shop::shop_credential()), scripts).await
}

/// What a replica held before it met the fake primary.
struct Held {
    dir: tempfile::TempDir,
    /// A product it holds.
    tea: pb::Product,
    /// Its LSN.
    lsn: u64,
    /// Its term.
    term: u64,
}

impl Held {
    fn replica_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("replica")
    }
}

/// A replica that caught up with a real primary holding one product; both stopped.
async fn replica_with_data() -> Held {
    let dir = tempfile::tempdir().unwrap();
    let primary = start(&dir.path().join("primary"), |c| {
        c.replication.mode = ReplicationMode::Async;
    })
    .await;
    let primary_addr = primary.addr.to_string();
    let replica = start(&dir.path().join("replica"), |c| {
        c.replication.primary_addr = Some(primary_addr);
    })
    .await;
    let tea = create(&mut primary.client(), "Tea", 250, 10).await;
    let lsn = primary.last_lsn().await;
    assert!(eventually(WAIT, || async { replica.last_lsn().await >= lsn }).await);
    let term = replica.status().await.term;
    replica.stop().await;
    primary.stop().await;
    Held {
        dir,
        tea,
        lsn,
        term,
    }
}

/// Starts the held replica again, following `fake`.
async fn follow(held: &Held, fake: &FakePrimary) -> TestShop {
    let addr = fake.addr.clone();
    start(&held.replica_dir(), |c| {
        c.replication.primary_addr = Some(addr);
    })
    .await
}

/// Whether the replica ended its session and dialled the fake again.
async fn redialled(fake: &FakePrimary) -> bool {
    eventually(REDIAL, || async { fake.calls() >= 2 }).await
}

/// Whether the replica still serves the held product.
async fn still_has_tea(replica: &TestShop, held: &Held) -> bool {
    replica
        .client()
        .get_product(pb::GetProductRequest {
            id: held.tea.id.clone(),
        })
        .await
        .is_ok()
}

fn entry(lsn: u64, term: u64) -> pb::WalEntry {
    pb::WalEntry {
        lsn,
        term,
        committed_at_unix_ms: 0,
        mutations: Vec::new(),
    }
}

/// A snapshot end without a begin does not make the replica stand at its LSN (it would
/// skip every entry in between and ack them unheld): the session ends, nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_end_without_a_begin_moves_nothing() {
    let held = replica_with_data().await;
    let fake = fake_primary(vec![vec![Step::Send(Kind::SnapshotEnd(pb::SnapshotEnd {
        lsn: 1000,
        lsn_term: held.term,
    }))]])
    .await;
    let replica = follow(&held, &fake).await;
    let redialled = redialled(&fake).await;
    let status = replica.status().await;
    assert_eq!(status.last_lsn, held.lsn, "{status:?}");
    assert_eq!(status.durable_lsn, held.lsn, "{status:?}");
    assert!(
        *fake.acked_rx.borrow() < 1000,
        "acked an LSN it does not hold"
    );
    assert!(redialled, "the session did not end on the protocol error");
    replica.stop().await;
}

/// A snapshot chunk without a begin writes nothing (it would change data outside the
/// WAL, unlogged and unacked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_without_a_begin_writes_nothing() {
    let held = replica_with_data().await;
    let key = ProductId::from_str(&held.tea.id).unwrap().key().to_vec();
    let fake = fake_primary(vec![vec![Step::Send(Kind::SnapshotChunk(
        pb::SnapshotChunk {
            mutations: vec![pb::Mutation {
                tree: TreeName::Products.as_str().into(),
                key,
                value: Vec::new(),
                delete: true,
            }],
        },
    ))]])
    .await;
    let replica = follow(&held, &fake).await;
    let redialled = redialled(&fake).await;
    assert!(
        still_has_tea(&replica, &held).await,
        "a stray snapshot chunk deleted a product"
    );
    assert!(redialled, "the session did not end on the protocol error");
    replica.stop().await;
}

/// A snapshot below an LSN the replica acked on this stream is refused before anything
/// is wiped: an acked write stays durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_below_what_was_acked_drops_nothing() {
    let held = replica_with_data().await;
    let (next, last) = (held.lsn + 1, held.lsn + 2);
    // Once, on the stream that carried the acked entries; the next stream stays idle.
    let fake = fake_primary(vec![
        vec![
            Step::Send(Kind::Entries(pb::WalBatch {
                entries: vec![entry(next, held.term), entry(last, held.term)],
            })),
            Step::AwaitAck(last),
            Step::Send(Kind::SnapshotBegin(pb::SnapshotBegin {
                lsn: held.lsn,
                term: held.term,
            })),
            Step::Send(Kind::SnapshotEnd(pb::SnapshotEnd {
                lsn: held.lsn,
                lsn_term: held.term,
            })),
        ],
        vec![],
    ])
    .await;
    let replica = follow(&held, &fake).await;
    let redialled = redialled(&fake).await;
    assert!(
        *fake.acked_rx.borrow() >= last,
        "the entries were not acked"
    );
    assert!(
        still_has_tea(&replica, &held).await,
        "the snapshot wiped the replica"
    );
    let status = replica.status().await;
    assert_eq!(status.durable_lsn, last, "an acked LSN is gone: {status:?}");
    assert!(redialled, "the session did not end on the protocol error");
    replica.stop().await;
}

/// Entries whose terms go back (a log's terms only grow) are refused as a whole: nothing
/// of the batch is appended or acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_whose_terms_go_back_are_refused() {
    let held = replica_with_data().await;
    let fake = fake_primary(vec![vec![Step::Send(Kind::Entries(pb::WalBatch {
        entries: vec![
            entry(held.lsn + 1, held.term + 1),
            entry(held.lsn + 2, held.term),
        ],
    }))]])
    .await;
    let replica = follow(&held, &fake).await;
    let redialled = redialled(&fake).await;
    let status = replica.status().await;
    assert_eq!(status.durable_lsn, held.lsn, "{status:?}");
    assert!(*fake.acked_rx.borrow() <= held.lsn, "acked a refused batch");
    assert!(redialled, "the session did not end on the protocol error");
    replica.stop().await;
}

/// A heartbeat from a term below the replica's comes from a deposed primary: the replica
/// does not count itself caught up with it and ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_primary_s_heartbeat_is_not_followed() {
    let held = replica_with_data().await;
    let fake = fake_primary(vec![vec![Step::Send(Kind::Heartbeat(pb::Heartbeat {
        last_lsn: held.lsn,
        term: held.term - 1,
        now_unix_ms: 0,
    }))]])
    .await;
    let replica = follow(&held, &fake).await;
    let redialled = redialled(&fake).await;
    let status = replica.status().await;
    assert!(
        !status.caught_up,
        "caught up with a deposed primary: {status:?}"
    );
    assert!(redialled, "the session did not end on the stale heartbeat");
    replica.stop().await;
}
