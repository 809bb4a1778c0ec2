//! CutPaste pseudo-anomalies (Li et al. 2021, the 3-way variant): a patch of a good image pasted elsewhere in the
//! same image, as a rectangle ("cut-paste") or as a thin rotated "scar". The pretext task is to tell the three
//! versions of an image apart (normal / cut-paste / scar), which teaches a backbone local irregularities of the
//! product itself. The rules and ranges are in docs/pretraining.md ("CutPaste").
//!
//! Sample `i` is a crop of one of the user's good images (or a generated texture) with a whole-image colour
//! jitter (p = 0.5), and its three versions. Like every generator here it depends only on `(seed, i)`.

use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::colour::{jitter, jitter_image};
use super::texture::{NormalOrigin, NormalSource};
use super::{check_size, invalid, log_uniform, role, stream, uniform, Image, SynthError};

/// CutPaste settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CutPasteConfig {
    /// Side of the generated images.
    pub size: usize,
    /// The crop of a good image each sample starts from, as a share of the shorter side's square (the patch-level
    /// variant cuts 64 px crops from 256 px images: 1/16).
    pub crop_area: [f64; 2],
    /// Cut-paste patch area as a share of the image.
    pub patch_area: [f64; 2],
    /// Cut-paste patch aspect ratio range (log-uniform, and its inverse).
    pub aspect: f64,
    /// Scar width range in pixels at 256 px (scaled with the image size).
    pub scar_width: [f64; 2],
    /// Scar length range in pixels at 256 px (scaled with the image size).
    pub scar_length: [f64; 2],
    /// Scar rotation, ± degrees.
    pub scar_angle: f64,
    /// Colour jitter (brightness, contrast, saturation, hue) of pasted patches and, with probability 1/2, of the
    /// whole image.
    pub jitter: f64,
}

impl CutPasteConfig {
    /// The published ranges for `size` px images.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            crop_area: [1.0 / 16.0, 1.0 / 4.0],
            patch_area: [0.02, 0.15],
            aspect: 0.3,
            scar_width: [2.0, 16.0],
            scar_length: [10.0, 25.0],
            scar_angle: 45.0,
            jitter: 0.1,
        }
    }

    fn validate(&self) -> Result<(), SynthError> {
        check_size(self.size)?;
        let range = |r: [f64; 2], lo: f64, hi: f64| r[0] > lo && r[0] <= r[1] && r[1] <= hi;
        if !range(self.crop_area, 0.0, 1.0) {
            return Err(invalid("crop_area", "need 0 < low ≤ high ≤ 1"));
        }
        if !range(self.patch_area, 0.0, 0.5) {
            return Err(invalid("patch_area", "need 0 < low ≤ high ≤ 0.5"));
        }
        if !(self.aspect > 0.0 && self.aspect <= 1.0) {
            return Err(invalid("aspect", "need 0 < aspect ≤ 1"));
        }
        if !range(self.scar_width, 0.0, 256.0) || !range(self.scar_length, 0.0, 256.0) {
            return Err(invalid(
                "scar_width/scar_length",
                "need 0 < low ≤ high ≤ 256",
            ));
        }
        if !(0.0..=90.0).contains(&self.scar_angle) || !(0.0..=0.5).contains(&self.jitter) {
            return Err(invalid(
                "scar_angle/jitter",
                "need angle in [0, 90], jitter in [0, 0.5]",
            ));
        }
        Ok(())
    }
}

/// Where a pasted patch came from and went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paste {
    /// Source rectangle `[x, y, w, h]`.
    pub from: [usize; 4],
    /// Destination: the top-left corner of the (rotated) patch's bounding box, and its size `[x, y, w, h]`.
    pub to: [usize; 4],
    /// Rotation in degrees (0 for cut-paste).
    pub angle: f64,
}

/// One sample: a good crop and its two pseudo-anomalous versions.
pub struct CutPasteSample {
    /// Label 0.
    pub normal: Image,
    /// Label 1: a rectangle pasted.
    pub cutpaste: Image,
    /// Label 2: a scar pasted.
    pub scar: Image,
    /// Where the rectangle went.
    pub cut: Paste,
    /// Where the scar went.
    pub scar_paste: Paste,
    /// The good image the sample came from.
    pub origin: NormalOrigin,
}

/// The CutPaste generator.
#[derive(Clone)]
pub struct CutPasteGenerator {
    cfg: CutPasteConfig,
    normals: NormalSource,
    seed: u64,
}

impl CutPasteGenerator {
    /// A generator over `normals`.
    pub fn new(cfg: CutPasteConfig, normals: NormalSource, seed: u64) -> Result<Self, SynthError> {
        cfg.validate()?;
        Ok(Self { cfg, normals, seed })
    }

