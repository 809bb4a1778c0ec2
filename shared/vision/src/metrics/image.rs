//! Image-level metrics: exact ROC AUC and the F1-optimal threshold.
//!
//! Both work on one score per image and a boolean label (`true` = anomalous). There are few images (thousands at
//! most), so they simply sort a copy of the scores. Scores may be `f32` or `f64` (anything `Into<f64>`); they are
//! compared as `f64`, `-0.0` equals `0.0`, and NaN is an error because it has no rank.
//!
//! Ties are exact: every distinct score is one threshold, and a run of tied scores moves the ROC curve diagonally,
//! which the trapezoid rule counts as half a correct ordering per tied (anomalous, normal) pair. That is what
//! scikit-learn's `roc_auc_score` and torchmetrics' `BinaryAUROC` compute, so results agree to rounding.

use super::error::MetricsError;

/// The maximum F1 over the exact precision–recall curve and the threshold that reaches it.
///
/// A sample is predicted anomalous when `score >= threshold`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct F1Max {
    /// `max F1`, with `F1 = 2PR / (P + R + 1e-10)` and NaN counted as 0 (anomalib's `F1Max`). It is 0 when there
    /// is no anomalous sample.
    pub f1: f64,
    /// The score at which the maximum is reached (the lowest such score if several thresholds tie).
    pub threshold: f64,
}

/// Exact area under the ROC curve of image `scores` against `labels` (`true` = anomalous).
///
/// Higher scores must mean "more anomalous". Equal to scikit-learn's `roc_auc_score(labels, scores)`: every distinct
/// score is a threshold and the area is taken with the trapezoid rule, so tied scores count half.
///
/// Errors: length mismatch, empty input, a NaN score, or only one class present ([`MetricsError::SingleClass`]).
pub fn image_auroc<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[bool],
) -> Result<f64, MetricsError> {
    let sorted = sorted_desc(scores, labels)?;
    let positives = labels.iter().filter(|&&l| l).count() as u64;
    let negatives = labels.len() as u64 - positives;
    if positives == 0 || negatives == 0 {
        return Err(MetricsError::SingleClass {
            metric: "image AUROC",
            positives,
            negatives,
        });
    }
    // Twice the area in units of one (positive, negative) pair, kept as an integer so the only rounding is the
    // final division: each normal sample earns 2 for every anomalous sample ranked strictly above it and 1 for every
    // tied one (the trapezoid of a diagonal step).
    let mut twice_area: u128 = 0;
    let mut tp_before: u64 = 0;
    for group in TieGroups::new(&sorted) {
        twice_area += u128::from(group.negatives) * u128::from(2 * tp_before + group.positives);
        tp_before += group.positives;
    }
    Ok(twice_area as f64 / (2.0 * positives as f64 * negatives as f64))
}

/// The F1-optimal threshold on image `scores` (`true` label = anomalous), as anomalib's `F1Max` metric and
/// `F1AdaptiveThreshold` compute it.
///
/// Every distinct score is a candidate threshold (predict anomalous when `score >= threshold`); at each, precision
/// `P = TP / (TP + FP)` and recall `R = TP / #anomalous` give `F1 = 2PR / (P + R + 1e-10)`. The result is the maximum
/// and its threshold; among equal maxima the lowest threshold wins, as `argmax` over scikit-learn's and torchmetrics'
/// ascending thresholds does.
///
/// Use it on validation scores to pick an operating threshold. Degenerate sets follow anomalib:
/// * no anomalous sample: the threshold is the **maximum** score (so as few images as possible are flagged) and
///   `f1` is 0;
/// * no normal sample: the threshold is the **minimum** score (everything is flagged, F1 ≈ 1).
///
/// Errors: length mismatch, empty input, or a NaN score.
pub fn f1_max<S: Copy + Into<f64>>(scores: &[S], labels: &[bool]) -> Result<F1Max, MetricsError> {
    let sorted = sorted_desc(scores, labels)?;
    let positives = labels.iter().filter(|&&l| l).count() as u64;
    let negatives = labels.len() as u64 - positives;
    // `sorted` is non-empty here.
    if positives == 0 {
        return Ok(F1Max {
            f1: 0.0,
            threshold: sorted[0].0,
        });
    }
    if negatives == 0 {
        return Ok(F1Max {
            f1: f1_score(positives, 0, positives),
            threshold: sorted[sorted.len() - 1].0,
        });
    }
    let mut best = F1Max {
        f1: f64::NEG_INFINITY,
        threshold: sorted[0].0,
    };
    let (mut tp, mut fp) = (0u64, 0u64);
    for group in TieGroups::new(&sorted) {
        tp += group.positives;
        fp += group.negatives;
        let f1 = f1_score(tp, fp, positives);
        // `>=` while walking down the thresholds keeps the lowest threshold among ties.
        if f1 >= best.f1 {
            best = F1Max {
                f1,
                threshold: group.score,
            };
        }
    }
    Ok(best)
}

