//! Fractal image generators: one class per IFS code (Anderson & Farrell's classification), and the multi-instance
//! composer (1–5 fractals pasted on one background, multi-label target); docs/pretraining.md, "Fractals".
//!
//! A class's code is drawn from its own random stream, `(seed, class)`, so class `c` is the same fractal
//! whatever the number of classes and in both generators. Every sample is a fresh render of its code, varied by
//! parameter jitter, render window, patch stamp, flips, colour, background and blur, so the network has to
//! learn the shape of an attractor rather than a picture of it.
//!
//! A&F keep a cache of 512 rendered fractals to feed GPUs from Python; rendering here costs about a
//! millisecond per image per core, so every object is rendered fresh and nothing is cached.

use std::ops::Range;

use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::colour::{composite, gray_to_image, FgColour};
use super::ifs::{chaos_game, jitter, Ifs, IfsSampler, Jitter};
use super::render::{
    blur3x3, rasterize, resize_bilinear, Dihedral, Gray, PatchMask, Shading, Window,
};
use super::texture::{background, BackgroundParams};
use super::{check_size, invalid, role, stream, uniform, Image, SynthError, MAX_SIZE};

/// Renders whose filling rate stays below [`FractalConfig::min_fill`] are redrawn (new jitter, window and patch)
/// up to this many times in all; the last attempt uses the plain bounding box, and the fullest attempt is kept.
const FILL_ATTEMPTS: usize = 4;

/// Chaos-game steps for a `size`-pixel image: about 2 points per pixel (2–4 are usual), at
/// least 12k (thin attractors need them even at 64 px) and at most A&F's 100k.
pub fn default_n_iter(size: usize) -> usize {
    (2 * size * size).clamp(12_000, 100_000)
}

/// How one fractal image is made (defaults: A&F's classification generator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FractalConfig {
    /// Image side in pixels.
    pub size: usize,
    /// Chaos-game steps.
    pub n_iter: usize,
    /// How class codes are sampled.
    pub sampler: IfsSampler,
    /// Per-sample parameter jitter.
    pub jitter: Jitter,
    /// Stamp a random 3×3 patch per point (thicker strokes) instead of a single pixel.
    pub patch: bool,
    /// Graded (density) or binary pixels.
    pub shading: Shading,
    /// Random zoom, shift and aspect of the render window.
    pub window_jitter: bool,
    /// Random transpose and flips.
    pub dihedral: bool,
    /// HSV colouring; otherwise gray at half brightness.
    pub colour: bool,
    /// Diamond-square background behind the fractal.
    pub background: bool,
    /// Probability of a 3×3 Gaussian blur with σ ~ U(0.5, 1).
    pub blur_prob: f64,
    /// Least acceptable fraction of lit pixels (before the background).
    pub min_fill: f32,
}

