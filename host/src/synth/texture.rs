//! Textures: the diamond-square plasma behind fractals, and the "normal" images that GMM pseudo-defects are
//! blended into (docs/pretraining.md, "Rendering one image" step 8 and "Samplers").
//!
//! Normal images are a user's good images when they have some (the semi-formula setting: the network learns
//! what a defect looks like *on their product*), and generated textures otherwise: kestrel-vision's woven
//! product at many looks, and coloured plasma. Both kinds are smooth-to-regular surfaces on which a small stain
//! is the odd one out, which is what the pretext task needs.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::RgbImage;
use kestrel_vision::dataset::{load_rgb, IMAGE_EXTENSIONS};
use kestrel_vision::synthetic::Product;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::colour::BgColour;
use super::{uniform, Image, SynthError};

/// Diamond-square plasma on a `(2ⁿ + 1)²` grid, `n = ⌈log₂ size⌉`, cropped to `size × size` (row-major).
///
/// Corners start at `U[0, 1]`; level `k = 1..n` adds `U(−m, m)` with `m = 0.5·exp(decay·(1 − k))`, so a larger
/// `decay` gives a smoother texture. Neighbours wrap around the borders. Values are not clamped: they stray a
/// little outside `[0, 1]` and the colouring wraps or clamps them.
pub fn diamond_square(size: usize, decay: f64, rng: &mut impl Rng) -> Vec<f32> {
    let n = size.max(2).next_power_of_two().trailing_zeros();
    let period = 1usize << n; // the grid side minus one; row/column 0 and `period` are the same under wrapping
    let side = period + 1;
    let mut g = vec![0f32; side * side];
    for &(y, x) in &[(0, 0), (0, period), (period, 0), (period, period)] {
        g[y * side + x] = rng.gen::<f32>();
    }
    let wrap = |i: isize| i.rem_euclid(period as isize) as usize;
    let mut step = period;
    let mut level = 1;
    while step > 1 {
        let half = step / 2;
        let m = 0.5 * (decay * (1.0 - f64::from(level))).exp();
        // Diamond step: square centres from their four corners.
        for y in (half..side).step_by(step) {
            for x in (half..side).step_by(step) {
                let mean = (g[(y - half) * side + x - half]
                    + g[(y - half) * side + x + half]
                    + g[(y + half) * side + x - half]
                    + g[(y + half) * side + x + half])
                    / 4.0;
                g[y * side + x] = mean + uniform(rng, -m, m) as f32;
            }
        }
        // Square step: edge midpoints from their four neighbours, wrapping at the borders.
        for y in (0..side).step_by(half) {
            let start = if (y / half) & 1 == 0 { half } else { 0 };
            for x in (start..side).step_by(step) {
                let (yi, xi, h) = (y as isize, x as isize, half as isize);
                let mean = (g[wrap(yi - h) * side + x]
                    + g[wrap(yi + h) * side + x]
                    + g[y * side + wrap(xi - h)]
                    + g[y * side + wrap(xi + h)])
                    / 4.0;
                g[y * side + x] = mean + uniform(rng, -m, m) as f32;
            }
        }
        step = half;
        level += 1;
    }
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        out.extend_from_slice(&g[y * side..y * side + size]);
    }
    out
}

/// How a background was made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BackgroundParams {
    /// Plasma roughness decay, `U(0.4, 0.8)`.
    pub decay: f32,
    /// Its colouring.
    pub colour: BgColour,
}

/// A coloured diamond-square background (A&F's scheme).
pub fn background(size: usize, rng: &mut impl Rng) -> (Image, BackgroundParams) {
    let decay = uniform(rng, 0.4, 0.8);
    let plasma = diamond_square(size, decay, rng);
    let colour = BgColour::sample(rng);
    (
        colour.colorize(&plasma, size),
        BackgroundParams {
            decay: decay as f32,
            colour,
        },
    )
}

