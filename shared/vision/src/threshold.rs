//! The reject threshold: how it is chosen from validation scores, and the verdict rule every consumer applies.
//!
//! One home for both, so `kestrel fit`, `kestrel predict`, bundle export, the edge unit and the HIL suite cannot
//! disagree about where the line is or which side of it a score equal to the threshold falls on.
//!
//! * **Choice** ([`ThresholdSpec::from_validation`]): anomalib's adaptive rule on a validation split the test set
//!   never sees — the F1-optimal threshold ([`crate::metrics::f1_max`]) when the split has defect images, otherwise
//!   the highest good score (so no held-out good image would have been rejected).
//! * **Verdict** ([`rejects`]): a part is rejected when its score is *at or above* the threshold; a NaN score is a
//!   reject, because a number that is not a number cannot prove a part good.

use serde::{Deserialize, Serialize};

use crate::metrics::{f1_max, MetricsError};

/// Decision threshold and its provenance (model.toml's `[threshold]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSpec {
    /// Image score at or above which a part is rejected.
    pub image: f32,
    /// How it was chosen (e.g. "max score of 12 held-out good images").
    pub method: String,
    /// Good images in the validation split.
    pub validation_good: usize,
    /// Defect images in the validation split.
    pub validation_defect: usize,
}

impl ThresholdSpec {
    /// Choose the threshold from validation image scores (`labels[i]` true = defect image): F1-max when there are
    /// defects, else the maximum good score. Errors on an empty split or non-finite scores.
    pub fn from_validation(scores: &[f32], labels: &[bool]) -> Result<Self, MetricsError> {
        let f = f1_max(scores, labels)?;
        let good = labels.iter().filter(|l| !**l).count();
        let defect = labels.len() - good;
        let method = if defect == 0 {
            format!(
                "maximum score of {good} held-out good training images (no validation defects given)"
            )
        } else {
            format!("F1-max on a validation split of {good} good and {defect} defect images")
        };
        Ok(Self {
            image: f.threshold as f32,
            method,
            validation_good: good,
            validation_defect: defect,
        })
    }

    /// Whether `score` is a reject under this threshold ([`rejects`]).
    pub fn rejects(&self, score: f32) -> bool {
        rejects(score, self.image)
    }
}

/// The verdict rule: reject when `score >= threshold` or the score is NaN (fail safe).
pub fn rejects(score: f32, threshold: f32) -> bool {
    // Only a score that compares strictly below passes; NaN on either side compares as "not less".
    score.partial_cmp(&threshold) != Some(std::cmp::Ordering::Less)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_at_threshold_and_nan() {
        assert!(!rejects(0.99, 1.0));
        assert!(rejects(1.0, 1.0));
        assert!(rejects(f32::NAN, 1.0));
        assert!(rejects(0.0, f32::NAN), "a NaN threshold passes nothing");
    }

    #[test]
    fn good_only_split_takes_the_highest_good_score() {
        let t = ThresholdSpec::from_validation(&[0.2, 0.7, 0.4], &[false; 3]).unwrap();
        assert_eq!(t.image, 0.7);
        assert_eq!((t.validation_good, t.validation_defect), (3, 0));
        assert!(t.method.starts_with("maximum score of 3"), "{}", t.method);
        assert!(t.rejects(0.7) && !t.rejects(0.69));
    }

    #[test]
    fn split_with_defects_takes_f1_max() {
        // Defects at 0.8 and 0.9, goods at 0.1..0.5 and one outlier good at 0.85: F1-max is at 0.8.
        let scores = [0.1, 0.3, 0.5, 0.85, 0.8, 0.9];
        let labels = [false, false, false, false, true, true];
        let t = ThresholdSpec::from_validation(&scores, &labels).unwrap();
        assert_eq!(t.image, 0.8);
        assert_eq!((t.validation_good, t.validation_defect), (4, 2));
        assert!(t.method.contains("F1-max"), "{}", t.method);
    }

    #[test]
    fn empty_split_is_an_error() {
        assert!(ThresholdSpec::from_validation(&[], &[]).is_err());
    }
}
