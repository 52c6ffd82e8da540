//! The registry's etcd store against a real etcd (started by the test on 127.0.0.1 with free
//! ports, data in a tempdir, killed at the end): two registry instances share one cluster's
//! leases, claims and watches. Skipped with a message when there is no `etcd` binary,
//! except in CI.

use std::{collections::HashMap, time::Duration};

use concord::{
    identity::{Credential, Principal},
    pb::registry::v1::{
        registry_client::RegistryClient, DeregisterRequest, KeepAliveRequest, Metadata,
        RegisterRequest, ResolveRequest, WatchRequest,
    },
};
use concord_testkit::{credential, etcd::EtcdCluster, registry_on_etcd, Running};
use tonic::{transport::Channel, Code, Request};

/// A client of `registry`.
fn client(registry: &Running<tonic::transport::Error>) -> RegistryClient<Channel> {
    RegistryClient::new(registry.channel())
}

/// `message` carrying `credential`.
fn signed<T>(credential: &Credential, message: T) -> Request<T> {
    let mut request = Request::new(message);
    credential.attach(&mut request);
    request
}

/// A shop registration at `address` with `role`/`term` metadata.
fn shop_at(address: &str, role: &str, term: u64, ttl_ms: u64) -> RegisterRequest {
    RegisterRequest {
        service: "shop".into(),
        address: address.into(),
        metadata: HashMap::from([
            ("role".into(), role.into()),
            ("term".into(), term.to_string()),
        ]),
        ttl_ms,
    }
}

/// The live instances of `service` as `registry` sees them.
async fn resolve(client: &mut RegistryClient<Channel>, service: &str) -> Vec<String> {
    client
        .resolve(ResolveRequest {
            service: service.into(),
        })
        .await
        .expect("resolve")
        .into_inner()
        .instances
        .into_iter()
        .map(|i| i.address)
        .collect()
}

/// Two registries on one etcd, racing claims for the same term through each: in every
/// round exactly one is accepted, the other is FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_never_accept_two_primaries_for_one_term() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (
        registry_on_etcd(&etcd.endpoints()).await,
        registry_on_etcd(&etcd.endpoints()).await,
    );
    let shop = credential(Principal::Shop);
    for term in 1..=10u64 {
        let (mut via_a, mut via_b) = (client(&a), client(&b));
        let (first, second) = tokio::join!(
            via_a.register(signed(
                &shop,
                shop_at("127.0.0.1:7201", "primary", term, 5000)
            )),
            via_b.register(signed(
                &shop,
                shop_at("127.0.0.1:7202", "primary", term, 5000)
            )),
        );
        let (winner, loser) = match (first, second) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won.into_inner(), lost),
            (Ok(_), Ok(_)) => panic!("two primaries accepted for term {term}"),
            (Err(x), Err(y)) => panic!("no claim accepted for term {term}: {x:?} / {y:?}"),
        };
        assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");
        let primaries = resolve(&mut client(&b), "shop").await;
        assert_eq!(primaries.len(), 1, "term {term}: {primaries:?}");
        // The winner steps away so that the next round can claim term + 1.
        client(&a)
            .deregister(signed(
                &shop,
                DeregisterRequest {
                    lease_id: winner.lease_id,
                },
            ))
            .await
            .expect("deregister through the other registry");
    }
    a.stop().await;
    b.stop().await;
}

