//! Registry-driven failover: the replica promotes itself when the primary's registration
//! disappears, and a restarted old primary that sees the higher term steps down and follows
//! without ever accepting a write (the fence); a primary that cannot reach the registry
//! refuses writes until it can.

use std::time::Duration;

use concord::pb::shop::v1 as pb;
use concord_testkit::eventually;
use concord_testkit::shop::{create, primaries, registered, shop_instances, start};

const WAIT: Duration = Duration::from_secs(15);

/// The scenario in the module docs, end to end over a real registry; a customer who
/// signed up on the old primary keeps her account and her session on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_takes_over_and_old_primary_follows() {
    let registry = concord_testkit::registry().await;
    let dir = tempfile::tempdir().unwrap();
    let with_registry = registered(registry.addr);
    let primary = start(&dir.path().join("a"), with_registry).await;
    let replica = start_replica_of(&primary, &dir.path().join("b"), with_registry).await;
    assert!(
        eventually(WAIT, || async {
            shop_instances(registry.addr).await.len() == 2
        })
        .await
    );

    let mut p = primary.client();
    let before = create(&mut p, "Before failover", 100, 1).await;
    let ada = concord_testkit::shop::sign_up(&mut p, "ada").await;
    let want = primary.last_lsn().await;
    assert!(eventually(WAIT, || async { replica.status().await.last_lsn >= want }).await);

    primary.stop().await; // deregisters: the primary is gone from the registry
    assert!(
        eventually(WAIT, || async {
            let s = replica.status().await;
            s.role == pb::Role::Primary as i32 && s.term == 2
        })
        .await,
        "replica did not promote itself"
    );
    let replica_addr = replica.addr.to_string();
    assert!(
        eventually(WAIT, || async {
            shop_instances(registry.addr).await.iter().any(|i| {
                i.address == replica_addr
                    && i.metadata.get("role").map(String::as_str) == Some("primary")
                    && i.metadata.get("term").map(String::as_str) == Some("2")
            })
        })
        .await,
        "registry does not show the new primary"
    );
    let mut r = replica.client();
    let after = create(&mut r, "After failover", 100, 1).await;
    // Her session from the old primary works on the new one (shared key, replicated
    // account), her name is still taken, and she can sign in there.
    concord_testkit::shop::add_to_cart(&mut r, &ada, after.id.clone(), 1).await;
    let order = concord_testkit::shop::place_order(&mut r, &ada, "after-failover".into()).await;
    assert_eq!(order.user_id, ada.id);
    let taken = r
        .sign_up(pb::SignUpRequest {
            username: "ADA".into(),
            password: concord_testkit::shop::PASSWORD.into(),
        })
        .await
        .expect_err("the account replicated");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists);
    r.sign_in(pb::SignInRequest {
        username: "ada".into(),
        password: concord_testkit::shop::PASSWORD.into(),
    })
    .await
    .expect("sign in on the new primary");

    // The old primary comes back (configured as a primary, term 1), sees term 2, follows.
    let old = start(&dir.path().join("a"), with_registry).await;
    // The fence: it asked the registry before serving, so even its very first write is
    // refused, naming the new primary.
    let refused = old
        .client()
        .create_product(concord_testkit::shop::admin(
            concord_testkit::shop::new_product("Split brain", 1, 1),
        ))
        .await
        .expect_err("the restarted old primary accepted a write");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused
            .metadata()
            .get(concord_shop::PRIMARY_HINT_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(replica_addr.as_str())
    );
    assert!(
        eventually(WAIT, || async {
            let s = old.status().await;
            s.role == pb::Role::Replica as i32 && s.primary_address == replica_addr
        })
        .await,
        "old primary did not step down"
    );
    let mut o = old.client();
    assert!(
        eventually(WAIT, || {
            let mut o = o.clone();
            let id = after.id.clone();
            async move { o.get_product(pb::GetProductRequest { id }).await.is_ok() }
        })
        .await
    );
    o.get_product(pb::GetProductRequest {
        id: before.id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        primaries(registry.addr).await.len(),
        1,
        "exactly one primary registered"
    );

    old.stop().await;
    replica.stop().await;
    registry.stop().await;
}

