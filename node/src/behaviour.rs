//! Fault injection: how a node distorts its honest answer, for demos and tests.
//!
//! A behaviour is a pure function over the honest [`Prediction`] (plus an RNG for
//! `random`) and an optional delay the service sleeps before answering. Keeping it pure
//! means the consensus tests can reason about exactly what a faulty node says.
//!
//! - `honest`: the model's answer.
//! - `random`: a random probability vector; the label is its arg-max.
//! - `inverted`: a fixed wrong class, `(honest label + 1) % 3`, with probabilities
//!   concentrated on it. Every inverted node maps the same honest answer to the same
//!   wrong one, so several inverted nodes collude.
//! - `slow:<ms>`: the honest answer after a delay (a tokio sleep, never a blocked thread).
//! - `intermittent:<p>`: lies like `inverted` on a fraction `p` of the samples, honest on
//!   the rest. Colluding: whether a sample is a lie is [`colluding_lie`], a hash of the
//!   sample's features and [`COLLUSION_SEED`] — never the node's own RNG — so every
//!   intermittent node lies on the same requests (the aggregator sends each node the
//!   same features), and a repeated request gets the same treatment.
//! - `sleeper:<n>`: honest for its first `n` answers (each row of a batch counts), then
//!   `inverted` for good. The count lives in the process: a restart starts it again.
//! - `sybil`: lies like `inverted`. The comeback under a new id once it is ejected is not
//!   something a node process can do by itself: the registry and `Stake` take a new id
//!   only with that id's credential, which only the holder of the cluster secret can
//!   issue. `concord simulate --faulty-behaviour sybil` plays that attacker (new id, new
//!   credential, stake from the attacker's own wallet); see `cli/src/simulate.rs`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use crate::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::model::{Prediction, Probabilities};

/// Probability an inverted node puts on its wrong class; the rest is shared by the others.
const INVERTED_CONFIDENCE: f64 = 0.9;
/// Seed every intermittent liar shares (same binary, same seed): they lie on the same samples.
pub const COLLUSION_SEED: u64 = 0x00C0_11D3_5EED_0016;
/// Denominator of [`Behaviour::Intermittent`]'s share.
pub const PARTS_PER_MILLION: u32 = 1_000_000;

/// Whether the colluding intermittent liars lie on `sample`, for a share of
/// `ppm`/1 000 000 of the samples: a hash of the features' bits and [`COLLUSION_SEED`],
/// so it is the same decision in every liar, for every repeat of the sample.
pub fn colluding_lie(sample: &[f64], ppm: u32) -> bool {
    let mut h = COLLUSION_SEED;
    for x in sample {
        h = splitmix(h ^ x.to_bits());
    }
    h % u64::from(PARTS_PER_MILLION) < u64::from(ppm)
}

/// One SplitMix64 step: spreads every input bit over the output.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How a node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Behaviour {
    /// Answers with the model's prediction.
    #[default]
    Honest,
    /// Answers with a random prediction.
    Random,
    /// Answers with the same deterministic wrong class as every other inverted node.
    Inverted,
    /// Answers honestly after the given delay.
    Slow(Duration),
    /// Lies like `Inverted` on this many millionths of the samples, the same ones as every
    /// other intermittent node.
    Intermittent(u32),
    /// Honest for this many answers, then `Inverted`.
    Sleeper(u64),
    /// Lies like `Inverted`; its launcher brings it back under a new id once ejected.
    Sybil,
}

impl Behaviour {
    /// Applies the behaviour to the honest answer for `sample`, the node's answer number
    /// `answered` (counted from 0, every batch row counts).
    pub fn apply<R: Rng + ?Sized>(
        self,
        sample: &[f64],
        answered: u64,
        honest: Prediction,
        rng: &mut R,
    ) -> Prediction {
        match self {
            Behaviour::Honest | Behaviour::Slow(_) => honest,
            Behaviour::Random => Prediction::from_votes(std::array::from_fn(|_| rng.gen::<f64>())),
            Behaviour::Intermittent(ppm) if !colluding_lie(sample, ppm) => honest,
            Behaviour::Sleeper(n) if answered < n => honest,
            Behaviour::Inverted
            | Behaviour::Intermittent(_)
            | Behaviour::Sleeper(_)
            | Behaviour::Sybil => invert(honest),
        }
    }

