//! Anomaly-detection metrics, computed exactly as anomalib (and scikit-learn) compute them, at any scale.
//!
//! kestrel is judged against published numbers (MVTec AD tables, anomalib benchmarks), so its metrics must be the
//! same functions, ties and degenerate cases included, not approximations that agree "to a point or two". The
//! fixtures in `tests/fixtures/metrics/` pin them to scikit-learn (see `scripts/fixtures/make_metric_fixtures.py`).
//!
//! # What is here
//!
//! | Metric | Function | Definition |
//! |---|---|---|
//! | Image AUROC | [`image_auroc`] | ROC over one score per image, every distinct score a threshold, trapezoid area |
//! | Image F1-max and threshold | [`f1_max`] | max of `2PR/(P+R+1e-10)` over the exact PR curve; the arg-max score |
//! | Pixel AUROC | [`pixel_auroc`] | the same ROC over every pixel of every image, pooled (good images included) |
//! | AUPRO | [`aupro`] | area under the per-region-overlap curve up to FPR 0.3, normalised (below) |
//! | All of them | [`evaluate`], [`evaluate_dirs`] | a [`MetricsReport`] from maps in memory or on disk |
//!
//! Image-level functions take slices of `f32` or `f64`. Pixel-level functions take a [`PixelSource`] that can be
//! read several times, because they run in bounded memory over any number of pixels; [`pixel`] explains the
//! multi-pass method and why it is exact. Pixel scores are `f32` throughout (see [`pixel`] on precision).
//!
//! # AUPRO
//!
//! Following anomalib's `AUPRO` (default `fpr_limit = 0.3`) and the MVTec AD evaluation:
//! 1. Each ground-truth mask is split into 8-connected regions ([`regions`]); regions are distinct across images.
//! 2. A background pixel adds `1 / N_bg` to the false-positive rate; a pixel of region `r` adds `1 / (|r| · R)` to
//!    the PRO, where `R` is the number of regions. So at threshold `t`, `FPR(t)` is the fraction of background
//!    pixels scoring `>= t` and `PRO(t)` the mean over regions of the fraction of the region scoring `>= t`.
//! 3. Pixels are ranked globally by descending score; one curve point per distinct score (tied thresholds collapse
//!    to the last point of their run), starting from `(0, 0)`; both coordinates are clamped to `<= 1`.
//! 4. The curve is cut at `FPR = 0.3`, interpolating PRO linearly on the segment that crosses it; the trapezoidal
//!    area is divided by 0.3, so AUPRO lies in [0, 1].
//! 5. With no region or no background pixel the curve is flat at 0: [`aupro`] returns 0 like anomalib, while a
//!    [`MetricsReport`] says `null` (see below).
//!
//! # Undefined metrics
//!
//! A [`MetricsReport`] holds `None` (JSON `null`) for a metric that the data cannot define, rather than a NaN or a
//! misleading number: AUROCs with one class only (e.g. no defective image), AUPRO with no region or no background,
//! and `f1_max` with no anomalous image. The `threshold` is always defined; anomalib's rules apply
//! (no anomalous image: the maximum score; no normal image: the minimum).

pub mod dirs;
pub mod error;
pub mod image;
pub mod pixel;
pub mod regions;
pub mod source;

use std::collections::{HashMap, HashSet};

pub use dirs::{evaluate_dirs, evaluate_dirs_with, MapDirs, MapEntry};
pub use error::MetricsError;
pub use image::{f1_max, image_auroc, F1Max};
pub use pixel::{
    aupro, pixel_auroc, pixel_metrics, ImageSummary, PixelMetrics, PixelMetricsOptions,
    DEFAULT_FPR_LIMIT, DEFAULT_MEMORY_BUDGET, MIN_MEMORY_BUDGET,
};
pub use regions::{connected_components, Components};
pub use source::{AnomalyMap, MapView, PixelSource};

/// All headline metrics of one evaluation, as written by `kestrel metrics` / `kestrel eval` (field names are part of
/// the JSON output). Undefined metrics are `None`, serialised as `null`; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsReport {
    /// Image-level AUROC; `None` unless both good and defective images are present.
    pub image_auroc: Option<f64>,
    /// Pixel-level AUROC over all pixels pooled; `None` unless both normal and anomalous pixels are present.
    pub pixel_auroc: Option<f64>,
    /// AUPRO up to the FPR limit (0.3 by default), in [0, 1]; `None` with no anomalous region or no background.
    pub aupro: Option<f64>,
    /// Image-level F1 at the F1-optimal threshold; `None` when there is no defective image.
    pub f1_max: Option<f64>,
    /// The F1-optimal image threshold (anomalous if `score >= threshold`), with anomalib's degenerate rules.
    pub threshold: f64,
    /// Number of images.
    pub images: u64,
    /// Number of pixels.
    pub pixels: u64,
}

