//! Primary → replica replication over loopback: catch-up, identical data, write refusal on
//! the replica, sync/async acknowledgement, replica loss, restart/resume, promotion.

use std::time::Duration;

use concord::pb::shop::v1 as pb;
use concord_shop::{OnReplicaLoss, ReplicationMode};
use concord_testkit::eventually;
use concord_testkit::shop::{add_to_cart, admin, create, get_product, start, TestShop};
use tonic::Code;

const CATCH_UP: Duration = Duration::from_secs(10);

async fn start_pair(
    mode: ReplicationMode,
    loss: OnReplicaLoss,
) -> (tempfile::TempDir, TestShop, TestShop) {
    let dir = tempfile::tempdir().unwrap();
    let primary = start(&dir.path().join("primary"), |c| {
        c.replication.mode = mode;
        c.replication.on_replica_loss = loss;
        c.replication.sync_timeout = Duration::from_millis(500);
    })
    .await;
    let primary_addr = primary.addr.to_string();
    let replica = start(&dir.path().join("replica"), |c| {
        c.replication.primary_addr = Some(primary_addr);
        c.replication.replica_id = "r1".into();
    })
    .await;
    (dir, primary, replica)
}

async fn caught_up(primary: &TestShop, replica: &TestShop) -> bool {
    let want = primary.last_lsn().await;
    eventually(CATCH_UP, || async {
        replica.status().await.last_lsn >= want
    })
    .await
}

