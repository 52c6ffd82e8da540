//! A node: one trained model plus its (possibly faulty) behaviour, independent of gRPC.
//!
//! The service layer only converts messages and calls [`Node::predict`] /
//! [`Node::predict_batch`], then [`Node::delay`]. Predictions run inline on the calling
//! task: a KNN query over ~84 rows takes microseconds, far less than the cost of handing
//! it to a blocking pool. The injected delay of a `slow` node is a tokio sleep, so a slow
//! node still serves other calls concurrently.
//!
//! Failure behaviour: malformed input is `InvalidArgument` (for a batch, the message names
//! the first bad row); nothing here panics on outside input.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::behaviour::Behaviour;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::model::{KnnModel, Prediction};

/// A trained, immutable node; share it behind an `Arc` or inside the tonic service.
#[derive(Debug)]
pub struct Node {
    /// The configuration the node started with.
    config: NodeConfig,
    /// The trained model.
    model: KnnModel,
    /// Samples answered so far (a `sleeper`'s clock).
    answered: AtomicU64,
}

impl Node {
    /// Validates `config` and trains the model (milliseconds).
    pub fn new(config: NodeConfig) -> Result<Self> {
        config.validate()?;
        let model = KnnModel::train(config.model.clone())?;
        Ok(Node {
            config,
            model,
            answered: AtomicU64::new(0),
        })
    }

    /// The node's answer for one sample: the model's prediction distorted by the
    /// configured behaviour. Does not apply the delay (see [`Node::delay`]).
    pub fn predict(&self, sample: &[f64]) -> Result<Prediction> {
        let honest = self.model.predict(sample)?;
        Ok(self.distort(sample, honest))
    }

    /// Answers every row, in order; rejects an empty batch, one above the configured
    /// maximum, or any malformed row (naming it) without answering the others.
    pub fn predict_batch<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = &'a [f64]>,
    ) -> Result<Vec<Prediction>> {
        let len = rows.len();
        if len == 0 {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if len > self.config.max_batch {
            return Err(Error::InvalidArgument(format!(
                "batch of {len} rows exceeds the maximum of {}",
                self.config.max_batch
            )));
        }
        rows.enumerate()
            .map(|(i, row)| match self.model.predict(row) {
                Ok(honest) => Ok(self.distort(row, honest)),
                Err(Error::InvalidArgument(msg)) => {
                    Err(Error::InvalidArgument(format!("row {i}: {msg}")))
                }
                Err(other) => Err(other),
            })
            .collect()
    }

    /// Waits for the injected delay of a `slow` node; returns at once otherwise.
    pub async fn delay(&self) {
        if let Some(delay) = self.config.behaviour.delay() {
            tokio::time::sleep(delay).await;
        }
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.config.node_id
    }

    /// The configuration the node started with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The trained model.
    pub fn model(&self) -> &KnnModel {
        &self.model
    }

    /// The injected behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.config.behaviour
    }

    fn distort(&self, sample: &[f64], honest: Prediction) -> Prediction {
        match self.config.behaviour {
            Behaviour::Honest | Behaviour::Slow(_) => honest,
            faulty => {
                // Relaxed: the count only orders this node's own answers.
                let answered = if faulty.counts_answers() {
                    self.answered.fetch_add(1, Ordering::Relaxed)
                } else {
                    0
                };
                faulty.apply(sample, answered, honest, &mut rand::thread_rng())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::NUM_CLASSES;

    const SETOSA: [f64; 4] = [5.1, 3.5, 1.4, 0.2];

    fn node(behaviour: Behaviour) -> Node {
        Node::new(NodeConfig {
            behaviour,
            max_batch: 3,
            ..NodeConfig::default()
        })
        .unwrap()
    }

    /// Honest answers setosa for a textbook setosa; inverted answers the next class.
    #[test]
    fn honest_and_inverted() {
        assert_eq!(node(Behaviour::Honest).predict(&SETOSA).unwrap().label, 0);
        let inverted = node(Behaviour::Inverted).predict(&SETOSA).unwrap();
        assert_eq!(inverted.label, 1 % NUM_CLASSES);
    }

    /// Batches are bounded and a bad row is named (table-driven).
    #[test]
    fn batch_bounds() {
        let n = node(Behaviour::Honest);
        let good: &[f64] = &SETOSA;
        let bad: &[f64] = &[1.0, f64::NAN, 1.0, 1.0];
        let cases: Vec<(Vec<&[f64]>, Option<&str>)> = vec![
            (vec![], Some("empty batch")),
            (vec![good; 4], Some("exceeds the maximum of 3")),
            (vec![good, bad], Some("row 1: feature 1")),
            (vec![good; 3], None),
        ];
        for (rows, want_err) in cases {
            let got = n.predict_batch(rows.iter().copied());
            match (got, want_err) {
                (Ok(p), None) => assert_eq!(p.len(), rows.len()),
                (Err(Error::InvalidArgument(msg)), Some(want)) => {
                    assert!(msg.contains(want), "{msg:?} lacks {want:?}")
                }
                (other, want) => panic!("{other:?} vs {want:?}"),
            }
        }
    }

    /// A slow node waits its delay (virtual time), others do not wait at all.
    #[tokio::test(start_paused = true)]
    async fn slow_delay() {
        let slow = node("slow:300".parse().unwrap());
        let start = tokio::time::Instant::now();
        slow.delay().await;
        assert_eq!(start.elapsed().as_millis(), 300);
        let start = tokio::time::Instant::now();
        node(Behaviour::Honest).delay().await;
        assert_eq!(start.elapsed().as_millis(), 0);
    }

    /// A sleeper node answers honestly for its first n samples (batch rows count), then
    /// inverts.
    #[test]
    fn sleeper_node_turns_after_n_answers() {
        let n = node(Behaviour::Sleeper(3));
        assert_eq!(n.predict(&SETOSA).unwrap().label, 0);
        let batch = n
            .predict_batch([&SETOSA[..], &SETOSA[..]].into_iter())
            .unwrap();
        assert_eq!(
            batch.iter().map(|p| p.label).collect::<Vec<_>>(),
            vec![0, 0]
        );
        assert_eq!(n.predict(&SETOSA).unwrap().label, 1);
        assert_eq!(n.predict(&SETOSA).unwrap().label, 1);
    }
}