/// Computes a [`MetricsReport`] from any [`PixelSource`].
///
/// Image labels come from the masks (defective if any pixel is non-zero). Image scores are the map maxima, or, if
/// `image_scores` is given, looked up by image name (every image needs exactly one; names must then be unique).
/// Pixel metrics follow `options` (both AUROC and AUPRO are always computed here; only `fpr_limit` and
/// `memory_budget` are used).
pub fn evaluate<S: PixelSource + ?Sized>(
    source: &S,
    image_scores: Option<&HashMap<String, f64>>,
    options: &PixelMetricsOptions,
) -> Result<MetricsReport, MetricsError> {
    let options = PixelMetricsOptions {
        auroc: true,
        aupro: true,
        ..options.clone()
    };
    if let Some(scores) = image_scores {
        if let Some((name, _)) = scores.iter().find(|(_, s)| s.is_nan()) {
            return Err(MetricsError::NanImageScore(name.clone()));
        }
    }
    let pixels = pixel_metrics(source, &options)?;

    let labels: Vec<bool> = pixels.image_summaries.iter().map(|s| s.anomalous).collect();
    let scores: Vec<f64> = match image_scores {
        None => pixels
            .image_summaries
            .iter()
            .map(|s| f64::from(s.max_score))
            .collect(),
        Some(by_name) => {
            let mut seen = HashSet::new();
            let mut scores = Vec::with_capacity(labels.len());
            for summary in &pixels.image_summaries {
                if !seen.insert(summary.name.as_str()) {
                    return Err(MetricsError::DuplicateImageName(summary.name.clone()));
                }
                let score = by_name
                    .get(&summary.name)
                    .ok_or_else(|| MetricsError::MissingImageScore(summary.name.clone()))?;
                scores.push(*score);
            }
            if let Some(name) = by_name.keys().find(|n| !seen.contains(n.as_str())) {
                return Err(MetricsError::UnknownImageScore(name.clone()));
            }
            scores
        }
    };

    let image_auroc = match image_auroc(&scores, &labels) {
        Ok(auc) => Some(auc),
        Err(MetricsError::SingleClass { .. }) => None,
        Err(e) => return Err(e),
    };
    let f1 = f1_max(&scores, &labels)?;
    Ok(MetricsReport {
        image_auroc,
        pixel_auroc: pixels.auroc,
        aupro: pixels.aupro,
        f1_max: labels.contains(&true).then_some(f1.f1),
        threshold: f1.threshold,
        images: pixels.images,
        pixels: pixels.pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_serialises_undefined_metrics_as_null() {
        let maps = vec![
            AnomalyMap::new("a", 2, 1, vec![0.1, 0.2], None).unwrap(),
            AnomalyMap::new("b", 2, 1, vec![0.3, 0.4], None).unwrap(),
        ];
        let report = evaluate(&maps, None, &PixelMetricsOptions::default()).unwrap();
        assert_eq!(report.threshold, 0.4f32 as f64);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "image_auroc": null, "pixel_auroc": null, "aupro": null, "f1_max": null,
                "threshold": 0.4f32 as f64, "images": 2, "pixels": 4
            })
        );
    }

    #[test]
    fn image_scores_by_name_are_checked() {
        let maps = vec![
            AnomalyMap::new("a", 2, 1, vec![0.1, 0.2], None).unwrap(),
            AnomalyMap::new("b", 2, 1, vec![0.3, 0.4], Some(vec![0, 1])).unwrap(),
        ];
        let opts = PixelMetricsOptions::default();
        let scores: HashMap<String, f64> = [("a".to_owned(), 5.0), ("b".to_owned(), 1.0)].into();
        let report = evaluate(&maps, Some(&scores), &opts).unwrap();
        assert_eq!(report.image_auroc, Some(0.0));
        assert_eq!(report.pixel_auroc, Some(1.0));

        let missing: HashMap<String, f64> = [("a".to_owned(), 5.0)].into();
        assert!(matches!(
            evaluate(&maps, Some(&missing), &opts),
            Err(MetricsError::MissingImageScore(n)) if n == "b"
        ));
        let mut extra = scores.clone();
        extra.insert("c".into(), 0.0);
        assert!(matches!(
            evaluate(&maps, Some(&extra), &opts),
            Err(MetricsError::UnknownImageScore(n)) if n == "c"
        ));
        let mut nan = scores.clone();
        nan.insert("a".into(), f64::NAN);
        assert!(matches!(
            evaluate(&maps, Some(&nan), &opts),
            Err(MetricsError::NanImageScore(_))
        ));
        let dup = vec![maps[0].clone(), maps[0].clone()];
        assert!(matches!(
            evaluate(&dup, Some(&scores), &opts),
            Err(MetricsError::DuplicateImageName(_))
        ));
    }
}
