//! The Iris data and the seeded, stratified splits every node trains and is scored on.
//!
//! The rows shipped by `linfa-datasets` are sorted by class, so every split here is a
//! shuffle *per class* (stratified): each class keeps its share in every part.
//!
//! Invariants:
//! - The hold-out set is the same for every node: it depends only on [`HOLDOUT_SEED`] and
//!   [`HOLDOUT_FRACTION`], never on a node's own seed, so hold-out accuracies of different
//!   nodes are comparable and no node ever trains on a hold-out row.
//! - A node's training set is a seeded subset (without replacement) of the remaining
//!   rows, [`TRAIN_FRACTION`] of each class, so different seeds give diverse but
//!   overlapping training sets.
//! - Everything is deterministic for a given seed (ChaCha8, pinned `rand` 0.8).
//!
//! Non-goals: other datasets, cross-validation, normalisation (the four Iris features are
//! all centimetres, so raw distances are meaningful).

use std::sync::OnceLock;

use ndarray::{Array2, ArrayView2};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Number of Iris classes.
pub const NUM_CLASSES: usize = 3;
/// Number of Iris features a request must carry.
pub const NUM_FEATURES: usize = 4;
/// Class names in label order; a label is an index into this table.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = ["setosa", "versicolor", "virginica"];
/// Seed of the shared hold-out split; a constant so all nodes are scored alike.
pub const HOLDOUT_SEED: u64 = 0x1215_C0C0;
/// Share of every class that goes to the shared hold-out set.
pub const HOLDOUT_FRACTION: f64 = 0.30;
/// Share of every class of the non-hold-out rows a node trains on.
pub const TRAIN_FRACTION: f64 = 0.80;

/// A class label, an index into [`CLASS_NAMES`].
pub type Label = usize;

/// The whole Iris data set, loaded once per process.
#[derive(Debug)]
pub struct Iris {
    /// 150 × 4 feature matrix (sepal length, sepal width, petal length, petal width; cm).
    features: Array2<f64>,
    /// One label per row of `features`.
    labels: Vec<Label>,
}

/// Row indices into [`Iris`] of one node's training set and the shared hold-out set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Rows the node trains on (depends on the node seed).
    pub train: Vec<usize>,
    /// Rows every node is scored on (depends only on [`HOLDOUT_SEED`]).
    pub holdout: Vec<usize>,
}

impl Iris {
    /// The process-wide Iris data; parsed from the bytes embedded in `linfa-datasets` on
    /// first use.
    pub fn get() -> &'static Iris {
        static IRIS: OnceLock<Iris> = OnceLock::new();
        IRIS.get_or_init(|| {
            let dataset = linfa_datasets::iris();
            let features = dataset.records().to_owned();
            let labels = dataset.targets().iter().copied().collect();
            Iris { features, labels }
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows (never true for the shipped data).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All feature rows.
    pub fn features(&self) -> ArrayView2<'_, f64> {
        self.features.view()
    }

    /// All labels, one per row.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The split for a node trained with `seed`: the shared hold-out set plus the node's
    /// own stratified training subset of the remaining rows.
    pub fn split(&self, seed: u64) -> Split {
        let (holdout, rest) = stratified_split(
            &self.labels,
            &all_rows(self.len()),
            HOLDOUT_FRACTION,
            HOLDOUT_SEED,
        );
        let (train, _) = stratified_split(&self.labels, &rest, TRAIN_FRACTION, seed);
        Split { train, holdout }
    }

    /// The sub-matrix of `rows` × `columns` and the matching labels, as a new contiguous
    /// array (the layout `linfa-nn` indices want).
    pub fn select(&self, rows: &[usize], columns: &[usize]) -> (Array2<f64>, Vec<Label>) {
        let matrix = Array2::from_shape_fn((rows.len(), columns.len()), |(r, c)| {
            self.features[[rows[r], columns[c]]]
        });
        let labels = rows.iter().map(|&r| self.labels[r]).collect();
        (matrix, labels)
    }
}

fn all_rows(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Splits `rows` into (picked, rest): per class, a seeded shuffle, then the first
/// `round(fraction · class size)` rows are picked. Both halves are returned sorted.
fn stratified_split(
    labels: &[Label],
    rows: &[usize],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked = Vec::new();
    let mut rest = Vec::new();
    for class in 0..NUM_CLASSES {
        let mut members: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&r| labels[r] == class)
            .collect();
        members.shuffle(&mut rng);
        let take = ((members.len() as f64) * fraction).round() as usize;
        picked.extend_from_slice(&members[..take]);
        rest.extend_from_slice(&members[take..]);
    }
    picked.sort_unstable();
    rest.sort_unstable();
    (picked, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_counts(labels: &[Label], rows: &[usize]) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &r in rows {
            counts[labels[r]] += 1;
        }
        counts
    }

    /// The shipped data has 150 rows, 4 features and 50 rows per class.
    #[test]
    fn iris_shape() {
        let iris = Iris::get();
        assert_eq!(iris.len(), 150);
        assert_eq!(iris.features().ncols(), NUM_FEATURES);
        assert_eq!(class_counts(iris.labels(), &all_rows(150)), [50, 50, 50]);
    }

    /// Hold-out is 30 % of each class, training is 80 % of each class of the rest, and
    /// the two never overlap, for several seeds.
    #[test]
    fn split_is_stratified_and_disjoint() {
        let iris = Iris::get();
        for seed in [0, 1, 2, 42, u64::MAX] {
            let split = iris.split(seed);
            assert_eq!(
                class_counts(iris.labels(), &split.holdout),
                [15, 15, 15],
                "seed {seed}"
            );
            assert_eq!(
                class_counts(iris.labels(), &split.train),
                [28, 28, 28],
                "seed {seed}"
            );
            assert!(
                split.train.iter().all(|r| !split.holdout.contains(r)),
                "seed {seed}"
            );
        }
    }

    /// Every seed sees the same hold-out set; different seeds train on different rows;
    /// the same seed gives the same split.
    #[test]
    fn holdout_shared_training_diverse() {
        let iris = Iris::get();
        let (a, b) = (iris.split(1), iris.split(2));
        assert_eq!(a.holdout, b.holdout);
        assert_ne!(a.train, b.train);
        assert_eq!(a, iris.split(1));
    }

    /// `select` copies the requested rows and columns in order.
    #[test]
    fn select_rows_and_columns() {
        let iris = Iris::get();
        let (m, labels) = iris.select(&[0, 149], &[3, 0]);
        assert_eq!(m.shape(), &[2, 2]);
        assert_eq!(m[[0, 0]], iris.features()[[0, 3]]);
        assert_eq!(m[[1, 1]], iris.features()[[149, 0]]);
        assert_eq!(labels, vec![iris.labels()[0], iris.labels()[149]]);
    }
}