impl FractalConfig {
    /// A&F defaults at `size` pixels.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            n_iter: default_n_iter(size),
            sampler: IfsSampler::default(),
            jitter: Jitter::Basic,
            patch: true,
            shading: Shading::Graded,
            window_jitter: true,
            dihedral: true,
            colour: true,
            background: true,
            blur_prob: 0.5,
            min_fill: 0.02,
        }
    }

    /// Check the ranges. Fractals render at any size from 8 px (multi-instance objects are half-size).
    pub fn validate(&self) -> Result<(), SynthError> {
        if !(8..=MAX_SIZE).contains(&self.size) {
            return Err(invalid(
                "size",
                format!("must be between 8 and {MAX_SIZE} pixels, got {}", self.size),
            ));
        }
        if self.n_iter == 0 || self.n_iter > 100_000_000 {
            return Err(invalid(
                "n_iter",
                format!("must be between 1 and 10⁸, got {}", self.n_iter),
            ));
        }
        if !(0.0..=1.0).contains(&self.blur_prob) {
            return Err(invalid(
                "blur_prob",
                format!("must be a probability, got {}", self.blur_prob),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_fill) {
            return Err(invalid(
                "min_fill",
                format!("must be a fraction, got {}", self.min_fill),
            ));
        }
        if self.colour && self.shading == Shading::Binary {
            return Err(invalid(
                "shading",
                "colour needs graded shading (the hue follows point density)",
            ));
        }
        self.sampler.validate()
    }
}

/// Everything that went into one fractal image (written as JSON by `kestrel synth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FractalParams {
    /// The class (index of its IFS code).
    pub class: usize,
    /// The maps actually iterated (the class code after jitter), each `{a, b, c, d, e, f}`.
    pub maps: Ifs,
    /// Map selection probabilities (∝ |det|).
    pub probabilities: Vec<f64>,
    /// σ-factor of the iterated maps.
    pub sigma_factor: f64,
    /// Whether jitter changed the code.
    pub jittered: bool,
    /// Chaos-game points rendered.
    pub points: usize,
    /// Render window.
    pub window: Window,
    /// 3×3 stamp (bit `3·(dr+1) + (dc+1)`).
    pub patch: PatchMask,
    /// Fraction of lit pixels of the fractal layer.
    pub fill: f32,
    /// Render attempts used to reach the minimum fill.
    pub attempts: usize,
    /// Flips.
    pub dihedral: Dihedral,
    /// Foreground colouring (`None`: gray).
    pub colour: Option<FgColour>,
    /// Background (`None`: black).
    pub background: Option<BackgroundParams>,
    /// Blur σ, when blurred.
    pub blur_sigma: Option<f32>,
}

/// One generated image and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct FractalSample {
    /// The image.
    pub image: Image,
    /// How it was made; `params.class` is the label.
    pub params: FractalParams,
}

/// Class-conditional fractal images: class `c` is IFS code `c`.
#[derive(Debug, Clone)]
pub struct FractalGenerator {
    cfg: FractalConfig,
    seed: u64,
    codes: Vec<Ifs>,
}

impl FractalGenerator {
    /// `classes` codes drawn from `seed` (code `c` depends only on `seed` and `c`).
    pub fn new(cfg: FractalConfig, classes: usize, seed: u64) -> Result<Self, SynthError> {
        cfg.validate()?;
        if classes == 0 {
            return Err(invalid("classes", "need at least one class"));
        }
        let codes = (0..classes as u64)
            .into_par_iter()
            .map(|c| cfg.sampler.sample(&mut stream(seed, role::IFS_CODE, c)))
            .collect();
        Ok(Self { cfg, seed, codes })
    }

    /// The configuration.
    pub fn config(&self) -> &FractalConfig {
        &self.cfg
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.codes.len()
    }

    /// The IFS code of `class`.
    ///
    /// # Panics
    /// If `class` is out of range.
    pub fn code(&self, class: usize) -> &Ifs {
        &self.codes[class]
    }

    /// The class of sample `index`: round-robin, so any run of `classes` consecutive samples covers every class.
    pub fn class_of(&self, index: u64) -> usize {
        (index % self.codes.len() as u64) as usize
    }

    /// Sample `index` (of class [`class_of`](Self::class_of)`(index)`).
    pub fn sample(&self, index: u64) -> FractalSample {
        self.sample_class(self.class_of(index), index)
    }

    /// Sample `index` rendered from `class`'s code.
    ///
    /// # Panics
    /// If `class` is out of range.
    pub fn sample_class(&self, class: usize, index: u64) -> FractalSample {
        let mut rng = stream(self.seed, role::FRACTAL, index);
        self.render(class, &mut rng)
    }

    /// Samples `indices`, rendered in parallel on the rayon pool, in order.
    pub fn batch(&self, indices: Range<u64>) -> Vec<FractalSample> {
        indices.into_par_iter().map(|i| self.sample(i)).collect()
    }

