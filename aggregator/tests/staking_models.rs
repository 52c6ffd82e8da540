//! The acceptance scenario of issue 5 with the real KNN nodes (in-process, no sockets):
//! the default fleet of five, three of them `inverted` (colluding), 300 rounds of Iris
//! flowers through the policy + ledger logic, with the default scoring knobs.

use concord_aggregator::policy::{Policy, ScoringParams, DEFAULT_INITIAL_STAKE};
use concord_aggregator::simulation::{run_rounds, PolicyRun, Round};
use concord_node::{default_fleet, Behaviour, Iris, Node};
use rand::{rngs::StdRng, Rng, SeedableRng};

const ROUNDS: usize = 300;
const WINDOW: usize = 100;

/// Plays `policy` with the default fleet, the last `faulty` nodes inverted.
fn play(policy: Policy, faulty: usize, seed: u64) -> (PolicyRun, Vec<bool>) {
    let fleet = default_fleet();
    let n = fleet.len();
    let nodes: Vec<Node> = fleet
        .into_iter()
        .enumerate()
        .map(|(i, mut config)| {
            if i >= n - faulty {
                config.behaviour = Behaviour::Inverted;
            }
            Node::new(config).expect("train node")
        })
        .collect();
    let is_faulty = nodes
        .iter()
        .map(|n| n.behaviour() == Behaviour::Inverted)
        .collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.id().to_string()).collect();
    let iris = Iris::get();
    let mut rng = StdRng::seed_from_u64(seed);
    let run = run_rounds(
        &ids,
        policy,
        ROUNDS,
        WINDOW,
        ScoringParams::default(),
        DEFAULT_INITIAL_STAKE,
        |_, _| {
            let row = rng.gen_range(0..iris.len());
            let sample: Vec<f64> = iris.features().row(row).to_vec();
            let truth = u32::try_from(iris.labels()[row]).expect("label fits");
            let answers = nodes
                .iter()
                .map(|node| node.predict(&sample).ok().map(|p| p.probabilities.to_vec()))
                .collect();
            Round::answers(truth, answers)
        },
    )
    .expect("simulate");
    (run, is_faulty)
}

/// 3 of 5 nodes inverted: `mean` < 0.5; `stake` ≥ 0.90 over the last 100 rounds; every
/// faulty node's stake < 20 % of its start.
#[test]
fn colluding_majority_with_real_models() {
    for seed in [7, 11] {
        let (mean, _) = play(Policy::Mean, 3, seed);
        assert!(mean.accuracy < 0.5, "seed {seed}: {mean:?}");
        let (stake, faulty) = play(Policy::Stake, 3, seed);
        assert!(stake.window_accuracy >= 0.90, "seed {seed}: {stake:?}");
        for (node, bad) in stake.nodes.iter().zip(faulty) {
            if bad {
                assert!(
                    (node.final_stake as f64) < 0.2 * node.initial_stake as f64,
                    "seed {seed}: {node:?}"
                );
            }
        }
        assert!(stake.ledger_ok && mean.ledger_ok);
    }
}

/// No faulty nodes: `stake` is no worse than `mean`.
#[test]
fn honest_fleet_stake_no_worse_than_mean() {
    for seed in [7, 11] {
        let (mean, _) = play(Policy::Mean, 0, seed);
        let (stake, _) = play(Policy::Stake, 0, seed);
        assert!(
            stake.accuracy >= mean.accuracy,
            "seed {seed}: stake {stake:?} mean {mean:?}"
        );
    }
}
