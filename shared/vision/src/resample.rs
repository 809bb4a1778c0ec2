//! Every resize kestrel does on plain buffers, in one place: images into the network, anomaly maps back out, masks.
//!
//! Three filters, each written once, each matching the reference it is compared with (see `docs/scoring.md`):
//!
//! * [`bilinear`] — `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` without antialiasing,
//!   in `f32` arithmetic as torch's CPU kernel does: output pixel `i` samples the source at `(i + 0.5)·in/out − 0.5`
//!   (clamped at 0, the far neighbour clamped at the edge) and mixes its two neighbours per axis. anomalib brings
//!   PaDiM's patch map to the input size this way; kestrel also uses it for heatmap overlays at the original image
//!   size and for the edge's wire mask, so host and unit resize maps with the same arithmetic.
//! * [`nearest`] — torch's legacy `mode="nearest"`: output `i` takes source `min(⌊i · in/out⌋, in − 1)` with the
//!   scale in `f32`. PatchCore's map (anomalib: `F.interpolate` default) and ground-truth masks, which must stay
//!   binary.
//! * [`Taps::antialiased`] — bilinear with the triangle filter stretched by the downscale factor (torchvision
//!   `Resize(antialias=True)`, PIL): how camera frames and dataset images become backbone inputs, so a 1024 px frame
//!   shrunk to 256 px averages every pixel instead of aliasing fine texture. Upscaling, it equals [`bilinear`] up to
//!   rounding (tested).
//!
//! The tensor-level, differentiable bilinear op used while pretraining lives in [`crate::ops`]: it works on candle
//! tensors with a backward pass and keeps candle's own `f64` arithmetic so its forward is bit-identical to
//! `Tensor::upsample_bilinear2d`.

use crate::map::{check_size, MapError, ScoreMap};

/// Sparse resampling weights along one axis: output `i` reads `len[i]` consecutive input samples starting at
/// `start[i]`, with weights `weights[offset[i]..offset[i] + len[i]]`.
pub(crate) struct Taps {
    start: Vec<usize>,
    offset: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
}

impl Taps {
    /// Antialiased bilinear (triangle filter stretched by the downscale factor), as torch's
    /// `_upsample_bilinear2d_aa` and PIL compute it: centre `(i + 0.5)·scale`, support `max(scale, 1)`, weights
    /// normalised to sum to one over the taps inside the image.
    pub(crate) fn antialiased(input: usize, output: usize) -> Self {
        let scale = input as f64 / output as f64;
        let support = scale.max(1.0);
        let inv = 1.0 / support;
        let mut w = Self::with_capacity(output);
        for i in 0..output {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero like the C++ `int64_t` cast the reference uses.
            let xmin = ((center - support + 0.5) as i64).clamp(0, input as i64 - 1) as usize;
            let xmax = ((center + support + 0.5) as i64)
                .min(input as i64)
                .max(xmin as i64 + 1) as usize;
            let taps: Vec<f64> = (xmin..xmax)
                .map(|j| {
                    let x = (j as f64 - center + 0.5) * inv;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f64 = taps.iter().sum();
            w.push(
                xmin,
                taps.iter()
                    .map(|t| if total > 0.0 { t / total } else { 0.0 }),
            );
        }
        w
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            start: Vec::with_capacity(n),
            offset: Vec::with_capacity(n),
            len: Vec::with_capacity(n),
            weights: Vec::with_capacity(n * 2),
        }
    }

    fn push(&mut self, start: usize, taps: impl IntoIterator<Item = f64>) {
        let before = self.weights.len();
        self.weights.extend(taps.into_iter().map(|t| t as f32));
        self.start.push(start);
        self.offset.push(before);
        self.len.push(self.weights.len() - before);
    }

    pub(crate) fn taps(&self, i: usize) -> (usize, &[f32]) {
        (
            self.start[i],
            &self.weights[self.offset[i]..self.offset[i] + self.len[i]],
        )
    }

    fn outputs(&self) -> usize {
        self.start.len()
    }
}

/// Resample `planes` planes of `w × h` (`src`, planar) with separable weights: horizontal pass, then vertical.
/// `read(plane, i)` returns plane `plane` of interleaved pixel `i · planes`, so the horizontal pass reads straight
/// from interleaved `u8` input or a single `f32` plane without a conversion copy.
pub(crate) fn resample_planes(
    planes: usize,
    w: usize,
    h: usize,
    xw: &Taps,
    yw: &Taps,
    read: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let (ow, oh) = (xw.outputs(), yw.outputs());
    // Horizontal: (planes, h, ow).
    let mut tmp = vec![0f32; planes * h * ow];
    for p in 0..planes {
        for y in 0..h {
            let row = &mut tmp[(p * h + y) * ow..(p * h + y + 1) * ow];
            for (x, out) in row.iter_mut().enumerate() {
                let (s, ws) = xw.taps(x);
                let mut acc = 0f32;
                for (k, wt) in ws.iter().enumerate() {
                    acc += wt * read(p, (y * w + s + k) * planes);
                }
                *out = acc;
            }
        }
    }
    // Vertical: (planes, oh, ow).
    let mut out = vec![0f32; planes * oh * ow];
    for p in 0..planes {
        for y in 0..oh {
            let (s, ws) = yw.taps(y);
            let dst = &mut out[(p * oh + y) * ow..(p * oh + y + 1) * ow];
            for (k, wt) in ws.iter().enumerate() {
                let src = &tmp[(p * h + s + k) * ow..(p * h + s + k + 1) * ow];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d += wt * v;
                }
            }
        }
    }
    out
}