/// A lease registered through one registry expires in etcd when nobody renews it: the
/// other registry stops listing it within TTL + etcd's rounding, and KeepAlive is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_in_etcd_when_its_holder_stops_renewing() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (
        registry_on_etcd(&etcd.endpoints()).await,
        registry_on_etcd(&etcd.endpoints()).await,
    );
    let node = credential(Principal::Node("node-1".into()));
    let lease = client(&a)
        .register(signed(
            &node,
            RegisterRequest {
                service: "predictor".into(),
                address: "127.0.0.1:7301".into(),
                metadata: HashMap::from([("node_id".into(), "node-1".into())]),
                ttl_ms: 1000,
            },
        ))
        .await
        .expect("register")
        .into_inner();
    // Renewed through the other registry: the lease lives in etcd, not in one registry.
    let renewed = client(&b)
        .keep_alive(signed(
            &node,
            KeepAliveRequest {
                lease_id: lease.lease_id.clone(),
                metadata: None,
            },
        ))
        .await
        .expect("renew through b")
        .into_inner();
    assert!(renewed.ttl_ms >= 900, "{renewed:?}");
    // Someone else's KeepAlive on it is NOT_FOUND, as on one registry.
    let thief = client(&b)
        .keep_alive(signed(
            &credential(Principal::Shop),
            KeepAliveRequest {
                lease_id: lease.lease_id.clone(),
                metadata: None,
            },
        ))
        .await
        .expect_err("not the owner");
    assert_eq!(thief.code(), Code::NotFound);
    let started = tokio::time::Instant::now();
    assert_eq!(resolve(&mut client(&b), "predictor").await.len(), 1);
    loop {
        if resolve(&mut client(&b), "predictor").await.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease outlived its TTL by far"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = started.elapsed();
    println!("lease gone from etcd {waited:?} after its last renewal (TTL 1 s)");
    assert!(
        waited >= Duration::from_millis(800),
        "expired early: {waited:?}"
    );
    let err = client(&a)
        .keep_alive(signed(
            &node,
            KeepAliveRequest {
                lease_id: lease.lease_id,
                metadata: None,
            },
        ))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    a.stop().await;
    b.stop().await;
}

/// The next instance set on `watch`, within 3 s.
async fn next(
    watch: &mut tonic::Streaming<concord::pb::registry::v1::WatchResponse>,
) -> Vec<concord::pb::registry::v1::Instance> {
    tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("an update in time")
        .expect("stream")
        .expect("message")
        .instances
}

/// A Watch on one registry hears registrations, metadata changes and deregistrations made
/// through the other, and a term + 1 claim is refused while the primary lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_changes_made_through_the_other_registry() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (
        registry_on_etcd(&etcd.endpoints()).await,
        registry_on_etcd(&etcd.endpoints()).await,
    );
    let shop = credential(Principal::Shop);
    let mut watch = client(&b)
        .watch(WatchRequest {
            service: "shop".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert!(next(&mut watch).await.is_empty());
    let primary = client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7401", "primary", 1, 5000)))
        .await
        .expect("primary")
        .into_inner();
    let seen = next(&mut watch).await;
    assert_eq!(seen.len(), 1);
    assert!(seen[0].lease_id.is_empty(), "lease ids are not published");
    let replica = client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7402", "replica", 1, 5000)))
        .await
        .expect("replica")
        .into_inner();
    assert_eq!(next(&mut watch).await.len(), 2);
    let claim = |lease_id: &str, role: &str, term: u64| KeepAliveRequest {
        lease_id: lease_id.to_owned(),
        metadata: Some(Metadata {
            entries: shop_at("x", role, term, 0).metadata,
        }),
    };
    let refused = client(&b)
        .keep_alive(signed(&shop, claim(&replica.lease_id, "primary", 2)))
        .await
        .expect_err("term 2 while the term-1 primary lives");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("live lease"), "{refused:?}");
    client(&b)
        .keep_alive(signed(&shop, claim(&primary.lease_id, "replica", 1)))
        .await
        .expect("the primary steps down");
    let stepped_down = next(&mut watch).await;
    assert!(stepped_down
        .iter()
        .all(|i| i.metadata.get("role").map(String::as_str) == Some("replica")));
    client(&a)
        .keep_alive(signed(&shop, claim(&replica.lease_id, "primary", 2)))
        .await
        .expect("term 2 once nobody holds term 1");
    let promoted = next(&mut watch).await;
    assert_eq!(
        promoted
            .iter()
            .find(|i| i.address == "127.0.0.1:7402")
            .and_then(|i| i.metadata.get("term"))
            .map(String::as_str),
        Some("2")
    );
    client(&a)
        .deregister(signed(
            &shop,
            DeregisterRequest {
                lease_id: primary.lease_id,
            },
        ))
        .await
        .expect("deregister");
    assert_eq!(next(&mut watch).await.len(), 1);
    a.stop().await;
    b.stop().await;
}