    /// Samples at arbitrary `indices`, rendered in parallel, in order.
    pub fn batch_of(&self, indices: &[u64]) -> Vec<FractalSample> {
        indices.par_iter().map(|&i| self.sample(i)).collect()
    }

    /// The full per-image pipeline (docs/pretraining.md, "Rendering one image"), from `rng`.
    pub fn render(&self, class: usize, rng: &mut impl Rng) -> FractalSample {
        let cfg = &self.cfg;
        let shape = render_shape(&self.codes[class], cfg, rng);
        let dihedral = if cfg.dihedral {
            Dihedral::sample(rng)
        } else {
            Dihedral::default()
        };
        let gray = dihedral.apply(&shape.gray);
        let (fg, colour) = if cfg.colour {
            let c = FgColour::sample(rng);
            (c.colorize(&gray), Some(c))
        } else {
            (gray_to_image(&gray), None)
        };
        let (mut image, background) = if cfg.background {
            let (mut bg, p) = background(cfg.size, rng);
            composite(&fg, &mut bg);
            (bg, Some(p))
        } else {
            (fg, None)
        };
        let blur_sigma = maybe_blur(&mut image, cfg.blur_prob, rng);
        let probabilities = shape.ifs.probabilities();
        FractalSample {
            image,
            params: FractalParams {
                class,
                sigma_factor: shape.ifs.sigma_factor(),
                maps: shape.ifs,
                probabilities,
                jittered: shape.jittered,
                points: shape.points,
                window: shape.window,
                patch: shape.patch,
                fill: shape.gray.fill(),
                attempts: shape.attempts,
                dihedral,
                colour,
                background,
                blur_sigma,
            },
        }
    }
}

/// With probability `p`, blur with σ ~ U(0.5, 1) and return σ.
fn maybe_blur(img: &mut Image, p: f64, rng: &mut impl Rng) -> Option<f32> {
    if p > 0.0 && rng.gen_bool(p) {
        let sigma = uniform(rng, 0.5, 1.0) as f32;
        blur3x3(img, sigma);
        Some(sigma)
    } else {
        None
    }
}

/// A rasterised attractor before flips and colour.
struct Shape {
    gray: Gray,
    ifs: Ifs,
    jittered: bool,
    points: usize,
    window: Window,
    patch: PatchMask,
    attempts: usize,
}

/// Jitter, chaos game, window, patch and rasterisation, redrawn while the fill is below the minimum.
fn render_shape(code: &Ifs, cfg: &FractalConfig, rng: &mut impl Rng) -> Shape {
    let mut best: Option<(f32, Shape)> = None;
    for attempt in 1..=FILL_ATTEMPTS {
        let (ifs, jittered) = jitter(code, cfg.jitter, rng);
        let points = chaos_game(&ifs, cfg.n_iter, rng);
        let bbox = Window::bounding(&points);
        // The last attempt falls back to the bounding box: a zoomed-out or off-centre window is the usual
        // reason for a nearly empty render.
        let window = if cfg.window_jitter && attempt < FILL_ATTEMPTS {
            bbox.jittered(rng)
        } else {
            bbox
        };
        let patch = if cfg.patch {
            PatchMask::sample(rng)
        } else {
            PatchMask::POINT
        };
        let gray = rasterize(&points, cfg.size, &window, patch, cfg.shading);
        let fill = gray.fill();
        let shape = Shape {
            gray,
            ifs,
            jittered,
            points: points.len(),
            window,
            patch,
            attempts: attempt,
        };
        if fill >= cfg.min_fill {
            return shape;
        }
        if best.as_ref().is_none_or(|(f, _)| fill > *f) {
            best = Some((fill, shape));
        }
    }
    let (_, mut shape) = best.expect("at least one attempt");
    shape.attempts = FILL_ATTEMPTS;
    shape
}

// ---------------------------------------------------------------------------------------------------------------
// Multi-instance

