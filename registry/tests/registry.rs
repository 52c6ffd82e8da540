//! Registry over loopback: leases, watches, restarts and bad input, against a real server
//! on 127.0.0.1:0.

use std::{collections::HashMap, time::Duration};

use concord::{
    discovery::{LeaseKeeper, Registration},
    identity::{Credential, Principal},
    pb::registry::v1::{
        registry_client::RegistryClient, DeregisterRequest, KeepAliveRequest, RegisterRequest,
        ResolveRequest, WatchRequest,
    },
};
use concord_testkit::{credential, Running};
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

/// node-1's credential, and the metadata a predictor registration of node-1 needs.
fn node1() -> (Credential, HashMap<String, String>) {
    (
        credential(Principal::Node("node-1".into())),
        HashMap::from([("node_id".into(), "node-1".into())]),
    )
}

fn register_request(service: &str, address: &str, ttl_ms: u64) -> RegisterRequest {
    RegisterRequest {
        service: service.into(),
        address: address.into(),
        metadata: HashMap::new(),
        ttl_ms,
    }
}

/// A lease that is not renewed expires on time, and a watcher sees it come and go.
#[tokio::test]
async fn lease_expiry_reaches_watchers() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let mut watch = client
        .watch(WatchRequest {
            service: "predictor".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("initial set");
    assert!(first.instances.is_empty());

    let (node1, metadata) = node1();
    let lease = client
        .register(signed(
            &node1,
            RegisterRequest {
                metadata,
                ..register_request("predictor", "127.0.0.1:7001", 1000)
            },
        ))
        .await
        .expect("register")
        .into_inner();
    let added = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("update in time")
        .expect("stream")
        .expect("message");
    assert_eq!(added.instances.len(), 1);
    assert_eq!(added.instances[0].address, "127.0.0.1:7001");

    let started = tokio::time::Instant::now();
    let removed = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("expiry in time")
        .expect("stream")
        .expect("message");
    assert!(removed.instances.is_empty());
    assert!(removed.revision > added.revision);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "expired too early: {waited:?}"
    );
    let err = client
        .keep_alive(signed(
            &node1,
            KeepAliveRequest {
                lease_id: lease.lease_id,
                metadata: None,
            },
        ))
        .await
        .expect_err("expired lease");
    assert_eq!(err.code(), Code::NotFound);
    registry.stop().await;
}

