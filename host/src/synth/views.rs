//! Two augmented views of one good image with their crop boxes: the input of dense contrastive pretraining (DS2 /
//! PixPro, docs/pretraining.md "DS2"). The loss pairs feature positions of the two views that look at the same
//! place of the original image, so each view records its crop box in normalised original coordinates.

use image::imageops::{self, FilterType};
use image::RgbImage;
use kestrel_vision::map::ScoreMap;
use kestrel_vision::postprocess::gaussian_blur;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::colour::jitter_image;
use super::texture::NormalSource;
use super::{check_size, invalid, log_uniform, role, stream, uniform, Image, SynthError};

/// View settings (DS2's `MVTec_AUG`, with the crop scale raised for small images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// Side of each view.
    pub size: usize,
    /// RandomResizedCrop area range, as a share of the image (DS2: 0.08–1; 0.2–1 at 128 px).
    pub crop_scale: [f64; 2],
    /// RandomResizedCrop aspect range (3/4 – 4/3).
    pub crop_ratio: [f64; 2],
    /// Colour jitter (brightness, contrast, saturation, hue), applied with probability `jitter_p`.
    pub jitter: [f64; 4],
    /// Probability of the colour jitter.
    pub jitter_p: f64,
    /// Gaussian blur σ range in pixels at 224 px (scaled with the view size).
    pub blur_sigma: [f64; 2],
    /// Blur probability of view 1 and view 2 (DS2: 1.0 and 0.1).
    pub blur_p: [f64; 2],
}

impl ViewConfig {
    /// DS2's augmentations for `size` px views.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            crop_scale: [0.2, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            jitter: [0.4, 0.4, 0.2, 0.1],
            jitter_p: 0.8,
            blur_sigma: [0.1, 2.0],
            blur_p: [1.0, 0.1],
        }
    }

    fn validate(&self) -> Result<(), SynthError> {
        check_size(self.size)?;
        let [lo, hi] = self.crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(invalid("crop_scale", "need 0 < low ≤ high ≤ 1"));
        }
        let [rl, rh] = self.crop_ratio;
        if !(rl > 0.0 && rl <= rh) {
            return Err(invalid("crop_ratio", "need 0 < low ≤ high"));
        }
        Ok(())
    }
}

/// A crop box in normalised original coordinates, torchvision-style: `(x0, y0, x1, y1)` =
/// `(j/(W−1), i/(H−1), (j+w−1)/(W−1), (i+h−1)/(H−1))`, with `x0` and `x1` swapped when the view is mirrored (so
/// bin centres computed from it mirror too).
pub type CropBox = [f32; 4];

/// Two views of one image.
pub struct ViewPair {
    /// The views.
    pub views: [Image; 2],
    /// Their crop boxes.
    pub boxes: [CropBox; 2],
}

/// The two-view generator.
#[derive(Clone)]
pub struct ViewGenerator {
    cfg: ViewConfig,
    normals: NormalSource,
    seed: u64,
}

impl ViewGenerator {
    /// Its settings.
    pub fn config(&self) -> &ViewConfig {
        &self.cfg
    }

    /// A generator over `normals`.
    pub fn new(cfg: ViewConfig, normals: NormalSource, seed: u64) -> Result<Self, SynthError> {
        cfg.validate()?;
        Ok(Self { cfg, normals, seed })
    }

    /// Pair `index`.
    pub fn sample(&self, index: u64) -> ViewPair {
        let cfg = &self.cfg;
        let mut rng = stream(self.seed, role::VIEWS, index);
        let base: RgbImage = match &self.normals {
            NormalSource::Images(set) => set.pick(&mut rng).1.clone(),
            textures => textures.sample(2 * cfg.size, &mut rng).0.to_rgb8(),
        };
        let mut one = |k: usize| view(&base, cfg, cfg.blur_p[k], &mut rng);
        let (v1, b1) = one(0);
        let (v2, b2) = one(1);
        ViewPair {
            views: [v1, v2],
            boxes: [b1, b2],
        }
    }

    /// Pairs `indices`, rendered in parallel.
    pub fn batch_of(&self, indices: &[u64]) -> Vec<ViewPair> {
        indices.par_iter().map(|&i| self.sample(i)).collect()
    }
}

