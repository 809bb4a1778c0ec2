//! From chaos-game points to pixels, and the geometric per-image augmentations (docs/pretraining.md,
//! "Rendering one image" steps 3–6 and 9).
//!
//! Rasterising follows A&F: points are mapped from a render window (the points' bounding box, optionally
//! jittered) onto an `S × S` grid and every point stamps a random subset of its 3×3 neighbourhood, chosen once
//! per image. The stamp thickens thin attractors so that small images are not mostly empty; the "graded" shading
//! (hit counts over the maximum) keeps the point density, which the colouring turns into hue.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{uniform, Image};

/// A single-channel `size × size` image, row-major, values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gray {
    /// Side in pixels.
    pub size: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Gray {
    /// Fraction of non-zero pixels (FractalDB's "filling rate").
    pub fn fill(&self) -> f32 {
        self.data.iter().filter(|&&v| v > 0.0).count() as f32 / self.data.len().max(1) as f32
    }
}

/// The region of the plane that is rendered: `x` maps to rows, `y` to columns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Smallest x.
    pub x_min: f64,
    /// Smallest y.
    pub y_min: f64,
    /// Largest x.
    pub x_max: f64,
    /// Largest y.
    pub y_max: f64,
}

impl Window {
    /// The bounding box of `points` (a unit box at the origin for no points).
    pub fn bounding(points: &[[f32; 2]]) -> Self {
        if points.is_empty() {
            return Self {
                x_min: 0.0,
                y_min: 0.0,
                x_max: 1.0,
                y_max: 1.0,
            };
        }
        let mut w = Self {
            x_min: f64::INFINITY,
            y_min: f64::INFINITY,
            x_max: f64::NEG_INFINITY,
            y_max: f64::NEG_INFINITY,
        };
        for p in points {
            let (x, y) = (f64::from(p[0]), f64::from(p[1]));
            w.x_min = w.x_min.min(x);
            w.x_max = w.x_max.max(x);
            w.y_min = w.y_min.min(y);
            w.y_max = w.y_max.max(y);
        }
        w
    }

    /// A&F's render-window jitter: the centre moves by up to ±20 % of the extent and each half-extent becomes
    /// `U(0.5, 2)` times the original half-extent, independently per axis (so the aspect ratio changes too). The
    /// result zooms out up to 2× or zooms in, cropping the fractal.
    pub fn jittered(&self, rng: &mut impl Rng) -> Self {
        let (ex, ey) = (self.x_max - self.x_min, self.y_max - self.y_min);
        let cx = (self.x_min + self.x_max) / 2.0 + ex * uniform(rng, -0.2, 0.2);
        let cy = (self.y_min + self.y_max) / 2.0 + ey * uniform(rng, -0.2, 0.2);
        let hx = ex * uniform(rng, 0.5, 2.0) / 2.0;
        let hy = ey * uniform(rng, 0.5, 2.0) / 2.0;
        Self {
            x_min: cx - hx,
            y_min: cy - hy,
            x_max: cx + hx,
            y_max: cy + hy,
        }
    }
}

/// The subset of the 3×3 neighbourhood every point stamps; bit `3·(dr+1) + (dc+1)` is offset `(dr, dc)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PatchMask(pub u16);

impl PatchMask {
    /// Only the point's own pixel (no patch rendering).
    pub const POINT: Self = Self(1 << 4);

    /// Each of the 9 offsets independently with probability ½, resampled while empty.
    pub fn sample(rng: &mut impl Rng) -> Self {
        loop {
            let bits = rng.gen::<u16>() & 0x1ff;
            if bits != 0 {
                return Self(bits);
            }
        }
    }

    /// The `(dr, dc)` offsets in the mask.
    pub fn offsets(self) -> Vec<(isize, isize)> {
        (0..9)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| (b as isize / 3 - 1, b as isize % 3 - 1))
            .collect()
    }
}

/// Hit counts to pixel values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shading {
    /// Counts divided by the image's maximum: point density in `(0, 1]`. Needed for colour.
    #[default]
    Graded,
    /// 1 where any point landed.
    Binary,
}

