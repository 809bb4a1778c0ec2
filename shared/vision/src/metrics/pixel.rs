//! Exact pixel-level AUROC and AUPRO over arbitrarily many pixels, in bounded memory.
//!
//! # The problem
//!
//! Pixel AUROC pools every pixel of every test image into one ROC curve; AUPRO builds a curve from the same global
//! ranking (see [`super`] for its definition). The textbook way is to sort all pixels by score. A test set of a few
//! thousand 1024×1024 images has billions of pixels: a sorted copy is tens of GB, and a pairwise method is out of
//! the question. Binning scores into a fixed histogram (as some tools do) is cheap but approximate, and ties, which
//! are common in quantised or blurred maps, are then no longer exact.
//!
//! # The method
//!
//! Both curves are piecewise linear through one point per distinct score, and their areas are sums over those
//! points. Only the *order* of scores matters, so each `f32` score is mapped to a `u32` key with the same order
//! (flip all bits of negatives, set the sign bit of positives; `-0.0` is folded into `0.0`, NaN is rejected). Then:
//!
//! 1. **Pass 1** walks the [`PixelSource`] once and fills a coarse histogram indexed by the top bits of the key
//!    (up to 2^20 buckets). Each bucket counts its normal (background) and anomalous pixels and sums each
//!    anomalous pixel's AUPRO increment `1 / |region|` (8-connected regions from [`super::regions`]). From these
//!    counts alone the curve position *before* every bucket is known exactly.
//! 2. A bucket holding only background or only anomalous pixels is a straight segment of both curves (one
//!    coordinate is constant across it), so its area is exact without looking inside. Only **mixed** buckets need
//!    resolving. For AUPRO, buckets that start beyond the FPR limit (0.3) contribute nothing and are skipped.
//! 3. **Later passes** resolve mixed buckets, packing as many as fit in the memory budget into one pass. A bucket
//!    is resolved either by *collecting* its pixels' `(key, region size)` pairs and sorting them (8 bytes per pixel)
//!    or, when cheaper, by an *exact histogram* with one slot per remaining key (24 bytes per slot). A bucket too big
//!    for either within the budget is *refined*: a finer histogram over its key range splits it into sub-buckets,
//!    which go through steps 2 and 3 again. Each pass re-reads the source, so a tiny budget costs time, never
//!    exactness.
//!
//! Because the position before each bucket is known, every bucket's area is computed independently and added up;
//! nothing needs to be kept in score order. The AUROC area is accumulated as an integer count of (anomalous, normal)
//! pairs (ties count half), so it is exact up to the final division and identical for every budget. AUPRO sums
//! floating-point trapezoids, which differ between budgets only by rounding.
//!
//! Memory: the pass-1 histogram and the buffers of each later pass stay within
//! [`PixelMetricsOptions::memory_budget`] (at least [`MIN_MEMORY_BUDGET`]). Outside it: the labels of one image
//! (4 bytes per pixel), a small record per image, and a 56-byte entry per bucket still waiting to be resolved
//! (at most one per pass-1 bucket, i.e. 2^20, in the worst case).
//!
//! Time: one pass, plus as many as the mixed buckets need. Measured (`tests/metrics_scale.rs`, dev profile, 2 cores):
//! 100 million pixels of continuous scores take 3 passes and 14 s with the default 256 MiB budget, 21 passes and
//! 34 s with 16 MiB; the results are identical. From disk, each pass re-reads every map, so prefer a large budget.
//!
//! # Precision
//!
//! Pixel scores are `f32`. Maps stored as `float64` are rounded to `f32` when read ([`crate::npy`]), so two `f64`
//! scores that round to the same `f32` tie. Anomaly maps come out of `f32` networks, so nothing is lost in practice.

use std::collections::VecDeque;

use super::error::MetricsError;
use super::regions::connected_components;
use super::source::{MapView, PixelSource};

/// The default memory budget for resolving pixel metrics: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

/// The smallest accepted budget; smaller values are raised to it. 1 KiB still works, with many passes, which is how
/// the tests exercise the multi-pass code.
pub const MIN_MEMORY_BUDGET: usize = 1 << 10;

/// The default AUPRO false-positive-rate limit, as in anomalib and the MVTec AD evaluation.
pub const DEFAULT_FPR_LIMIT: f64 = 0.3;

