//! The double stop (found by `concord chaos`): the primary (shop-1, term 1) is stopped, the
//! replica (shop-2) takes over in term 2 and takes writes alone, then it is stopped too;
//! shop-1 comes back first, fenced at term 1, and shop-2 comes back with its start-up
//! flags still naming shop-1 as its primary. Before the fix nobody ever promoted (shop-1
//! refused shop-2's stream, "replica claims a term above ours", and neither had seen a
//! primary on its watch stream): "a primary recovers" failed every time.
//!
//! What must hold, in sync and async mode: within the run a primary is back and serves
//! writes; every acknowledged write survives (sync: all; async: all but the lag the
//! checker allows per term); never two primaries in one term; and at the end both shops
//! hold identical data. The rule that makes it safe: only the shop with the newest log
//! position may claim (docs/ARCHITECTURE.md, "Failover"), so stale shop-1 never claims a
//! term over shop-2's term-2 writes; shop-2 claims once the primary set stayed empty past
//! the registry's grace.

use std::path::{Path, PathBuf};

use concord_testkit::process;

/// The fault schedule of the bug report.
const DOUBLE_STOP: &str = "stop-primary@3s:4s,stop-primary@5s:4s";

/// Runs `concord chaos` in `mode` with the double stop, keeping the cluster's data;
/// returns (success, stdout, the kept data directory).
fn chaos_double_stop(mode: &str, out: &Path) -> (bool, String, PathBuf) {
    let report = out.join("report.html");
    let args = [
        "chaos",
        "--replication",
        mode,
        "--duration",
        "20s",
        "--faults",
        DOUBLE_STOP,
        "--keep-data",
        "--report",
        report.to_str().expect("utf-8 path"),
    ];
    let mut command = process::command(&args);
    command.env_remove("CONCORD_PLANTED_BUG");
    let output = command.output().expect("run concord chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("chaos: cluster data kept in "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("chaos did not say where it kept the data:\n{stdout}"));
    (output.status.success(), stdout, kept)
}

/// The data digest of a stopped shop's data directory.
fn digest(dir: PathBuf) -> String {
    let store = concord_shop::Store::open(&concord_shop::StoreConfig::new(dir.clone()))
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    store.digest().expect("digest")
}

/// Asserts the verdicts of one double-stop run and that both shops converged.
fn check(mode: &str) {
    let out = tempfile::tempdir().expect("tempdir");
    let (ok, stdout, kept) = chaos_double_stop(mode, out.path());
    let mut invariants = vec![
        "a primary recovers",
        "acknowledged writes survive",
        "one primary per term",
        "stock conserved",
    ];
    if mode == "sync" {
        // In async mode the first stop may lose shop-1's unreplicated tail (within the lag
        // the checker allows); a lost order's replay then finds its cart lost too, which
        // the chaos checker counts against "orders exactly once" — async's documented
        // loss, not this bug's.
        invariants.push("orders exactly once");
    }
    for invariant in invariants {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(invariant))
            .unwrap_or_else(|| panic!("{mode}: no verdict for {invariant}:\n{stdout}"));
        assert!(line.contains("PASS"), "{mode}: {line}\n{stdout}");
    }
    assert!(ok || mode == "async", "{mode}: chaos failed:\n{stdout}");
    let (one, two) = (digest(kept.join("shop-1")), digest(kept.join("shop-2")));
    assert_eq!(one, two, "{mode}: the two shops hold different data");
    let _ = std::fs::remove_dir_all(&kept);
}

/// Sync mode: after both stops a primary is back, nothing acknowledged is lost, and the
/// two shops end with identical data.
#[test]
fn sync_double_stop_gets_a_primary_back() {
    check("sync");
}

/// Async mode: the same, losing nothing the newest shop (term 2's primary) holds.
#[test]
fn async_double_stop_gets_a_primary_back() {
    check("async");
}
