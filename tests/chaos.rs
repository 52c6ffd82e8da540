//! `concord chaos` end to end: it starts its own cluster (`concord up --auto-ports` as a
//! child), runs the workload under faults injected through the supervisor admin API, and
//! judges. A clean run must pass with a self-contained report; a run against a shop with
//! the planted bug (debug builds only: `CONCORD_PLANTED_BUG=ack-before-replica`, sync
//! writes acknowledged before the replica's ack) must fail and name the violation. The
//! bug's detection does not depend on luck: while the replica is frozen the buggy primary
//! keeps acknowledging writes as replicated, and every status read during the freeze
//! contradicts those claims (a correct primary acknowledges nothing while frozen out).

use std::process::Output;

use concord_testkit::process;

/// Runs `concord chaos` with `flags` and `env`; returns its output and the report's text.
fn chaos(flags: &[&str], env: &[(&str, &str)]) -> (Output, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.html");
    let history = dir.path().join("history.json");
    let mut args = vec!["chaos"];
    args.extend_from_slice(flags);
    args.extend([
        "--report",
        report.to_str().expect("utf-8 path"),
        "--history",
        history.to_str().expect("utf-8 path"),
    ]);
    let mut command = process::command(&args);
    command.env_remove("CONCORD_PLANTED_BUG");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run concord chaos");
    let report = std::fs::read_to_string(&report).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout, report)
}

/// A clean cluster under a primary kill, a failover (primary stopped 3 s), a replica
/// freeze and a liar passes every check, and the report is one self-contained HTML page
/// with the SVG timeline.
#[test]
fn clean_chaos_passes_with_a_report() {
    let (output, stdout, report) = chaos(
        &[
            "--duration",
            "16s",
            "--faults",
            "liar-node@1s:6s,kill-primary@3s,stop-primary@6s:3s,freeze-replica@12s:2s",
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "chaos failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for invariant in [
        "a primary recovers",
        "acknowledged writes survive",
        "replicated claims hold",
        "orders exactly once",
        "stock conserved",
        "one primary per term",
        "ledger verifies",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(invariant))
            .unwrap_or_else(|| panic!("no verdict for {invariant}:\n{stdout}"));
        assert!(line.contains("PASS"), "{line}\n{stdout}");
    }
    assert!(stdout.contains("failover kill-primary"), "{stdout}");
    let stop = stdout
        .lines()
        .find(|l| l.starts_with("failover stop-primary"))
        .unwrap_or_default();
    assert!(
        stop.contains("term 1 -> 2"),
        "the stop caused no failover:\n{stdout}"
    );
    let liars = stdout
        .lines()
        .find(|l| l.starts_with("liars lose stake"))
        .unwrap_or_default();
    assert!(liars.contains("PASS"), "{liars}");
    assert!(report.starts_with("<!doctype html>"), "report missing");
    assert!(
        report.contains("<svg") && report.contains("polyline"),
        "no SVG timeline"
    );
    assert!(report.contains("kill shop-"), "the kill is not marked");
    assert!(
        !report.contains("<script") && !report.contains("src="),
        "not self-contained"
    );
}

/// The planted ack-before-replica bug makes chaos exit non-zero naming the violation.
#[test]
fn planted_ack_before_replica_is_caught() {
    if !cfg!(debug_assertions) {
        // The shop honours the planted bug only in debug builds.
        return;
    }
    let (output, stdout, report) = chaos(
        &["--duration", "9s", "--faults", "freeze-replica@2s:3s"],
        &[("CONCORD_PLANTED_BUG", "ack-before-replica")],
    );
    assert!(
        !output.status.success(),
        "chaos passed a buggy shop:\n{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("replicated claims hold"))
        .unwrap_or_else(|| panic!("no verdict line:\n{stdout}"));
    assert!(line.contains("FAIL"), "{line}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("replicated claims hold"),
        "the error does not name the violation"
    );
    assert!(
        report.contains("FAIL"),
        "the report does not show the failure"
    );
}
