//! A synthetic product: a woven-fabric texture with natural variation between parts, and four kinds of defect
//! with exact ground-truth masks. It feeds `kestrel demo` (a full fit → eval run without downloading MVTec) and
//! the tests of everything downstream (datasets, detectors, metrics), and the edge's synthetic camera renders its
//! frames with it ([`Product::part`], at any frame shape).
//!
//! # What the images look like
//!
//! Every image of one product (one seed) shares a "look": thread colour, weave period and contrast. Each image
//! then varies like real parts under a fixed camera: the weave is shifted by a random offset and rotated by up
//! to ±1.5°, brightness changes by ±4 %, fibres along each thread and a low-frequency shading come from value
//! noise seeded per image, and every pixel gets a little sensor grain. A detector fitted on good images must
//! therefore learn the texture, not memorise pixels.
//!
//! Defects ([`DefectKind`]) are visible but not extreme, like MVTec's: a thin light or dark scratch along a
//! curve, a brownish stain with an irregular outline, a small dark hole, and an elliptical patch where the
//! weave is missing (replaced by the patch's mean colour). A defect changes only pixels inside its mask, and
//! its mask is derived from the same predicate that painted it, so masks cover defects exactly.
//!
//! # Determinism
//!
//! Image `i` depends only on `(seed, role, i)`: each image has its own ChaCha8 stream, so generation is
//! parallel (rayon) yet byte-identical across runs, thread counts and platforms.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::{ImageFormat, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::Mask;

/// Smallest image side the generator accepts; below this defects no longer fit with margins.
pub const MIN_SIZE: u32 = 32;
/// Largest image side the generator accepts.
pub const MAX_SIZE: u32 = 4096;

/// A kind of synthetic defect; its [`name`](DefectKind::name) is the MVTec `test/<type>` folder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// A small dark disk.
    Hole,
    /// An elliptical patch where the weave is gone (flat mean colour).
    MissingTexture,
    /// A thin light or dark line along a gentle curve.
    Scratch,
    /// A brownish blob with an irregular outline.
    Stain,
}

impl DefectKind {
    /// All kinds, in folder-name (and `Ord`) order.
    pub const ALL: [DefectKind; 4] = [
        DefectKind::Hole,
        DefectKind::MissingTexture,
        DefectKind::Scratch,
        DefectKind::Stain,
    ];

    /// Folder name: `scratch`, `stain`, `hole`, `missing_texture`.
    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Scratch => "scratch",
            DefectKind::Stain => "stain",
            DefectKind::Hole => "hole",
            DefectKind::MissingTexture => "missing_texture",
        }
    }
}

impl fmt::Display for DefectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DefectKind {
    type Err = SyntheticError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DefectKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SyntheticError::InvalidSpec {
                field: "defect_kinds",
                reason: format!(
                    "unknown defect kind `{s}`; expected one of {}",
                    DefectKind::ALL.map(DefectKind::name).join(", ")
                ),
            })
    }
}

/// What [`write_mvtec_category`] generates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticSpec {
    /// Image side in pixels (square images), between [`MIN_SIZE`] and [`MAX_SIZE`]. Default 128.
    pub size: u32,
    /// Good training images (`train/good`). Default 64; at least 1.
    pub n_train_good: usize,
    /// Good test images (`test/good`). Default 16.
    pub n_test_good: usize,
    /// Defective test images, spread round-robin over `defect_kinds` (duplicates ignored). Default 24.
    pub n_test_defect: usize,
    /// Seed of the product look and of every image.
    pub seed: u64,
    /// Kinds of defect to generate (default: all four).
    pub defect_kinds: Vec<DefectKind>,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            size: 128,
            n_train_good: 64,
            n_test_good: 16,
            n_test_defect: 24,
            seed: 0,
            defect_kinds: DefectKind::ALL.to_vec(),
        }
    }
}

/// What [`write_mvtec_category`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticSummary {
    /// `<root>/<category>`.
    pub category_dir: PathBuf,
    /// Images in `train/good`.
    pub train_good: usize,
    /// Images in `test/good`.
    pub test_good: usize,
    /// Images per defect kind in `test/<kind>` (each with a mask in `ground_truth/<kind>`), sorted by kind;
    /// kinds with zero images omitted.
    pub test_defects: Vec<(DefectKind, usize)>,
    /// Files written, images and masks.
    pub files_written: usize,
}

