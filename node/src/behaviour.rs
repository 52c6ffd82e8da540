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

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use crate::dataset::NUM_CLASSES;
use crate::error::{Error, Result};
use crate::model::{Prediction, Probabilities};

/// Probability an inverted node puts on its wrong class; the rest is shared by the others.
const INVERTED_CONFIDENCE: f64 = 0.9;

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
}

impl Behaviour {
    /// Applies the behaviour to the honest answer.
    pub fn apply<R: Rng + ?Sized>(self, honest: Prediction, rng: &mut R) -> Prediction {
        match self {
            Behaviour::Honest | Behaviour::Slow(_) => honest,
            Behaviour::Random => Prediction::from_votes(std::array::from_fn(|_| rng.gen::<f64>())),
            Behaviour::Inverted => {
                let label = (honest.label + 1) % NUM_CLASSES;
                let other = (1.0 - INVERTED_CONFIDENCE) / (NUM_CLASSES - 1) as f64;
                let mut probabilities: Probabilities = [other; NUM_CLASSES];
                probabilities[label] = INVERTED_CONFIDENCE;
                Prediction {
                    label,
                    probabilities,
                }
            }
        }
    }

    /// How long to wait before answering, if at all.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Behaviour::Slow(delay) => Some(delay),
            _ => None,
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Honest => f.write_str("honest"),
            Behaviour::Random => f.write_str("random"),
            Behaviour::Inverted => f.write_str("inverted"),
            Behaviour::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
        }
    }
}

impl FromStr for Behaviour {
    type Err = Error;

    /// Parses `honest`, `random`, `inverted` or `slow:<ms>`.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "honest" => Ok(Behaviour::Honest),
            "random" => Ok(Behaviour::Random),
            "inverted" => Ok(Behaviour::Inverted),
            other => match other.strip_prefix("slow:") {
                Some(ms) => ms
                    .parse::<u64>()
                    .map(|ms| Behaviour::Slow(Duration::from_millis(ms)))
                    .map_err(|e| Error::Config(format!("bad delay in behaviour {s:?}: {e}"))),
                None => Err(Error::Config(format!(
                    "unknown behaviour {s:?}, expected honest|random|inverted|slow:<ms>"
                ))),
            },
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
        ];
        for (text, want) in ok {
            let got: Behaviour = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string().parse::<Behaviour>().unwrap(), want);
        }
        for bad in ["", "slow", "slow:", "slow:-1", "slow:abc", "byzantine"] {
            assert!(bad.parse::<Behaviour>().is_err(), "{bad:?}");
        }
    }

    /// Honest and slow pass the answer through; only slow has a delay.
    #[test]
    fn honest_and_slow() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let slow = Behaviour::Slow(Duration::from_millis(5));
        assert_eq!(Behaviour::Honest.apply(honest(1), &mut rng), honest(1));
        assert_eq!(slow.apply(honest(1), &mut rng), honest(1));
        assert_eq!(slow.delay(), Some(Duration::from_millis(5)));
        assert_eq!(Behaviour::Honest.delay(), None);
    }

    /// Inverted is always wrong, always the same wrong class, and confident in it.
    #[test]
    fn inverted_is_deterministic_and_wrong() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for label in 0..NUM_CLASSES {
            let a = Behaviour::Inverted.apply(honest(label), &mut rng);
            let b = Behaviour::Inverted.apply(honest(label), &mut rng);
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
            let p = Behaviour::Random.apply(honest(0), &mut rng);
            assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            seen[p.label] = true;
        }
        assert_eq!(seen, [true; NUM_CLASSES]);
    }
}