/// A member that stops answering without closing its connections (frozen, as when it is
/// cut off) costs a call one short attempt: the call is answered by another member, and a
/// watch open on the silent member ends so that its owner reopens it elsewhere (before,
/// the watch waited on the silent member for as long as it was silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_left_by_calls_and_watches() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let client = etcd.client();
    let mut watch = client.watch_prefix(b"/silent/", 0).await.expect("watch");
    // The member the watch is on (the first, unless it was slow to answer).
    let silent = watch.member();
    etcd.freeze(silent);
    // If the silent member led, the others first elect a leader (a second or so; more on a
    // loaded machine) and a round of calls may find no member that can answer yet: the
    // registry's callers retry, and so does this check, within the same 5 s.
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.get(b"/silent/x").await {
                Ok(found) => break Ok(found),
                Err(concord::etcd::EtcdError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => break Err(e),
            }
        }
    })
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    etcd.thaw(silent);
    assert!(
        matches!(answered, Ok(Ok(_))),
        "another member should answer: {answered:?}"
    );
    assert!(
        matches!(ended, Ok(Err(_))),
        "the watch on the silent member should end: {ended:?}"
    );
}

/// `shop_at` with a log position (`log_term`, `log_lsn`).
fn shop_with_log(address: &str, role: &str, term: u64, log: (u64, u64)) -> RegisterRequest {
    let mut request = shop_at(address, role, term, 5000);
    request
        .metadata
        .insert("log_term".into(), log.0.to_string());
    request.metadata.insert("log_lsn".into(), log.1.to_string());
    request
}

/// Only the newest log opens a term, on etcd as in memory, whichever registry is asked,
/// even one started after the claims (the position lives in etcd with the term): the
/// double stop's stale shop is refused term 3 over term 2's writes; the newest shop gets
/// its term back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_log_claims_through_any_registry() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let a = registry_on_etcd(&etcd.endpoints()).await;
    let shop = credential(Principal::Shop);
    let (stale, newest) = ("127.0.0.1:7301", "127.0.0.1:7302");
    // Term 1's primary, then its caught-up replica's claim to term 2 once it is gone.
    let one = client(&a)
        .register(signed(&shop, shop_with_log(stale, "primary", 1, (0, 0))))
        .await
        .expect("term 1")
        .into_inner();
    client(&a)
        .deregister(signed(
            &shop,
            DeregisterRequest {
                lease_id: one.lease_id,
            },
        ))
        .await
        .expect("term 1's primary stops");
    let two = client(&a)
        .register(signed(&shop, shop_with_log(newest, "primary", 2, (1, 40))))
        .await
        .expect("term 2")
        .into_inner();
    client(&a)
        .deregister(signed(
            &shop,
            DeregisterRequest {
                lease_id: two.lease_id,
            },
        ))
        .await
        .expect("term 2's primary stops");
    // A registry started now reads the newest position from etcd.
    let b = registry_on_etcd(&etcd.endpoints()).await;
    for registry in [&a, &b] {
        let refused = client(registry)
            .register(signed(&shop, shop_with_log(stale, "primary", 3, (1, 38))))
            .await
            .expect_err("a stale log claimed a new term");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("behind the newest log"),
            "{refused:?}"
        );
    }
    client(&b)
        .register(signed(&shop, shop_with_log(newest, "primary", 2, (2, 90))))
        .await
        .expect("the holder claims its term again");
    a.stop().await;
    b.stop().await;
}

