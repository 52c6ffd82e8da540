//! Registry identity and bounds over loopback: who may register what, who owns a lease,
//! what the registry publishes, and how far a flood can grow it. Each test is an attack
//! from issue 13 against a real registry on 127.0.0.1:0.

use std::{collections::HashMap, time::Duration};

use concord::{
    identity::{Credential, Principal},
    pb::registry::v1::{
        registry_client::RegistryClient, DeregisterRequest, KeepAliveRequest, ListRequest,
        Metadata, RegisterRequest, RegisterResponse, ResolveRequest, WatchRequest,
    },
};
use concord_testkit::{credential, Running};
use prost::Message;
use tonic::{transport::Channel, Code, Request, Status};

/// A client of `registry`.
fn client(registry: &Running<tonic::transport::Error>) -> RegistryClient<Channel> {
    RegistryClient::new(registry.channel())
}

/// `message` carrying `credential`, if any.
fn signed<T>(credential: Option<&Credential>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(credential) = credential {
        credential.attach(&mut request);
    }
    request
}

fn node(id: &str) -> Credential {
    credential(Principal::Node(id.into()))
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn primary(term: u64) -> HashMap<String, String> {
    labels(&[("role", "primary"), ("term", &term.to_string())])
}

async fn register(
    client: &mut RegistryClient<Channel>,
    credential: Option<&Credential>,
    service: &str,
    address: &str,
    metadata: HashMap<String, String>,
) -> Result<RegisterResponse, Status> {
    let request = RegisterRequest {
        service: service.into(),
        address: address.into(),
        metadata,
        ttl_ms: 10_000,
    };
    client
        .register(signed(credential, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn keep_alive(
    client: &mut RegistryClient<Channel>,
    credential: Option<&Credential>,
    lease_id: &str,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), Status> {
    let request = KeepAliveRequest {
        lease_id: lease_id.into(),
        metadata: metadata.map(|entries| Metadata { entries }),
    };
    client
        .keep_alive(signed(credential, request))
        .await
        .map(drop)
}

async fn resolve(
    client: &mut RegistryClient<Channel>,
    service: &str,
) -> Vec<concord::pb::registry::v1::Instance> {
    client
        .resolve(ResolveRequest {
            service: service.into(),
        })
        .await
        .expect("resolve")
        .into_inner()
        .instances
}

/// Register, KeepAlive and Deregister without a credential (or with a forged one) are
/// UNAUTHENTICATED and register nothing.
#[tokio::test]
async fn anonymous_callers_are_unauthenticated() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let forged = concord::identity::ClusterSecret::new("public-dev-secret")
        .expect("secret")
        .issue(Principal::Shop);
    for who in [None, Some(&forged)] {
        let err = register(&mut client, who, "shop", "127.0.0.1:7100", primary(5))
            .await
            .expect_err("anonymous register");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let lease = register(
        &mut client,
        Some(&node("node-1")),
        "predictor",
        "127.0.0.1:7101",
        labels(&[("node_id", "node-1")]),
    )
    .await
    .expect("node-1 registers")
    .lease_id;
    let err = keep_alive(&mut client, None, &lease, Some(primary(9)))
        .await
        .expect_err("anonymous keep-alive");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = client
        .deregister(DeregisterRequest { lease_id: lease })
        .await
        .expect_err("anonymous deregister");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let instances = resolve(&mut client, "predictor").await;
    assert_eq!(instances.len(), 1);
    assert!(resolve(&mut client, "shop").await.is_empty());
    registry.stop().await;
}

/// A registration naming node-1 needs node-1's credential, and a second node-1 at another
/// address cannot take node-1's place while node-1's lease lives.
#[tokio::test]
async fn impostor_nodes_are_refused() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let node1 = labels(&[("node_id", "node-1")]);
    let err = register(
        &mut client,
        Some(&node("node-2")),
        "predictor",
        "127.0.0.1:7200",
        node1.clone(),
    )
    .await
    .expect_err("node-2 naming node-1");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = register(
        &mut client,
        Some(&node("node-2")),
        "predictor",
        "127.0.0.1:7200",
        HashMap::new(),
    )
    .await
    .expect_err("a predictor without a node_id");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = register(
        &mut client,
        Some(&credential(Principal::Shop)),
        "predictor",
        "127.0.0.1:7200",
        node1.clone(),
    )
    .await
    .expect_err("a shop is no node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    register(
        &mut client,
        Some(&node("node-1")),
        "predictor",
        "127.0.0.1:7201",
        node1.clone(),
    )
    .await
    .expect("node-1 itself");
    let err = register(
        &mut client,
        Some(&node("node-1")),
        "predictor",
        "127.0.0.1:7202",
        node1.clone(),
    )
    .await
    .expect_err("a second node-1 elsewhere");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("127.0.0.1:7201"),
        "{}",
        err.message()
    );
    // The same address again is node-1 restarting: it replaces the old registration.
    register(
        &mut client,
        Some(&node("node-1")),
        "predictor",
        "127.0.0.1:7201",
        node1,
    )
    .await
    .expect("node-1 restarted at its address");
    let instances = resolve(&mut client, "predictor").await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].address, "127.0.0.1:7201");
    registry.stop().await;
}