/// How a multi-instance image is composed (defaults: A&F's multi-instance prediction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiConfig {
    /// Image side in pixels.
    pub size: usize,
    /// Fewest fractals per image.
    pub min_objects: usize,
    /// Most fractals per image.
    pub max_objects: usize,
    /// Smallest object side as a fraction of the image side.
    pub min_scale: f64,
    /// Largest object side as a fraction of the image side.
    pub max_scale: f64,
    /// Diamond-square background.
    pub background: bool,
    /// Probability of blurring the composed image.
    pub blur_prob: f64,
    /// How each object is rendered (at half the image side; no background, blur or parameter jitter).
    pub object: FractalConfig,
}

impl MultiConfig {
    /// A&F defaults at `size` pixels: 1–5 objects of 0.15–0.6 of the side, rendered at `size / 2`.
    pub fn new(size: usize) -> Self {
        let half = (size / 2).max(8);
        Self {
            size,
            min_objects: 1,
            max_objects: 5,
            min_scale: 0.15,
            max_scale: 0.6,
            background: true,
            blur_prob: 0.5,
            object: FractalConfig {
                jitter: Jitter::None,
                window_jitter: false,
                background: false,
                blur_prob: 0.0,
                ..FractalConfig::new(half)
            },
        }
    }

    /// Check the ranges.
    pub fn validate(&self) -> Result<(), SynthError> {
        check_size(self.size)?;
        if self.min_objects == 0 || self.min_objects > self.max_objects {
            return Err(invalid(
                "objects",
                format!(
                    "need 1 ≤ min ≤ max, got {}..={}",
                    self.min_objects, self.max_objects
                ),
            ));
        }
        if !(self.min_scale > 0.0 && self.min_scale <= self.max_scale && self.max_scale <= 2.0) {
            return Err(invalid(
                "scale",
                format!(
                    "need 0 < min ≤ max ≤ 2, got {}..{}",
                    self.min_scale, self.max_scale
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.blur_prob) {
            return Err(invalid(
                "blur_prob",
                format!("must be a probability, got {}", self.blur_prob),
            ));
        }
        self.object.validate()
    }
}

/// One pasted fractal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectParams {
    /// Its class.
    pub class: usize,
    /// Side after resizing, pixels.
    pub side: usize,
    /// Column of its left edge (may be negative: objects can be clipped).
    pub left: i64,
    /// Row of its top edge (may be negative).
    pub top: i64,
    /// How it was rendered (at the object size).
    pub render: FractalParams,
}

/// Everything that went into one multi-instance image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiParams {
    /// The classes present, sorted, without repeats: the multi-label target.
    pub labels: Vec<usize>,
    /// The objects, in paste order (later ones cover earlier ones).
    pub objects: Vec<ObjectParams>,
    /// Background (`None`: black).
    pub background: Option<BackgroundParams>,
    /// Blur σ, when blurred.
    pub blur_sigma: Option<f32>,
}

impl MultiParams {
    /// Multi-hot target over `classes`.
    pub fn target(&self, classes: usize) -> Vec<f32> {
        let mut t = vec![0.0; classes];
        for &c in &self.labels {
            t[c] = 1.0;
        }
        t
    }

    /// A&F's positive weight for BCE-with-logits: `classes / positives`, so each image's few positives weigh as
    /// much as its many negatives.
    pub fn pos_weight(&self, classes: usize) -> f32 {
        classes as f32 / self.labels.len().max(1) as f32
    }
}

/// One multi-instance image.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiSample {
    /// The image.
    pub image: Image,
    /// How it was made; `params.labels` is the target.
    pub params: MultiParams,
}

/// Multi-instance fractal images: several fractals of random classes on one background.
#[derive(Debug, Clone)]
pub struct MultiFractalGenerator {
    cfg: MultiConfig,
    seed: u64,
    objects: FractalGenerator,
}