/// F1 exactly as numpy/torch evaluate it on the precision and recall arrays, so ties between thresholds resolve
/// identically to the reference implementations.
fn f1_score(tp: u64, fp: u64, positives: u64) -> f64 {
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / positives as f64;
    let f1 = 2.0 * precision * recall / (precision + recall + 1e-10);
    if f1.is_nan() {
        0.0
    } else {
        f1
    }
}

/// Validates the inputs and returns `(score, label)` sorted by descending score, with `-0.0` folded into `0.0`.
fn sorted_desc<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[bool],
) -> Result<Vec<(f64, bool)>, MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            scores: scores.len(),
            labels: labels.len(),
        });
    }
    if scores.is_empty() {
        return Err(MetricsError::Empty);
    }
    let mut sorted = Vec::with_capacity(scores.len());
    for (index, (&s, &l)) in scores.iter().zip(labels).enumerate() {
        let s: f64 = s.into();
        if s.is_nan() {
            return Err(MetricsError::NanScore {
                context: "image scores".into(),
                index,
            });
        }
        // `0.0 == -0.0`, but `total_cmp` would order them; as thresholds they are the same value.
        sorted.push((if s == 0.0 { 0.0 } else { s }, l));
    }
    sorted.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    Ok(sorted)
}

/// A run of equal scores.
struct Group {
    score: f64,
    positives: u64,
    negatives: u64,
}

/// Iterates the runs of equal scores of a descending-sorted slice.
struct TieGroups<'a> {
    rest: &'a [(f64, bool)],
}

impl<'a> TieGroups<'a> {
    fn new(sorted: &'a [(f64, bool)]) -> Self {
        Self { rest: sorted }
    }
}

