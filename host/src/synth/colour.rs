//! Colouring (docs/pretraining.md, "Rendering one image" steps 7–8): a fractal's hue follows its point density, the background is a
//! low-saturation plasma, and the fractal is pasted over it.
//!
//! Hues use OpenCV's 8-bit convention, as A&F's code does: a hue byte `H` means `2·H` degrees, and bytes above
//! 179 wrap around the circle. Keeping that convention keeps the hue distributions of the reference.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::render::Gray;
use super::{uniform, Image};

/// HSV to RGB: hue in degrees (any value, wrapped), saturation and value in `[0, 1]`.
pub fn hsv_to_rgb(hue_deg: f32, s: f32, v: f32) -> [f32; 3] {
    let h = wrap(hue_deg, 360.0) / 60.0;
    let sector = (h as usize).min(5); // h ≥ 0: truncation is the floor
    let f = h - sector as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `x` modulo `period` in `[0, period)`, skipping the (slow, libm) remainder for values already in range or one
/// period above, which is nearly all of them.
#[inline]
fn wrap(x: f32, period: f32) -> f32 {
    if (0.0..period).contains(&x) {
        x
    } else if (period..2.0 * period).contains(&x) {
        x - period
    } else {
        x.rem_euclid(period)
    }
}

/// Hue in degrees of an OpenCV hue byte value (wraps: 200 → 40°).
fn opencv_hue_deg(h: f32) -> f32 {
    wrap(2.0 * h, 360.0)
}

/// Per-image foreground colouring: hue follows the graded value, saturation and value are constant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FgColour {
    /// Hue shift, OpenCV hue units, `U[0, 255)`.
    pub h0: f32,
    /// Saturation, `U[0.3, 1]`.
    pub s0: f32,
    /// Value, `U[0.5, 1]`.
    pub v0: f32,
}

impl FgColour {
    /// A&F's ranges.
    pub fn sample(rng: &mut impl Rng) -> Self {
        Self {
            h0: uniform(rng, 0.0, 255.0) as f32,
            s0: uniform(rng, 0.3, 1.0) as f32,
            v0: uniform(rng, 0.5, 1.0) as f32,
        }
    }

    /// Colour the non-zero pixels of `g`: `H = (g·255 + h0) mod 256`; zero pixels stay black (transparent).
    pub fn colorize(&self, g: &Gray) -> Image {
        let mut out = Image::new(g.size);
        for (i, &v) in g.data.iter().enumerate() {
            if v > 0.0 {
                let h = wrap(v * 255.0 + self.h0, 256.0);
                out.set_pixel(i, hsv_to_rgb(opencv_hue_deg(h), self.s0, self.v0));
            }
        }
        out
    }
}

/// Gray rendering without colour: `value·127` (of 255) on all channels, as A&F's gray mode.
pub fn gray_to_image(g: &Gray) -> Image {
    let mut out = Image::new(g.size);
    for (i, &v) in g.data.iter().enumerate() {
        out.set_pixel(i, [v * 127.0 / 255.0; 3]);
    }
    out
}

/// Per-image colouring of a plasma `x`: `H = x·hue_scale + hue_shift (mod 256)`, `S` and `V` affine in `x`
/// and clamped. All in 8-bit units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgColour {
    /// `U(0.25, 1)·255`.
    pub hue_scale: f32,
    /// `U(0, 1)·255`.
    pub hue_shift: f32,
    /// `U(0.1, 0.3)·255`.
    pub sat_scale: f32,
    /// `U(0.4, 0.6)·255`.
    pub sat_shift: f32,
    /// `U(0.3, 0.6)·255`.
    pub val_scale: f32,
    /// `U(0.4, 0.6)·255`.
    pub val_shift: f32,
}

impl BgColour {
    /// A&F's ranges: a low-saturation, mid-brightness texture.
    pub fn sample(rng: &mut impl Rng) -> Self {
        let mut u = |lo: f64, hi: f64| (uniform(rng, lo, hi) * 255.0) as f32;
        Self {
            hue_scale: u(0.25, 1.0),
            hue_shift: u(0.0, 1.0),
            sat_scale: u(0.1, 0.3),
            sat_shift: u(0.4, 0.6),
            val_scale: u(0.3, 0.6),
            val_shift: u(0.4, 0.6),
        }
    }

    /// Colour a `size × size` plasma (row-major).
    pub fn colorize(&self, plasma: &[f32], size: usize) -> Image {
        let mut out = Image::new(size);
        for (i, &x) in plasma.iter().enumerate().take(size * size) {
            let h = wrap(x * self.hue_scale + self.hue_shift, 256.0);
            let s = (x * self.sat_scale + self.sat_shift).clamp(0.0, 255.0) / 255.0;
            let v = (x * self.val_scale + self.val_shift).clamp(0.0, 255.0) / 255.0;
            out.set_pixel(i, hsv_to_rgb(opencv_hue_deg(h), s, v));
        }
        out
    }
}

/// Paste `fg` over `bg`: every pixel of `fg` with a non-zero channel replaces the background pixel.
pub fn composite(fg: &Image, bg: &mut Image) {
    debug_assert_eq!(fg.size(), bg.size());
    for i in 0..fg.area() {
        let p = fg.pixel(i);
        if p.iter().any(|&v| v > 0.0) {
            bg.set_pixel(i, p);
        }
    }
}