    /// Its settings.
    pub fn config(&self) -> &CutPasteConfig {
        &self.cfg
    }

    /// Sample `index`.
    pub fn sample(&self, index: u64) -> CutPasteSample {
        let cfg = &self.cfg;
        let mut rng = stream(self.seed, role::CUTPASTE, index);
        let (mut normal, origin) = self.normals.sample_crop(cfg.size, cfg.crop_area, &mut rng);
        if rng.gen_bool(0.5) {
            jitter_image(&mut normal, [cfg.jitter; 4], &mut rng);
        }
        let mut cutpaste = normal.clone();
        let cut = paste_rectangle(&mut cutpaste, cfg, &mut rng);
        let mut scar = normal.clone();
        let scar_paste = paste_scar(&mut scar, cfg, &mut rng);
        CutPasteSample {
            normal,
            cutpaste,
            scar,
            cut,
            scar_paste,
            origin,
        }
    }

    /// Samples `indices`, rendered in parallel.
    pub fn batch_of(&self, indices: &[u64]) -> Vec<CutPasteSample> {
        indices.par_iter().map(|&i| self.sample(i)).collect()
    }
}

/// A `w × h` copy of `img` at `(x, y)`, CHW.
fn crop(img: &Image, x: usize, y: usize, w: usize, h: usize) -> Vec<[f32; 3]> {
    let s = img.size();
    let mut out = Vec::with_capacity(w * h);
    for r in y..y + h {
        for c in x..x + w {
            out.push(img.pixel(r * s + c));
        }
    }
    out
}

/// Cut-paste: a rectangle of 2–15 % of the image, aspect in [0.3, 1/0.3], copied to an independent location.
fn paste_rectangle(img: &mut Image, cfg: &CutPasteConfig, rng: &mut impl Rng) -> Paste {
    let s = img.size();
    let area = uniform(rng, cfg.patch_area[0], cfg.patch_area[1]) * (s * s) as f64;
    let aspect = log_uniform(rng, cfg.aspect, 1.0 / cfg.aspect);
    let w = ((area * aspect).sqrt().round() as usize).clamp(1, s);
    let h = ((area / aspect).sqrt().round() as usize).clamp(1, s);
    let (fx, fy) = (rng.gen_range(0..=s - w), rng.gen_range(0..=s - h));
    let (tx, ty) = (rng.gen_range(0..=s - w), rng.gen_range(0..=s - h));
    let mut patch = crop(img, fx, fy, w, h);
    jitter(&mut patch, [cfg.jitter; 4], rng);
    for r in 0..h {
        for c in 0..w {
            img.set_pixel((ty + r) * s + tx + c, patch[r * w + c]);
        }
    }
    Paste {
        from: [fx, fy, w, h],
        to: [tx, ty, w, h],
        angle: 0.0,
    }
}