/// Renews `lease_id` as `credential` through `registry`; the status code on failure.
async fn renew(
    registry: &Running<tonic::transport::Error>,
    credential: &Credential,
    lease_id: &str,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), Code> {
    client(registry)
        .keep_alive(signed(
            credential,
            KeepAliveRequest {
                lease_id: lease_id.to_owned(),
                metadata: metadata.map(|entries| Metadata { entries }),
            },
        ))
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

/// Issue 15, gap 2: both registries are cut off from the shops (not from etcd) for longer
/// than the shops' TTL. Neither hears any shop, so neither may let etcd expire their
/// leases: after the heal the primary's lease is live and the replica cannot take term 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_silent_towards_the_shops_expire_no_shop_on_etcd() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (
        registry_on_etcd(&etcd.endpoints()).await,
        registry_on_etcd(&etcd.endpoints()).await,
    );
    let shop = credential(Principal::Shop);
    let primary = client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7501", "primary", 1, 1500)))
        .await
        .expect("primary")
        .into_inner();
    let replica = client(&b)
        .register(signed(&shop, shop_at("127.0.0.1:7502", "replica", 1, 1500)))
        .await
        .expect("replica")
        .into_inner();
    // The cut: nobody reaches either registry for three TTLs.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        resolve(&mut client(&b), "shop").await.len(),
        2,
        "a registry that heard no shop let etcd expire them"
    );
    // The heal: the replica, first back, tries to promote itself; refused.
    let claim = shop_at("x", "primary", 2, 0).metadata;
    assert_eq!(
        renew(&b, &shop, &replica.lease_id, Some(claim)).await,
        Err(Code::FailedPrecondition),
        "term 2 accepted past a primary that never died"
    );
    assert_eq!(renew(&a, &shop, &primary.lease_id, None).await, Ok(()));
    a.stop().await;
    b.stop().await;
}

/// The hold is for a registry that hears nobody: while a registry still hears the replica
/// (the shops moved to it), the other one, silent, does not keep a dead primary alive; its
/// lease expires in etcd within a few TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_expires_while_another_registry_hears_the_replica() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (
        registry_on_etcd(&etcd.endpoints()).await,
        registry_on_etcd(&etcd.endpoints()).await,
    );
    let shop = credential(Principal::Shop);
    let primary = client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7601", "primary", 1, 1500)))
        .await
        .expect("primary")
        .into_inner();
    let replica = client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7602", "replica", 1, 1500)))
        .await
        .expect("replica")
        .into_inner();
    // `a` is cut off from the shops; the replica moved to `b` and renews there; the
    // primary died.
    let started = tokio::time::Instant::now();
    loop {
        assert_eq!(renew(&b, &shop, &replica.lease_id, None).await, Ok(()));
        if resolve(&mut client(&b), "shop").await.len() == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the dead primary's lease was held while a registry heard the replica"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let claim = shop_at("x", "primary", 2, 0).metadata;
    assert_eq!(
        renew(&b, &shop, &replica.lease_id, Some(claim)).await,
        Ok(())
    );
    assert_eq!(
        renew(&a, &shop, &primary.lease_id, None).await,
        Err(Code::NotFound)
    );
    a.stop().await;
    b.stop().await;
}