/// Colour jitter of RGB pixels in `[0, 1]`, torchvision's `ColorJitter(brightness, contrast, saturation, hue)` with
/// `amounts` in that order: brightness scales by `U[1 − b, 1 + b]`, contrast blends with the mean grey level by
/// `U[1 − c, 1 + c]`, saturation blends with each pixel's grey by `U[1 − s, 1 + s]`, hue rotates by `U[−h, h]` of
/// a turn; in that fixed order (torchvision draws the order at random), clamped to `[0, 1]` after each step.
pub fn jitter(px: &mut [[f32; 3]], amounts: [f64; 4], rng: &mut impl Rng) {
    if px.is_empty() || amounts.iter().all(|&a| a <= 0.0) {
        return;
    }
    let [ab, ac, as_, ah] = amounts;
    let b = uniform(rng, 1.0 - ab, 1.0 + ab) as f32;
    let c = uniform(rng, 1.0 - ac, 1.0 + ac) as f32;
    let s = uniform(rng, 1.0 - as_, 1.0 + as_) as f32;
    let hue = uniform(rng, -ah, ah) as f32;
    let grey = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let clamp = |v: f32| v.clamp(0.0, 1.0);
    px.iter_mut().for_each(|p| *p = p.map(|v| clamp(v * b)));
    let mean = px.iter().map(grey).sum::<f32>() / px.len() as f32;
    px.iter_mut()
        .for_each(|p| *p = p.map(|v| clamp(c * v + (1.0 - c) * mean)));
    for p in px.iter_mut() {
        let g = grey(p);
        *p = p.map(|v| clamp(s * v + (1.0 - s) * g));
        if hue != 0.0 {
            let (h, sat, val) = rgb_to_hsv(*p);
            *p = hsv_to_rgb((h + hue).rem_euclid(1.0) * 360.0, sat, val);
        }
    }
}

/// [`jitter`] of a whole image.
pub fn jitter_image(img: &mut Image, amounts: [f64; 4], rng: &mut impl Rng) {
    let mut px: Vec<[f32; 3]> = (0..img.area()).map(|i| img.pixel(i)).collect();
    jitter(&mut px, amounts, rng);
    for (i, p) in px.into_iter().enumerate() {
        img.set_pixel(i, p);
    }
}

/// RGB in `[0, 1]` → (hue in turns `[0, 1)`, saturation, value).
pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d <= 0.0 {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    let s = if max > 0.0 { d / max } else { 0.0 };
    (h, s, max)
}

#[cfg(test)]
mod tests {
    use super::super::stream;
    use super::*;

    fn close(a: [f32; 3], b: [f32; 3]) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn hsv_primaries() {
        assert!(close(hsv_to_rgb(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv_to_rgb(120.0, 1.0, 1.0), [0.0, 1.0, 0.0]));
        assert!(close(hsv_to_rgb(240.0, 1.0, 0.5), [0.0, 0.0, 0.5]));
        assert!(close(hsv_to_rgb(360.0 + 60.0, 1.0, 1.0), [1.0, 1.0, 0.0]));
        assert!(close(hsv_to_rgb(77.0, 0.0, 0.3), [0.3, 0.3, 0.3]));
        assert!(close(hsv_to_rgb(-60.0, 1.0, 1.0), [1.0, 0.0, 1.0]));
    }

    #[test]
    fn opencv_hues_wrap_above_179() {
        assert_eq!(opencv_hue_deg(90.0), 180.0);
        assert_eq!(opencv_hue_deg(200.0), 40.0);
    }

    #[test]
    fn foreground_is_black_exactly_where_gray_is_zero() {
        let g = Gray {
            size: 4,
            data: (0..16).map(|i| (i % 3) as f32 / 2.0).collect(),
        };
        let c = FgColour::sample(&mut stream(3, 0, 0)).colorize(&g);
        for i in 0..16 {
            let lit = c.pixel(i).iter().any(|&v| v > 0.0);
            assert_eq!(lit, g.data[i] > 0.0, "pixel {i}");
        }
    }

    #[test]
    fn composite_keeps_background_under_black() {
        let mut bg = Image::new(2);
        bg.data_mut().fill(0.5);
        let mut fg = Image::new(2);
        fg.set_pixel(1, [0.0, 0.2, 0.0]);
        composite(&fg, &mut bg);
        assert_eq!(bg.pixel(0), [0.5; 3]);
        assert_eq!(bg.pixel(1), [0.0, 0.2, 0.0]);
    }

    #[test]
    fn hsv_round_trips_and_zero_jitter_is_identity() {
        for p in [
            [0.2f32, 0.4, 0.9],
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.1, 0.8, 0.3],
        ] {
            let (h, s, v) = rgb_to_hsv(p);
            let q = hsv_to_rgb(h * 360.0, s, v);
            for k in 0..3 {
                assert!((p[k] - q[k]).abs() < 1e-5, "{p:?} → {q:?}");
            }
        }
        let mut px = vec![[0.2f32, 0.4, 0.9]; 4];
        jitter(&mut px, [0.0; 4], &mut crate::synth::stream(0, 0, 0));
        assert_eq!(px[0], [0.2, 0.4, 0.9]);
        jitter(
            &mut px,
            [0.4, 0.4, 0.2, 0.1],
            &mut crate::synth::stream(0, 0, 0),
        );
        assert!(px.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    }
}
