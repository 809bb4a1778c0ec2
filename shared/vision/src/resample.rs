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
}