/// Deregister removes the instance at once and watchers hear it; metadata changes too.
#[tokio::test]
async fn deregister_and_metadata_changes_are_streamed() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let shop = credential(Principal::Shop);
    let lease = client
        .register(signed(
            &shop,
            register_request("shop", "127.0.0.1:7002", 10_000),
        ))
        .await
        .expect("register")
        .into_inner();
    let mut watch = client
        .watch(WatchRequest {
            service: "shop".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("set");
    assert_eq!(first.instances.len(), 1);

    client
        .keep_alive(signed(
            &shop,
            KeepAliveRequest {
                lease_id: lease.lease_id.clone(),
                metadata: Some(concord::pb::registry::v1::Metadata {
                    entries: HashMap::from([("role".into(), "primary".into())]),
                }),
            },
        ))
        .await
        .expect("keep alive");
    let changed = watch.message().await.expect("stream").expect("set");
    assert_eq!(
        changed.instances[0]
            .metadata
            .get("role")
            .map(String::as_str),
        Some("primary")
    );

    client
        .deregister(signed(
            &shop,
            DeregisterRequest {
                lease_id: lease.lease_id.clone(),
            },
        ))
        .await
        .expect("deregister");
    let gone = watch.message().await.expect("stream").expect("set");
    assert!(gone.instances.is_empty());
    let resolved = client
        .resolve(ResolveRequest {
            service: "shop".into(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert!(resolved.instances.is_empty());
    registry.stop().await;
}

/// After a registry restart, a LeaseKeeper's next keep-alive gets NOT_FOUND and it
/// registers again, so the new registry knows it within about one heartbeat.
#[tokio::test]
async fn lease_keeper_heals_after_registry_restart() {
    let registry = concord_testkit::registry().await;
    let addr = registry.addr;
    let (node1, mut metadata) = node1();
    metadata.insert("model".into(), "knn".into());
    let mut keeper = LeaseKeeper::spawn(
        &addr.to_string(),
        Registration {
            service: "predictor".into(),
            address: "127.0.0.1:7003".into(),
            metadata,
            ttl: Duration::from_secs(1),
            credential: Some(node1),
        },
    )
    .expect("keeper");
    assert!(keeper.wait_registered(Duration::from_secs(3)).await);
    let first_lease = keeper.lease_id().expect("lease");
    registry.stop().await;

    let restarted = concord_testkit::registry_on(addr).await;
    let mut client = client(&restarted);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let instance = loop {
        let found = client
            .resolve(ResolveRequest {
                service: "predictor".into(),
            })
            .await
            .expect("resolve")
            .into_inner()
            .instances;
        if let Some(instance) = found.into_iter().next() {
            break instance;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not re-registered within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(instance.address, "127.0.0.1:7003");
    assert_eq!(
        instance.metadata.get("model").map(String::as_str),
        Some("knn")
    );
    assert!(instance.lease_id.is_empty(), "lease ids are not published");
    assert_ne!(keeper.lease_id(), Some(first_lease));

    keeper.deregister().await;
    let after = client
        .resolve(ResolveRequest {
            service: "predictor".into(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert!(after.instances.is_empty(), "clean shutdown must deregister");
    restarted.stop().await;
}

/// Bad input gets INVALID_ARGUMENT or NOT_FOUND with a message, never a panic.
#[tokio::test]
async fn bad_input_gets_clear_statuses() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let caller = credential(Principal::Gateway);
    let long = "s".repeat(65);
    let cases = [
        (register_request("", "127.0.0.1:1", 5000), "empty"),
        (register_request(&long, "127.0.0.1:1", 5000), "limit is 64"),
        (register_request("svc", "not an address", 5000), "host:port"),
        (
            register_request("svc", "127.0.0.1:1", 10),
            "outside 1000..=3600000",
        ),
        (register_request("svc", "127.0.0.1:1", 7_200_000), "outside"),
    ];
    for (request, want) in cases {
        let err = client
            .register(signed(&caller, request.clone()))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}");
        assert!(
            err.message().contains(want),
            "{request:?}: {}",
            err.message()
        );
    }
    for lease_id in ["", "no-such-lease"] {
        let err = client
            .keep_alive(signed(
                &caller,
                KeepAliveRequest {
                    lease_id: lease_id.into(),
                    metadata: None,
                },
            ))
            .await
            .expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
        let err = client
            .deregister(signed(
                &caller,
                DeregisterRequest {
                    lease_id: lease_id.into(),
                },
            ))
            .await
            .expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
    }
    let err = client
        .resolve(ResolveRequest {
            service: "bad/name".into(),
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    registry.stop().await;
}

/// `role`/`term` metadata of a shop.
fn shop_role(role: &str, term: &str) -> HashMap<String, String> {
    HashMap::from([("role".into(), role.into()), ("term".into(), term.into())])
}

/// Issue 15's registry-cut split brain: primary and replica cannot reach the registry for
/// 1.5 TTL (nobody calls it), then come back; watchers never saw the primary vanish, the
/// replica's term-2 claim is refused while the primary renews, and the primary keeps its
/// lease.
#[tokio::test]
async fn a_cut_off_registry_expires_nobody_and_refuses_the_replicas_claim() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let shop = credential(Principal::Shop);
    let register = |address: &str, role: &str| RegisterRequest {
        metadata: shop_role(role, "1"),
        ..register_request("shop", address, 1000)
    };
    let primary = client
        .register(signed(&shop, register("127.0.0.1:7101", "primary")))
        .await
        .expect("primary")
        .into_inner()
        .lease_id;
    let replica = client
        .register(signed(&shop, register("127.0.0.1:7102", "replica")))
        .await
        .expect("replica")
        .into_inner()
        .lease_id;
    let mut watch = client
        .watch(WatchRequest {
            service: "shop".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("initial set");
    assert_eq!(first.instances.len(), 2);
    for lease_id in [&primary, &replica] {
        client
            .keep_alive(signed(
                &shop,
                KeepAliveRequest {
                    lease_id: lease_id.clone(),
                    metadata: None,
                },
            ))
            .await
            .expect("renewed before the cut");
    }

    // The cut: 1.5 TTL without a call. Whatever the watcher hears still has the primary.
    let cut = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(update) = tokio::time::timeout_at(cut, watch.message()).await {
        let update = update.expect("stream").expect("message");
        assert!(
            update
                .instances
                .iter()
                .any(|i| i.address == "127.0.0.1:7101"),
            "the primary vanished while the registry was cut off: {:?}",
            update.instances
        );
    }

    // After the heal the replica tries to promote itself, as its failover watch would.
    let claim = shop_role("primary", "2");
    let refused = match client
        .keep_alive(signed(
            &shop,
            KeepAliveRequest {
                lease_id: replica.clone(),
                metadata: Some(concord::pb::registry::v1::Metadata {
                    entries: claim.clone(),
                }),
            },
        ))
        .await
    {
        Err(status) if status.code() == Code::NotFound => client
            .register(signed(
                &shop,
                RegisterRequest {
                    metadata: claim,
                    ..register_request("shop", "127.0.0.1:7102", 1000)
                },
            ))
            .await
            .expect_err("the replica's re-registration as term 2"),
        Err(status) => status,
        Ok(_) => panic!("the registry accepted term 2 while the term-1 primary lives"),
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("live lease"), "{refused:?}");
    client
        .keep_alive(signed(
            &shop,
            KeepAliveRequest {
                lease_id: primary,
                metadata: None,
            },
        ))
        .await
        .expect("the primary still holds its lease");
    registry.stop().await;
}
