//! A client in another language: `examples/python-client/run_against_cluster.sh` generates
//! Python stubs from `proto/` with grpcio-tools, starts `concord up --auto-ports` and runs
//! `client.py` against it (discovery through the registry, an idempotent order, a consensus
//! prediction). Needs python3 with pip access to PyPI; fails, never skips, without them.

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use concord_testkit::process;

/// Bound on the whole script: venv and pip install on a cold cache, start-up (≤60 s inside
/// the script) and the client.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The Python client resolves the shop primary and aggregator through the registry, places
/// an order twice with one idempotency key (same order id back) and prints the consensus.
#[test]
fn generated_python_client_orders_and_predicts_against_a_cluster() {
    let python = Command::new("python3").arg("--version").output();
    assert!(
        matches!(&python, Ok(out) if out.status.success()),
        "python3 is required for this test (examples/python-client) and was not found: {python:?}"
    );

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python-client/run_against_cluster.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .env("CONCORD_BIN", process::concord_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let mut child = command.spawn().expect("spawn run_against_cluster.sh");
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));

    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SIGTERM lets the script's EXIT trap stop the cluster; SIGKILL if it lingers.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(25));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");

    let status = status.unwrap_or_else(|| panic!("script ran over {SCRIPT_TIMEOUT:?}\n{report}"));
    assert!(status.success(), "script failed ({status})\n{report}");
    assert!(
        stdout.contains("replayed order id matches: o-"),
        "no replayed-order check in the output\n{report}"
    );
    assert!(
        stdout.contains("consensus: virginica (label 2)"),
        "no consensus line in the output\n{report}"
    );
    assert!(
        stdout.contains("vote node-1 at "),
        "no per-node votes in the output\n{report}"
    );
    assert!(stdout.contains("python-client: OK"), "{report}");
}

/// Reads a pipe to the end on a thread, so neither pipe can fill up and stall the script.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