/// Where a normal image came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum NormalOrigin {
    /// kestrel-vision's synthetic woven product: `Product::new(size, look).good(index)`.
    Product {
        /// The product's seed (its look).
        look: u64,
        /// The good image's index.
        index: u64,
    },
    /// A coloured plasma.
    Plasma(BackgroundParams),
    /// A crop of a user's image.
    Image {
        /// The file.
        path: PathBuf,
        /// Crop `[left, top, side]` in the loaded (possibly downscaled) image.
        crop: [u32; 3],
        /// Mirrored.
        flip_h: bool,
        /// Upside down.
        flip_v: bool,
    },
}

/// Distinct product looks the texture source draws from.
const PRODUCT_LOOKS: u64 = 64;

/// Good images of a user's product, kept in memory at a working resolution.
#[derive(Debug, Clone)]
pub struct NormalImages {
    images: Vec<(PathBuf, RgbImage)>,
}

impl NormalImages {
    /// Load every image file directly inside `dir` (sorted by name), in parallel. Images larger than needed
    /// are downscaled so their shorter side is `2·size`: enough for crops of half the area, without holding
    /// megapixel originals in memory.
    pub fn load(dir: &Path, size: usize) -> Result<Self, SynthError> {
        let io = |source| SynthError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let p = entry.map_err(io)?.path();
            let is_image = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if p.is_file() && is_image {
                paths.push(p);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(SynthError::NoImages {
                dir: dir.to_path_buf(),
            });
        }
        let images = paths
            .into_par_iter()
            .map(|path| {
                let img = load_rgb(&path)
                    .map_err(|source| SynthError::Load {
                        path: path.clone(),
                        source,
                    })?
                    .image;
                Ok((path, shrink(img, 2 * size as u32)))
            })
            .collect::<Result<Vec<_>, SynthError>>()?;
        Ok(Self { images })
    }

    /// From images already in memory (named for the sample parameters).
    pub fn from_images(images: Vec<(PathBuf, RgbImage)>) -> Result<Self, SynthError> {
        if images.is_empty()
            || images
                .iter()
                .any(|(_, i)| i.width() == 0 || i.height() == 0)
        {
            return Err(invalid_images());
        }
        Ok(Self { images })
    }

    /// A random one of the images, whole (at its loaded resolution), and its path.
    pub fn pick(&self, rng: &mut impl Rng) -> (&Path, &RgbImage) {
        let (path, img) = &self.images[rng.gen_range(0..self.images.len())];
        (path, img)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Never true (construction rejects empty sets); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// A random image, random resized crop (a square of `U(area[0], area[1])` of the shorter side's square) to
    /// `size × size`, random horizontal and vertical flips.
    fn sample(&self, size: usize, area: [f64; 2], rng: &mut impl Rng) -> (Image, NormalOrigin) {
        let (path, img) = &self.images[rng.gen_range(0..self.images.len())];
        let short = img.width().min(img.height());
        let side = ((uniform(rng, area[0], area[1]).sqrt() * f64::from(short)).round() as u32)
            .clamp(1, short);
        let left = rng.gen_range(0..=img.width() - side);
        let top = rng.gen_range(0..=img.height() - side);
        let (flip_h, flip_v) = (rng.gen_bool(0.5), rng.gen_bool(0.5));
        let crop = imageops::crop_imm(img, left, top, side, side).to_image();
        let mut out = imageops::resize(&crop, size as u32, size as u32, FilterType::Triangle);
        if flip_h {
            imageops::flip_horizontal_in_place(&mut out);
        }
        if flip_v {
            imageops::flip_vertical_in_place(&mut out);
        }
        (
            Image::from_rgb8(&out),
            NormalOrigin::Image {
                path: path.clone(),
                crop: [left, top, side],
                flip_h,
                flip_v,
            },
        )
    }
}

fn invalid_images() -> SynthError {
    super::invalid("normal_images", "need at least one non-empty image")
}

/// Downscale so the shorter side is at most `short` (never upscale).
fn shrink(img: RgbImage, short: u32) -> RgbImage {
    let s = img.width().min(img.height());
    if s <= short {
        return img;
    }
    let k = f64::from(short) / f64::from(s);
    let w = ((f64::from(img.width()) * k).round() as u32).max(short);
    let h = ((f64::from(img.height()) * k).round() as u32).max(short);
    imageops::resize(&img, w, h, FilterType::Triangle)
}

/// Where GMM normal images come from.
#[derive(Debug, Clone)]
pub enum NormalSource {
    /// Generated: half kestrel-vision woven-product textures (64 looks), half coloured plasma.
    Textures,
    /// A user's good images.
    Images(NormalImages),
}

impl NormalSource {
    /// The good images in `dir` (loaded with their shorter side at most `2·size`), or generated textures when
    /// there is no folder.
    pub fn from_dir(dir: Option<&Path>, size: usize) -> Result<Self, SynthError> {
        Ok(match dir {
            Some(dir) => NormalSource::Images(NormalImages::load(dir, size)?),
            None => NormalSource::Textures,
        })
    }