/// The fence when the registry does not answer: a process configured as primary refuses
/// writes (UNAVAILABLE: retry) until the registry answers, then takes them (same term).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_refuses_writes_until_the_registry_answers() {
    concord::telemetry::init_for_tests();
    // Bound but not yet served: connections hang, so the startup lookup times out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let primary = start(&dir.path().join("a"), |c| {
        c.registry_addr = Some(registry.clone());
        c.lease_ttl = Duration::from_secs(1);
    })
    .await;
    let mut p = primary.client();
    let refused = p
        .create_product(concord_testkit::shop::admin(
            concord_testkit::shop::new_product("Too early", 1, 1),
        ))
        .await
        .expect_err("wrote without knowing whether a newer primary exists");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // "Did nothing; send it elsewhere": the hint header is present, naming no primary.
    assert_eq!(
        refused
            .metadata()
            .get(concord_shop::PRIMARY_HINT_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("")
    );
    assert_eq!(primary.status().await.role, pb::Role::Replica as i32);

    let registry = concord_testkit::registry_serving(listener);
    assert!(
        eventually(WAIT, || async {
            let s = primary.status().await;
            s.role == pb::Role::Primary as i32 && s.term == 1
        })
        .await,
        "the fence was not lifted once the registry answered"
    );
    create(&mut p, "Now", 1, 1).await;
    primary.stop().await;
    registry.stop().await;
}

/// The lease guard: a primary that can no longer renew its registry lease (here: the
/// registry is gone) refuses writes with UNAVAILABLE before the lease could expire — so a
/// replica promoted meanwhile never misses an acknowledged write — and takes writes again
/// once it holds a lease from the restarted registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stops_writing_before_its_lease_can_expire() {
    let registry = concord_testkit::registry().await;
    let registry_addr = registry.addr;
    let dir = tempfile::tempdir().unwrap();
    let primary = start(&dir.path().join("a"), registered(registry_addr)).await;
    let mut p = primary.client();
    create(&mut p, "While the lease is held", 1, 1).await;

    registry.stop().await;
    let lost_at = tokio::time::Instant::now();
    let mut refused = None;
    while lost_at.elapsed() < Duration::from_secs(5) {
        match p
            .create_product(concord_testkit::shop::admin(
                concord_testkit::shop::new_product("Lease?", 1, 1),
            ))
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(status) => {
                refused = Some((status, lost_at.elapsed()));
                break;
            }
        }
    }
    let (status, after) = refused.expect("writes kept being accepted without a lease");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("lease"), "{status:?}");
    assert!(
        after < Duration::from_secs(1),
        "refused only after {after:?}: the 1 s lease may already have expired"
    );

    let listener = tokio::net::TcpListener::bind(registry_addr).await.unwrap();
    let registry = concord_testkit::registry_serving(listener);
    assert!(
        eventually(WAIT, || async {
            p.clone()
                .create_product(concord_testkit::shop::admin(
                    concord_testkit::shop::new_product("Lease again", 1, 1),
                ))
                .await
                .is_ok()
        })
        .await,
        "writes did not resume once the registry was back"
    );
    primary.stop().await;
    registry.stop().await;
}