/// Top key bits of the pass-1 histogram (2^20 buckets = 24 MiB). Finer does not pay: a bucket then spans 4096 keys,
/// so resolving one costs at most a 96 KiB exact histogram.
const ROOT_MAX_BITS: u32 = 20;

/// Largest refinement histogram of a later pass (2^16 slots = 1.5 MiB), so that many buckets share a pass.
const SUB_MAX_BITS: u32 = 16;

/// Bytes per collected pixel: the `u32` key and the `u32` region size (0 = background).
const ITEM_BYTES: usize = std::mem::size_of::<(u32, u32)>();

/// Bytes per histogram slot.
const TALLY_BYTES: usize = std::mem::size_of::<Tally>();

/// What to compute and how much memory to use.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelMetricsOptions {
    /// Compute pixel AUROC.
    pub auroc: bool,
    /// Compute AUPRO.
    pub aupro: bool,
    /// AUPRO's false-positive-rate limit, in (0, 1].
    pub fpr_limit: f64,
    /// Bytes for histograms and collected pixels per pass; more means fewer passes over the source.
    pub memory_budget: usize,
}

impl Default for PixelMetricsOptions {
    fn default() -> Self {
        Self {
            auroc: true,
            aupro: true,
            fpr_limit: DEFAULT_FPR_LIMIT,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Per-image facts gathered during the first pass, so that image-level metrics need no extra pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSummary {
    /// Image name from the source.
    pub name: String,
    /// The maximum of the map: anomalib's image score when the model gives none.
    pub max_score: f32,
    /// Whether the mask has any anomalous pixel (the image-level label).
    pub anomalous: bool,
}

/// The result of [`pixel_metrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct PixelMetrics {
    /// Pixel AUROC; `None` if not requested or if all pixels are of one class.
    pub auroc: Option<f64>,
    /// AUPRO normalised to [0, 1]; `None` if not requested or degenerate (no anomalous region or no background
    /// pixel, where anomalib reports 0).
    pub aupro: Option<f64>,
    /// Number of images.
    pub images: u64,
    /// Number of pixels.
    pub pixels: u64,
    /// Number of anomalous (mask non-zero) pixels.
    pub anomalous_pixels: u64,
    /// Number of 8-connected anomalous regions over all images (0 unless AUPRO was requested).
    pub regions: u64,
    /// Passes made over the source.
    pub passes: u32,
    /// One entry per image, in the order of the first pass.
    pub image_summaries: Vec<ImageSummary>,
}

/// Pixel AUROC of every pixel of every image in `source`, pooled (normal images included), exactly as
/// scikit-learn's `roc_auc_score` on the flattened scores and masks would give.
///
/// Errors: source errors, NaN scores, [`MetricsError::SingleClass`] when no pixel (or every pixel) is anomalous.
pub fn pixel_auroc<S: PixelSource + ?Sized>(
    source: &S,
    memory_budget: usize,
) -> Result<f64, MetricsError> {
    let options = PixelMetricsOptions {
        auroc: true,
        aupro: false,
        memory_budget,
        ..PixelMetricsOptions::default()
    };
    let result = pixel_metrics(source, &options)?;
    result.auroc.ok_or(MetricsError::SingleClass {
        metric: "pixel AUROC",
        positives: result.anomalous_pixels,
        negatives: result.pixels - result.anomalous_pixels,
    })
}

/// AUPRO up to `fpr_limit` (normally [`DEFAULT_FPR_LIMIT`]), normalised to [0, 1], as defined in [`super`].
///
/// Degenerate inputs (no anomalous region, or no background pixel) give 0, as in anomalib.
pub fn aupro<S: PixelSource + ?Sized>(
    source: &S,
    fpr_limit: f64,
    memory_budget: usize,
) -> Result<f64, MetricsError> {
    let options = PixelMetricsOptions {
        auroc: false,
        aupro: true,
        fpr_limit,
        memory_budget,
    };
    Ok(pixel_metrics(source, &options)?.aupro.unwrap_or(0.0))
}

/// Computes the requested pixel metrics in one sweep (see the module docs for the method), plus per-image summaries.
///
/// Errors: [`MetricsError::Empty`] for a source without images, [`MetricsError::EmptyMap`] for an image without
/// pixels, shape and NaN errors, [`MetricsError::InvalidFprLimit`], errors raised by the source, and
/// [`MetricsError::SourceChanged`] if a later pass sees different data.
pub fn pixel_metrics<S: PixelSource + ?Sized>(
    source: &S,
    options: &PixelMetricsOptions,
) -> Result<PixelMetrics, MetricsError> {
    if options.aupro && !(options.fpr_limit > 0.0 && options.fpr_limit <= 1.0) {
        return Err(MetricsError::InvalidFprLimit(options.fpr_limit));
    }
    let budget = options.memory_budget.max(MIN_MEMORY_BUDGET);
    let want_regions = options.aupro;

    // Pass 1: coarse histogram over the top key bits, plus totals and per-image facts.
    let root_bits = hist_bits(budget).min(ROOT_MAX_BITS);
    let root_shift = 32 - root_bits;
    let mut hist = vec![Tally::default(); 1 << root_bits];
    let mut first = FirstPass::default();
    let pixels = sweep(source, want_regions, Some(&mut first), |key, class| {
        hist[(key >> root_shift) as usize].add(class);
    })?;
    if first.summaries.is_empty() {
        return Err(MetricsError::Empty);
    }
    let totals = hist.iter().fold(Tally::default(), |acc, t| acc.plus(t));

    let curve = Curve {
        negatives: totals.neg,
        regions: first.regions,
        fpr_limit: options.fpr_limit,
        auroc: options.auroc,
        aupro: options.aupro,
    };
    let mut area = Area::default();
    let mut pending = VecDeque::new();
    let mut before = Tally::default();
    for (index, tally) in hist.iter().enumerate().rev() {
        if tally.is_empty() {
            continue;
        }
        let range = KeyRange {
            lo: (index as u32) << root_shift,
            shift: root_shift,
        };
        curve.settle(range, *tally, before, &mut area, &mut pending);
        before = before.plus(tally);
    }
    drop(hist);

    // Later passes: resolve mixed buckets, as many per pass as the budget allows.
    let mut passes = 1u32;
    while !pending.is_empty() {
        let mut tasks = plan_pass(&mut pending, budget);
        tasks.sort_unstable_by_key(|t| t.bucket.range.lo);
        let los: Vec<u32> = tasks.iter().map(|t| t.bucket.range.lo).collect();
        let (min_key, max_key) = (los[0], tasks[tasks.len() - 1].bucket.range.hi());
        let mut overflow = 0u64;
        let seen = sweep(source, want_regions, None, |key, class| {
            if key < min_key || key > max_key {
                return;
            }
            let task = &mut tasks[los.partition_point(|&lo| lo <= key) - 1];
            task.add(key, class, &mut overflow);
        })?;
        passes += 1;
        if seen != pixels || overflow > 0 {
            return Err(MetricsError::SourceChanged(format!(
                "pass {passes} saw {seen} pixels ({overflow} unexpected) where pass 1 saw {pixels}"
            )));
        }
        for task in tasks {
            task.finish(&curve, &mut area, &mut pending)?;
        }
    }

    Ok(PixelMetrics {
        auroc: (options.auroc && totals.pos > 0 && totals.neg > 0)
            .then(|| area.twice_auc as f64 / (2.0 * totals.pos as f64 * totals.neg as f64)),
        aupro: (options.aupro && totals.neg > 0 && first.regions > 0)
            // The trapezoids sum to at most `fpr_limit` exactly; in floating point the sum can exceed it by an ulp
            // (found by the property test: a 3-pixel region gave 1.0000000000000002).
            .then(|| (area.pro / options.fpr_limit).min(1.0)),
        images: first.summaries.len() as u64,
        pixels,
        anomalous_pixels: totals.pos,
        regions: first.regions,
        passes,
        image_summaries: first.summaries,
    })
}

/// Maps an `f32` to a `u32` with the same order (`a < b` ⇔ `key(a) < key(b)`), treating `-0.0` as `0.0`.
/// NaN must be excluded by the caller.
pub(crate) fn order_key(score: f32) -> u32 {
    let score = if score == 0.0 { 0.0 } else { score };
    let bits = score.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Largest histogram size (in bits) that fits `budget`, at least 1.
fn hist_bits(budget: usize) -> u32 {
    (budget / TALLY_BYTES).max(2).ilog2()
}

/// Counts of one bucket or one group of tied scores.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tally {
    /// Normal (background) pixels.
    neg: u64,
    /// Anomalous pixels.
    pos: u64,
    /// Sum of `1 / |region|` over the anomalous pixels (0 unless AUPRO is computed).
    pro: f64,
}

impl Tally {
    /// Adds one pixel: `class` 0 is background, otherwise the size of the pixel's region (1 when regions are not
    /// labelled).
    #[inline]
    fn add(&mut self, class: u32) {
        if class == 0 {
            self.neg += 1;
        } else {
            self.pos += 1;
            self.pro += 1.0 / f64::from(class);
        }
    }

    fn plus(&self, other: &Tally) -> Tally {
        Tally {
            neg: self.neg + other.neg,
            pos: self.pos + other.pos,
            pro: self.pro + other.pro,
        }
    }

    fn count(&self) -> u64 {
        self.neg + self.pos
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }
}

/// Keys `lo ..= lo + 2^shift - 1`; `lo` is a multiple of `2^shift`.
#[derive(Clone, Copy, Debug)]
struct KeyRange {
    lo: u32,
    shift: u32,
}

impl KeyRange {
    fn hi(&self) -> u32 {
        // lo is aligned, so this stays within u32 even for the whole range (shift 32).
        (u64::from(self.lo) + ((1u64 << self.shift) - 1)) as u32
    }
}

/// A mixed bucket awaiting resolution, with the curve position before it.
#[derive(Debug)]
struct Bucket {
    range: KeyRange,
    tally: Tally,
    before: Tally,
}

/// The two curves' geometry and the areas accumulated so far.
struct Curve {
    negatives: u64,
    regions: u64,
    fpr_limit: f64,
    auroc: bool,
    aupro: bool,
}

#[derive(Default)]
struct Area {
    /// Twice the number of correctly ordered (anomalous, normal) pairs, ties counting half: the AUROC numerator.
    twice_auc: u128,
    /// Trapezoidal area under the PRO curve up to the FPR limit (not yet divided by the limit).
    pro: f64,
}

impl Curve {
    /// Adds the area of one straight step of both curves: from the position `before` to `before + group`.
    /// Exact when `group` is one distinct score, or when it is pure (all normal or all anomalous), since one
    /// coordinate then stays constant across it.
    fn add(&self, before: Tally, group: Tally, area: &mut Area) {
        if self.auroc {
            area.twice_auc +=
                u128::from(group.neg) * (2 * u128::from(before.pos) + u128::from(group.pos));
        }
        if self.aupro && self.negatives > 0 && self.regions > 0 {
            let r = self.regions as f64;
            let f0 = self.fpr(before.neg);
            if f0 >= self.fpr_limit {
                return;
            }
            let f1 = self.fpr(before.neg + group.neg);
            let p0 = (before.pro / r).min(1.0);
            let p1 = ((before.pro + group.pro) / r).min(1.0);
            area.pro += if f1 <= self.fpr_limit {
                (f1 - f0) * (p0 + p1) / 2.0
            } else {
                // The step crosses the limit: stop there, interpolating PRO linearly.
                let p = p0 + (p1 - p0) * (self.fpr_limit - f0) / (f1 - f0);
                (self.fpr_limit - f0) * (p0 + p) / 2.0
            };
        }
    }

    /// Whether the inside of a multi-key bucket matters for the requested metrics.
    fn needs_resolution(&self, before: &Tally, tally: &Tally) -> bool {
        if tally.neg == 0 || tally.pos == 0 {
            return false;
        }
        self.auroc || (self.aupro && self.fpr(before.neg) < self.fpr_limit)
    }

    /// The false-positive rate after `negatives` background pixels (one formula everywhere, so that the decision to
    /// skip a bucket and the area computation agree to the last bit).
    fn fpr(&self, negatives: u64) -> f64 {
        negatives as f64 / self.negatives as f64
    }

    /// Adds a bucket's area now if that is exact, or queues it for resolution.
    fn settle(
        &self,
        range: KeyRange,
        tally: Tally,
        before: Tally,
        area: &mut Area,
        pending: &mut VecDeque<Bucket>,
    ) {
        if range.shift == 0 || !self.needs_resolution(&before, &tally) {
            self.add(before, tally, area);
        } else {
            pending.push_back(Bucket {
                range,
                tally,
                before,
            });
        }
    }
}

/// How one pass resolves one bucket.
enum Work {
    /// Histogram over the bucket's keys with `2^bits` slots (exact when `bits == range.shift`).
    Refine { bits: u32, hist: Vec<Tally> },
    /// Collect `(key, class)` of every pixel in the bucket, then sort.
    Collect { items: Vec<(u32, u32)> },
}

struct Task {
    bucket: Bucket,
    work: Work,
}

/// Takes from the front of `pending` as many buckets as fit in `budget` (at least one) and chooses how to resolve
/// each: whichever of collecting and an exact histogram is cheaper, or else the largest refinement that fits.
fn plan_pass(pending: &mut VecDeque<Bucket>, budget: usize) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut used = 0usize;
    while let Some(bucket) = pending.front() {
        let collect_cost = usize::try_from(bucket.tally.count())
            .unwrap_or(usize::MAX)
            .saturating_mul(ITEM_BYTES);
        let exact_cost = if bucket.range.shift <= SUB_MAX_BITS {
            (1usize << bucket.range.shift) * TALLY_BYTES
        } else {
            usize::MAX
        };
        let (cost, collect, bits) = if collect_cost.min(exact_cost) <= budget {
            if collect_cost <= exact_cost {
                (collect_cost, true, 0)
            } else {
                (exact_cost, false, bucket.range.shift)
            }
        } else {
            let bits = hist_bits(budget).min(SUB_MAX_BITS).min(bucket.range.shift);
            ((1usize << bits) * TALLY_BYTES, false, bits)
        };
        if !tasks.is_empty() && used + cost > budget {
            break;
        }
        used += cost;
        let bucket = pending.pop_front().expect("front exists");
        let work = if collect {
            // The count fits the budget, hence usize.
            Work::Collect {
                items: Vec::with_capacity(bucket.tally.count() as usize),
            }
        } else {
            Work::Refine {
                bits,
                hist: vec![Tally::default(); 1 << bits],
            }
        };
        tasks.push(Task { bucket, work });
    }
    tasks
}

impl Task {
    #[inline]
    fn add(&mut self, key: u32, class: u32, overflow: &mut u64) {
        let range = self.bucket.range;
        if key > range.hi() {
            return;
        }
        match &mut self.work {
            Work::Refine { bits, hist } => {
                let offset = u64::from(key - range.lo) >> (range.shift - *bits);
                hist[offset as usize].add(class);
            }
            Work::Collect { items } => {
                // Never grow past what pass 1 counted: a misbehaving source must not exhaust memory.
                if items.len() < items.capacity() {
                    items.push((key, class));
                } else {
                    *overflow += 1;
                }
            }
        }
    }

