//! The real grpcurl (v1alpha reflection) against a real `concord registry` process.

use concord_testkit::process::{run_grpcurl, Process};

/// `list` shows the registry, health and reflection; `describe` shows the proto comments;
/// Register (with a shop's credential header) then Resolve round-trips, without the lease
/// id; health answers SERVING.
#[test]
fn grpcurl_lists_describes_and_calls_the_registry() {
    let registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    let addr = registry.addr;

    let services = run_grpcurl(addr, &[], &["list"]);
    for want in [
        "concord.registry.v1.Registry",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(want), "list lacks {want}:\n{services}");
    }

    let described = run_grpcurl(addr, &[], &["describe", "concord.registry.v1.Registry"]);
    assert!(
        described.contains("Register adds an instance of a service"),
        "describe lacks the rpc comment:\n{described}"
    );
    let message = run_grpcurl(
        addr,
        &[],
        &["describe", "concord.registry.v1.RegisterRequest"],
    );
    assert!(message.contains("ttl_ms"), "{message}");

    let header = format!(
        "x-concord-credential: {}",
        concord_testkit::credential(concord::identity::Principal::Shop).encode()
    );
    let registered = run_grpcurl(
        addr,
        &[
            "-H",
            &header,
            "-d",
            r#"{"service":"demo","address":"127.0.0.1:9999","ttl_ms":"60000","metadata":{"role":"primary"}}"#,
        ],
        &["concord.registry.v1.Registry/Register"],
    );
    assert!(registered.contains("leaseId"), "{registered}");
    let resolved = run_grpcurl(
        addr,
        &["-d", r#"{"service":"demo"}"#],
        &["concord.registry.v1.Registry/Resolve"],
    );
    assert!(resolved.contains("127.0.0.1:9999"), "{resolved}");
    assert!(resolved.contains(r#""role": "primary""#), "{resolved}");
    assert!(!resolved.contains("leaseId"), "{resolved}");

    let health = run_grpcurl(addr, &[], &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}

/// SIGTERM stops the registry cleanly (exit status 0).
#[test]
fn registry_stops_gracefully_on_sigterm() {
    let mut registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    assert!(registry.terminate(std::time::Duration::from_secs(10)));
}