impl MultiFractalGenerator {
    /// `classes` codes from `seed`; the same codes as [`FractalGenerator::new`] with the same seed.
    pub fn new(cfg: MultiConfig, classes: usize, seed: u64) -> Result<Self, SynthError> {
        cfg.validate()?;
        let objects = FractalGenerator::new(cfg.object.clone(), classes, seed)?;
        Ok(Self { cfg, seed, objects })
    }

    /// The configuration.
    pub fn config(&self) -> &MultiConfig {
        &self.cfg
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.objects.classes()
    }

    /// Sample `index`.
    pub fn sample(&self, index: u64) -> MultiSample {
        let cfg = &self.cfg;
        let s = cfg.size;
        let mut rng = stream(self.seed, role::MULTI, index);
        let (mut image, background) = if cfg.background {
            let (bg, p) = background(s, &mut rng);
            (bg, Some(p))
        } else {
            (Image::new(s), None)
        };
        let n = rng.gen_range(cfg.min_objects..=cfg.max_objects);
        let mut objects = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.gen_range(0..self.classes());
            let obj = self.objects.render(class, &mut rng);
            let side = ((uniform(&mut rng, cfg.min_scale, cfg.max_scale) * s as f64).round()
                as usize)
                .max(1);
            let half = side as f64 / 2.0;
            let left = uniform(&mut rng, -half, s as f64 - half).floor() as i64;
            let top = uniform(&mut rng, -half, s as f64 - half).floor() as i64;
            paste(&resize_bilinear(&obj.image, side), &mut image, left, top);
            objects.push(ObjectParams {
                class,
                side,
                left,
                top,
                render: obj.params,
            });
        }
        let blur_sigma = maybe_blur(&mut image, cfg.blur_prob, &mut rng);
        let mut labels: Vec<usize> = objects.iter().map(|o| o.class).collect();
        labels.sort_unstable();
        labels.dedup();
        MultiSample {
            image,
            params: MultiParams {
                labels,
                objects,
                background,
                blur_sigma,
            },
        }
    }

    /// Samples `indices`, rendered in parallel, in order.
    pub fn batch(&self, indices: Range<u64>) -> Vec<MultiSample> {
        indices.into_par_iter().map(|i| self.sample(i)).collect()
    }

    /// Samples at arbitrary `indices`, rendered in parallel, in order.
    pub fn batch_of(&self, indices: &[u64]) -> Vec<MultiSample> {
        indices.par_iter().map(|&i| self.sample(i)).collect()
    }
}

