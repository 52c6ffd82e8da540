//! Crash safety: a process that acknowledged ledger updates is killed with SIGKILL, and
//! every acknowledged update is still there when the db is reopened.
//!
//! The test re-runs its own binary as the child (selected by an env var), so the writer
//! is a real separate process with its own sled handle.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use concord_aggregator::ledger::Ledger;
use concord_aggregator::policy::ScoringParams;

const CHILD_ENV: &str = "CONCORD_STAKE_CRASH_CHILD_DB";
const ACKED_UPDATES: u64 = 20;

/// Child half: stake, print an ack after each returned (flushed) call, then hang until
/// killed. Does nothing when run as a normal test.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ledger = Ledger::open(&path, ScoringParams::default()).expect("open");
    let mut out = std::io::stdout().lock();
    for i in 1..=ACKED_UPDATES {
        let change = ledger.stake("n1", i).expect("stake");
        writeln!(out, "ack {} {}", i, change.account.stake).expect("write ack");
        out.flush().expect("flush stdout");
    }
    // Keep writing unacknowledged updates until the parent kills us mid-stream.
    let mut i = ACKED_UPDATES;
    loop {
        i += 1;
        let _ = ledger.score(&format!("r{i}"), &[("n2".to_string(), i.is_multiple_of(2))]);
    }
}

/// Every update acknowledged before `kill -9` survives, and the ledger verifies.
#[test]
fn acknowledged_updates_survive_kill_9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut last_acked_stake = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ack") {
            continue;
        }
        let i: u64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("ack index");
        let stake: u64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("ack stake");
        last_acked_stake = Some(stake);
        if i == ACKED_UPDATES {
            break;
        }
    }
    child.kill().expect("SIGKILL child"); // Child::kill sends SIGKILL on Unix.
    child.wait().expect("reap child");
    let acked = last_acked_stake.expect("child acknowledged updates");
    // 1 + 2 + … + 20 (the first stake opened the account).
    assert_eq!(acked, ACKED_UPDATES * (ACKED_UPDATES + 1) / 2);

    let ledger = Ledger::open(&path, ScoringParams::default()).expect("reopen after crash");
    let n1 = ledger.account("n1").expect("read").expect("n1 survives");
    assert_eq!(n1.stake, acked);
    let report = ledger.verify().expect("verify");
    assert!(report.ok(), "{:?}", report.first_inconsistency);
}