impl Iterator for TieGroups<'_> {
    type Item = Group;

    fn next(&mut self) -> Option<Group> {
        let score = self.rest.first()?.0;
        let run = self.rest.iter().take_while(|(s, _)| *s == score).count();
        let positives = self.rest[..run].iter().filter(|(_, l)| *l).count() as u64;
        self.rest = &self.rest[run..];
        Some(Group {
            score,
            positives,
            negatives: run as u64 - positives,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // sklearn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        let auc = image_auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert_eq!(auc, 0.75);
        // A tie between one anomalous and one normal image counts half.
        let auc = image_auroc(&[0.5f32, 0.5, 0.9], &[false, true, true]).unwrap();
        assert_eq!(auc, 0.75);
        assert_eq!(image_auroc(&[1.0, 2.0], &[true, false]).unwrap(), 0.0);
    }

    #[test]
    fn all_tied_scores_give_one_half() {
        let labels = [true, false, false, true, false];
        assert_eq!(image_auroc(&[3.0; 5], &labels).unwrap(), 0.5);
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        assert_eq!(image_auroc(&[-0.0, 0.0], &[true, false]).unwrap(), 0.5);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            image_auroc(&[1.0, 2.0], &[true]),
            Err(MetricsError::LengthMismatch {
                scores: 2,
                labels: 1
            })
        ));
        assert!(matches!(
            image_auroc::<f64>(&[], &[]),
            Err(MetricsError::Empty)
        ));
        assert!(matches!(
            image_auroc(&[1.0, 2.0], &[true, true]),
            Err(MetricsError::SingleClass {
                positives: 2,
                negatives: 0,
                ..
            })
        ));
        assert!(matches!(
            image_auroc(&[1.0, f64::NAN], &[true, false]),
            Err(MetricsError::NanScore { index: 1, .. })
        ));
        assert!(matches!(
            f1_max(&[f32::NAN], &[true]),
            Err(MetricsError::NanScore { .. })
        ));
    }

    #[test]
    fn f1_known_values() {
        // Descending: 0.8(+) 0.4(-) 0.35(+) 0.1(-). F1 per threshold: 2/3, 1/2, 4/5, 2/3.
        let r = f1_max(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((r.f1 - 0.8).abs() < 1e-9);
        assert_eq!(r.threshold, 0.35);
        // Perfect separation: the threshold is the lowest anomalous score.
        let r = f1_max(&[0.1f32, 0.2, 0.7, 0.9], &[false, false, true, true]).unwrap();
        assert!((r.f1 - 1.0).abs() < 1e-9);
        assert_eq!(r.threshold, 0.7f32 as f64);
    }

    #[test]
    fn f1_degenerate_rules() {
        // No anomalous samples: the maximum score (issue anomalib#2433/#3357: the minimum flagged everything).
        let r = f1_max(&[0.3, 0.9, 0.1], &[false; 3]).unwrap();
        assert_eq!((r.f1, r.threshold), (0.0, 0.9));
        // No normal samples: the minimum score.
        let r = f1_max(&[0.3, 0.9, 0.1], &[true; 3]).unwrap();
        assert_eq!(r.threshold, 0.1);
        assert!((r.f1 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn f1_ties_pick_the_lowest_threshold() {
        // Descending: 0.9(+) 0.8(-) 0.7(-) 0.6(+). At 0.9, P=1 and R=1/2; at 0.6, P=1/2 and R=1: the same F1 (2/3,
        // bit for bit, since P*R and P+R are equal), and no threshold does better.
        let r = f1_max(&[0.9, 0.8, 0.7, 0.6], &[true, false, false, true]).unwrap();
        assert_eq!(r.threshold, 0.6);
        assert!((r.f1 - 2.0 / 3.0).abs() < 1e-9);
    }

    fn arb_case() -> impl Strategy<Value = (Vec<f64>, Vec<bool>)> {
        (2usize..60).prop_flat_map(|n| {
            (
                // Few distinct values so that ties are common.
                proptest::collection::vec((0u8..12).prop_map(|q| q as f64 * 0.25 - 1.0), n),
                proptest::collection::vec(any::<bool>(), n),
            )
        })
    }

    /// The direct O(n²) definition: P(score⁺ > score⁻) + ½ P(score⁺ = score⁻).
    fn pairwise_auc(scores: &[f64], labels: &[bool]) -> f64 {
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] && !labels[j] {
                    pairs += 1.0;
                    if si > sj {
                        wins += 1.0;
                    } else if si == sj {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    proptest! {
        #[test]
        fn auroc_matches_pairwise_definition_and_stays_in_unit_interval((scores, labels) in arb_case()) {
            prop_assume!(labels.iter().any(|&l| l) && labels.iter().any(|&l| !l));
            let auc = image_auroc(&scores, &labels).unwrap();
            prop_assert!((0.0..=1.0).contains(&auc));
            prop_assert!((auc - pairwise_auc(&scores, &labels)).abs() < 1e-12);
        }

        #[test]
        fn auroc_is_invariant_under_strictly_increasing_maps((scores, labels) in arb_case(), scale in 0.01f64..100.0, shift in -5f64..5.0) {
            prop_assume!(labels.iter().any(|&l| l) && labels.iter().any(|&l| !l));
            let auc = image_auroc(&scores, &labels).unwrap();
            let affine: Vec<f64> = scores.iter().map(|s| s * scale + shift).collect();
            let cubed: Vec<f64> = scores.iter().map(|s| s.powi(3) + s.exp()).collect();
            prop_assert!((image_auroc(&affine, &labels).unwrap() - auc).abs() < 1e-12);
            prop_assert!((image_auroc(&cubed, &labels).unwrap() - auc).abs() < 1e-12);
            // The F1 threshold moves with the scores.
            let f1 = f1_max(&scores, &labels).unwrap();
            let f1_affine = f1_max(&affine, &labels).unwrap();
            prop_assert!((f1.f1 - f1_affine.f1).abs() < 1e-12);
            prop_assert!((f1.threshold * scale + shift - f1_affine.threshold).abs() < 1e-9);
        }

        #[test]
        fn flipping_labels_gives_one_minus_auroc((scores, labels) in arb_case()) {
            prop_assume!(labels.iter().any(|&l| l) && labels.iter().any(|&l| !l));
            let auc = image_auroc(&scores, &labels).unwrap();
            let flipped: Vec<bool> = labels.iter().map(|l| !l).collect();
            prop_assert!((image_auroc(&scores, &flipped).unwrap() - (1.0 - auc)).abs() < 1e-12);
        }

        #[test]
        fn f1_threshold_reaches_the_reported_f1((scores, labels) in arb_case()) {
            prop_assume!(labels.iter().any(|&l| l));
            let r = f1_max(&scores, &labels).unwrap();
            let tp = scores.iter().zip(&labels).filter(|(s, l)| **l && **s >= r.threshold).count() as u64;
            let fp = scores.iter().zip(&labels).filter(|(s, l)| !**l && **s >= r.threshold).count() as u64;
            let positives = labels.iter().filter(|&&l| l).count() as u64;
            prop_assert_eq!(f1_score(tp, fp, positives), r.f1);
            // No distinct score does better.
            for &t in &scores {
                let tp = scores.iter().zip(&labels).filter(|(s, l)| **l && **s >= t).count() as u64;
                let fp = scores.iter().zip(&labels).filter(|(s, l)| !**l && **s >= t).count() as u64;
                prop_assert!(f1_score(tp, fp, positives) <= r.f1);
            }
        }
    }
}
