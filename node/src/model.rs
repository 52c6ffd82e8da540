//! A k-nearest-neighbour classifier over a `linfa-nn` index, with our own vote.
//!
//! `linfa-nn` finds the k nearest training rows; the vote over their labels is ours so a
//! prediction carries class *probabilities* (the, optionally distance-weighted, share of
//! the neighbours in each of the 3 classes), not only a label. The aggregator averages
//! those probabilities, so they must always be finite and sum to 1.
//!
//! Invariants and failure behaviour:
//! - [`KnnModel::predict`] accepts exactly [`NUM_FEATURES`] finite numbers, each within
//!   ±[`MAX_FEATURE_ABS_CM`], and otherwise returns `InvalidArgument` naming the feature
//!   and the allowed range ([`validate_sample`], the one check the node and the aggregator
//!   share). It never panics on outside input (a NaN would panic inside `linfa-nn`, hence
//!   the check first).
//! - Why the range: Iris measurements are centimetres below 10 (the data's resolution is
//!   0.1 cm). Far outside that, a KNN answer is no longer a measurement of anything: at
//!   ~1e15 cm subtracting a training value no longer changes the f64 at all, so every row
//!   is equidistant and the "nearest" rows are an accident of the scan order, and from
//!   ~1e154 a squared euclidean distance overflows to infinity. Both made
//!   `[1e308, 1e308, 1e308, 1e308]` answer an arbitrary "setosa" with 0.8. Within ±1e6 cm
//!   (10 km, beyond any flower, so no real input is refused) every squared distance is
//!   below ~1e13, where one f64 ulp is ~2e-3, so differences of 0.1 cm between training
//!   rows still decide the neighbours and no distance overflows.
//! - A prediction is a few microseconds over ~84 rows, so it runs inline on the caller's
//!   task; the only allocation per query is the neighbour list `linfa-nn` returns.
//! - Ties between classes go to the lowest label, deterministically.
//!
//! IMPLEMENTATION CAVEAT: a `linfa-nn` index borrows its training matrix. A model lives as
//! long as the node process, so the matrix (~84 × 4 f64, under 3 KiB) is leaked to give
//! the index a `'static` borrow instead of building a self-referential struct with
//! `unsafe`. Building many models in one process (tests, benches) leaks that much each.

use std::fmt;
use std::str::FromStr;

use linfa_nn::distance::{Distance, L1Dist, L2Dist, LInfDist};
use linfa_nn::{CommonNearestNeighbour, NearestNeighbour, NearestNeighbourIndex};
use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::dataset::{Iris, Label, NUM_CLASSES, NUM_FEATURES};
use crate::error::{Error, Result};

/// Added to a distance before inverting it, so an exact match gets a huge but finite weight.
const DISTANCE_EPSILON: f64 = 1e-9;
/// Largest accepted absolute feature value, in centimetres (real Iris values are below
/// 10 cm). Beyond it distances lose the data's 0.1 cm resolution and answers become
/// arbitrary; see the module doc for the arithmetic.
pub const MAX_FEATURE_ABS_CM: f64 = 1e6;

/// A class-probability vector, one entry per class, summing to 1.
pub type Probabilities = [f64; NUM_CLASSES];

/// The distance used to find neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// L2, straight-line distance.
    Euclidean,
    /// L1, sum of absolute differences.
    Manhattan,
    /// L∞, largest absolute difference.
    Chebyshev,
}

/// How neighbours' votes are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weighting {
    /// Every neighbour counts once.
    Uniform,
    /// A neighbour counts 1 / distance, so close neighbours dominate.
    Distance,
}

/// One of the four Iris features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// Sepal length (cm), column 0.
    SepalLength,
    /// Sepal width (cm), column 1.
    SepalWidth,
    /// Petal length (cm), column 2.
    PetalLength,
    /// Petal width (cm), column 3.
    PetalWidth,
}