    /// Turns the pass's findings into area (or into smaller pending buckets).
    fn finish(
        self,
        curve: &Curve,
        area: &mut Area,
        pending: &mut VecDeque<Bucket>,
    ) -> Result<(), MetricsError> {
        let Bucket {
            range,
            tally,
            before,
        } = self.bucket;
        let changed = |found: Tally| {
            MetricsError::SourceChanged(format!(
                "keys {:#010x}..={:#010x}: pass 1 counted {} normal and {} anomalous pixels, a later pass {} and {}",
                range.lo,
                range.hi(),
                tally.neg,
                tally.pos,
                found.neg,
                found.pos
            ))
        };
        match self.work {
            Work::Refine { bits, hist } => {
                let found = hist.iter().fold(Tally::default(), |acc, t| acc.plus(t));
                if (found.neg, found.pos) != (tally.neg, tally.pos) {
                    return Err(changed(found));
                }
                let sub_shift = range.shift - bits;
                let mut running = before;
                for (index, sub) in hist.iter().enumerate().rev() {
                    if sub.is_empty() {
                        continue;
                    }
                    let sub_range = KeyRange {
                        lo: range.lo + ((index as u32) << sub_shift),
                        shift: sub_shift,
                    };
                    curve.settle(sub_range, *sub, running, area, pending);
                    running = running.plus(sub);
                }
            }
            Work::Collect { mut items } => {
                items.sort_unstable_by_key(|item| std::cmp::Reverse(item.0));
                let mut running = before;
                let mut found = Tally::default();
                for run in items.chunk_by(|a, b| a.0 == b.0) {
                    let mut group = Tally::default();
                    for &(_, class) in run {
                        group.add(class);
                    }
                    curve.add(running, group, area);
                    running = running.plus(&group);
                    found = found.plus(&group);
                }
                if (found.neg, found.pos) != (tally.neg, tally.pos) {
                    return Err(changed(found));
                }
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct FirstPass {
    summaries: Vec<ImageSummary>,
    regions: u64,
}

/// Walks every pixel of `source`, calling `f(key, class)` (class 0 = background, else the pixel's region size, or
/// 1 when `want_regions` is false). Validates each map; fills `first` on the first pass. Returns the pixel count.
fn sweep<S: PixelSource + ?Sized>(
    source: &S,
    want_regions: bool,
    mut first: Option<&mut FirstPass>,
    mut f: impl FnMut(u32, u32),
) -> Result<u64, MetricsError> {
    let mut pixels = 0u64;
    source.visit(&mut |map: &MapView<'_>| {
        map.validate()?;
        if map.scores.is_empty() {
            return Err(MetricsError::EmptyMap {
                name: map.name.to_owned(),
            });
        }
        let nan = |index| MetricsError::NanScore {
            context: format!("map {}", map.name),
            index,
        };
        let mut max_score = f32::NEG_INFINITY;
        let mut anomalous = false;
        match map.mask {
            None => {
                for (i, &s) in map.scores.iter().enumerate() {
                    if s.is_nan() {
                        return Err(nan(i));
                    }
                    max_score = max_score.max(s);
                    f(order_key(s), 0);
                }
            }
            Some(mask) => {
                let components = if want_regions {
                    let c = connected_components(mask, map.width, map.height)?;
                    if let Some(first) = first.as_deref_mut() {
                        first.regions += c.count() as u64;
                    }
                    Some(c)
                } else {
                    None
                };
                for (i, (&s, &m)) in map.scores.iter().zip(mask).enumerate() {
                    if s.is_nan() {
                        return Err(nan(i));
                    }
                    max_score = max_score.max(s);
                    let class = match (&components, m) {
                        (_, 0) => 0,
                        // Region sizes are below u32::MAX: connected_components rejects larger images.
                        (Some(c), _) => c.region_size_at(i).map_or(0, |size| size as u32),
                        (None, _) => 1,
                    };
                    anomalous |= m != 0;
                    f(order_key(s), class);
                }
            }
        }
        pixels += map.scores.len() as u64;
        if let Some(first) = first.as_deref_mut() {
            first.summaries.push(ImageSummary {
                name: map.name.to_owned(),
                max_score,
                anomalous,
            });
        }
        Ok(())
    })?;
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::super::image::image_auroc;
    use super::super::source::AnomalyMap;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_key_preserves_order() {
        let values = [
            f32::NEG_INFINITY,
            f32::MIN,
            -1.5,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            1.0,
            1.5,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
    }

    /// The straightforward definition from the module docs of `metrics`: sort every pixel, one curve point per
    /// distinct score, trapezoids clipped at the limit.
    fn reference_aupro(maps: &[AnomalyMap], limit: f64) -> f64 {
        let mut pixels: Vec<(f32, Option<u64>)> = Vec::new();
        let mut regions = 0u64;
        for m in maps {
            let v = m.view();
            let c = v
                .mask
                .map(|mask| connected_components(mask, v.width, v.height).unwrap());
            regions += c.as_ref().map_or(0, |c| c.count() as u64);
            for (i, &s) in v.scores.iter().enumerate() {
                pixels.push((s, c.as_ref().and_then(|c| c.region_size_at(i))));
            }
        }
        let n_bg = pixels.iter().filter(|p| p.1.is_none()).count() as f64;
        if n_bg == 0.0 || regions == 0 {
            return 0.0;
        }
        pixels.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut points = vec![(0.0f64, 0.0f64)];
        let (mut fp, mut pro) = (0.0, 0.0);
        for (i, &(s, size)) in pixels.iter().enumerate() {
            match size {
                None => fp += 1.0,
                Some(size) => pro += 1.0 / size as f64,
            }
            if i + 1 == pixels.len() || pixels[i + 1].0 != s {
                points.push((fp / n_bg, (pro / regions as f64).min(1.0)));
            }
        }
        let mut area = 0.0;
        for w in points.windows(2) {
            let ((f0, p0), (f1, p1)) = (w[0], w[1]);
            if f0 >= limit {
                break;
            }
            if f1 <= limit {
                area += (f1 - f0) * (p0 + p1) / 2.0;
            } else {
                let p = p0 + (p1 - p0) * (limit - f0) / (f1 - f0);
                area += (limit - f0) * (p0 + p) / 2.0;
            }
        }
        area / limit
    }

    fn flat(maps: &[AnomalyMap]) -> (Vec<f32>, Vec<bool>) {
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for m in maps {
            let v = m.view();
            scores.extend_from_slice(v.scores);
            match v.mask {
                Some(mask) => labels.extend(mask.iter().map(|&b| b != 0)),
                None => labels.extend(std::iter::repeat_n(false, v.scores.len())),
            }
        }
        (scores, labels)
    }

    /// Random maps with few distinct score levels (ties everywhere), blobby masks, and some good images.
    fn arb_maps() -> impl Strategy<Value = Vec<AnomalyMap>> {
        let one = (1usize..12, 1usize..12, 1u32..40, any::<u64>(), 0u8..4);
        proptest::collection::vec(one, 1..6).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(k, (w, h, levels, seed, kind))| {
                    let mut state = seed | 1;
                    let mut next = || {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state
                    };
                    let mask: Option<Vec<u8>> = (kind != 0).then(|| {
                        (0..w * h)
                            .map(|_| u8::from(next() % 4 == 0) * 255)
                            .collect()
                    });
                    let scores = (0..w * h)
                        .map(|i| {
                            let boost = mask
                                .as_ref()
                                .map_or(0, |m| u32::from(m[i] != 0) * levels / 3);
                            let q = (next() % u64::from(levels)) as u32 + boost;
                            // Mix in negative values and zeros of both signs.
                            q as f32 * 0.5 - 3.0
                        })
                        .collect();
                    AnomalyMap::new(format!("img{k}"), w, h, scores, mask).unwrap()
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn streaming_matches_sorting_for_any_budget(maps in arb_maps(), budget in prop_oneof![Just(0usize), Just(2048), Just(1 << 30)]) {
            let options = PixelMetricsOptions { memory_budget: budget, ..Default::default() };
            let result = pixel_metrics(&maps, &options).unwrap();
            let (scores, labels) = flat(&maps);
            match image_auroc(&scores, &labels) {
                Ok(expected) => prop_assert!((result.auroc.unwrap() - expected).abs() < 1e-12),
                Err(_) => prop_assert!(result.auroc.is_none()),
            }
            let expected = reference_aupro(&maps, DEFAULT_FPR_LIMIT);
            prop_assert!((result.aupro.unwrap_or(0.0) - expected).abs() < 1e-9, "{:?} vs {}", result.aupro, expected);
            let aupro_only = aupro(&maps, DEFAULT_FPR_LIMIT, budget).unwrap();
            prop_assert!((aupro_only - expected).abs() < 1e-9);
            prop_assert!((0.0..=1.0).contains(&aupro_only));
        }

        #[test]
        fn other_fpr_limits_match_the_reference(maps in arb_maps(), limit in 0.01f64..=1.0) {
            let expected = reference_aupro(&maps, limit);
            prop_assert!((aupro(&maps, limit, 0).unwrap() - expected).abs() < 1e-9);
        }
    }

    #[test]
    fn continuous_scores_force_refinement_and_stay_exact() {
        // Thousands of distinct scores in a narrow range put most pixels in a few mixed root buckets.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut maps = Vec::new();
        for k in 0..6 {
            let (w, h) = (40, 30);
            let mask: Vec<u8> = (0..w * h)
                .map(|i| u8::from((i % w) > 25 && (i / w) > 10 && k % 2 == 0))
                .collect();
            let scores: Vec<f32> = (0..w * h)
                .map(|i| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                    1.0 + u * 0.01 + if mask[i] != 0 { 0.003 } else { 0.0 }
                })
                .collect();
            maps.push(AnomalyMap::new(format!("m{k}"), w, h, scores, Some(mask)).unwrap());
        }
        let big = pixel_metrics(&maps, &PixelMetricsOptions::default()).unwrap();
        let tiny = pixel_metrics(
            &maps,
            &PixelMetricsOptions {
                memory_budget: 0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(big.passes, 2);
        assert!(tiny.passes > 20, "{} passes", tiny.passes);
        // The AUROC numerator is an exact integer: identical bits for every budget.
        assert_eq!(big.auroc, tiny.auroc);
        assert!((big.aupro.unwrap() - tiny.aupro.unwrap()).abs() < 1e-12);
        let (scores, labels) = flat(&maps);
        assert!((big.auroc.unwrap() - image_auroc(&scores, &labels).unwrap()).abs() < 1e-12);
        assert!((big.aupro.unwrap() - reference_aupro(&maps, 0.3)).abs() < 1e-9);
    }

    #[test]
    fn summaries_and_degenerate_cases() {
        let good = AnomalyMap::new("good", 2, 2, vec![0.1, 0.5, 0.2, 0.3], None).unwrap();
        let bad = AnomalyMap::new("bad", 2, 1, vec![0.9, 0.4], Some(vec![1, 0])).unwrap();
        let r = pixel_metrics(
            &vec![good.clone(), bad.clone()],
            &PixelMetricsOptions::default(),
        )
        .unwrap();
        assert_eq!(
            (r.images, r.pixels, r.anomalous_pixels, r.regions),
            (2, 6, 1, 1)
        );
        assert_eq!(r.image_summaries[0].max_score, 0.5);
        assert!(!r.image_summaries[0].anomalous);
        assert!(r.image_summaries[1].anomalous);
        assert_eq!(r.auroc, Some(1.0));
        assert_eq!(r.aupro, Some(1.0));

        // Only good images: AUROC undefined, AUPRO degenerate (0 from the standalone function).
        let only_good = vec![good.clone()];
        let r = pixel_metrics(&only_good, &PixelMetricsOptions::default()).unwrap();
        assert_eq!((r.auroc, r.aupro), (None, None));
        assert!(matches!(
            pixel_auroc(&only_good, 0),
            Err(MetricsError::SingleClass { .. })
        ));
        assert_eq!(aupro(&only_good, 0.3, 0).unwrap(), 0.0);
        // Every pixel anomalous: no background.
        let all_bad = vec![AnomalyMap::new("x", 1, 2, vec![0.1, 0.2], Some(vec![1, 1])).unwrap()];
        assert_eq!(aupro(&all_bad, 0.3, 0).unwrap(), 0.0);

        assert!(matches!(
            pixel_metrics(&Vec::new(), &PixelMetricsOptions::default()),
            Err(MetricsError::Empty)
        ));
        assert!(matches!(
            aupro(&only_good, 0.0, 0),
            Err(MetricsError::InvalidFprLimit(_))
        ));
        let nan = vec![AnomalyMap::new("n", 2, 1, vec![0.0, f32::NAN], None).unwrap()];
        assert!(matches!(
            pixel_auroc(&nan, 0),
            Err(MetricsError::NanScore { index: 1, .. })
        ));
        let empty = vec![AnomalyMap::new("e", 0, 3, vec![], None).unwrap()];
        assert!(matches!(
            pixel_auroc(&empty, 0),
            Err(MetricsError::EmptyMap { .. })
        ));
        assert!(AnomalyMap::new("s", 2, 2, vec![0.0; 3], None).is_err());
        assert!(AnomalyMap::new("s", 2, 2, vec![0.0; 4], Some(vec![0; 5])).is_err());
    }

    /// A source that returns different data on the second pass.
    struct Fickle {
        calls: std::cell::Cell<u32>,
    }

    impl PixelSource for Fickle {
        fn visit(
            &self,
            f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
        ) -> Result<(), MetricsError> {
            let call = self.calls.get();
            self.calls.set(call + 1);
            let scores: Vec<f32> = (0..64)
                .map(|i| (i % 7) as f32 + if call > 0 { 0.5 } else { 0.0 })
                .collect();
            let mask: Vec<u8> = (0..64).map(|i| u8::from(i % 3 == 0)).collect();
            f(&MapView {
                name: "fickle",
                width: 8,
                height: 8,
                scores: &scores,
                mask: Some(&mask),
            })
        }
    }

    #[test]
    fn changing_sources_are_detected() {
        let fickle = Fickle {
            calls: std::cell::Cell::new(0),
        };
        assert!(matches!(
            pixel_auroc(&fickle, 0),
            Err(MetricsError::SourceChanged(_))
        ));
    }
}