/// Only a shop may claim role=primary, by Register or by KeepAlive; role services need
/// their role's credential.
#[tokio::test]
async fn only_shops_claim_the_primary() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    for who in [
        node("node-1"),
        credential(Principal::Gateway),
        credential(Principal::Aggregator),
    ] {
        let err = register(
            &mut client,
            Some(&who),
            "shop",
            "127.0.0.1:7300",
            primary(1),
        )
        .await
        .expect_err("not a shop");
        assert_eq!(err.code(), Code::PermissionDenied, "{who:?}: {err:?}");
        let err = register(
            &mut client,
            Some(&who),
            "other",
            "127.0.0.1:7300",
            primary(1),
        )
        .await
        .expect_err("a primary claim in any service");
        assert_eq!(err.code(), Code::PermissionDenied, "{who:?}: {err:?}");
    }
    let lease = register(
        &mut client,
        Some(&credential(Principal::Gateway)),
        "other",
        "127.0.0.1:7301",
        HashMap::new(),
    )
    .await
    .expect("any service is open to any principal")
    .lease_id;
    let err = keep_alive(
        &mut client,
        Some(&credential(Principal::Gateway)),
        &lease,
        Some(primary(1)),
    )
    .await
    .expect_err("promotion by KeepAlive");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for (service, owner) in [
        ("aggregator", Principal::Aggregator),
        ("gateway", Principal::Gateway),
    ] {
        let err = register(
            &mut client,
            Some(&credential(Principal::Shop)),
            service,
            "127.0.0.1:7302",
            HashMap::new(),
        )
        .await
        .expect_err("another role's service");
        assert_eq!(err.code(), Code::PermissionDenied, "{service}: {err:?}");
        register(
            &mut client,
            Some(&credential(owner)),
            service,
            "127.0.0.1:7302",
            HashMap::new(),
        )
        .await
        .expect("its own service");
    }
    let err = register(
        &mut client,
        Some(&credential(Principal::Registry)),
        "other",
        "127.0.0.1:7303",
        HashMap::new(),
    )
    .await
    .expect_err("the registry registers nothing");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(resolve(&mut client, "shop").await.is_empty());
    registry.stop().await;
}

/// A primary claim may only go one term up: u64::MAX and current+100 are refused naming
/// the expected term, T → T+1 is accepted, and the old primary cannot come back at T.
#[tokio::test]
async fn term_jumps_are_refused() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let shop = credential(Principal::Shop);
    let a = register(
        &mut client,
        Some(&shop),
        "shop",
        "127.0.0.1:7400",
        primary(3),
    )
    .await
    .expect("the first primary");
    let b = register(
        &mut client,
        Some(&shop),
        "shop",
        "127.0.0.1:7401",
        labels(&[("role", "replica"), ("term", "3")]),
    )
    .await
    .expect("its replica");
    for term in [u64::MAX, 103] {
        let err = register(
            &mut client,
            Some(&shop),
            "shop",
            "127.0.0.1:7402",
            primary(term),
        )
        .await
        .expect_err("a jump");
        assert_eq!(err.code(), Code::FailedPrecondition, "{term}: {err:?}");
        assert!(err.message().contains("term 4"), "{}", err.message());
        let err = keep_alive(&mut client, Some(&shop), &b.lease_id, Some(primary(term)))
            .await
            .expect_err("a jump by KeepAlive");
        assert_eq!(err.code(), Code::FailedPrecondition, "{term}: {err:?}");
    }
    // The primary is gone; its replica promotes T → T+1.
    client
        .deregister(signed(
            Some(&shop),
            DeregisterRequest {
                lease_id: a.lease_id,
            },
        ))
        .await
        .expect("clean shutdown");
    keep_alive(&mut client, Some(&shop), &b.lease_id, Some(primary(4)))
        .await
        .expect("T+1");
    let err = register(
        &mut client,
        Some(&shop),
        "shop",
        "127.0.0.1:7400",
        primary(3),
    )
    .await
    .expect_err("the old term");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let instances = resolve(&mut client, "shop").await;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].metadata, primary(4));
    registry.stop().await;
}