/// Everything that defines one node's model; two nodes with equal configs answer alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelConfig {
    /// Number of neighbours that vote (≥ 1).
    pub k: usize,
    /// Distance between samples.
    pub metric: Metric,
    /// Vote weighting.
    pub weighting: Weighting,
    /// The features the model looks at (non-empty, no duplicates), in this order.
    pub features: Vec<Feature>,
    /// Selects the node's training subset (see [`Iris::split`]).
    pub seed: u64,
}

/// A model's answer for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The winning class.
    pub label: Label,
    /// Probability of every class; finite, sums to 1, `label` has the largest.
    pub probabilities: Probabilities,
}

/// A trained KNN classifier; immutable, shareable across tasks.
pub struct KnnModel {
    /// The configuration it was trained with.
    config: ModelConfig,
    /// Column indices of `config.features`, precomputed for the hot path.
    columns: Vec<usize>,
    /// Nearest-neighbour index over the (leaked, see module doc) training matrix.
    index: Box<dyn NearestNeighbourIndex<f64> + Send + Sync>,
    /// Training labels, indexed like the rows of the training matrix.
    train_labels: Vec<Label>,
    /// Accuracy on the shared hold-out set, measured at training time.
    holdout_accuracy: f64,
    /// Human-readable one-line description, sent with every answer.
    description: String,
}

impl fmt::Debug for KnnModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnnModel")
            .field("description", &self.description)
            .field("training_size", &self.train_labels.len())
            .field("holdout_accuracy", &self.holdout_accuracy)
            .finish()
    }
}

impl KnnModel {
    /// Trains on the seeded training split of the Iris data and scores the result on the
    /// shared hold-out set.
    pub fn train(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        let iris = Iris::get();
        let split = iris.split(config.seed);
        let columns: Vec<usize> = config.features.iter().map(|f| f.column()).collect();
        let (train, train_labels) = iris.select(&split.train, &columns);
        if config.k > train_labels.len() {
            return Err(Error::Config(format!(
                "k = {} exceeds the training size {}",
                config.k,
                train_labels.len()
            )));
        }
        // Leaked on purpose: see IMPLEMENTATION CAVEAT in the module doc.
        let train: &'static Array2<f64> = Box::leak(Box::new(train));
        let index = build_index(train, config.metric)?;
        let mut model = KnnModel {
            description: config.to_string(),
            config,
            columns,
            index,
            train_labels,
            holdout_accuracy: 0.0,
        };
        let (holdout, holdout_labels) = iris.select(&split.holdout, &all_columns());
        model.holdout_accuracy = model.accuracy(holdout.view(), &holdout_labels)?;
        Ok(model)
    }

    /// Predicts the class of one sample of all [`NUM_FEATURES`] features (the model
    /// picks its own subset). Rejects anything [`validate_sample`] rejects.
    pub fn predict(&self, sample: &[f64]) -> Result<Prediction> {
        let sample = validate_sample(sample)?;
        self.predict_valid(&sample)
    }

