//! `concord up` supervises real processes: a child killed with SIGKILL comes back.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use concord::pb::registry::v1::{registry_client::RegistryClient, ListRequest};
use concord_testkit::process::{command, follow_stdout, wait_for_line, KillOnDrop};

/// Parses `concord up: <name> (<role>) pid <pid> running on <addr>`.
fn running_line(line: &str, name: &str) -> Option<(u32, SocketAddr)> {
    let rest = line.strip_prefix(&format!("concord up: {name} ("))?;
    let (_, rest) = rest.split_once(") pid ")?;
    let (pid, addr) = rest.split_once(" running on ")?;
    Some((pid.parse().ok()?, addr.trim().parse().ok()?))
}

async fn registry_answers(addr: SocketAddr) -> bool {
    let Ok(channel) = concord::grpc::lazy_channel(&addr.to_string()) else {
        return false;
    };
    let mut client = RegistryClient::new(channel);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.list(ListRequest {})).await,
        Ok(Ok(_))
    )
}

/// The launcher starts the registry, restarts it after `kill -9` on the same address, and
/// stops everything on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn up_restarts_a_killed_registry() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = command(&[
        "up",
        "--auto-ports",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn concord up");
    let lines = follow_stdout(&mut up);
    let mut up = KillOnDrop(up);

    let (pid, addr) = wait_for_line(&lines, Duration::from_secs(60), |l| {
        running_line(l, "registry")
    })
    .expect("registry running");
    assert!(registry_answers(addr).await, "registry must answer");

    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    let (new_pid, new_addr) = wait_for_line(&lines, Duration::from_secs(20), |l| {
        running_line(l, "registry")
    })
    .expect("registry restarted");
    assert_ne!(new_pid, pid);
    assert_eq!(new_addr, addr, "a restarted child keeps its address");
    assert!(
        registry_answers(addr).await,
        "restarted registry must answer"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "up did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "up exits 0 after SIGTERM: {status}");
    assert!(
        !registry_answers(addr).await,
        "children are stopped with the launcher"
    );
}

/// Ctrl-C in a terminal: SIGINT reaches the launcher and every child at once. The
/// launcher exits 0 promptly and restarts nothing while it stops the cluster.
#[tokio::test(flavor = "multi_thread")]
async fn up_stops_promptly_on_ctrl_c_to_the_process_group() {
    use std::os::unix::process::CommandExt;

    let data = tempfile::tempdir().expect("tempdir");
    let mut up = command(&[
        "up",
        "--auto-ports",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
    ]);
    up.process_group(0).stdout(Stdio::piped());
    let mut up = up.spawn().expect("spawn concord up");
    let lines = follow_stdout(&mut up);
    let mut up = KillOnDrop(up);
    wait_for_line(&lines, Duration::from_secs(60), |l| {
        l.starts_with("cluster up;").then_some(())
    })
    .expect("cluster up");
    // The table's per-child lines follow "cluster up"; let them all through.
    while lines.recv_timeout(Duration::from_millis(200)).is_ok() {}

    let signalled = std::time::Instant::now();
    // `up` leads its own process group (process_group(0)) and its children inherit it.
    let group = nix::unistd::Pid::from_raw(up.id() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).expect("SIGINT the group");
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "up did not stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "up exits 0 after Ctrl-C: {status}");
    let restarted: Vec<String> = lines
        .try_iter()
        .filter(|l| l.contains("running on"))
        .collect();
    assert!(
        restarted.is_empty(),
        "restarted during shutdown: {restarted:?}"
    );
}