/// Rasterise `points` seen through `window` onto a `size × size` grid: `row = ⌊(x − x_min)(S−1)/x_span⌋`,
/// `col = ⌊(y − y_min)(S−1)/y_span⌋` (floor, so points just outside the window are dropped rather than folded
/// onto the first row), each point stamping `patch`. A zero span is treated as 1.
pub fn rasterize(
    points: &[[f32; 2]],
    size: usize,
    window: &Window,
    patch: PatchMask,
    shading: Shading,
) -> Gray {
    let mut counts = vec![0u32; size * size];
    let span = |s: f64| if s > 0.0 { s } else { 1.0 };
    let sx = (size as f64 - 1.0) / span(window.x_max - window.x_min);
    let sy = (size as f64 - 1.0) / span(window.y_max - window.y_min);
    let offsets = patch.offsets();
    let n = size as isize;
    let interior = 1..n - 1;
    let limit = size as f64;
    for p in points {
        let r = (f64::from(p[0]) - window.x_min) * sx;
        let c = (f64::from(p[1]) - window.y_min) * sy;
        if !(r >= 0.0 && c >= 0.0 && r < limit && c < limit) {
            continue;
        }
        // Truncation is the floor here (both are non-negative), and much cheaper than a libm call.
        let (r, c) = (r as isize, c as isize);
        if interior.contains(&r) && interior.contains(&c) {
            // Fast path: the whole stamp is inside the image.
            for &(dr, dc) in &offsets {
                counts[((r + dr) * n + c + dc) as usize] += 1;
            }
        } else {
            for &(dr, dc) in &offsets {
                let (rr, cc) = (r + dr, c + dc);
                if (0..n).contains(&rr) && (0..n).contains(&cc) {
                    counts[(rr * n + cc) as usize] += 1;
                }
            }
        }
    }
    let data = match shading {
        Shading::Binary => counts.iter().map(|&k| f32::from(k > 0)).collect(),
        Shading::Graded => {
            let max = counts.iter().copied().max().unwrap_or(0).max(1) as f32;
            counts.iter().map(|&k| k as f32 / max).collect()
        }
    };
    Gray { size, data }
}

/// One of the 8 symmetries of the square: transpose, then flip rows, then flip columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dihedral {
    /// Swap rows and columns.
    pub transpose: bool,
    /// Reverse the row order (upside down).
    pub flip_v: bool,
    /// Reverse the column order (mirror).
    pub flip_h: bool,
}

impl Dihedral {
    /// Each part with probability ½.
    pub fn sample(rng: &mut impl Rng) -> Self {
        Self {
            transpose: rng.gen_bool(0.5),
            flip_v: rng.gen_bool(0.5),
            flip_h: rng.gen_bool(0.5),
        }
    }

    /// The source index of output pixel `(r, c)` in a `size × size` image.
    #[inline]
    fn source(self, r: usize, c: usize, size: usize) -> usize {
        let r = if self.flip_v { size - 1 - r } else { r };
        let c = if self.flip_h { size - 1 - c } else { c };
        if self.transpose {
            c * size + r
        } else {
            r * size + c
        }
    }

    /// Apply to a gray image.
    pub fn apply(self, g: &Gray) -> Gray {
        let n = g.size;
        let mut data = Vec::with_capacity(n * n);
        for r in 0..n {
            for c in 0..n {
                data.push(g.data[self.source(r, c, n)]);
            }
        }
        Gray { size: n, data }
    }
}

/// Gaussian blur with a 3×3 kernel of standard deviation `sigma` (separable; reflect-101 borders, as OpenCV).
pub fn blur3x3(img: &mut Image, sigma: f32) {
    let n = img.size();
    if n < 2 {
        return;
    }
    let w = (-1.0 / (2.0 * sigma * sigma)).exp();
    let (k0, k1) = (1.0 / (1.0 + 2.0 * w), w / (1.0 + 2.0 * w));
    let refl = |i: isize| -> usize {
        if i < 0 {
            1
        } else if i as usize >= n {
            n - 2
        } else {
            i as usize
        }
    };
    let area = n * n;
    let mut tmp = vec![0f32; area];
    for plane in img.data_mut().chunks_mut(area) {
        for r in 0..n {
            let row = &plane[r * n..(r + 1) * n];
            for c in 0..n {
                let ci = c as isize;
                tmp[r * n + c] = k0 * row[c] + k1 * (row[refl(ci - 1)] + row[refl(ci + 1)]);
            }
        }
        for r in 0..n {
            let ri = r as isize;
            let (up, down) = (refl(ri - 1) * n, refl(ri + 1) * n);
            for c in 0..n {
                plane[r * n + c] = k0 * tmp[r * n + c] + k1 * (tmp[up + c] + tmp[down + c]);
            }
        }
    }
}