    /// Fraction of `samples` (rows of all 4 features) whose predicted label equals the
    /// matching entry of `labels`.
    pub fn accuracy(&self, samples: ArrayView2<'_, f64>, labels: &[Label]) -> Result<f64> {
        if samples.nrows() != labels.len() || labels.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} samples but {} labels",
                samples.nrows(),
                labels.len()
            )));
        }
        let mut correct = 0usize;
        for (row, &label) in samples.rows().into_iter().zip(labels) {
            let sample = validate_sample(&row.to_vec())?;
            if self.predict_valid(&sample)?.label == label {
                correct += 1;
            }
        }
        Ok(correct as f64 / labels.len() as f64)
    }

    /// The configuration the model was trained with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of training rows.
    pub fn training_size(&self) -> usize {
        self.train_labels.len()
    }

    /// Accuracy on the shared hold-out set, measured at training time.
    pub fn holdout_accuracy(&self) -> f64 {
        self.holdout_accuracy
    }

    /// One-line description, e.g. `knn k=5 metric=euclidean …`.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn predict_valid(&self, sample: &[f64; NUM_FEATURES]) -> Result<Prediction> {
        // Project onto the model's features without touching the heap.
        let mut projected = [0.0; NUM_FEATURES];
        for (slot, &column) in projected.iter_mut().zip(&self.columns) {
            // In ±MAX_FEATURE_ABS_CM (validated), so no distance can overflow.
            *slot = sample[column];
        }
        let point = ArrayView1::from(&projected[..self.columns.len()]);
        let neighbours = self
            .index
            .k_nearest(point, self.config.k)
            .map_err(|e| Error::Internal(format!("nearest-neighbour query failed: {e}")))?;

        let mut votes = [0.0; NUM_CLASSES];
        let mut uniform = [0.0; NUM_CLASSES];
        for (row, i) in &neighbours {
            let label = self.train_labels[*i];
            uniform[label] += 1.0;
            votes[label] += match self.config.weighting {
                Weighting::Uniform => 1.0,
                Weighting::Distance => {
                    1.0 / (self.config.metric.distance(point, row.view()) + DISTANCE_EPSILON)
                }
            };
        }
        let total: f64 = votes.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            // Every weight underflowed (a sample absurdly far away): count heads instead.
            votes = uniform;
        }
        Ok(Prediction::from_votes(votes))
    }
}

impl Prediction {
    /// Normalises non-negative votes into probabilities; the label is the arg-max, ties
    /// to the lowest label. All-zero votes give the uniform distribution.
    pub fn from_votes(votes: [f64; NUM_CLASSES]) -> Self {
        let total: f64 = votes.iter().sum();
        let probabilities = if total.is_finite() && total > 0.0 {
            votes.map(|v| v / total)
        } else {
            [1.0 / NUM_CLASSES as f64; NUM_CLASSES]
        };
        Prediction {
            label: argmax(&probabilities),
            probabilities,
        }
    }
}

/// Index of the largest value; ties go to the lowest index.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Checks that `sample` is exactly [`NUM_FEATURES`] finite numbers, each within
/// ±[`MAX_FEATURE_ABS_CM`]; the one place that decides what input a model accepts (the
/// aggregator calls it too, so both answer the same `INVALID_ARGUMENT`). The message names
/// the feature's index and name and the allowed range.
pub fn validate_sample(sample: &[f64]) -> Result<[f64; NUM_FEATURES]> {
    let array: [f64; NUM_FEATURES] = sample.try_into().map_err(|_| {
        Error::InvalidArgument(format!(
            "expected exactly {NUM_FEATURES} features, got {}",
            sample.len()
        ))
    })?;
    for (i, (&value, feature)) in array.iter().zip(Feature::ALL).enumerate() {
        if !value.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "feature {i} ({feature}) is not a finite number ({value}); send a measurement \
                 in centimetres"
            )));
        }
        if value.abs() > MAX_FEATURE_ABS_CM {
            return Err(Error::InvalidArgument(format!(
                "feature {i} ({feature}) is {value:e}, outside the allowed range \
                 [-{MAX_FEATURE_ABS_CM:e}, {MAX_FEATURE_ABS_CM:e}]; features are Iris \
                 measurements in centimetres (real values are below 10)"
            )));
        }
    }
    Ok(array)
}

fn all_columns() -> Vec<usize> {
    (0..NUM_FEATURES).collect()
}

fn build_index(
    train: &'static Array2<f64>,
    metric: Metric,
) -> Result<Box<dyn NearestNeighbourIndex<f64> + Send + Sync>> {
    // Measured with benches/predict.rs over ~84 rows: ball tree ≈ 1.3-1.8 µs, k-d tree
    // ≈ 1.7-2.5 µs, linear scan ≈ 2.0-2.5 µs per prediction: all far below budget, so
    // take the exact scan, whose tie order among equidistant rows (frequent in Iris) the
    // tuned default fleet relies on; the ball tree breaks ties differently.
    let algorithm = CommonNearestNeighbour::LinearSearch;
    let built = match metric {
        Metric::Euclidean => algorithm.from_batch(train, L2Dist),
        Metric::Manhattan => algorithm.from_batch(train, L1Dist),
        Metric::Chebyshev => algorithm.from_batch(train, LInfDist),
    };
    built.map_err(|e| Error::Config(format!("cannot build the neighbour index: {e}")))
}

