//! Several `concord registry --etcd` processes on one real 3-member etcd cluster (started by
//! the test on 127.0.0.1 with free ports, data in a tempdir, killed at the end): a client
//! given both registries keeps its lease when one is killed with SIGKILL, and watchers never
//! see it vanish. Skipped with a message when there is no `etcd` binary, except in CI.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use concord::{
    discovery::{LeaseKeeper, Registration, ServiceWatch},
    identity::Principal,
};
use concord_testkit::etcd::EtcdCluster;
use concord_testkit::process::Process;

/// A `concord registry` keeping its leases in `etcd`.
fn registry_on(etcd: &EtcdCluster) -> Process {
    let endpoints = etcd.endpoints().join(",");
    Process::spawn(&["registry", "--listen", "127.0.0.1:0", "--etcd", &endpoints])
}

/// kill -9 the registry a shop primary renews through: it moves to the other registry and
/// keeps its lease (same id, validity never lapses), and a watcher never sees the primary
/// vanish, so a replica would have no reason to fail over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_registry_keeps_every_lease() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let mut first = registry_on(&etcd);
    let second = registry_on(&etcd);
    let list = format!("{},{}", first.addr, second.addr);
    let ttl = Duration::from_secs(1);
    let mut keeper = LeaseKeeper::spawn(
        &list,
        Registration {
            service: "shop".into(),
            address: "127.0.0.1:7501".into(),
            metadata: HashMap::from([
                ("role".into(), "primary".into()),
                ("term".into(), "1".into()),
            ]),
            ttl,
            credential: Some(concord_testkit::credential(Principal::Shop)),
        },
    )
    .expect("keeper");
    assert!(keeper.wait_registered(Duration::from_secs(10)).await);
    let lease = keeper.lease_id().expect("lease");
    let watch = ServiceWatch::spawn(&list, "shop").expect("watch");
    let mut snapshots = watch.subscribe();
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        snapshots.wait_for(|s| s.instances.iter().any(|i| i.address == "127.0.0.1:7501")),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(seen, "the watcher never saw the primary");
    let validity = keeper.lease_validity();

    first.kill9();
    let killed = Instant::now();
    // Watch for three TTLs: the primary stays listed, its lease id and validity hold.
    let mut tightest = Duration::MAX;
    while killed.elapsed() < ttl * 3 {
        let snapshot = snapshots.borrow_and_update().clone();
        assert!(
            snapshot
                .instances
                .iter()
                .any(|i| i.address == "127.0.0.1:7501"),
            "the watcher saw the primary vanish {:?} after the kill: {snapshot:?}",
            killed.elapsed()
        );
        let valid_until = (*validity.borrow()).expect("the lease never lapses");
        let left = valid_until.saturating_duration_since(Instant::now());
        assert!(left > Duration::ZERO, "the lease validity lapsed");
        tightest = tightest.min(left);
        assert_eq!(
            keeper.lease_id().as_deref(),
            Some(lease.as_str()),
            "re-registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "after kill -9 of one registry: same lease, validity never below {} ms of its {} ms TTL",
        tightest.as_millis(),
        ttl.as_millis()
    );
    keeper.deregister().await;
    drop(second);
}