    /// One normal image of `size × size` pixels and where it came from (a user's image: a square crop of half to
    /// all of the shorter side's square).
    pub fn sample(&self, size: usize, rng: &mut impl Rng) -> (Image, NormalOrigin) {
        self.sample_crop(size, [0.5, 1.0], rng)
    }

    /// [`NormalSource::sample`] with the crop's share of the shorter side's square drawn from `area` (a user's
    /// image; generated textures are drawn whole).
    pub fn sample_crop(
        &self,
        size: usize,
        area: [f64; 2],
        rng: &mut impl Rng,
    ) -> (Image, NormalOrigin) {
        match self {
            NormalSource::Images(set) => set.sample(size, area, rng),
            NormalSource::Textures => {
                if rng.gen_bool(0.5) {
                    let look = rng.gen_range(0..PRODUCT_LOOKS);
                    let index = u64::from(rng.gen::<u32>());
                    // `size` was checked against our MIN_SIZE/MAX_SIZE, which lie inside the product's range.
                    let product = Product::new(size as u32, look)
                        .expect("synth sizes are valid product sizes");
                    (
                        Image::from_rgb8(&product.good(index)),
                        NormalOrigin::Product { look, index },
                    )
                } else {
                    let (img, p) = background(size, rng);
                    (img, NormalOrigin::Plasma(p))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream;
    use super::*;

    #[test]
    fn plasma_has_the_requested_size_and_is_smooth() {
        for size in [32, 100, 128] {
            let p = diamond_square(size, 0.6, &mut stream(4, 0, size as u64));
            assert_eq!(p.len(), size * size);
            assert!(p.iter().all(|v| v.is_finite() && (-2.0..3.0).contains(v)));
            // Neighbouring pixels differ far less than random ones would.
            let step: f32 = (0..size * size - 1)
                .filter(|i| (i + 1) % size != 0)
                .map(|i| (p[i] - p[i + 1]).abs())
                .sum::<f32>()
                / (size * (size - 1)) as f32;
            assert!(step < 0.15, "size {size}: mean neighbour step {step}");
        }
    }

    #[test]
    fn textures_are_deterministic() {
        let a = NormalSource::Textures.sample(32, &mut stream(5, 0, 0));
        let b = NormalSource::Textures.sample(32, &mut stream(5, 0, 0));
        assert_eq!(a, b);
    }

    #[test]
    fn user_images_are_cropped_and_resized() {
        let img = RgbImage::from_fn(80, 50, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let set = NormalImages::from_images(vec![("a.png".into(), img)]).unwrap();
        let src = NormalSource::Images(set);
        for i in 0..10 {
            let (out, origin) = src.sample(32, &mut stream(6, 0, i));
            assert_eq!(out.size(), 32);
            let NormalOrigin::Image { crop, .. } = origin else {
                panic!("wrong origin {origin:?}")
            };
            assert!(
                crop[2] >= 35
                    && crop[2] <= 50
                    && crop[0] + crop[2] <= 80
                    && crop[1] + crop[2] <= 50
            );
            assert!((out.pixel(0)[2] - 7.0 / 255.0).abs() < 1e-6);
        }
        assert!(NormalImages::from_images(vec![]).is_err());
    }
}