/// A shop that really died during the cut of both registries is held only until the heal:
/// once the registries hear the survivor again, the dead one expires within a few TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_that_died_during_the_cut_expires_after_the_heal() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let (a, b) = (
        registry_on_etcd(&etcd.endpoints()).await,
        registry_on_etcd(&etcd.endpoints()).await,
    );
    let shop = credential(Principal::Shop);
    client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7701", "primary", 1, 1500)))
        .await
        .expect("primary");
    let replica = client(&a)
        .register(signed(&shop, shop_at("127.0.0.1:7702", "replica", 1, 1500)))
        .await
        .expect("replica")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // The heal: only the replica comes back.
    let healed = tokio::time::Instant::now();
    loop {
        assert_eq!(renew(&a, &shop, &replica.lease_id, None).await, Ok(()));
        if resolve(&mut client(&b), "shop").await.len() == 1 {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "the dead primary was held long after the heal"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("dead primary gone {:?} after the heal", healed.elapsed());
    a.stop().await;
    b.stop().await;
}

/// Issue 15, gap 1: an etcd that serves TLS and requires client certificates refuses a
/// registry that dials it in plaintext, without a client certificate, or with one of
/// another CA (its Register fails, nothing is written); with the accepted certificate the
/// registry works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_etcd_refuses_a_registry_without_the_client_certificate() {
    use concord::etcd::{EtcdSecurity, EtcdTls};
    let Some(etcd) = EtcdCluster::start_tls(1).await else {
        return;
    };
    let pki = etcd.pki().expect("a TLS cluster").clone();
    let endpoints = etcd.endpoints();
    let tls = |client: Option<(&std::path::Path, &std::path::Path)>| EtcdSecurity {
        tls: Some(EtcdTls::load(&pki.ca, client).expect("PEM")),
        auth: None,
    };
    let refused = [
        ("plaintext", EtcdSecurity::default()),
        ("no client certificate", tls(None)),
        (
            "a client certificate of another CA",
            tls(Some((&pki.stranger_cert, &pki.stranger_key))),
        ),
    ];
    let node = credential(Principal::Node("node-1".into()));
    let register = |address: &str| {
        signed(
            &node,
            RegisterRequest {
                service: "predictor".into(),
                address: address.into(),
                metadata: HashMap::from([("node_id".into(), "node-1".into())]),
                ttl_ms: 5000,
            },
        )
    };
    for (what, security) in refused {
        let registry = concord_testkit::registry_on_etcd_with(&endpoints, &security).await;
        let err = client(&registry)
            .register(register("127.0.0.1:7801"))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unavailable, "{what}: {err:?}");
        println!("{what}: refused ({})", err.message());
        registry.stop().await;
    }
    assert!(
        etcd.client()
            .range_prefix(b"/concord/")
            .await
            .expect("read with the accepted certificate")
            .kvs
            .is_empty(),
        "a refused registry wrote to etcd"
    );
    let registry = concord_testkit::registry_on_etcd_with(&endpoints, &etcd.security()).await;
    client(&registry)
        .register(register("127.0.0.1:7801"))
        .await
        .expect("register with the accepted client certificate");
    assert_eq!(
        resolve(&mut client(&registry), "predictor").await,
        vec!["127.0.0.1:7801".to_owned()]
    );
    registry.stop().await;
}

/// Issue 15, gap 1: an etcd with authentication on refuses a registry without a user or
/// with a wrong password (nothing written), and serves one with the right password (its
/// token is sent on every call, watches included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_with_auth_refuses_a_registry_without_the_password() {
    use concord::etcd::{EtcdAuth, EtcdSecurity};
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    etcd.enable_auth("s3cret-pw").await;
    let endpoints = etcd.endpoints();
    let user = |password: &str| EtcdSecurity {
        tls: None,
        auth: Some(EtcdAuth {
            user: "root".into(),
            password: password.into(),
        }),
    };
    let node = credential(Principal::Node("node-1".into()));
    let register = |address: &str| {
        signed(
            &node,
            RegisterRequest {
                service: "predictor".into(),
                address: address.into(),
                metadata: HashMap::from([("node_id".into(), "node-1".into())]),
                ttl_ms: 5000,
            },
        )
    };
    for (what, security) in [
        ("no user", EtcdSecurity::default()),
        ("a wrong password", user("guess")),
    ] {
        let registry = concord_testkit::registry_on_etcd_with(&endpoints, &security).await;
        let err = client(&registry)
            .register(register("127.0.0.1:7901"))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unavailable, "{what}: {err:?}");
        println!("{what}: refused ({})", err.message());
        registry.stop().await;
    }
    let registry = concord_testkit::registry_on_etcd_with(&endpoints, &user("s3cret-pw")).await;
    let mut watch = client(&registry)
        .watch(WatchRequest {
            service: "predictor".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert!(
        next(&mut watch).await.is_empty(),
        "a refused registry wrote to etcd"
    );
    client(&registry)
        .register(register("127.0.0.1:7901"))
        .await
        .expect("register with the right password");
    assert_eq!(
        next(&mut watch).await.len(),
        1,
        "the watch (with the token) heard it"
    );
    registry.stop().await;
}
