//! The gateway registers itself: `concord status` lists a running `concord gateway`, stops
//! listing it at once after a clean stop (it deregisters), and after its lease expires when
//! it is killed with SIGKILL (nothing deregisters it then).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use concord_testkit::process::{command, Process};

/// How long registration or lease expiry may take to show (TTL 1 s here).
const WAIT: Duration = Duration::from_secs(15);

/// `concord status --registry <registry>`'s stdout; panics when it fails.
fn status(registry: SocketAddr) -> String {
    let output = command(&["status", "--registry", &registry.to_string()])
        .output()
        .expect("run concord status");
    assert!(
        output.status.success(),
        "concord status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether the status table has a `gateway` row for `addr`.
fn lists_gateway(table: &str, addr: SocketAddr) -> bool {
    table
        .lines()
        .any(|line| line.starts_with("gateway ") && line.contains(&addr.to_string()))
}

/// Polls `concord status` until `ok` accepts the table; returns the last table and whether
/// `ok` accepted it before [`WAIT`].
fn poll_status(registry: SocketAddr, ok: impl Fn(&str) -> bool) -> (String, bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let table = status(registry);
        if ok(&table) {
            return (table, true);
        }
        if Instant::now() > deadline {
            return (table, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running gateway is listed (service `gateway`, `protocol=http`); after SIGTERM it is
/// gone as soon as the process has exited.
#[test]
fn status_lists_the_gateway_until_it_stops() {
    let registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    let mut gateway = Process::spawn(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        &registry.addr.to_string(),
    ]);
    let (table, listed) = poll_status(registry.addr, |t| lists_gateway(t, gateway.addr));
    assert!(listed, "gateway {} not listed:\n{table}", gateway.addr);
    assert!(table.contains("protocol=http"), "{table}");

    assert!(gateway.terminate(Duration::from_secs(10)), "clean exit");
    let table = status(registry.addr);
    assert!(
        !lists_gateway(&table, gateway.addr),
        "still listed after a clean stop:\n{table}"
    );
}

/// A gateway killed with SIGKILL cannot deregister: its row disappears when the lease
/// expires.
#[test]
fn killed_gateway_leaves_status_when_its_lease_expires() {
    let registry = Process::spawn(&["registry", "--listen", "127.0.0.1:0"]);
    let mut gateway = Process::spawn(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--registry",
        &registry.addr.to_string(),
        "--lease-ttl",
        "1s",
    ]);
    let (table, listed) = poll_status(registry.addr, |t| lists_gateway(t, gateway.addr));
    assert!(listed, "gateway {} not listed:\n{table}", gateway.addr);

    gateway.kill9();
    let (table, gone) = poll_status(registry.addr, |t| !lists_gateway(t, gateway.addr));
    assert!(gone, "killed gateway still listed after {WAIT:?}:\n{table}");
}