    /// Whether the answer depends on how many answers came before (the node counts them).
    pub fn counts_answers(self) -> bool {
        matches!(self, Behaviour::Sleeper(_))
    }

    /// How long to wait before answering, if at all.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Behaviour::Slow(delay) => Some(delay),
            _ => None,
        }
    }
}

/// The same confident wrong class every inverted node picks for this honest answer.
fn invert(honest: Prediction) -> Prediction {
    let label = (honest.label + 1) % NUM_CLASSES;
    let other = (1.0 - INVERTED_CONFIDENCE) / (NUM_CLASSES - 1) as f64;
    let mut probabilities: Probabilities = [other; NUM_CLASSES];
    probabilities[label] = INVERTED_CONFIDENCE;
    Prediction {
        label,
        probabilities,
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Honest => f.write_str("honest"),
            Behaviour::Random => f.write_str("random"),
            Behaviour::Inverted => f.write_str("inverted"),
            Behaviour::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
            Behaviour::Intermittent(ppm) => {
                write!(
                    f,
                    "intermittent:{}",
                    f64::from(*ppm) / f64::from(PARTS_PER_MILLION)
                )
            }
            Behaviour::Sleeper(n) => write!(f, "sleeper:{n}"),
            Behaviour::Sybil => f.write_str("sybil"),
        }
    }
}

impl FromStr for Behaviour {
    type Err = Error;