/// Scar: a thin rectangle (2–16 × 10–25 px at 256 px), colour-jittered, rotated by up to ±45° about its centre
/// and pasted through its own outline, so only the rotated rectangle's pixels change.
fn paste_scar(img: &mut Image, cfg: &CutPasteConfig, rng: &mut impl Rng) -> Paste {
    let s = img.size();
    let k = s as f64 / 256.0;
    let w = ((uniform(rng, cfg.scar_width[0], cfg.scar_width[1]) * k).round() as usize).clamp(1, s);
    let h =
        ((uniform(rng, cfg.scar_length[0], cfg.scar_length[1]) * k).round() as usize).clamp(1, s);
    let angle = uniform(rng, -cfg.scar_angle, cfg.scar_angle);
    let (fx, fy) = (rng.gen_range(0..=s - w), rng.gen_range(0..=s - h));
    let mut patch = crop(img, fx, fy, w, h);
    jitter(&mut patch, [cfg.jitter; 4], rng);
    let (sin, cos) = angle.to_radians().sin_cos();
    // The rotated rectangle's bounding box ("canvas expansion").
    let bw = ((w as f64 * cos.abs() + h as f64 * sin.abs()).ceil() as usize).clamp(1, s);
    let bh = ((w as f64 * sin.abs() + h as f64 * cos.abs()).ceil() as usize).clamp(1, s);
    let (tx, ty) = (rng.gen_range(0..=s - bw), rng.gen_range(0..=s - bh));
    let (cx, cy) = (bw as f64 / 2.0, bh as f64 / 2.0);
    for r in 0..bh {
        for c in 0..bw {
            // Inverse rotation of the pixel centre into the patch's frame.
            let (dx, dy) = (c as f64 + 0.5 - cx, r as f64 + 0.5 - cy);
            let u = cos * dx + sin * dy + w as f64 / 2.0;
            let v = -sin * dx + cos * dy + h as f64 / 2.0;
            if u >= 0.0 && v >= 0.0 && u < w as f64 && v < h as f64 {
                let p = patch[v as usize * w + u as usize];
                img.set_pixel((ty + r) * s + tx + c, p);
            }
        }
    }
    Paste {
        from: [fx, fy, w, h],
        to: [tx, ty, bw, bh],
        angle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(size: usize) -> CutPasteGenerator {
        CutPasteGenerator::new(CutPasteConfig::new(size), NormalSource::Textures, 7).unwrap()
    }

    /// Pixels that differ between two images, as (x, y).
    fn changed(a: &Image, b: &Image) -> Vec<(usize, usize)> {
        let s = a.size();
        (0..a.area())
            .filter(|&i| a.pixel(i) != b.pixel(i))
            .map(|i| (i % s, i / s))
            .collect()
    }

    #[test]
    fn cut_paste_changes_only_its_destination_rectangle_within_the_ranges() {
        let g = generator(64);
        for i in 0..50 {
            let smp = g.sample(i);
            let [x, y, w, h] = smp.cut.to;
            let area = (w * h) as f64 / (64.0 * 64.0);
            assert!((0.015..=0.16).contains(&area), "sample {i}: area {area}");
            let aspect = w as f64 / h as f64;
            assert!(
                (0.25..=4.0).contains(&aspect),
                "sample {i}: aspect {aspect}"
            );
            assert!(x + w <= 64 && y + h <= 64);
            for (cx, cy) in changed(&smp.normal, &smp.cutpaste) {
                assert!(
                    (x..x + w).contains(&cx) && (y..y + h).contains(&cy),
                    "sample {i}: ({cx}, {cy})"
                );
            }
        }
    }

    #[test]
    fn scar_stays_in_its_rotated_box_and_is_thin() {
        let g = generator(256);
        for i in 0..50 {
            let smp = g.sample(i);
            let [x, y, bw, bh] = smp.scar_paste.to;
            let [_, _, w, h] = smp.scar_paste.from;
            assert!(
                (2..=16).contains(&w) && (10..=25).contains(&h),
                "sample {i}: {w}×{h}"
            );
            assert!(smp.scar_paste.angle.abs() <= 45.0);
            let diff = changed(&smp.normal, &smp.scar);
            for &(cx, cy) in &diff {
                assert!(
                    (x..x + bw).contains(&cx) && (y..y + bh).contains(&cy),
                    "sample {i}"
                );
            }
            // Only the rotated rectangle is written: at most its area (plus rasterisation slack), never the box.
            assert!(
                diff.len() <= w * h + 2 * (w + h),
                "sample {i}: {} px for {w}×{h}",
                diff.len()
            );
        }
    }

    #[test]
    fn an_unrotated_scar_of_a_flat_image_is_its_rectangle() {
        // Zero angle and no jitter: the written pixels form exactly the w × h rectangle at the box's corner.
        let cfg = CutPasteConfig {
            scar_angle: 0.0,
            jitter: 0.0,
            ..CutPasteConfig::new(64)
        };
        let mut img = Image::new(64);
        for i in 0..img.area() {
            img.set_pixel(i, [(i % 64) as f32 / 64.0, 0.5, 0.5]);
        }
        let before = img.clone();
        let p = paste_scar(&mut img, &cfg, &mut stream(1, role::CUTPASTE, 0));
        assert_eq!(
            p.to[2..],
            p.from[2..],
            "no rotation: the box is the rectangle"
        );
        let moved = p.to[0] != p.from[0];
        let diff = changed(&before, &img);
        if moved {
            assert!(!diff.is_empty());
        }
        for (cx, cy) in diff {
            assert!(
                (p.to[0]..p.to[0] + p.to[2]).contains(&cx)
                    && (p.to[1]..p.to[1] + p.to[3]).contains(&cy)
            );
        }
    }

    #[test]
    fn samples_are_reproducible_and_differ() {
        let g = generator(64);
        let (a, b) = (g.sample(3), g.sample(3));
        assert_eq!(a.cutpaste.data(), b.cutpaste.data());
        assert_eq!(a.scar.data(), b.scar.data());
        assert_ne!(g.sample(4).normal.data(), a.normal.data());
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = CutPasteConfig {
            patch_area: [0.2, 0.1],
            ..CutPasteConfig::new(64)
        };
        assert!(CutPasteGenerator::new(bad, NormalSource::Textures, 0).is_err());
    }
}