/// Errors from the synthetic generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyntheticError {
    /// A [`SyntheticSpec`] field (or the category name) is out of range.
    #[error("invalid synthetic dataset setting `{field}`: {reason}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The category folder exists and is not empty; writing into it would mix old and new images.
    #[error("{} already exists and is not empty; remove it or choose another root or category", path.display())]
    NotEmpty {
        /// The category folder.
        path: PathBuf,
    },
    /// A folder could not be created or read.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be encoded or written.
    #[error("cannot write image {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },
}

// ---------------------------------------------------------------------------------------------------------------
// Noise

fn mix64(mut z: u64) -> u64 {
    // SplitMix64 finaliser: a cheap, well-distributed integer hash for lattice noise.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform value in `[0, 1)` at integer lattice point `(ix, iy)`.
fn lattice(ix: i64, iy: i64, seed: u64) -> f32 {
    let h = mix64(
        seed ^ (ix as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (iy as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
    );
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smoothly interpolated value noise in `[0, 1)`.
fn value_noise(x: f32, y: f32, seed: u64) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (ix, iy) = (x0 as i64, y0 as i64);
    let a = lattice(ix, iy, seed);
    let b = lattice(ix + 1, iy, seed);
    let c = lattice(ix, iy + 1, seed);
    let d = lattice(ix + 1, iy + 1, seed);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Fractal sum of `octaves` octaves of value noise, normalised to `[0, 1)`.
fn fbm(x: f32, y: f32, seed: u64, octaves: u32) -> f32 {
    let (mut sum, mut norm, mut amp, mut freq) = (0.0, 0.0, 1.0, 1.0);
    for o in 0..octaves {
        sum += amp
            * value_noise(
                x * freq,
                y * freq,
                seed.wrapping_add(u64::from(o) * 0x51_7cc1),
            );
        norm += amp;
        amp *= 0.5;
        freq *= 2.0;
    }
    sum / norm
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// The product

/// Roles keep the random streams of different image populations apart.
const ROLE_LOOK: u64 = 0;
const ROLE_GOOD: u64 = 1;
const ROLE_DEFECT: u64 = 2;
const ROLE_PART: u64 = 3;

/// The random stream of item `index` of population `role` under `seed`: ChaCha8 keyed by the mixed seed and role,
/// with `index` as its 64-bit stream id, so every item has an independent sequence and items can be generated in
/// any order (in parallel) with identical results. kestrel's pretraining generators use it too.
pub fn stream(seed: u64, role: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(mix64(seed ^ mix64(role)));
    rng.set_stream(index);
    rng
}

/// The look shared by all images of one product.
#[derive(Debug, Clone, PartialEq)]
struct Look {
    tint: [f32; 3],
    /// Weave period in pixels at 128 px.
    period: f32,
    /// Darkness of the gaps between threads (0 = none).
    gap: f32,
}

/// A synthetic product: renders good and defective images in memory. [`write_mvtec_category`] writes a dataset
/// of them; the edge's synthetic camera renders its frames with [`Product::part`].
///
/// Images are square for a dataset ([`Product::new`]) and may be rectangular for a camera
/// ([`Product::with_shape`]); sizes of the weave and the defects scale with the shorter side.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    width: u32,
    height: u32,
    seed: u64,
    look: Look,
}

/// An image being painted: linear `[0, 1]` RGB, row-major.
struct Canvas {
    width: usize,
    height: usize,
    px: Vec<[f32; 3]>,
}

impl Canvas {
    fn to_image(&self) -> RgbImage {
        let data: Vec<u8> = self
            .px
            .iter()
            .flat_map(|p| p.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
            .collect();
        let (w, h) = (self.width as u32, self.height as u32);
        RgbImage::from_raw(w, h, data).unwrap_or_else(|| RgbImage::new(w, h))
    }
}

impl Product {
    /// A product of `size × size` images whose look is drawn from `seed`.
    pub fn new(size: u32, seed: u64) -> Result<Self, SyntheticError> {
        Self::with_shape(size, size, seed)
    }

    /// A product of `width × height` images whose look is drawn from `seed` (each side between [`MIN_SIZE`] and
    /// [`MAX_SIZE`]). A square shape gives exactly the images of [`Product::new`].
    pub fn with_shape(width: u32, height: u32, seed: u64) -> Result<Self, SyntheticError> {
        for (field, side) in [("width", width), ("height", height)] {
            if !(MIN_SIZE..=MAX_SIZE).contains(&side) {
                return Err(SyntheticError::InvalidSpec {
                    field: if width == height { "size" } else { field },
                    reason: format!("must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {side}"),
                });
            }
        }
        let mut rng = stream(seed, ROLE_LOOK, 0);
        // Muted, industrial colours: grey-beige to blue-grey threads.
        let base: [f32; 3] = match rng.gen_range(0..3) {
            0 => [0.78, 0.72, 0.62],
            1 => [0.62, 0.68, 0.74],
            _ => [0.70, 0.70, 0.68],
        };
        let tint = base.map(|c| (c + rng.gen_range(-0.04..0.04)).clamp(0.3, 0.95));
        let look = Look {
            tint,
            period: rng.gen_range(10.0..14.0),
            gap: rng.gen_range(0.55..0.7),
        };
        Ok(Self {
            width,
            height,
            seed,
            look,
        })
    }

    /// Image width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Image height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Good image number `index` (different indices give different, equally plausible parts).
    pub fn good(&self, index: u64) -> RgbImage {
        let mut rng = stream(self.seed, ROLE_GOOD, index);
        self.texture(&mut rng).to_image()
    }

    /// Defective image number `index` with a defect of `kind`, and its mask (1 exactly where the defect changed
    /// pixels).
    pub fn defective(&self, index: u64, kind: DefectKind) -> (RgbImage, Mask) {
        let mut rng = stream(self.seed, ROLE_DEFECT, index);
        let mut canvas = self.texture(&mut rng);
        let mask = self.paint_defect(&mut canvas, kind, &mut rng);
        (canvas.to_image(), mask)
    }

    /// Part number `index` as a camera on the line sees it, with `defect` painted in when given, and the defect's
    /// mask. Unlike [`good`](Self::good) and [`defective`](Self::defective), which draw good and defective images
    /// of a dataset from separate streams (different parts), `part(i, Some(kind))` is `part(i, None)` with the
    /// defect added: the two differ only inside the mask.
    pub fn part(&self, index: u64, defect: Option<DefectKind>) -> (RgbImage, Option<Mask>) {
        let mut rng = stream(self.seed, ROLE_PART, index);
        let mut canvas = self.texture(&mut rng);
        let mask = defect.map(|kind| self.paint_defect(&mut canvas, kind, &mut rng));
        (canvas.to_image(), mask)
    }

    fn paint_defect(&self, canvas: &mut Canvas, kind: DefectKind, rng: &mut ChaCha8Rng) -> Mask {
        match kind {
            DefectKind::Scratch => self.scratch(canvas, rng),
            DefectKind::Stain => self.stain(canvas, rng),
            DefectKind::Hole => self.hole(canvas, rng),
            DefectKind::MissingTexture => self.missing_texture(canvas, rng),
        }
    }

    /// The shorter side, which sets the scale of the weave and of the defects.
    fn side(&self) -> u32 {
        self.width.min(self.height)
    }

    /// Scale factor relative to the 128 px design size.
    fn scale(&self) -> f32 {
        self.side() as f32 / 128.0
    }

    fn texture(&self, rng: &mut ChaCha8Rng) -> Canvas {
        let (w, h) = (self.width as usize, self.height as usize);
        let s = self.scale();
        let period = self.look.period * s;
        let (dx, dy) = (
            rng.gen_range(0.0..2.0 * period),
            rng.gen_range(0.0..2.0 * period),
        );
        let angle: f32 = rng.gen_range(-1.5f32..1.5).to_radians();
        let (sin, cos) = angle.sin_cos();
        let gain = rng.gen_range(0.96..1.04);
        let noise_seed: u64 = rng.gen();
        let fibre_seed = mix64(noise_seed ^ 1);
        let grain_seed = mix64(noise_seed ^ 2);
        let (half_w, half_h) = (w as f32 / 2.0, h as f32 / 2.0);
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (cx, cy) = (x as f32 + 0.5 - half_w, y as f32 + 0.5 - half_h);
                let u = cos * cx - sin * cy + half_w + dx;
                let v = sin * cx + cos * cy + half_h + dy;
                let (fu, fv) = (u / period, v / period);
                let (iu, iv) = (fu.floor(), fv.floor());
                let (tu, tv) = (fu - iu, fv - iv);
                // Plain weave: horizontal and vertical threads alternate on top like a checkerboard.
                let horizontal = (iu as i64 + iv as i64).rem_euclid(2) == 0;
                let (across, fibre) = if horizontal {
                    (tv, value_noise(u * 0.08 / s, v * 1.3 / s, fibre_seed))
                } else {
                    (tu, value_noise(u * 1.3 / s, v * 0.08 / s, fibre_seed))
                };
                let profile = (std::f32::consts::PI * across).sin().powf(0.7);
                let thread = profile * (0.8 + 0.2 * fibre);
                let shade = 0.9 + 0.2 * fbm(u / (40.0 * s), v / (40.0 * s), noise_seed, 3);
                let value = ((1.0 - self.look.gap) + self.look.gap * thread) * shade * gain;
                let grain = (lattice(x as i64, y as i64, grain_seed) - 0.5) * (3.0 / 255.0);
                px.push(self.look.tint.map(|t| t * value + grain));
            }
        }
        Canvas {
            width: w,
            height: h,
            px,
        }
    }

    /// A centre uniformly placed with `margin` pixels of room on every side.
    fn centre(&self, rng: &mut ChaCha8Rng, margin: f32) -> (f32, f32) {
        let (w, h) = (self.width as f32, self.height as f32);
        let (mx, my) = (margin.min(w / 2.0 - 1.0), margin.min(h / 2.0 - 1.0));
        (rng.gen_range(mx..w - mx), rng.gen_range(my..h - my))
    }

    fn scratch(&self, c: &mut Canvas, rng: &mut ChaCha8Rng) -> Mask {
        let n = self.side() as f32;
        let len = rng.gen_range(0.25..0.45) * n;
        let theta: f32 = rng.gen_range(0.0..std::f32::consts::PI);
        let (dir_y, dir_x) = theta.sin_cos();
        let bend = rng.gen_range(-0.2..0.2) * len;
        let half_width = rng.gen_range(0.7..1.1) * self.scale();
        let (cx, cy) = self.centre(rng, len / 2.0 + bend.abs() + half_width + 2.0);
        let p0 = (cx - dir_x * len / 2.0, cy - dir_y * len / 2.0);
        let p2 = (cx + dir_x * len / 2.0, cy + dir_y * len / 2.0);
        let p1 = (cx - dir_y * bend * 2.0, cy + dir_x * bend * 2.0);
        let colour = if rng.gen_bool(0.5) {
            [0.95, 0.94, 0.9]
        } else {
            [0.12, 0.1, 0.09]
        };
        let strength = rng.gen_range(0.5..0.65);
        let mut mask = Mask::zeros(self.width, self.height);
        // Union of discs along the quadratic Bézier curve, sampled finer than a pixel.
        let steps = (len * 4.0).ceil() as usize;
        let r = half_width.ceil() as i64 + 1;
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            let (a, b, d) = ((1.0 - t) * (1.0 - t), 2.0 * (1.0 - t) * t, t * t);
            let px = a * p0.0 + b * p1.0 + d * p2.0;
            let py = a * p0.1 + b * p1.1 + d * p2.1;
            let (ix, iy) = (px.floor() as i64, py.floor() as i64);
            for y in iy - r..=iy + r {
                for x in ix - r..=ix + r {
                    let (ddx, ddy) = (x as f32 + 0.5 - px, y as f32 + 0.5 - py);
                    if ddx * ddx + ddy * ddy <= half_width * half_width {
                        set(&mut mask, x, y);
                    }
                }
            }
        }
        paint(c, &mask, |p, _, _| lerp3(p, colour, strength));
        mask
    }

    fn stain(&self, c: &mut Canvas, rng: &mut ChaCha8Rng) -> Mask {
        let n = self.side() as f32;
        let radius = rng.gen_range(0.06..0.11) * n;
        let wobble = 0.45;
        let reach = radius * (1.0 + wobble / 2.0);
        let (cx, cy) = self.centre(rng, reach + 2.0);
        let outline_seed: u64 = rng.gen();
        let colour = if rng.gen_bool(0.5) {
            [0.48, 0.3, 0.14] // rust
        } else {
            [0.3, 0.26, 0.16] // oil
        };
        let mask = self.mask_where(|x, y| {
            let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
            let noise = value_noise(x / (0.5 * radius), y / (0.5 * radius), outline_seed);
            d / radius + wobble * (noise - 0.5) < 1.0
        });
        paint(c, &mask, |p, x, y| {
            let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
            let alpha = 0.45 + 0.2 * (1.0 - d / reach).clamp(0.0, 1.0);
            lerp3(p, colour, alpha)
        });
        mask
    }

    fn hole(&self, c: &mut Canvas, rng: &mut ChaCha8Rng) -> Mask {
        let n = self.side() as f32;
        let radius = rng.gen_range(0.03..0.06) * n;
        let (cx, cy) = self.centre(rng, radius + 2.0);
        let mask = self.mask_where(|x, y| (x - cx).powi(2) + (y - cy).powi(2) <= radius * radius);
        paint(c, &mask, |p, x, y| {
            // Darkest in the middle, a little lighter towards the rim, like a hole seen under diffuse light.
            let t = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() / radius;
            let dark = [0.05, 0.045, 0.04].map(|v| v * (1.0 + 1.5 * t));
            lerp3(p, dark, 0.9)
        });
        mask
    }

    fn missing_texture(&self, c: &mut Canvas, rng: &mut ChaCha8Rng) -> Mask {
        let n = self.side() as f32;
        let (a, b) = (rng.gen_range(0.08..0.14) * n, rng.gen_range(0.08..0.14) * n);
        let (cx, cy) = self.centre(rng, a.max(b) + 2.0);
        let mask = self.mask_where(|x, y| ((x - cx) / a).powi(2) + ((y - cy) / b).powi(2) <= 1.0);
        let (mut sum, mut count) = ([0f32; 3], 0usize);
        for (p, &m) in c.px.iter().zip(&mask.data) {
            if m != 0 {
                for k in 0..3 {
                    sum[k] += p[k];
                }
                count += 1;
            }
        }
        let mean = sum.map(|v| v / count.max(1) as f32);
        let grain_seed: u64 = rng.gen();
        paint(c, &mask, |_, x, y| {
            let g = (lattice(x as i64, y as i64, grain_seed) - 0.5) * (3.0 / 255.0);
            mean.map(|v| v + g)
        });
        mask
    }

    /// Mask of pixels whose centre satisfies `inside(x + 0.5, y + 0.5)`.
    fn mask_where(&self, inside: impl Fn(f32, f32) -> bool) -> Mask {
        let (w, h) = (self.width, self.height);
        let mut mask = Mask::zeros(w, h);
        for y in 0..h {
            for x in 0..w {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    mask.data[(y * w + x) as usize] = 1;
                }
            }
        }
        mask
    }
}

fn set(mask: &mut Mask, x: i64, y: i64) {
    if x >= 0 && y >= 0 && (x as u32) < mask.width && (y as u32) < mask.height {
        mask.data[y as usize * mask.width as usize + x as usize] = 1;
    }
}

/// Apply `f(pixel, x_centre, y_centre)` to the pixels inside `mask` and nowhere else.
fn paint(c: &mut Canvas, mask: &Mask, f: impl Fn([f32; 3], f32, f32) -> [f32; 3]) {
    for (i, (p, &m)) in c.px.iter_mut().zip(&mask.data).enumerate() {
        if m != 0 {
            let (x, y) = ((i % c.width) as f32 + 0.5, (i / c.width) as f32 + 0.5);
            *p = f(*p, x, y);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing an MVTec category

fn validate(category: &str, spec: &SyntheticSpec) -> Result<(), SyntheticError> {
    let bad = |field, reason: String| Err(SyntheticError::InvalidSpec { field, reason });
    if category.is_empty()
        || category == "."
        || category == ".."
        || category.contains(['/', '\\'])
        || Path::new(category).is_absolute()
    {
        return bad(
            "category",
            format!("must be a plain folder name, got `{category}`"),
        );
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&spec.size) {
        return bad(
            "size",
            format!(
                "must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {}",
                spec.size
            ),
        );
    }
    if spec.n_train_good == 0 {
        return bad(
            "n_train_good",
            "must be at least 1: a detector needs good images to fit on".into(),
        );
    }
    if spec.n_test_defect > 0 && spec.defect_kinds.is_empty() {
        return bad(
            "defect_kinds",
            format!("is empty but n_test_defect is {}", spec.n_test_defect),
        );
    }
    Ok(())
}

enum Job {
    Good {
        index: u64,
        path: PathBuf,
    },
    Defect {
        index: u64,
        kind: DefectKind,
        path: PathBuf,
        mask_path: PathBuf,
    },
}

fn file_name(i: usize, total: usize) -> String {
    let width = total.saturating_sub(1).to_string().len().max(3);
    format!("{i:0width$}.png")
}

fn save(img: &impl SaveAsPng, path: &Path) -> Result<(), SyntheticError> {
    img.save_png(path).map_err(|source| SyntheticError::Encode {
        path: path.to_path_buf(),
        source,
    })
}

trait SaveAsPng {
    fn save_png(&self, path: &Path) -> image::ImageResult<()>;
}

impl SaveAsPng for RgbImage {
    fn save_png(&self, path: &Path) -> image::ImageResult<()> {
        self.save_with_format(path, ImageFormat::Png)
    }
}

impl SaveAsPng for image::GrayImage {
    fn save_png(&self, path: &Path) -> image::ImageResult<()> {
        self.save_with_format(path, ImageFormat::Png)
    }
}

/// Index offset of test-set good images, so they never coincide with training images.
const TEST_GOOD_OFFSET: u64 = 1 << 32;

/// Write a synthetic product as an MVTec AD category at `<root>/<category>`:
/// `train/good/NNN.png`, `test/good/NNN.png`, `test/<kind>/NNN.png` and
/// `ground_truth/<kind>/NNN_mask.png` (0 = normal, 255 = defect).
///
/// The category folder must not exist or be empty (refusing to write into an existing dataset avoids silently
/// mixing two generations). Images are rendered and encoded in parallel; the default spec (64 + 40 images of
/// 128 px) takes a fraction of a second in release builds.
pub fn write_mvtec_category(
    root: &Path,
    category: &str,
    spec: &SyntheticSpec,
) -> Result<SyntheticSummary, SyntheticError> {
    validate(category, spec)?;
    let product = Product::new(spec.size, spec.seed)?;
    let dir = root.join(category);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SyntheticError::Io { path, source }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir).map_err(io(&dir))?;
        if entries.next().is_some() {
            return Err(SyntheticError::NotEmpty { path: dir });
        }
    }

    let mut kinds: Vec<DefectKind> = Vec::new();
    for k in &spec.defect_kinds {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let mut per_kind: Vec<(DefectKind, usize)> = Vec::new();
    let mut assignments = Vec::with_capacity(spec.n_test_defect);
    for j in 0..spec.n_test_defect {
        let kind = kinds[j % kinds.len()];
        let slot = match per_kind.iter().position(|(k, _)| *k == kind) {
            Some(p) => p,
            None => {
                per_kind.push((kind, 0));
                per_kind.len() - 1
            }
        };
        assignments.push((kind, per_kind[slot].1));
        per_kind[slot].1 += 1;
    }

    let train_dir = dir.join("train").join("good");
    let test_good_dir = dir.join("test").join("good");
    let mut dirs = vec![train_dir.clone()];
    if spec.n_test_good > 0 {
        dirs.push(test_good_dir.clone());
    }
    for (k, _) in &per_kind {
        dirs.push(dir.join("test").join(k.name()));
        dirs.push(dir.join("ground_truth").join(k.name()));
    }
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }

    let mut jobs = Vec::new();
    for i in 0..spec.n_train_good {
        jobs.push(Job::Good {
            index: i as u64,
            path: train_dir.join(file_name(i, spec.n_train_good)),
        });
    }
    for i in 0..spec.n_test_good {
        jobs.push(Job::Good {
            index: TEST_GOOD_OFFSET + i as u64,
            path: test_good_dir.join(file_name(i, spec.n_test_good)),
        });
    }
    for (j, &(kind, k)) in assignments.iter().enumerate() {
        let total = per_kind
            .iter()
            .find(|(p, _)| *p == kind)
            .map_or(0, |(_, n)| *n);
        let name = file_name(k, total);
        let stem = name.trim_end_matches(".png");
        jobs.push(Job::Defect {
            index: j as u64,
            kind,
            path: dir.join("test").join(kind.name()).join(&name),
            mask_path: dir
                .join("ground_truth")
                .join(kind.name())
                .join(format!("{stem}_mask.png")),
        });
    }

    let results: Vec<Result<usize, SyntheticError>> = jobs
        .par_iter()
        .map(|job| match job {
            Job::Good { index, path } => save(&product.good(*index), path).map(|_| 1),
            Job::Defect {
                index,
                kind,
                path,
                mask_path,
            } => {
                let (img, mask) = product.defective(*index, *kind);
                save(&img, path)?;
                save(&mask.to_image(), mask_path)?;
                Ok(2)
            }
        })
        .collect();
    let mut files_written = 0;
    for r in results {
        files_written += r?;
    }
    per_kind.sort();
    Ok(SyntheticSummary {
        category_dir: dir,
        train_good: spec.n_train_good,
        test_good: spec.n_test_good,
        test_defects: per_kind,
        files_written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`fingerprint`] of the pinned images (computed before `with_shape` and `part` existed).
    const PINNED_128_7: u64 = 0x957b_2932_026c_33b1;
    const PINNED_64_3: u64 = 0xcd11_e0af_566f_b35f;

    fn mean_abs_diff_inside(a: &RgbImage, b: &RgbImage, mask: &Mask) -> f32 {
        let (mut sum, mut n) = (0f32, 0usize);
        for (i, (pa, pb)) in a.pixels().zip(b.pixels()).enumerate() {
            if mask.data[i] != 0 {
                for c in 0..3 {
                    sum += (f32::from(pa.0[c]) - f32::from(pb.0[c])).abs();
                }
                n += 3;
            }
        }
        sum / n.max(1) as f32
    }

    #[test]
    fn deterministic_and_varied() {
        let p = Product::new(64, 3).unwrap();
        assert_eq!(p.good(0), p.good(0));
        assert_ne!(p.good(0), p.good(1));
        assert_ne!(Product::new(64, 4).unwrap().good(0), p.good(0));
        let (a, ma) = p.defective(5, DefectKind::Stain);
        let (b, mb) = p.defective(5, DefectKind::Stain);
        assert_eq!((a, ma), (b, mb));
    }

    #[test]
    fn texture_has_structure_and_variation() {
        let p = Product::new(128, 0).unwrap();
        let img = p.good(0);
        let lum: Vec<f32> = img
            .pixels()
            .map(|px| px.0.iter().map(|&v| f32::from(v)).sum::<f32>() / 3.0)
            .collect();
        let mean = lum.iter().sum::<f32>() / lum.len() as f32;
        let var = lum.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / lum.len() as f32;
        assert!(var.sqrt() > 10.0, "texture too flat: std {}", var.sqrt());
        assert!((60.0..220.0).contains(&mean), "mean {mean}");
        // Not saturated.
        assert!(img.pixels().all(|px| px.0.iter().all(|&v| v < 255)));
    }

    #[test]
    fn defects_change_exactly_their_mask_and_are_visible() {
        let p = Product::new(128, 11).unwrap();
        for kind in DefectKind::ALL {
            for index in 0..6u64 {
                let (img, mask) = p.defective(index, kind);
                // Re-render the underlying texture with the same stream to compare.
                let mut rng = stream(p.seed, ROLE_DEFECT, index);
                let base = p.texture(&mut rng).to_image();
                let area = mask.count();
                assert!(area >= 10, "{kind} #{index}: mask too small ({area} px)");
                assert!(
                    area < 128 * 128 / 8,
                    "{kind} #{index}: mask too large ({area} px)"
                );
                for (i, (a, b)) in img.pixels().zip(base.pixels()).enumerate() {
                    if mask.data[i] == 0 {
                        assert_eq!(a, b, "{kind} #{index}: pixel {i} outside the mask changed");
                    }
                }
                let d = mean_abs_diff_inside(&img, &base, &mask);
                assert!(
                    d > 12.0,
                    "{kind} #{index}: defect barely visible (mean diff {d})"
                );
                assert!(
                    d < 200.0,
                    "{kind} #{index}: defect too extreme (mean diff {d})"
                );
            }
        }
    }

    /// FNV-1a: a stable fingerprint of image bytes.
    fn fingerprint(chunks: &[&[u8]]) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in chunks.iter().flat_map(|c| c.iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    #[test]
    fn dataset_images_are_pinned() {
        // The demo's dataset (seed 7, 128 px) and a small product: any change to these pixels changes what
        // `kestrel demo` and the GMM pretraining textures produce, so it must be deliberate.
        for (size, seed, want) in [(128, 7, PINNED_128_7), (64, 3, PINNED_64_3)] {
            let p = Product::new(size, seed).unwrap();
            let mut images = vec![p.good(0), p.good(TEST_GOOD_OFFSET + 1)];
            let mut masks = Vec::new();
            for (i, kind) in DefectKind::ALL.into_iter().enumerate() {
                let (img, mask) = p.defective(i as u64, kind);
                images.push(img);
                masks.push(mask.data);
            }
            let chunks: Vec<&[u8]> = images
                .iter()
                .map(|i| i.as_raw().as_slice())
                .chain(masks.iter().map(Vec::as_slice))
                .collect();
            assert_eq!(fingerprint(&chunks), want, "{size} px, seed {seed}");
        }
    }

    #[test]
    fn rectangular_parts_differ_from_their_defective_twin_only_inside_the_mask() {
        let p = Product::with_shape(96, 48, 5).unwrap();
        assert_ne!(p.part(0, None).0, p.part(1, None).0);
        for (i, kind) in DefectKind::ALL.into_iter().enumerate() {
            let (good, none) = p.part(i as u64, None);
            let (bad, mask) = p.part(i as u64, Some(kind));
            let mask = mask.unwrap();
            assert!(none.is_none());
            assert_eq!((good.width(), good.height()), (96, 48));
            assert_eq!((mask.width, mask.height), (96, 48));
            assert!(mask.count() >= 4, "{kind}: mask of {} px", mask.count());
            for (j, (a, b)) in bad.pixels().zip(good.pixels()).enumerate() {
                if mask.data[j] == 0 {
                    assert_eq!(a, b, "{kind}: pixel {j} outside the mask changed");
                }
            }
            assert!(mean_abs_diff_inside(&bad, &good, &mask) > 12.0, "{kind}");
        }
        assert!(Product::with_shape(96, 16, 5).is_err());
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in DefectKind::ALL {
            assert_eq!(k.name().parse::<DefectKind>().unwrap(), k);
        }
        assert!("dent".parse::<DefectKind>().is_err());
    }

    #[test]
    fn rejects_bad_specs() {
        let dir = std::env::temp_dir();
        let cases = [
            (
                "ok",
                SyntheticSpec {
                    size: 8,
                    ..Default::default()
                },
            ),
            (
                "ok",
                SyntheticSpec {
                    n_train_good: 0,
                    ..Default::default()
                },
            ),
            (
                "ok",
                SyntheticSpec {
                    defect_kinds: vec![],
                    ..Default::default()
                },
            ),
            ("../x", SyntheticSpec::default()),
            ("", SyntheticSpec::default()),
        ];
        for (cat, spec) in cases {
            assert!(matches!(
                write_mvtec_category(&dir, cat, &spec),
                Err(SyntheticError::InvalidSpec { .. })
            ));
        }
    }

    #[test]
    fn file_names_are_zero_padded() {
        assert_eq!(file_name(7, 10), "007.png");
        assert_eq!(file_name(7, 5000), "0007.png");
        assert_eq!(file_name(0, 0), "000.png");
    }
}