/// Per output index along one axis: the two source indices and the weight of the second, in `f32` as torch's CPU
/// `upsample_bilinear2d` computes them for float input.
fn bilinear_axis(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Bilinear resize of `map` to `width × height` (torch `F.interpolate(mode="bilinear", align_corners=False)`, no
/// antialiasing; see the [module docs](self)).
pub fn bilinear(map: &ScoreMap, width: usize, height: usize) -> Result<ScoreMap, MapError> {
    check_size("target map size", width, height)?;
    let (w, src) = (map.width(), map.data());
    let cx = bilinear_axis(w, width);
    let cy = bilinear_axis(map.height(), height);
    let mut out = Vec::with_capacity(width * height);
    for &(y0, y1, fy) in &cy {
        for &(x0, x1, fx) in &cx {
            // Both rows mixed horizontally, then vertically: the order torch's kernel uses.
            let a = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let b = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out.push(a * (1.0 - fy) + b * fy);
        }
    }
    ScoreMap::new(width, height, out)
}

/// Source index per output index for nearest-neighbour resizing (torch legacy `mode="nearest"`, scale in `f32`).
pub(crate) fn nearest_index(input: usize, output: usize) -> Vec<usize> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| ((i as f32 * scale).floor() as usize).min(input - 1))
        .collect()
}

/// Nearest-neighbour resize of row-major `w × h` values to `width × height`. Sizes must be non-zero and
/// `src.len() == w · h` (callers hold validated maps or masks).
pub(crate) fn nearest_values<T: Copy>(
    src: &[T],
    w: usize,
    h: usize,
    width: usize,
    height: usize,
) -> Vec<T> {
    let xs = nearest_index(w, width);
    let ys = nearest_index(h, height);
    let mut out = Vec::with_capacity(width * height);
    for &sy in &ys {
        let row = &src[sy * w..(sy + 1) * w];
        out.extend(xs.iter().map(|&sx| row[sx]));
    }
    out
}

/// Nearest-neighbour resize of `map` to `width × height` (see the [module docs](self)).
pub fn nearest(map: &ScoreMap, width: usize, height: usize) -> Result<ScoreMap, MapError> {
    check_size("target map size", width, height)?;
    let out = nearest_values(map.data(), map.width(), map.height(), width, height);
    ScoreMap::new(width, height, out)
}

