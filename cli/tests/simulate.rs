//! `concord simulate` on a real loopback cluster meets the acceptance criteria.

mod common;

/// Runs `concord simulate --check` with `faulty` liars; returns its stdout.
fn simulate(faulty: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = dir.path().join("simulate.svg");
    let output = common::command(&[
        "simulate",
        "--faulty",
        faulty,
        "--check",
        "--chart",
        chart.to_str().expect("utf-8 path"),
    ])
    .output()
    .expect("run concord simulate");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "simulate --faulty {faulty} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.contains("node-1"), "chart");
    stdout
}

/// Three colluding inverted nodes: mean is fooled, stake recovers to >= 0.90 over the last
/// 100 of 300 rounds, and every liar ends below 20 % of its starting stake.
#[test]
fn stake_beats_three_colluding_liars() {
    let report = simulate("3");
    assert!(report.contains("acceptance check passed"), "{report}");
    assert!(report.contains("policy stake"), "{report}");
}

/// With only honest nodes, stake is no worse than mean.
#[test]
fn stake_is_no_worse_than_mean_without_liars() {
    let report = simulate("0");
    assert!(report.contains("acceptance check passed"), "{report}");
}