/// Someone else's lease id lets nobody renew, rewrite or remove it: the primary's
/// instance is unchanged after a hijack and an eviction attempt.
#[tokio::test]
async fn leases_belong_to_their_holder() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let shop = credential(Principal::Shop);
    let lease = register(
        &mut client,
        Some(&shop),
        "shop",
        "127.0.0.1:7500",
        primary(1),
    )
    .await
    .expect("primary")
    .lease_id;
    let before = resolve(&mut client, "shop").await;
    for thief in [node("node-1"), credential(Principal::Gateway)] {
        let err = keep_alive(
            &mut client,
            Some(&thief),
            &lease,
            Some(labels(&[("role", "replica")])),
        )
        .await
        .expect_err("hijack");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let err = client
            .deregister(signed(
                Some(&thief),
                DeregisterRequest {
                    lease_id: lease.clone(),
                },
            ))
            .await
            .expect_err("eviction");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    assert_eq!(resolve(&mut client, "shop").await, before);
    keep_alive(&mut client, Some(&shop), &lease, None)
        .await
        .expect("the holder renews");
    registry.stop().await;
}

/// Resolve, List and Watch show instances, never the lease ids that would let a reader
/// act on them.
#[tokio::test]
async fn lease_ids_are_not_published() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    let lease = register(
        &mut client,
        Some(&credential(Principal::Shop)),
        "shop",
        "127.0.0.1:7600",
        primary(1),
    )
    .await
    .expect("register")
    .lease_id;
    assert!(!lease.is_empty(), "the holder gets its lease id");
    let resolved = resolve(&mut client, "shop").await;
    let listed = client
        .list(ListRequest {})
        .await
        .expect("list")
        .into_inner()
        .instances;
    let watched = client
        .watch(WatchRequest {
            service: "shop".into(),
        })
        .await
        .expect("watch")
        .into_inner()
        .message()
        .await
        .expect("stream")
        .expect("set")
        .instances;
    for (rpc, instances) in [("resolve", resolved), ("list", listed), ("watch", watched)] {
        assert_eq!(instances.len(), 1, "{rpc}");
        assert_eq!(instances[0].lease_id, "", "{rpc} published a lease id");
    }
    registry.stop().await;
}

/// 600 registrations with big metadata from one credentialed principal hit the caps
/// (RESOURCE_EXHAUSTED); List and the shop's Watch still answer, under 4 MiB, and the
/// shop primary is still there.
#[tokio::test]
async fn a_flood_hits_the_caps_and_discovery_still_answers() {
    let registry = concord_testkit::registry().await;
    let mut client = client(&registry);
    register(
        &mut client,
        Some(&credential(Principal::Shop)),
        "shop",
        "127.0.0.1:7700",
        primary(1),
    )
    .await
    .expect("primary");
    let flooder = node("flood");
    let mut accepted = 0;
    let mut exhausted = 0;
    for i in 0..600u32 {
        let metadata: HashMap<String, String> = (0..32)
            .map(|k| (format!("k{k:03}{}", "x".repeat(250)), "v".repeat(256)))
            .collect();
        let metadata = if i % 2 == 0 {
            // Maximal under the per-instance total.
            (0..8).map(|k| (format!("k{k}"), "v".repeat(250))).collect()
        } else {
            metadata
        };
        let service = format!("flood-{}", i % 150);
        match register(
            &mut client,
            Some(&flooder),
            &service,
            &format!("127.0.0.1:{}", 10_000 + i),
            metadata,
        )
        .await
        {
            Ok(_) => accepted += 1,
            Err(err) if err.code() == Code::ResourceExhausted => exhausted += 1,
            Err(err) => assert_eq!(err.code(), Code::InvalidArgument, "{err:?}"),
        }
    }
    assert!(exhausted > 0, "no cap was hit ({accepted} accepted)");
    assert!(
        accepted <= concord_registry::MAX_LEASES_PER_PRINCIPAL,
        "{accepted}"
    );
    let list = tokio::time::timeout(Duration::from_secs(5), client.list(ListRequest {}))
        .await
        .expect("list in time")
        .expect("list answers")
        .into_inner();
    assert!(list.encoded_len() < concord::grpc::MAX_MESSAGE_BYTES);
    let shop = client
        .watch(WatchRequest {
            service: "shop".into(),
        })
        .await
        .expect("watch")
        .into_inner()
        .message()
        .await
        .expect("stream")
        .expect("set");
    assert_eq!(shop.instances.len(), 1);
    assert_eq!(shop.instances[0].metadata, primary(1));
    registry.stop().await;
}