/// Bilinear resize to `new_size × new_size` (pixel centres aligned, edges clamped, no antialiasing, like
/// `torch.nn.functional.interpolate(mode="bilinear")`).
pub fn resize_bilinear(img: &Image, new_size: usize) -> Image {
    let n = img.size();
    let mut out = Image::new(new_size);
    if n == 0 || new_size == 0 {
        return out;
    }
    let scale = n as f32 / new_size as f32;
    let coord = |o: usize| {
        let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (n - 1) as f32);
        let i0 = s as usize; // s ≥ 0: truncation is the floor
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, s - i0 as f32)
    };
    let cols: Vec<_> = (0..new_size).map(coord).collect();
    let (src_area, dst_area) = (n * n, new_size * new_size);
    for ch in 0..3 {
        let src = &img.data()[ch * src_area..(ch + 1) * src_area];
        let dst = &mut out.data_mut()[ch * dst_area..(ch + 1) * dst_area];
        for r in 0..new_size {
            let (r0, r1, fr) = coord(r);
            for (c, &(c0, c1, fc)) in cols.iter().enumerate() {
                let top = src[r0 * n + c0] * (1.0 - fc) + src[r0 * n + c1] * fc;
                let bottom = src[r1 * n + c0] * (1.0 - fc) + src[r1 * n + c1] * fc;
                dst[r * new_size + c] = top * (1.0 - fr) + bottom * fr;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::stream;
    use super::*;

    #[test]
    fn patch_masks_are_never_empty() {
        let mut rng = stream(1, 0, 0);
        for _ in 0..2000 {
            let m = PatchMask::sample(&mut rng);
            assert!(!m.offsets().is_empty() && m.0 < 512);
        }
        assert_eq!(PatchMask::POINT.offsets(), vec![(0, 0)]);
    }

    #[test]
    fn rasterize_maps_the_window_corners_and_drops_outside_points() {
        let w = Window {
            x_min: 0.0,
            y_min: 0.0,
            x_max: 1.0,
            y_max: 1.0,
        };
        let pts = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [-0.01, 0.5], [0.5, 1.2]];
        let g = rasterize(&pts, 8, &w, PatchMask::POINT, Shading::Binary);
        let on: Vec<usize> = (0..64).filter(|&i| g.data[i] > 0.0).collect();
        assert_eq!(on, vec![0, 56, 63]);
    }

    #[test]
    fn graded_peaks_at_one() {
        let w = Window {
            x_min: 0.0,
            y_min: 0.0,
            x_max: 1.0,
            y_max: 1.0,
        };
        let pts = [[0.5, 0.5], [0.5, 0.5], [0.2, 0.2]];
        let g = rasterize(&pts, 16, &w, PatchMask(0x1ff), Shading::Graded);
        let max = g.data.iter().copied().fold(0.0, f32::max);
        assert_eq!(max, 1.0);
        assert!(g.data.contains(&0.5));
        assert!((g.fill() - 18.0 / 256.0).abs() < 1e-6);
    }

    #[test]
    fn dihedral_group_has_eight_distinct_elements_that_permute_pixels() {
        let g = Gray {
            size: 3,
            data: (0..9).map(|v| v as f32).collect(),
        };
        let mut seen = Vec::new();
        for t in [false, true] {
            for v in [false, true] {
                for h in [false, true] {
                    let d = Dihedral {
                        transpose: t,
                        flip_v: v,
                        flip_h: h,
                    };
                    let out = d.apply(&g);
                    let mut sorted = out.data.clone();
                    sorted.sort_by(f32::total_cmp);
                    assert_eq!(sorted, g.data);
                    seen.push(out.data);
                }
            }
        }
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn blur_keeps_constants_and_mass() {
        let mut img = Image::new(8);
        img.data_mut().fill(0.25);
        blur3x3(&mut img, 0.8);
        assert!(img.data().iter().all(|&v| (v - 0.25).abs() < 1e-6));
        let mut dot = Image::new(8);
        dot.set_pixel(3 * 8 + 4, [1.0, 1.0, 1.0]);
        blur3x3(&mut dot, 1.0);
        let sum: f32 = dot.data()[..64].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert!(dot.pixel(3 * 8 + 4)[0] < 1.0 && dot.pixel(3 * 8 + 5)[0] > 0.0);
    }

    #[test]
    fn resize_preserves_constants_and_identity() {
        let mut img = Image::new(6);
        img.data_mut().fill(0.5);
        let big = resize_bilinear(&img, 13);
        assert!(big.data().iter().all(|&v| (v - 0.5).abs() < 1e-6));
        let mut ramp = Image::new(5);
        for i in 0..25 {
            ramp.set_pixel(i, [i as f32 / 24.0; 3]);
        }
        assert_eq!(resize_bilinear(&ramp, 5), ramp);
    }
}