impl ModelConfig {
    /// Rejects configurations a model cannot be trained with.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::Config("k must be at least 1".into()));
        }
        if self.features.is_empty() {
            return Err(Error::Config("at least one feature is required".into()));
        }
        let mut sorted = self.features.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.features.len() {
            return Err(Error::Config("features must not repeat".into()));
        }
        Ok(())
    }
}

impl Default for ModelConfig {
    /// Plain 5-NN on all features, seed 1.
    fn default() -> Self {
        ModelConfig {
            k: 5,
            metric: Metric::Euclidean,
            weighting: Weighting::Uniform,
            features: Feature::ALL.to_vec(),
            seed: 1,
        }
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "knn k={} metric={} weighting={} features=",
            self.k, self.metric, self.weighting
        )?;
        for (i, feature) in self.features.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{feature}")?;
        }
        write!(f, " seed={}", self.seed)
    }
}

impl Metric {
    /// Every supported metric.
    pub const ALL: [Metric; 3] = [Metric::Euclidean, Metric::Manhattan, Metric::Chebyshev];

    /// The true distance between two points (not the reduced one `linfa-nn` ranks by).
    fn distance(self, a: ArrayView1<'_, f64>, b: ArrayView1<'_, f64>) -> f64 {
        match self {
            Metric::Euclidean => L2Dist.distance(a, b),
            Metric::Manhattan => L1Dist.distance(a, b),
            Metric::Chebyshev => LInfDist.distance(a, b),
        }
    }

    /// The name used in flags and descriptions.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Euclidean => "euclidean",
            Metric::Manhattan => "manhattan",
            Metric::Chebyshev => "chebyshev",
        }
    }
}

impl Weighting {
    /// The name used in flags and descriptions.
    pub fn as_str(self) -> &'static str {
        match self {
            Weighting::Uniform => "uniform",
            Weighting::Distance => "distance",
        }
    }
}

impl Feature {
    /// All features in column order.
    pub const ALL: [Feature; NUM_FEATURES] = [
        Feature::SepalLength,
        Feature::SepalWidth,
        Feature::PetalLength,
        Feature::PetalWidth,
    ];

    /// Column of this feature in a sample.
    pub fn column(self) -> usize {
        self as usize
    }

    /// The name used in flags and descriptions.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::SepalLength => "sepal_length",
            Feature::SepalWidth => "sepal_width",
            Feature::PetalLength => "petal_length",
            Feature::PetalWidth => "petal_width",
        }
    }

    /// Parses a comma-separated list such as `petal_length,petal_width`.
    pub fn parse_list(list: &str) -> Result<Vec<Feature>> {
        list.split(',').map(|s| s.trim().parse()).collect()
    }
}

macro_rules! display_and_parse {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| {
                        let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        Error::Config(format!(
                            "unknown {} {s:?}, expected one of {}",
                            $what,
                            names.join("|")
                        ))
                    })
            }
        }
    };
}

impl Weighting {
    /// Every weighting.
    pub const ALL: [Weighting; 2] = [Weighting::Uniform, Weighting::Distance];
}

display_and_parse!(Metric, "metric");
display_and_parse!(Weighting, "weighting");
display_and_parse!(Feature, "feature");

#[cfg(test)]
mod tests {
    use super::*;

    fn config(k: usize, metric: Metric, weighting: Weighting, features: &[Feature]) -> ModelConfig {
        ModelConfig {
            k,
            metric,
            weighting,
            features: features.to_vec(),
            seed: 7,
        }
    }

    /// Every metric × weighting on all features reaches ≥ 0.90 hold-out accuracy.
    #[test]
    fn all_metrics_are_accurate() {
        for metric in Metric::ALL {
            for weighting in Weighting::ALL {
                let model = KnnModel::train(config(5, metric, weighting, &Feature::ALL)).unwrap();
                assert!(
                    model.holdout_accuracy() >= 0.90,
                    "{}: {}",
                    model.description(),
                    model.holdout_accuracy()
                );
                assert_eq!(model.training_size(), 84);
            }
        }
    }