/// Paste the non-black pixels of `obj` onto `dst` with its top-left corner at `(top, left)`, clipped.
fn paste(obj: &Image, dst: &mut Image, left: i64, top: i64) {
    let (n, m) = (dst.size() as i64, obj.size() as i64);
    for r in 0..m {
        let y = top + r;
        if !(0..n).contains(&y) {
            continue;
        }
        for c in 0..m {
            let x = left + c;
            if !(0..n).contains(&x) {
                continue;
            }
            let p = obj.pixel((r * m + c) as usize);
            if p.iter().any(|&v| v > 0.0) {
                dst.set_pixel((y * n + x) as usize, p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_fill_of_small_patch_renders_matches_the_reference() {
        // 64² graded renders with a random patch over the points' bounding box fill 0.38–0.41 of the image on
        // average (measured on a prototype); accept 0.3–0.45.
        let cfg = FractalConfig {
            n_iter: 10_000,
            jitter: Jitter::None,
            window_jitter: false,
            ..FractalConfig::new(64)
        };
        let mut total = 0.0;
        for code in 0..300 {
            let mut rng = stream(21, role::IFS_CODE, code);
            let ifs = cfg.sampler.sample(&mut rng);
            let shape = render_shape(&ifs, &cfg, &mut rng);
            total += shape.gray.fill();
        }
        let mean = total / 300.0;
        assert!((0.3..=0.45).contains(&mean), "mean fill {mean}");
    }

    #[test]
    fn samples_are_deterministic_and_carry_their_class() {
        let g = FractalGenerator::new(FractalConfig::new(32), 5, 3).unwrap();
        let a = g.sample(7);
        assert_eq!(a, g.sample(7));
        assert_eq!(a.params.class, 2);
        assert_ne!(a.image, g.sample(8).image);
        assert_eq!(a.image.size(), 32);
        assert!(a.image.data().iter().all(|v| (0.0..=1.0).contains(v)));
        // The parallel batch renders the same images in order.
        let batch = g.batch(5..9);
        assert_eq!(batch[2], a);
    }

    #[test]
    fn class_codes_do_not_depend_on_the_number_of_classes() {
        let small = FractalGenerator::new(FractalConfig::new(32), 3, 9).unwrap();
        let large = FractalGenerator::new(FractalConfig::new(32), 10, 9).unwrap();
        for c in 0..3 {
            assert_eq!(small.code(c), large.code(c));
        }
        assert_ne!(small.code(0), small.code(1));
    }

    #[test]
    fn renders_reach_the_minimum_fill() {
        let g = FractalGenerator::new(FractalConfig::new(64), 50, 4).unwrap();
        let low = (0..50)
            .map(|i| g.sample(i))
            .filter(|s| s.params.fill < g.config().min_fill)
            .count();
        // A code whose attractor is almost a point can stay below even on the bounding box; such codes are rare.
        assert!(low <= 2, "{low} of 50 renders below the minimum fill");
    }

    #[test]
    fn gray_binary_without_background_is_black_and_gray() {
        let cfg = FractalConfig {
            colour: false,
            background: false,
            shading: Shading::Binary,
            blur_prob: 0.0,
            ..FractalConfig::new(32)
        };
        let g = FractalGenerator::new(cfg, 2, 0).unwrap();
        let s = g.sample(0);
        let lit = 127.0 / 255.0;
        assert!(s.image.data().iter().all(|&v| v == 0.0 || v == lit));
        assert!(FractalGenerator::new(
            FractalConfig {
                shading: Shading::Binary,
                ..FractalConfig::new(32)
            },
            2,
            0
        )
        .is_err());
    }

    #[test]
    fn multi_instance_targets_match_objects() {
        let g = MultiFractalGenerator::new(MultiConfig::new(64), 20, 1).unwrap();
        for i in 0..6 {
            let s = g.sample(i);
            let p = &s.params;
            assert!((1..=5).contains(&p.objects.len()));
            let t = p.target(20);
            assert_eq!(t.iter().filter(|&&v| v == 1.0).count(), p.labels.len());
            for o in &p.objects {
                assert_eq!(t[o.class], 1.0);
                assert!((9..=39).contains(&o.side), "side {}", o.side);
                let half = o.side as i64 / 2;
                assert!(o.left >= -half - 1 && o.left < 64 - half + 1);
            }
            assert_eq!(p.pos_weight(20), 20.0 / p.labels.len() as f32);
            assert_eq!(s, g.sample(i));
        }
    }

    #[test]
    fn paste_clips_and_skips_black() {
        let mut dst = Image::new(4);
        dst.data_mut().fill(0.5);
        let mut obj = Image::new(2);
        obj.set_pixel(0, [0.0; 3]);
        obj.set_pixel(1, [1.0, 0.0, 0.0]);
        obj.set_pixel(2, [0.0, 1.0, 0.0]);
        obj.set_pixel(3, [0.0, 0.0, 1.0]);
        paste(&obj, &mut dst, -1, 3);
        // Only obj pixel 1 (row 0, col 1) lands, at (3, 0).
        assert_eq!(dst.pixel(12), [1.0, 0.0, 0.0]);
        let changed = (0..16).filter(|&i| dst.pixel(i) != [0.5; 3]).count();
        assert_eq!(changed, 1);
    }
}