/// One primary per term, whoever registers what: a third shop's `role=primary` claim for
/// the next term is refused while the primary's lease lives (the claim is a lease the
/// registry honours, issue 15), so nobody steps down: the primary keeps taking writes in
/// its term and the replica takes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_primary_cannot_split_the_shop() {
    use concord::pb::registry::v1::{registry_client::RegistryClient, RegisterRequest};
    let registry = concord_testkit::registry().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), registered(registry.addr)).await;
    let b = start_replica_of(&a, &dir.path().join("b"), registered(registry.addr)).await;
    assert!(
        eventually(WAIT, || async {
            b.status().await.role == pb::Role::Replica as i32
        })
        .await
    );
    create(&mut a.client(), "Before the forgery", 1, 1).await;

    let forged = a.status().await.term + 1;
    let channel = concord::grpc::lazy_channel(&registry.addr.to_string()).unwrap();
    let mut request = tonic::Request::new(RegisterRequest {
        service: "shop".into(),
        address: "127.0.0.1:9".into(),
        metadata: [("role", "primary".to_owned()), ("term", forged.to_string())]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
        ttl_ms: 1000,
    });
    concord_testkit::credential(concord::identity::Principal::Shop).attach(&mut request);
    let refused = RegistryClient::new(channel)
        .register(request)
        .await
        .expect_err("no next term while the primary's lease lives");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("live lease"), "{refused:?}");

    // Writers on both processes for two TTLs: only the primary, in its own term.
    let term = forged - 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let writers: Vec<_> = [a.client(), b.client()]
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut terms = std::collections::BTreeSet::new();
                while tokio::time::Instant::now() < deadline {
                    match client
                        .create_product(concord_testkit::shop::admin(
                            concord_testkit::shop::new_product("During", 1, 1),
                        ))
                        .await
                    {
                        Ok(reply) => {
                            terms.insert(reply.into_inner().write.expect("write info").term);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                terms
            })
        })
        .collect();
    let mut terms = Vec::new();
    for writer in writers {
        terms.push(writer.await.unwrap());
    }
    assert_eq!(
        terms,
        vec![std::collections::BTreeSet::from([term]), Default::default()],
        "only the primary takes writes, in its term"
    );
    assert_eq!(primaries(registry.addr).await, vec![a.addr.to_string()]);
    a.stop().await;
    b.stop().await;
    registry.stop().await;
}

/// Starts a replica of `primary` on `data_dir`, configured by `configure` first.
async fn start_replica_of(
    primary: &concord_testkit::shop::TestShop,
    data_dir: &std::path::Path,
    configure: impl FnOnce(&mut concord_shop::Config),
) -> concord_testkit::shop::TestShop {
    let primary_addr = primary.addr.to_string();
    start(data_dir, |c| {
        configure(c);
        c.replication.primary_addr = Some(primary_addr);
    })
    .await
}

/// A registry restart forgets every lease until the next KeepAlive. The replica's watch
/// reconnects to a registry that knows no primary yet; that must not look like the
/// primary's death: no promotion, no second term, and the primary keeps its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_restart_does_not_promote_the_replica() {
    let registry = concord_testkit::registry().await;
    let registry_addr = registry.addr;
    let dir = tempfile::tempdir().unwrap();
    // A 3 s lease: the primary renews (and so re-registers) only every second, while the
    // replica's watch reconnects within a few hundred milliseconds, so the replica sees the
    // new registry's primary-less set first.
    let with_registry = |c: &mut concord_shop::Config| {
        registered(registry_addr)(c);
        c.lease_ttl = Duration::from_secs(3);
    };
    let primary = start(&dir.path().join("a"), with_registry).await;
    let replica = start_replica_of(&primary, &dir.path().join("b"), with_registry).await;
    assert!(eventually(WAIT, || async { primaries(registry.addr).await.len() == 1 }).await);
    let mut p = primary.client();
    create(&mut p, "Before the restart", 1, 1).await;

    registry.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(registry_addr).await.unwrap();
    let registry = concord_testkit::registry_serving(listener);

    // Watch the replica for over a lease TTL after the restart.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        let r = replica.status().await;
        assert_eq!(
            (r.role, r.term),
            (pb::Role::Replica as i32, 1),
            "the replica promoted itself after a registry restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        primaries(registry.addr).await,
        vec![primary.addr.to_string()]
    );
    create(&mut p, "After the restart", 1, 1).await;

    primary.stop().await;
    replica.stop().await;
    registry.stop().await;
}