/// The 1-D window of [`gaussian_splat`] for `kernel` px patches: a Gaussian with σ = 10 px for windows of 32 px
/// and more, else `log10(0.45·k + 1) + 0.25` (the rule CutPaste and DS2 take from Rippel et al.). An even window
/// is the odd window of `k − 1` samples with its centre sample doubled, as theirs is. Peak 1, not normalised:
/// [`gaussian_splat`] divides by the summed weights itself.
pub fn splat_window(kernel: usize) -> Vec<f32> {
    let k = kernel as f64;
    let std = if kernel >= 32 {
        10.0
    } else {
        (0.45 * k + 1.0).log10() + 0.25
    };
    let odd = if kernel.is_multiple_of(2) {
        kernel - 1
    } else {
        kernel
    };
    let centre = (odd / 2) as f64;
    let mut w: Vec<f32> = (0..odd)
        .map(|i| {
            let x = i as f64 - centre;
            (-(x * x) / (2.0 * std * std)).exp() as f32
        })
        .collect();
    if kernel.is_multiple_of(2) {
        w.insert(odd / 2, w[odd / 2]);
    }
    w
}

/// Patch scores → a full-resolution map, for detectors that score overlapping windows (GDE): every window spreads
/// its score over the pixels it covers with the Gaussian weights of [`splat_window`], and each pixel takes the
/// weighted *mean* of the windows covering it. The references (a transposed convolution with the same kernel)
/// take the weighted sum instead; the mean keeps the map in the detector's units, so a pixel threshold means the
/// same thing everywhere, and does not darken the borders, which fewer windows cover. `map` is the grid of window
/// scores (window `(gx, gy)` has its top-left corner at `(gx·stride, gy·stride)`); the windows must tile the
/// target exactly: `(grid − 1)·stride + kernel` = `width` and `height` (else [`MapError::Tiling`]).
pub fn gaussian_splat(
    map: &ScoreMap,
    kernel: usize,
    stride: usize,
    width: usize,
    height: usize,
) -> Result<ScoreMap, MapError> {
    check_size("target map size", width, height)?;
    let (gw, gh) = (map.width(), map.height());
    if kernel == 0
        || stride == 0
        || (gw - 1) * stride + kernel != width
        || (gh - 1) * stride + kernel != height
    {
        return Err(MapError::Tiling {
            grid_w: gw,
            grid_h: gh,
            kernel,
            stride,
            width,
            height,
        });
    }
    let win = splat_window(kernel);
    // Per output index along one axis: the summed weight of the windows covering it (never zero: windows tile).
    let cover = |n: usize, g: usize| -> Vec<f32> {
        let mut c = vec![0f32; n];
        for i in 0..g {
            for (o, &wv) in c[i * stride..i * stride + kernel].iter_mut().zip(&win) {
                *o += wv;
            }
        }
        c
    };
    let (cx, cy) = (cover(width, gw), cover(height, gh));
    // Horizontal pass: one row per grid row.
    let mut rows = vec![0f32; gh * width];
    for (gy, row) in rows.chunks_exact_mut(width).enumerate() {
        for (gx, &s) in map.row(gy).iter().enumerate() {
            for (o, &wv) in row[gx * stride..gx * stride + kernel].iter_mut().zip(&win) {
                *o += s * wv;
            }
        }
        row.iter_mut().zip(&cx).for_each(|(o, c)| *o /= c);
    }
    // Vertical pass.
    let mut out = vec![0f32; width * height];
    for gy in 0..gh {
        let src = &rows[gy * width..(gy + 1) * width];
        for (k, &wv) in win.iter().enumerate() {
            let y = gy * stride + k;
            for (o, &v) in out[y * width..(y + 1) * width].iter_mut().zip(src) {
                *o += v * wv;
            }
        }
    }
    for (y, row) in out.chunks_exact_mut(width).enumerate() {
        row.iter_mut().for_each(|o| *o /= cy[y]);
    }
    ScoreMap::new(width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: usize, h: usize, v: &[f32]) -> ScoreMap {
        ScoreMap::new(w, h, v.to_vec()).unwrap()
    }

    #[test]
    fn bilinear_matches_hand_computed_torch_values() {
        // torch: F.interpolate([[0,1],[2,3]], size=4, mode="bilinear", align_corners=False)
        let out = bilinear(&map(2, 2, &[0.0, 1.0, 2.0, 3.0]), 4, 4).unwrap();
        for (a, b) in out.row(0).iter().zip([0.0, 0.25, 0.75, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{:?}", out.row(0));
        }
        assert!((out.data()[15] - 3.0).abs() < 1e-6);
        // Downscale: [0,1,2,3] -> 2 samples at 0.5 and 2.5 (no antialiasing).
        let d = bilinear(&map(4, 1, &[0.0, 1.0, 2.0, 3.0]), 2, 1).unwrap();
        assert_eq!(d.data(), &[0.5, 2.5]);
        // Non-square, identity.
        let m = map(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(bilinear(&m, 3, 2).unwrap(), m);
    }

    #[test]
    fn nearest_matches_torch_legacy_rule() {
        let n = nearest(&map(2, 2, &[0.0, 1.0, 2.0, 3.0]), 4, 4).unwrap();
        assert_eq!(n.row(0), &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(n.row(3), &[2.0, 2.0, 3.0, 3.0]);
        // 3 -> 2: floor(i * 1.5) = 0, 1.
        assert_eq!(nearest_index(3, 2), vec![0, 1]);
        // 5 -> 3: scale 5/3 in f32: 0, 1, 3.
        assert_eq!(nearest_index(5, 3), vec![0, 1, 3]);
    }

    #[test]
    fn zero_targets_are_refused() {
        let m = map(1, 1, &[1.0]);
        assert!(bilinear(&m, 0, 3).is_err());
        assert!(nearest(&m, 2, 0).is_err());
    }

    #[test]
    fn antialiased_upscale_equals_bilinear_within_rounding() {
        let src: Vec<f32> = (0..5 * 3).map(|v| (v * v % 7) as f32).collect();
        let m = map(5, 3, &src);
        let plain = bilinear(&m, 13, 8).unwrap();
        let aa = resample_planes(
            1,
            5,
            3,
            &Taps::antialiased(5, 13),
            &Taps::antialiased(3, 8),
            |_, i| src[i],
        );
        for (a, b) in plain.data().iter().zip(&aa) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn splat_window_follows_the_reference_rule() {
        let w = splat_window(32);
        assert_eq!(w.len(), 32);
        // Odd window of 31 with its centre (index 15) doubled: indices 15 and 16 both peak at 1.
        assert_eq!((w[15], w[16]), (1.0, 1.0));
        assert!(
            (w[0] - (-(15.0f32 * 15.0) / 200.0).exp()).abs() < 1e-6,
            "σ = 10 px"
        );
        assert_eq!(
            w[..16].iter().rev().collect::<Vec<_>>(),
            w[16..].iter().collect::<Vec<_>>()
        );
        let small = splat_window(9);
        let std = (0.45f64 * 9.0 + 1.0).log10() + 0.25;
        assert!((small[0] as f64 - (-16.0 / (2.0 * std * std)).exp()).abs() < 1e-6);
        assert_eq!(small[4], 1.0);
    }

    #[test]
    fn splat_of_a_constant_grid_is_that_constant_and_sizes_must_tile() {
        let grid = ScoreMap::filled(5, 3, 2.5).unwrap();
        // (5 − 1)·4 + 8 = 24 wide, (3 − 1)·4 + 8 = 16 high.
        let m = gaussian_splat(&grid, 8, 4, 24, 16).unwrap();
        assert!(
            m.data().iter().all(|v| (v - 2.5).abs() < 1e-5),
            "weighted mean of equal scores"
        );
        let e = gaussian_splat(&grid, 8, 4, 25, 16).unwrap_err();
        assert!(matches!(e, MapError::Tiling { width: 25, .. }), "{e}");
        assert!(e.to_string().contains("covers 24×16 px"), "{e}");
    }

    #[test]
    fn splat_puts_a_hot_window_where_it_was() {
        let mut grid = ScoreMap::filled(4, 4, 0.0).unwrap();
        grid.data_mut()[4 + 2] = 1.0; // window (gx 2, gy 1): pixels x 16..48, y 8..40 at stride 8, kernel 32
        let m = gaussian_splat(&grid, 32, 8, 56, 56).unwrap();
        let at = |x: usize, y: usize| m.data()[y * 56 + x];
        assert!(at(32, 24) > 0.1, "inside the hot window: {}", at(32, 24));
        assert_eq!(at(5, 50), 0.0, "outside it");
        assert!(
            at(32, 24) > at(17, 24),
            "higher at the window centre than at its edge"
        );
        assert!(
            m.data().iter().all(|v| (0.0..=1.0).contains(v)),
            "a mean never leaves the scores' range"
        );
    }
}