    /// Parses `honest`, `random`, `inverted`, `slow:<ms>`, `intermittent:<p>` (p in
    /// [0, 1], at most six decimals), `sleeper:<n>` or `sybil`.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let bad = |what: &str, e: &dyn fmt::Display| {
            Error::Config(format!("bad {what} in behaviour {s:?}: {e}"))
        };
        let (name, arg) = match lower.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (lower.as_str(), None),
        };
        match (name, arg) {
            ("honest", None) => Ok(Behaviour::Honest),
            ("random", None) => Ok(Behaviour::Random),
            ("inverted", None) => Ok(Behaviour::Inverted),
            ("sybil", None) => Ok(Behaviour::Sybil),
            ("slow", Some(ms)) => ms
                .parse::<u64>()
                .map(|ms| Behaviour::Slow(Duration::from_millis(ms)))
                .map_err(|e| bad("delay", &e)),
            ("sleeper", Some(n)) => n
                .parse::<u64>()
                .map(Behaviour::Sleeper)
                .map_err(|e| bad("number of honest answers", &e)),
            ("intermittent", Some(p)) => {
                let p: f64 = p.parse().map_err(|e| bad("share", &e))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad("share", &"must be in [0, 1]"));
                }
                let ppm = p * f64::from(PARTS_PER_MILLION);
                if (ppm - ppm.round()).abs() > 1e-6 {
                    return Err(bad("share", &"finer than one in a million"));
                }
                // In [0, 1e6] after the checks above.
                Ok(Behaviour::Intermittent(ppm.round() as u32))
            }
            _ => Err(Error::Config(format!(
                "unknown behaviour {s:?}, expected honest|random|inverted|slow:<ms>|\
                 intermittent:<p>|sleeper:<n>|sybil"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn honest(label: usize) -> Prediction {
        let mut votes = [1.0; NUM_CLASSES];
        votes[label] = 5.0;
        Prediction::from_votes(votes)
    }

    /// Parsing and Display round-trip; malformed behaviours are rejected (table-driven).
    #[test]
    fn parse() {
        let ok = [
            ("honest", Behaviour::Honest),
            ("RANDOM", Behaviour::Random),
            ("inverted", Behaviour::Inverted),
            ("slow:250", Behaviour::Slow(Duration::from_millis(250))),
            ("intermittent:0.2", Behaviour::Intermittent(200_000)),
            ("Intermittent:1", Behaviour::Intermittent(1_000_000)),
            ("intermittent:0", Behaviour::Intermittent(0)),
            ("sleeper:150", Behaviour::Sleeper(150)),
            ("sybil", Behaviour::Sybil),
        ];
        for (text, want) in ok {
            let got: Behaviour = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string().parse::<Behaviour>().unwrap(), want);
        }
        let bad = [
            "",
            "slow",
            "slow:",
            "slow:-1",
            "slow:abc",
            "byzantine",
            "intermittent",
            "intermittent:",
            "intermittent:1.5",
            "intermittent:-0.1",
            "intermittent:0.0000001",
            "intermittent:nan",
            "sleeper",
            "sleeper:-3",
            "sleeper:x",
            "sybil:2",
            "honest:1",
        ];
        for bad in bad {
            assert!(bad.parse::<Behaviour>().is_err(), "{bad:?}");
        }
    }

    /// Honest and slow pass the answer through; only slow has a delay.
    #[test]
    fn honest_and_slow() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let slow = Behaviour::Slow(Duration::from_millis(5));
        assert_eq!(
            Behaviour::Honest.apply(&[], 0, honest(1), &mut rng),
            honest(1)
        );
        assert_eq!(slow.apply(&[], 0, honest(1), &mut rng), honest(1));
        assert_eq!(slow.delay(), Some(Duration::from_millis(5)));
        assert_eq!(Behaviour::Honest.delay(), None);
    }

    /// Inverted is always wrong, always the same wrong class, and confident in it.
    #[test]
    fn inverted_is_deterministic_and_wrong() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for label in 0..NUM_CLASSES {
            let a = Behaviour::Inverted.apply(&[], 0, honest(label), &mut rng);
            let b = Behaviour::Inverted.apply(&[], 0, honest(label), &mut rng);
            assert_eq!(a, b);
            assert_ne!(a.label, label);
            assert_eq!(a.label, (label + 1) % NUM_CLASSES);
            assert!((a.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert_eq!(a.probabilities[a.label], INVERTED_CONFIDENCE);
        }
    }

    /// Random answers are valid distributions and not all the same label.
    #[test]
    fn random_is_a_distribution() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = [false; NUM_CLASSES];
        for _ in 0..100 {
            let p = Behaviour::Random.apply(&[], 0, honest(0), &mut rng);
            assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            seen[p.label] = true;
        }
        assert_eq!(seen, [true; NUM_CLASSES]);
    }

    /// Intermittent liars collude: the same samples are lies in every node (whatever its
    /// RNG), about a share p of them; the rest are honest.
    #[test]
    fn intermittent_liars_lie_on_the_same_samples() {
        let b: Behaviour = "intermittent:0.2".parse().unwrap();
        let samples: Vec<[f64; 4]> = (0..5_000)
            .map(|i| {
                let i = f64::from(i);
                [4.0 + i * 1e-3, 3.0, 1.0 + i * 1e-4, 0.2]
            })
            .collect();
        let mut node_a = ChaCha8Rng::seed_from_u64(1);
        let mut node_b = ChaCha8Rng::seed_from_u64(2);
        let mut lies = 0;
        for (i, s) in samples.iter().enumerate() {
            let a = b.apply(s, i as u64, honest(0), &mut node_a);
            let other = b.apply(s, 7, honest(0), &mut node_b);
            assert_eq!(a, other, "sample {i}");
            if a.label != 0 {
                assert_eq!(a, Behaviour::Inverted.apply(s, 0, honest(0), &mut node_a));
                lies += 1;
            }
            assert_eq!(a.label != 0, colluding_lie(s, 200_000));
        }
        assert!((900..=1_100).contains(&lies), "{lies} of 5000");
        let never: Behaviour = "intermittent:0".parse().unwrap();
        let always: Behaviour = "intermittent:1".parse().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(never.apply(&samples[0], 0, honest(2), &mut rng), honest(2));
        assert_ne!(always.apply(&samples[0], 0, honest(2), &mut rng).label, 2);
    }

    /// A sleeper answers honestly for its first n answers and inverts from then on; a
    /// sybil lies like an inverted node.
    #[test]
    fn sleeper_switches_after_n_answers() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let sleeper = Behaviour::Sleeper(150);
        let labels: Vec<usize> = (0..300u64)
            .map(|k| sleeper.apply(&[], k, honest(1), &mut rng).label)
            .collect();
        assert!(labels[..150].iter().all(|&l| l == 1));
        assert!(labels[150..].iter().all(|&l| l == 2));
        assert!(sleeper.counts_answers() && !Behaviour::Sybil.counts_answers());
        assert_eq!(
            Behaviour::Sybil.apply(&[], 0, honest(1), &mut rng),
            Behaviour::Inverted.apply(&[], 0, honest(1), &mut rng)
        );
    }
}
