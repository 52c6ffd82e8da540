//! The real grpcurl `list` (v1alpha reflection) against every kind of server process: each
//! lists only the services it runs, plus health and reflection.

use std::net::SocketAddr;

use concord_testkit::process::{run_grpcurl, Process};

const COMMON: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What `grpcurl list` prints, sorted.
fn listed(addr: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = run_grpcurl(addr, &[], &["list"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn expected(own: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = own
        .iter()
        .chain(COMMON.iter())
        .map(|s| (*s).to_owned())
        .collect();
    names.sort();
    names
}

/// Registry, node, aggregator (with its ledger) and shop each list exactly their own
/// services; a name another role serves never shows up.
#[test]
fn each_server_lists_only_its_own_services() {
    let data = tempfile::tempdir().expect("tempdir");
    let registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    let registry_addr = registry.addr.to_string();
    let node = Process::spawn(&[
        "node",
        "--listen",
        "127.0.0.1:0",
        "--id",
        "node-1",
        "--registry",
        &registry_addr,
    ]);
    let ledger = data.path().join("ledger");
    let aggregator = Process::spawn(&[
        "aggregator",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        &registry_addr,
        "--ledger-path",
        ledger.to_str().expect("utf-8 path"),
    ]);
    let shop_dir = data.path().join("shop");
    let shop = Process::spawn(&[
        "shop",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        shop_dir.to_str().expect("utf-8 path"),
    ]);

    let cases: [(&str, &Process, &[&str]); 4] = [
        ("registry", &registry, &["concord.registry.v1.Registry"]),
        ("node", &node, &["concord.predict.v1.Predictor"]),
        (
            "aggregator",
            &aggregator,
            &["concord.predict.v1.Predictor", "concord.stake.v1.Staking"],
        ),
        (
            "shop",
            &shop,
            &["concord.shop.v1.Replication", "concord.shop.v1.Shop"],
        ),
    ];
    for (role, process, own) in cases {
        assert_eq!(listed(process.addr), expected(own), "{role}");
    }
}