/// RandomResizedCrop (torchvision's rule: ten tries of area and log-aspect, else the largest centred crop of an
/// allowed aspect), horizontal flip, colour jitter, blur.
fn view(base: &RgbImage, cfg: &ViewConfig, blur_p: f64, rng: &mut impl Rng) -> (Image, CropBox) {
    let (w, h) = (base.width() as f64, base.height() as f64);
    let (mut cw, mut ch, mut cx, mut cy) = (0u32, 0u32, 0u32, 0u32);
    let mut found = false;
    for _ in 0..10 {
        let area = w * h * uniform(rng, cfg.crop_scale[0], cfg.crop_scale[1]);
        let ratio = log_uniform(rng, cfg.crop_ratio[0], cfg.crop_ratio[1]);
        let tw = (area * ratio).sqrt().round();
        let th = (area / ratio).sqrt().round();
        if tw >= 1.0 && th >= 1.0 && tw <= w && th <= h {
            (cw, ch) = (tw as u32, th as u32);
            cx = rng.gen_range(0..=base.width() - cw);
            cy = rng.gen_range(0..=base.height() - ch);
            found = true;
            break;
        }
    }
    if !found {
        let in_ratio = w / h;
        (cw, ch) = if in_ratio < cfg.crop_ratio[0] {
            (base.width(), (w / cfg.crop_ratio[0]).round().min(h) as u32)
        } else if in_ratio > cfg.crop_ratio[1] {
            ((h * cfg.crop_ratio[1]).round().min(w) as u32, base.height())
        } else {
            (base.width(), base.height())
        };
        cx = (base.width() - cw) / 2;
        cy = (base.height() - ch) / 2;
    }
    let s = cfg.size as u32;
    let crop = imageops::crop_imm(base, cx, cy, cw, ch).to_image();
    let mut out = imageops::resize(&crop, s, s, FilterType::Triangle);
    let norm = |v: u32, n: f64| if n > 1.0 { v as f64 / (n - 1.0) } else { 0.0 };
    let mut b = [
        norm(cx, w) as f32,
        norm(cy, h) as f32,
        norm(cx + cw - 1, w) as f32,
        norm(cy + ch - 1, h) as f32,
    ];
    if rng.gen_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut out);
        b.swap(0, 2);
    }
    let mut img = Image::from_rgb8(&out);
    if rng.gen_bool(cfg.jitter_p) {
        jitter_image(&mut img, cfg.jitter, rng);
    }
    if rng.gen_bool(blur_p) {
        let k = cfg.size as f64 / 224.0;
        let sigma = uniform(rng, cfg.blur_sigma[0] * k, cfg.blur_sigma[1] * k) as f32;
        blur(&mut img, sigma);
    }
    (img, b)
}

/// Gaussian blur of each channel (kestrel-vision's map blur: kernel `2·⌊4σ + 0.5⌋ + 1`, reflect padding).
fn blur(img: &mut Image, sigma: f32) {
    let (n, size) = (img.area(), img.size());
    for plane in img.data_mut().chunks_mut(n) {
        let m = ScoreMap::new(size, size, plane.to_vec()).expect("a plane is size × size");
        plane.copy_from_slice(gaussian_blur(&m, sigma).data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> ViewGenerator {
        ViewGenerator::new(ViewConfig::new(64), NormalSource::Textures, 5).unwrap()
    }

    #[test]
    fn boxes_are_inside_the_unit_square_and_flips_swap_x() {
        let g = generator();
        let mut flipped = 0;
        for i in 0..40 {
            let p = g.sample(i);
            for b in p.boxes {
                assert!(b.iter().all(|v| (0.0..=1.0).contains(v)), "{b:?}");
                assert!(b[1] < b[3], "{b:?}");
                if b[0] > b[2] {
                    flipped += 1;
                }
            }
            assert_eq!(p.views[0].size(), 64);
        }
        assert!(
            (20..=60).contains(&flipped),
            "{flipped} of 80 views mirrored"
        );
    }

    #[test]
    fn pairs_are_reproducible() {
        let g = generator();
        let (a, b) = (g.sample(9), g.sample(9));
        assert_eq!(a.boxes, b.boxes);
        assert_eq!(a.views[1].data(), b.views[1].data());
    }

    #[test]
    fn crop_area_follows_the_scale_range() {
        let cfg = ViewConfig {
            crop_scale: [0.25, 0.25],
            crop_ratio: [1.0, 1.0],
            ..ViewConfig::new(64)
        };
        let base = RgbImage::new(200, 200);
        let (_, b) = view(&base, &cfg, 0.0, &mut stream(0, role::VIEWS, 0));
        let (bw, bh) = (
            (b[2] - b[0]).abs() * 199.0 + 1.0,
            (b[3] - b[1]) * 199.0 + 1.0,
        );
        assert!(
            (bw - 100.0).abs() < 1.5 && (bh - 100.0).abs() < 1.5,
            "{bw}×{bh}"
        );
    }
}
