//! The registry's metrics page, scraped from a real registry with real leases and watches.

use std::{collections::HashMap, time::Duration};

use concord::{
    identity::Principal,
    pb::registry::v1::{
        registry_client::RegistryClient, KeepAliveRequest, RegisterRequest, WatchRequest,
    },
};
use concord_testkit::{credential, metrics};
use tonic::Request;

/// Two live leases and two open watches are on the page; when one lease is left to
/// expire while the other is renewed, the lease gauge drops and the expiry counter moves.
/// (A registry that hears from nobody expires nobody: it may be the one cut off.)
#[tokio::test]
async fn leases_watchers_and_expiry() {
    let registry = concord_testkit::registry().await;
    let mut client = RegistryClient::new(registry.channel());
    let mut watches = Vec::new();
    for _ in 0..2 {
        let mut watch = client
            .watch(WatchRequest {
                service: "predictor".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        watch.message().await.expect("stream").expect("initial set");
        watches.push(watch);
    }
    let mut kept = String::new();
    for (node, ttl_ms) in [("node-1", 60_000), ("node-2", 1_000)] {
        let mut request = Request::new(RegisterRequest {
            service: "predictor".into(),
            address: format!("127.0.0.1:{}", if node == "node-1" { 7001 } else { 7002 }),
            metadata: HashMap::from([("node_id".into(), node.into())]),
            ttl_ms,
        });
        credential(Principal::Node(node.into())).attach(&mut request);
        let lease = client
            .register(request)
            .await
            .expect("register")
            .into_inner();
        if node == "node-1" {
            kept = lease.lease_id;
        }
    }
    let (addr, _stop) = metrics::serve().await;
    let page = metrics::scrape(addr).await;
    let leases = || [("service", "predictor")];
    assert_eq!(page.value("concord_registry_leases", &leases()), 2.0);
    assert_eq!(page.value("concord_registry_watchers", &[]), 2.0);
    let expired_before = page.value("concord_registry_leases_expired_total", &[]);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = metrics::scrape(addr).await;
        if page.value("concord_registry_leases", &leases()) == 1.0 {
            assert_eq!(
                page.value("concord_registry_leases_expired_total", &[]),
                expired_before + 1.0
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", page.text);
        let mut renew = Request::new(KeepAliveRequest {
            lease_id: kept.clone(),
            metadata: None,
        });
        credential(Principal::Node("node-1".into())).attach(&mut renew);
        client.keep_alive(renew).await.expect("renew node-1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(watches);
}