/// Async mode: the replica catches up, serves identical reads and refuses writes naming
/// the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replica_catches_up_and_refuses_writes() {
    let (_dir, primary, replica) = start_pair(ReplicationMode::Async, OnReplicaLoss::Fail).await;
    let mut p = primary.client();
    let tea = create(&mut p, "Tea", 250, 10).await;
    let ann = concord_testkit::shop::sign_up(&mut p, "ann").await;
    add_to_cart(&mut p, &ann, tea.id.clone(), 2).await;
    let order = p
        .place_order(concord_testkit::shop::as_user(
            &ann,
            pb::PlaceOrderRequest {
                user_id: ann.id.clone(),
                idempotency_key: "k".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.write.unwrap().mode, pb::ReplicationMode::Async as i32);
    assert!(
        caught_up(&primary, &replica).await,
        "replica did not catch up"
    );

    let mut r = replica.client();
    // The account replicated: the replica signs ann in, and the two shops share the
    // session key, so its token works on the primary too (and the primary's on the replica).
    let on_replica_session = r
        .sign_in(pb::SignInRequest {
            username: "ann".into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let ann_via_replica = concord_testkit::shop::User {
        id: ann.id.clone(),
        token: on_replica_session.token,
    };
    let cart = p
        .get_cart(concord_testkit::shop::as_user(
            &ann_via_replica,
            pb::GetCartRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cart.cart.unwrap().user_id, ann.id);
    let err = r
        .sign_up(pb::SignUpRequest {
            username: "zoe".into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "sign-up is a write: {err:?}"
    );
    let on_replica = get_product(&mut r, tea.id.clone()).await;
    let on_primary = get_product(&mut p, tea.id.clone()).await;
    assert_eq!(on_replica, on_primary);
    assert_eq!(on_replica.stock, 8);
    let o = order.order.unwrap();
    assert_eq!(
        r.get_order(concord_testkit::shop::as_user(
            &ann,
            pb::GetOrderRequest {
                order_id: o.id.clone()
            }
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap(),
        o
    );

    let err = r
        .create_product(admin(concord_testkit::shop::new_product("x", 1, 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.metadata()
            .get(concord_shop::PRIMARY_HINT_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(primary.addr.to_string().as_str())
    );

    let ps = primary.status().await;
    assert_eq!(ps.role, pb::Role::Primary as i32);
    assert!(ps.peer_connected);
    assert!(
        eventually(CATCH_UP, || async {
            primary.status().await.lag_entries == 0
        })
        .await
    );
    let rs = replica.status().await;
    assert_eq!(rs.role, pb::Role::Replica as i32);
    replica.stop().await;
    primary.stop().await;
}

/// Sync mode: a write is acknowledged as replicated; once the replica is gone writes fail
/// with UNAVAILABLE after the timeout (fail policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_waits_for_replica_and_fails_without_it() {
    let (_dir, primary, replica) = start_pair(ReplicationMode::Sync, OnReplicaLoss::Fail).await;
    assert!(eventually(CATCH_UP, || async { primary.status().await.peer_connected }).await);
    let mut p = primary.client();
    let created = p
        .create_product(admin(concord_testkit::shop::new_product("Tea", 1, 1)))
        .await
        .unwrap()
        .into_inner();
    let write = created.write.unwrap();
    assert!(write.replicated, "{write:?}");
    assert!(!write.degraded);
    // The replica already holds it when the primary answers.
    let mut r = replica.client();
    let id = created.product.unwrap().id;
    r.get_product(pb::GetProductRequest { id }).await.unwrap();

    replica.stop().await;
    assert!(
        eventually(CATCH_UP, || async {
            !primary.status().await.peer_connected
        })
        .await
    );
    let err = p
        .create_product(admin(concord_testkit::shop::new_product("Mug", 1, 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    primary.stop().await;
}

/// Sync mode with `degrade`: without a replica writes succeed flagged degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_degrades_when_asked() {
    let (_dir, primary, replica) = start_pair(ReplicationMode::Sync, OnReplicaLoss::Degrade).await;
    replica.stop().await;
    assert!(
        eventually(CATCH_UP, || async {
            !primary.status().await.peer_connected
        })
        .await
    );
    let mut p = primary.client();
    let write = p
        .create_product(admin(concord_testkit::shop::new_product("Tea", 1, 1)))
        .await
        .unwrap()
        .into_inner()
        .write
        .unwrap();
    assert!(write.degraded && !write.replicated, "{write:?}");
    primary.stop().await;
}

/// A restarted replica resumes from its applied LSN and catches up with writes it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_restart_resumes() {
    let (dir, primary, replica) = start_pair(ReplicationMode::Async, OnReplicaLoss::Fail).await;
    let mut p = primary.client();
    for i in 0..20 {
        create(&mut p, &format!("Item {i}"), 100, 1).await;
    }
    assert!(caught_up(&primary, &replica).await);
    replica.stop().await;
    for i in 20..50 {
        create(&mut p, &format!("Item {i}"), 100, 1).await;
    }
    let primary_addr = primary.addr.to_string();
    let replica = start(&dir.path().join("replica"), |c| {
        c.replication.primary_addr = Some(primary_addr)
    })
    .await;
    assert!(caught_up(&primary, &replica).await);
    assert_eq!(product_count(&replica).await, 50);
    replica.stop().await;
    primary.stop().await;
}

/// Promote turns the replica into a primary with term + 1 that accepts writes; it needs
/// the admin token and refuses a stale expected term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_replica() {
    let (_dir, primary, replica) = start_pair(ReplicationMode::Async, OnReplicaLoss::Fail).await;
    let mut p = primary.client();
    create(&mut p, "Tea", 100, 5).await;
    assert!(caught_up(&primary, &replica).await);
    let lsn = primary.last_lsn().await;
    primary.stop().await;

    let mut rep = replica.replication();
    let err = rep
        .promote(pb::PromoteRequest { expected_term: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = rep
        .promote(admin(pb::PromoteRequest { expected_term: 7 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let promoted = rep
        .promote(admin(pb::PromoteRequest { expected_term: 1 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.term, 2);
    assert_eq!(promoted.last_lsn, lsn);
    let write = replica
        .client()
        .create_product(admin(concord_testkit::shop::new_product("Mug", 1, 1)))
        .await
        .unwrap()
        .into_inner()
        .write
        .unwrap();
    assert_eq!(write.term, 2);
    assert_eq!(write.lsn, lsn + 1);
    let status = replica.status().await;
    assert_eq!(
        status.promotion_lsn, lsn,
        "term 2 began after the replica's last LSN"
    );
    assert_eq!(status.first_wal_lsn, 1);
    replica.stop().await;
}

/// Issue 14 item 4: the replica's ack is persisted on the primary. A primary restarted
/// while its replica is away goes on trimming its WAL up to the replica's last ack — not
/// past it (the replica resumes from its LSN, no snapshot) and not stuck below it (an
/// in-memory ack would be forgotten by the restart and pin the WAL where it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_replica_ack_survives_a_primary_restart() {
    const RETAIN: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let (p_dir, r_dir) = (dir.path().join("primary"), dir.path().join("replica"));
    let start_primary = || {
        start(&p_dir, |c| {
            c.replication.mode = ReplicationMode::Async;
            c.replication.wal_retain = Some(RETAIN);
        })
    };
    let start_replica = |primary: &TestShop| {
        let primary = primary.addr.to_string();
        start(&r_dir, move |c| c.replication.primary_addr = Some(primary))
    };
    let create_n = |shop: &TestShop, from: usize, n: usize| {
        let mut c = shop.client();
        async move {
            for i in from..from + n {
                create(&mut c, &format!("Item {i}"), 100, 1).await;
            }
        }
    };

    // The replica acks 20 entries and goes away; the primary stops at once, before a
    // trimming pass could move past what the retention keeps.
    let primary = start_primary().await;
    let replica = start_replica(&primary).await;
    create_n(&primary, 0, 20).await;
    assert!(caught_up(&primary, &replica).await);
    let acked = primary.last_lsn().await;
    assert!(
        eventually(CATCH_UP, || async {
            primary.status().await.replica_acked_lsn >= acked
        })
        .await
    );
    replica.stop().await;
    primary.stop().await;

    // Restarted, alone, 30 more writes: trimming reaches the persisted ack, no further.
    let primary = start_primary().await;
    create_n(&primary, 20, 30).await;
    assert!(
        eventually(CATCH_UP, || async {
            primary.status().await.first_wal_lsn == acked
        })
        .await,
        "the restarted primary trims up to the replica's persisted ack: first WAL LSN {} (acked {acked})",
        primary.status().await.first_wal_lsn
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        primary.status().await.first_wal_lsn,
        acked,
        "trimmed past the ack"
    );

    // The replica resumes from its LSN: no snapshot (its own WAL still starts at 1).
    let replica = start_replica(&primary).await;
    assert!(caught_up(&primary, &replica).await);
    replica.stop().await;
    primary.stop().await;
    let (first, _, _) = inspect(r_dir.clone()).await;
    assert_eq!(first, Some(1), "the replica caught up without a snapshot");
}

/// After a failover the old primary rejoins as a replica; its unreplicated write (same
/// LSN, older term) is detected as divergence and replaced by a snapshot of the new
/// primary. The new primary never issues the lost write's id again: it answers NOT_FOUND
/// on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_old_primary_gets_snapshot() {
    let (dir, primary, replica) = start_pair(ReplicationMode::Async, OnReplicaLoss::Fail).await;
    let mut p = primary.client();
    let shared = create(&mut p, "Replicated", 100, 5).await;
    assert!(caught_up(&primary, &replica).await);
    replica.stop().await;
    let lost = create(&mut p, "Only on old primary", 100, 5).await;
    primary.stop().await;

    // The replica comes back alone and is promoted; it writes at the same LSN.
    let new_primary = start(&dir.path().join("replica"), |c| {
        c.replication.primary_addr = Some("127.0.0.1:9".into())
    })
    .await;
    new_primary
        .replication()
        .promote(admin(pb::PromoteRequest { expected_term: 0 }))
        .await
        .unwrap();
    let mut np = new_primary.client();
    let fresh = create(&mut np, "Written in term 2", 100, 5).await;
    assert_ne!(
        fresh.id, lost.id,
        "a new term must not issue a lost write's id again"
    );
    let missing = np
        .get_product(pb::GetProductRequest {
            id: lost.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "a lost id is gone, not reused"
    );

    let np_addr = new_primary.addr.to_string();
    let old = start(&dir.path().join("primary"), |c| {
        c.replication.primary_addr = Some(np_addr)
    })
    .await;
    let mut o = old.client();
    // last_lsn alone can't tell: the stale write sits at the same LSN. Wait for the data.
    let replaced = eventually(CATCH_UP, || {
        let mut o = o.clone();
        let id = fresh.id.clone();
        async move {
            o.get_product(pb::GetProductRequest { id })
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .product
                        .is_some_and(|p| p.name == "Written in term 2")
                })
        }
    })
    .await;
    assert!(
        replaced,
        "the diverged write was not replaced by the snapshot"
    );
    o.get_product(pb::GetProductRequest {
        id: shared.id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(old.status().await.term, 2);
    let missing = o
        .get_product(pb::GetProductRequest { id: lost.id })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Writing more on the new primary keeps flowing after the snapshot.
    create(&mut np, "After snapshot", 1, 1).await;
    assert!(caught_up(&new_primary, &old).await);
    old.stop().await;
    new_primary.stop().await;
}

/// How many products a shop lists (all on the first page: tests stay under 100).
async fn product_count(shop: &TestShop) -> usize {
    shop.client()
        .list_products(pb::ListProductsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list products")
        .into_inner()
        .products
        .len()
}

/// Opens a stopped shop's store: (first WAL LSN, last LSN, data digest).
async fn inspect(dir: std::path::PathBuf) -> (Option<u64>, u64, String) {
    tokio::task::spawn_blocking(move || {
        let store = concord_shop::Store::open(&concord_shop::StoreConfig::new(dir)).unwrap();
        (
            store.first_wal_lsn().unwrap(),
            store.last_lsn().unwrap(),
            store.digest().unwrap(),
        )
    })
    .await
    .unwrap()
}

/// `wal_retain`: the primary never trims the entry its replica acked, so a replica that
/// was away resumes from its LSN; once the replica acked everything the WAL shrinks to
/// the last `wal_retain` entries, and a fresh replica whose wanted LSN is gone gets a
/// snapshot and converges to identical data. (Each primary stop runs a final trim pass,
/// which makes the trimmed point deterministic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_trimming_respects_the_replica_and_falls_back_to_a_snapshot() {
    const RETAIN: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let (p_dir, r_dir, fresh_dir) = (
        dir.path().join("primary"),
        dir.path().join("replica"),
        dir.path().join("fresh"),
    );
    let start_primary = || {
        start(&p_dir, |c| {
            c.replication.mode = ReplicationMode::Async;
            c.replication.wal_retain = Some(RETAIN);
        })
    };
    async fn start_replica(dir: &std::path::Path, primary: &TestShop) -> TestShop {
        let primary = primary.addr.to_string();
        start(dir, |c| {
            // No trimming of its own: its WAL then tells whether it got a snapshot.
            c.replication.primary_addr = Some(primary);
        })
        .await
    }
    let create_n = |shop: &TestShop, from: usize, n: usize| {
        let mut c = shop.client();
        async move {
            for i in from..from + n {
                create(&mut c, &format!("Item {i}"), 100, 1).await;
            }
        }
    };
    let acked_all = |primary: &TestShop| {
        let primary = primary.replication();
        eventually(CATCH_UP, move || {
            let mut primary = primary.clone();
            async move {
                primary
                    .get_replication_status(pb::GetReplicationStatusRequest {})
                    .await
                    .is_ok_and(|s| s.into_inner().lag_entries == 0)
            }
        })
    };

    // 1. The replica acks 20 entries and goes away; 40 more are written.
    let primary = start_primary().await;
    let replica = start_replica(&r_dir, &primary).await;
    create_n(&primary, 0, 20).await;
    assert!(caught_up(&primary, &replica).await);
    assert!(acked_all(&primary).await);
    let acked = primary.last_lsn().await;
    replica.stop().await;
    create_n(&primary, 20, 40).await;
    primary.stop().await;
    let (first, last, _) = inspect(p_dir.clone()).await;
    assert_eq!(
        first,
        Some(acked),
        "trimmed below the acked LSN, not past it"
    );
    assert_eq!(last, acked + 40);

    // 2. The replica resumes from its LSN (its WAL still starts at 1: no snapshot).
    let primary = start_primary().await;
    let replica = start_replica(&r_dir, &primary).await;
    assert!(caught_up(&primary, &replica).await);
    assert!(acked_all(&primary).await);
    replica.stop().await;
    primary.stop().await;
    let (first, _, _) = inspect(r_dir.clone()).await;
    assert_eq!(first, Some(1), "the replica resumed without a snapshot");
    let (first, last, _) = inspect(p_dir.clone()).await;
    assert_eq!(
        first,
        Some(last - RETAIN + 1),
        "all acked: the last {RETAIN} kept"
    );

    // 3. A fresh replica wants LSN 1, which is gone: snapshot, then the stream.
    let trimmed_to = first.expect("the primary's WAL is not empty");
    let primary = start_primary().await;
    assert_eq!(
        primary.status().await.first_wal_lsn,
        trimmed_to,
        "the trimmed point is visible over gRPC"
    );
    let fresh = start_replica(&fresh_dir, &primary).await;
    assert!(caught_up(&primary, &fresh).await);
    create_n(&primary, 60, 5).await;
    assert!(caught_up(&primary, &fresh).await);
    assert_eq!(product_count(&fresh).await, 65);
    fresh.stop().await;
    primary.stop().await;
    let (p_first, p_last, p_digest) = inspect(p_dir).await;
    let (f_first, f_last, f_digest) = inspect(fresh_dir).await;
    assert_eq!(f_last, p_last);
    assert_eq!(f_digest, p_digest, "identical data after snapshot + stream");
    assert_eq!(
        f_first,
        Some(p_last - 4),
        "the fresh replica's WAL starts after its snapshot"
    );
    assert!(p_first > Some(1));
}

/// Issue 14 item 2: a replica acks what is durable and applies off the ack path; its
/// status and its reads report the applied LSN as well as the durable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reports_applied_and_durable_lsns() {
    let (_dir, primary, replica) = start_pair(ReplicationMode::Sync, OnReplicaLoss::Fail).await;
    let mut p = primary.client();
    let mut product = None;
    for i in 0..20 {
        product = Some(create(&mut p, &format!("Item {i}"), 100, 1).await);
    }
    let want = primary.last_lsn().await;
    assert!(caught_up(&primary, &replica).await);
    let s = replica.status().await;
    assert_eq!((s.applied_lsn, s.durable_lsn), (want, want), "{s:?}");
    let ps = primary.status().await;
    assert_eq!(
        (ps.applied_lsn, ps.durable_lsn, ps.replica_acked_lsn),
        (want, want, want)
    );
    let read = replica
        .client()
        .get_product(pb::GetProductRequest {
            id: product.expect("created").id,
        })
        .await
        .expect("read on the replica");
    let header = |name| {
        read.metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(header(concord_shop::APPLIED_LSN_HEADER), Some(want));
    assert_eq!(header(concord_shop::DURABLE_LSN_HEADER), Some(want));
    replica.stop().await;
    primary.stop().await;
}

/// The Shop service's `grpc.health.v1` status at `shop`.
async fn shop_health(shop: &TestShop) -> i32 {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    HealthClient::new(shop.channel())
        .check(HealthCheckRequest {
            service: concord::pb::shop::v1::shop_server::SERVICE_NAME.into(),
        })
        .await
        .map_or(-1, |r| r.into_inner().status)
}

/// Readiness: a replica that cannot reach its primary reports the Shop service
/// NOT_SERVING (it would serve stale reads); once caught up with a real primary it is
/// SERVING, like the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_only_once_caught_up() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    // An address nothing listens on (bound, then released).
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free address")
        .to_string();
    let orphan = start(&dir.path().join("orphan"), |c| {
        c.replication.primary_addr = Some(nowhere);
        c.replication.replica_id = "r0".into();
    })
    .await;
    assert!(
        eventually(CATCH_UP, || async {
            shop_health(&orphan).await == ServingStatus::NotServing as i32
        })
        .await,
        "a replica that never reached its primary reports SERVING"
    );
    orphan.stop().await;

    let (_dir, primary, replica) = start_pair(ReplicationMode::Sync, OnReplicaLoss::Fail).await;
    let mut client = primary.client();
    create(&mut client, "ready", 100, 1).await;
    assert!(
        caught_up(&primary, &replica).await,
        "replica did not catch up"
    );
    assert!(
        eventually(CATCH_UP, || async {
            shop_health(&replica).await == ServingStatus::Serving as i32
        })
        .await,
        "a caught-up replica is not SERVING"
    );
    assert_eq!(shop_health(&primary).await, ServingStatus::Serving as i32);
}