    /// Probabilities cover all 3 classes, are finite and sum to 1; label is the arg-max.
    #[test]
    fn probabilities_are_a_distribution() {
        let model = KnnModel::train(config(
            7,
            Metric::Euclidean,
            Weighting::Uniform,
            &Feature::ALL,
        ))
        .unwrap();
        let iris = Iris::get();
        for row in iris.features().rows() {
            let p = model.predict(row.as_slice().unwrap()).unwrap();
            let sum: f64 = p.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-9);
            assert!(p.probabilities.iter().all(|v| v.is_finite() && *v >= 0.0));
            assert_eq!(p.label, argmax(&p.probabilities));
        }
        // A sample between versicolor and virginica gets a split vote, not a one-hot.
        let p = model.predict(&[6.0, 2.8, 4.9, 1.7]).unwrap();
        assert!(
            p.probabilities.iter().filter(|v| **v > 0.0).count() >= 2,
            "{p:?}"
        );
    }

    /// Malformed samples are rejected with InvalidArgument, and extreme accepted ones still
    /// give a valid distribution (table-driven).
    #[test]
    fn input_validation() {
        let model = KnnModel::train(config(
            5,
            Metric::Manhattan,
            Weighting::Distance,
            &Feature::ALL,
        ))
        .unwrap();
        let bad: &[&[f64]] = &[
            &[],
            &[1.0, 2.0, 3.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[f64::NAN, 1.0, 1.0, 1.0],
            &[1.0, f64::INFINITY, 1.0, 1.0],
            &[1.0, 1.0, 1.0, f64::NEG_INFINITY],
        ];
        for sample in bad {
            assert!(
                matches!(model.predict(sample), Err(Error::InvalidArgument(_))),
                "{sample:?}"
            );
        }
        let extreme: &[&[f64]] = &[
            &[MAX_FEATURE_ABS_CM; 4],
            &[-MAX_FEATURE_ABS_CM, 0.0, MAX_FEATURE_ABS_CM, 0.0],
            &[1e-300, -1e-300, 0.0, -0.0],
        ];
        for metric in Metric::ALL {
            let model =
                KnnModel::train(config(3, metric, Weighting::Distance, &Feature::ALL)).unwrap();
            for sample in extreme {
                let p = model.predict(sample).unwrap();
                let sum: f64 = p.probabilities.iter().sum();
                assert!((sum - 1.0).abs() < 1e-9, "{metric} {sample:?} {p:?}");
            }
        }
    }

    /// The range check's edges: ±MAX_FEATURE_ABS_CM is accepted, the next f64 beyond it
    /// and the overflow case of the review are not, and the message names the index, the
    /// feature and the range (table-driven).
    #[test]
    fn feature_range_edges() {
        let above = f64::from_bits(MAX_FEATURE_ABS_CM.to_bits() + 1);
        // (sample, Some(expected message fragment) when rejected)
        let cases: &[([f64; 4], Option<&str>)] = &[
            ([MAX_FEATURE_ABS_CM, 1.0, 1.0, 1.0], None),
            ([1.0, -MAX_FEATURE_ABS_CM, 1.0, 1.0], None),
            ([0.0, -0.0, 7.9, 2.5], None),
            ([above, 1.0, 1.0, 1.0], Some("feature 0 (sepal_length)")),
            ([1.0, -above, 1.0, 1.0], Some("feature 1 (sepal_width)")),
            ([1.0, 1.0, 1e308, 1.0], Some("feature 2 (petal_length)")),
            ([1e308; 4], Some("feature 0 (sepal_length) is 1e308")),
            ([1.0, 1.0, 1.0, f64::MIN], Some("feature 3 (petal_width)")),
            (
                [1.0, 1.0, 1.0, f64::NAN],
                Some("feature 3 (petal_width) is not a finite"),
            ),
        ];
        for (sample, want) in cases {
            match (validate_sample(sample), want) {
                (Ok(got), None) => assert_eq!(&got, sample),
                (Err(Error::InvalidArgument(msg)), Some(fragment)) => {
                    assert!(msg.contains(fragment), "{sample:?}: {msg}");
                    if !msg.contains("finite") {
                        assert!(msg.contains("[-1e6, 1e6]"), "{sample:?}: {msg}");
                        assert!(msg.contains("centimetres"), "{sample:?}: {msg}");
                    }
                }
                (got, _) => panic!("{sample:?}: {got:?}"),
            }
        }
    }

    /// An exact training point under distance weighting wins outright.
    #[test]
    fn distance_weighting_exact_match_dominates() {
        let model = KnnModel::train(config(
            9,
            Metric::Euclidean,
            Weighting::Distance,
            &Feature::ALL,
        ))
        .unwrap();
        let iris = Iris::get();
        let row = iris.split(7).train[0];
        let sample = iris.features().row(row).to_vec();
        let p = model.predict(&sample).unwrap();
        assert_eq!(p.label, iris.labels()[row]);
        assert!(p.probabilities[p.label] > 0.99);
    }

    /// Feature subsets are honoured: a petal-only model is accurate, and only the
    /// selected columns matter.
    #[test]
    fn feature_subset() {
        let mut petal_only = config(
            15,
            Metric::Chebyshev,
            Weighting::Uniform,
            &[Feature::PetalWidth, Feature::PetalLength],
        );
        petal_only.seed = 2;
        let model = KnnModel::train(petal_only).unwrap();
        assert!(model.holdout_accuracy() >= 0.90);
        let a = model.predict(&[5.0, 3.0, 4.5, 1.5]).unwrap();
        let b = model.predict(&[100.0, -100.0, 4.5, 1.5]).unwrap();
        assert_eq!(a, b);
    }

    /// Unusable configurations are refused (table-driven).
    #[test]
    fn config_validation() {
        let cases = [
            config(0, Metric::Euclidean, Weighting::Uniform, &Feature::ALL),
            config(3, Metric::Euclidean, Weighting::Uniform, &[]),
            config(
                3,
                Metric::Euclidean,
                Weighting::Uniform,
                &[Feature::SepalLength, Feature::SepalLength],
            ),
            config(1000, Metric::Euclidean, Weighting::Uniform, &Feature::ALL),
        ];
        for c in cases {
            assert!(
                matches!(KnnModel::train(c.clone()), Err(Error::Config(_))),
                "{c:?}"
            );
        }
    }

    /// Names round-trip through Display/FromStr, and unknown names are errors.
    #[test]
    fn parse_names() {
        for m in Metric::ALL {
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
        }
        assert_eq!(
            "Petal_Width".parse::<Feature>().unwrap(),
            Feature::PetalWidth
        );
        assert_eq!(
            Feature::parse_list("petal_length, petal_width").unwrap(),
            vec![Feature::PetalLength, Feature::PetalWidth]
        );
        assert!("minkowski".parse::<Metric>().is_err());
        assert!(Feature::parse_list("petal_length,").is_err());
        assert_eq!(
            ModelConfig::default().to_string(),
            "knn k=5 metric=euclidean weighting=uniform features=sepal_length,sepal_width,petal_length,petal_width seed=1"
        );
    }

    /// Votes normalise; ties go to the lowest label; zero votes give uniform.
    #[test]
    fn from_votes_table() {
        let cases = [
            ([1.0, 1.0, 2.0], 2, [0.25, 0.25, 0.5]),
            ([2.0, 2.0, 0.0], 0, [0.5, 0.5, 0.0]),
            ([0.0, 0.0, 0.0], 0, [1.0 / 3.0; 3]),
        ];
        for (votes, label, probabilities) in cases {
            assert_eq!(
                Prediction::from_votes(votes),
                Prediction {
                    label,
                    probabilities
                }
            );
        }
    }
}
