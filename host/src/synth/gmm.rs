//! GMM pseudo-defects (docs/pretraining.md, "GMM pseudo-defects"): a "stain" drawn as a mixture of K = 30 two-dimensional Gaussians is
//! blended into a normal image, and a network learns to regress the mixture's 271 parameters from the result.
//!
//! The mixture is unnormalised (each component peaks at 1) and rescaled so that its largest value *on the
//! rendered grid* becomes the strength `s`; the per-pixel opacity is therefore at most `s` and reaches it
//! exactly. That makes `s` identifiable whatever π, σ and the positions are, which the regression needs.
//!
//! # Units
//!
//! Coordinates are normalised to `[−1, 1]` (`x` across columns, `y` down rows). Colours, the visibility
//! threshold and the cleaning threshold are in network units, `[−1, 1]` (the `[0, 1]` image normalised with
//! mean 0.5 and std 0.5), as the head predicts them; [`Image`]s stay in `[0, 1]`, so a colour `c` paints
//! `(c + 1) / 2`. The blend is affine, so rendering in either unit gives the same picture.
//!
//! # Samplers
//!
//! [`GmmPreset::Reference`] reproduces the public reference sampler: 30 large, smooth components, often
//! filling the image. [`GmmPreset::Subtle`] (the default) and [`GmmPreset::Medium`] are our proposal for
//! defects that look like defects: 1–6 (1–12) small components around one centre, sometimes elongated into
//! scratches, coloured near the surface they sit on, at low strength, rejected when invisible. After sampling,
//! components too faint to see are removed from the target ([`clean_target`]) so that the network is never
//! asked to find what is not in the image.

use std::ops::Range;

use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::texture::{NormalOrigin, NormalSource};
use super::{
    check_size, exponential, invalid, log_uniform, normal, role, stream, uniform, Image, SynthError,
};

/// Mixture components K of the regression head.
pub const GMM_COMPONENTS: usize = 30;
/// Colour channels C.
pub const GMM_CHANNELS: usize = 3;
/// Head outputs: `K·(2 μ + 2 σ + ρ + π + C colour) + 1 strength` = 271.
pub const GMM_PARAMS: usize = GMM_COMPONENTS * (6 + GMM_CHANNELS) + 1;
/// Smallest σ the head can express (`softplus(z) + 0.01`); sampled σ are clamped to it.
pub const SIGMA_MIN: f32 = 0.01;

/// Beyond this many standard deviations from its mean (along either axis) a component's value is below
/// `exp(−6.5²/2) ≈ 7.7·10⁻¹⁰` and is not evaluated: small defects then cost only their bounding box.
const CUTOFF_SIGMAS: f32 = 6.5;

/// One mixture component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GmmComponent {
    /// Mean `(μx, μy)` in `[−1, 1]`.
    pub mu: [f32; 2],
    /// Standard deviations `(σx, σy)`, at least [`SIGMA_MIN`].
    pub sigma: [f32; 2],
    /// Correlation in `(−1, 1)`.
    pub rho: f32,
    /// Mixture weight; 0 marks an inactive component.
    pub pi: f32,
    /// Colour in network units `[−1, 1]`.
    pub colour: [f32; GMM_CHANNELS],
}

impl GmmComponent {
    /// Padding for unused head slots (π = 0: it renders nothing and is masked out of the loss).
    pub const INACTIVE: Self = Self {
        mu: [0.0, 0.0],
        sigma: [1.0, 1.0],
        rho: 0.0,
        pi: 0.0,
        colour: [0.0; GMM_CHANNELS],
    };
}

/// A mixture and its strength: the regression target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmParams {
    /// Exactly [`GMM_COMPONENTS`] components, active ones (π > 0) and padding.
    pub components: Vec<GmmComponent>,
    /// Peak opacity `s` in `[0, 1]`.
    pub strength: f32,
}

impl GmmParams {
    /// No defect: every component inactive, strength 0.
    pub fn none() -> Self {
        Self {
            components: vec![GmmComponent::INACTIVE; GMM_COMPONENTS],
            strength: 0.0,
        }
    }

    /// Indices of the active components (π > 0).
    pub fn active(&self) -> impl Iterator<Item = usize> + '_ {
        self.components
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pi > 0.0)
            .map(|(k, _)| k)
    }

    /// The head layout: `[μx(K), μy(K), σx(K), σy(K), ρ(K), π(K), colour(K×C, component-major), s]`.
    pub fn to_flat(&self) -> Vec<f32> {
        let k = GMM_COMPONENTS;
        let mut out = vec![0.0; GMM_PARAMS];
        for (i, c) in self.components.iter().take(k).enumerate() {
            out[i] = c.mu[0];
            out[k + i] = c.mu[1];
            out[2 * k + i] = c.sigma[0];
            out[3 * k + i] = c.sigma[1];
            out[4 * k + i] = c.rho;
            out[5 * k + i] = c.pi;
            out[6 * k + i * GMM_CHANNELS..6 * k + (i + 1) * GMM_CHANNELS]
                .copy_from_slice(&c.colour);
        }
        out[GMM_PARAMS - 1] = self.strength;
        out
    }

    /// Inverse of [`to_flat`](Self::to_flat).
    pub fn from_flat(v: &[f32]) -> Result<Self, SynthError> {
        if v.len() != GMM_PARAMS {
            return Err(SynthError::FlatLength {
                expected: GMM_PARAMS,
                got: v.len(),
            });
        }
        let k = GMM_COMPONENTS;
        let components = (0..k)
            .map(|i| {
                let mut colour = [0.0; GMM_CHANNELS];
                colour
                    .copy_from_slice(&v[6 * k + i * GMM_CHANNELS..6 * k + (i + 1) * GMM_CHANNELS]);
                GmmComponent {
                    mu: [v[i], v[k + i]],
                    sigma: [v[2 * k + i], v[3 * k + i]],
                    rho: v[4 * k + i],
                    pi: v[5 * k + i],
                    colour,
                }
            })
            .collect();
        Ok(Self {
            components,
            strength: v[GMM_PARAMS - 1],
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

/// Normalised coordinate of pixel index `j` on a grid of `size`: `2j/(size−1) − 1`.
#[inline]
fn coord(j: usize, size: usize) -> f32 {
    2.0 * j as f32 / (size as f32 - 1.0) - 1.0
}

/// Inclusive pixel range whose coordinates lie within `[lo, hi]`, or `None`.
fn pixel_range(lo: f32, hi: f32, size: usize) -> Option<(usize, usize)> {
    let half = (size as f32 - 1.0) / 2.0;
    let a = ((lo + 1.0) * half).ceil().max(0.0);
    let b = ((hi + 1.0) * half).floor().min(size as f32 - 1.0);
    (a <= b).then_some((a as usize, b as usize))
}

/// One component's unnormalised density `f_k` on its bounding box of the grid.
#[derive(Debug, Clone)]
struct Footprint {
    rows: (usize, usize),
    cols: (usize, usize),
    /// Row-major over the box.
    f: Vec<f32>,
}

impl Footprint {
    fn new(c: &GmmComponent, size: usize) -> Option<Self> {
        let [sx, sy] = c.sigma.map(|s| s.max(f32::MIN_POSITIVE));
        let cols = pixel_range(
            c.mu[0] - CUTOFF_SIGMAS * sx,
            c.mu[0] + CUTOFF_SIGMAS * sx,
            size,
        )?;
        let rows = pixel_range(
            c.mu[1] - CUTOFF_SIGMAS * sy,
            c.mu[1] + CUTOFF_SIGMAS * sy,
            size,
        )?;
        let rho = c.rho.clamp(-0.999_999, 0.999_999);
        let k = -1.0 / (2.0 * (1.0 - rho * rho));
        let zx: Vec<f32> = (cols.0..=cols.1)
            .map(|j| (coord(j, size) - c.mu[0]) / sx)
            .collect();
        let mut f = Vec::with_capacity((rows.1 - rows.0 + 1) * zx.len());
        for i in rows.0..=rows.1 {
            let zy = (coord(i, size) - c.mu[1]) / sy;
            for &x in &zx {
                f.push((k * (x * x - 2.0 * rho * x * zy + zy * zy)).exp());
            }
        }
        Some(Self { rows, cols, f })
    }

    /// `(grid index, f)` over the box.
    fn iter(&self, size: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let w = self.cols.1 - self.cols.0 + 1;
        self.f.iter().enumerate().map(move |(b, &v)| {
            let (r, c) = (self.rows.0 + b / w, self.cols.0 + b % w);
            (r * size + c, v)
        })
    }
}

/// The footprints of a mixture's active components (shared by rendering, cleaning and re-rendering, which only
/// change π and s).
struct Field {
    size: usize,
    footprints: Vec<(usize, Footprint)>,
}

impl Field {
    fn new(p: &GmmParams, size: usize) -> Self {
        let footprints = p
            .active()
            .filter_map(|k| Footprint::new(&p.components[k], size).map(|f| (k, f)))
            .collect();
        Self { size, footprints }
    }

    /// `G(p) = Σ_k π_k f_k(p)` over the components for which `keep(k)`, and its maximum.
    fn mixture(&self, p: &GmmParams, keep: impl Fn(usize) -> bool) -> (Vec<f32>, f32) {
        let mut g = vec![0f32; self.size * self.size];
        for (k, fp) in &self.footprints {
            let pi = p.components[*k].pi;
            if pi > 0.0 && keep(*k) {
                for (i, f) in fp.iter(self.size) {
                    g[i] += pi * f;
                }
            }
        }
        let max = g.iter().copied().fold(0.0, f32::max);
        (g, max)
    }

    fn render(&self, normal: &Image, p: &GmmParams) -> GmmRender {
        let n = self.size * self.size;
        let (g, g_max) = self.mixture(p, |_| true);
        if !(p.strength > 0.0 && g_max > 0.0) {
            return GmmRender {
                image: normal.clone(),
                alpha: vec![0.0; n],
            };
        }
        // I_A = I_N + Σ_k a_k (c_k − I_N) with a_k = s·π_k f_k / G*: the same as (1 − α) I_N + Σ_k a_k c_k, but
        // exact where α = 0.
        let mut acc = vec![0f32; 3 * n];
        for (k, fp) in &self.footprints {
            let c = &p.components[*k];
            if c.pi > 0.0 {
                let col = c.colour.map(|v| (v + 1.0) / 2.0);
                for (i, f) in fp.iter(self.size) {
                    let w = c.pi * f;
                    for ch in 0..3 {
                        acc[ch * n + i] += w * col[ch];
                    }
                }
            }
        }
        let scale = p.strength / g_max;
        let mut image = normal.clone();
        let data = image.data_mut();
        for ch in 0..3 {
            for i in 0..n {
                let v = &mut data[ch * n + i];
                *v += scale * (acc[ch * n + i] - g[i] * *v);
            }
        }
        GmmRender {
            image,
            alpha: g.iter().map(|&v| scale * v).collect(),
        }
    }

    fn clean(&self, normal: &Image, p: &GmmParams, tau: f32) -> Cleaned {
        let n = self.size * self.size;
        let (_, g_max) = self.mixture(p, |_| true);
        let all: Vec<usize> = p.active().collect();
        if !(p.strength > 0.0 && g_max > 0.0) {
            return Cleaned {
                params: GmmParams::none(),
                dropped: all,
            };
        }
        let scale = p.strength / g_max;
        let px = normal.data();
        let mut keep = vec![false; p.components.len()];
        for (k, fp) in &self.footprints {
            let c = &p.components[*k];
            let a = scale * c.pi;
            let effect = fp
                .iter(self.size)
                .map(|(i, f)| {
                    let diff = (0..3)
                        .map(|ch| (c.colour[ch] - (2.0 * px[ch * n + i] - 1.0)).abs())
                        .fold(0.0, f32::max);
                    a * f * diff
                })
                .fold(0.0, f32::max);
            keep[*k] = effect > tau;
        }
        let (_, kept_max) = self.mixture(p, |k| keep[k]);
        let mass: f32 = all
            .iter()
            .filter(|&&k| keep[k])
            .map(|&k| p.components[k].pi)
            .sum();
        if !(kept_max > 0.0 && mass > 0.0) {
            return Cleaned {
                params: GmmParams::none(),
                dropped: all,
            };
        }
        let mut out = p.clone();
        let mut dropped = Vec::new();
        for &k in &all {
            if keep[k] {
                // π renormalised onto the simplex (the head's softmax); the survivors' a_k = s'·(π_k/Z)·f_k /
                // (G*'/Z) are unchanged with s' = s·G*'/G*.
                out.components[k].pi /= mass;
            } else {
                out.components[k] = GmmComponent::INACTIVE;
                dropped.push(k);
            }
        }
        out.strength = p.strength * kept_max / g_max;
        Cleaned {
            params: out,
            dropped,
        }
    }
}

/// A rendered pseudo-defect.
#[derive(Debug, Clone, PartialEq)]
pub struct GmmRender {
    /// `I_A`, in `[0, 1]` when the normal image and colours are in range.
    pub image: Image,
    /// Per-pixel opacity `α = Σ_k a_k` in `[0, s]` (row-major): the soft defect mask.
    pub alpha: Vec<f32>,
}

/// Blend the mixture `p` into `normal`: `I_A = I_N + Σ_k a_k (c_k − I_N)`, `a_k = s·π_k f_k / G*`.
pub fn render(normal: &Image, p: &GmmParams) -> GmmRender {
    Field::new(p, normal.size()).render(normal, p)
}

/// A cleaned target.
#[derive(Debug, Clone, PartialEq)]
pub struct Cleaned {
    /// The target: invisible components made inactive, π renormalised over the rest, strength rescaled so that
    /// the remaining components render exactly as before.
    pub params: GmmParams,
    /// Indices of the components removed.
    pub dropped: Vec<usize>,
}

/// Drop components whose largest effect on the image, `max_pixels,channels a_k·|c_k − I_N|` in network units,
/// is at most `tau`. With nothing left the target is "no defect" (`s = 0`).
pub fn clean_target(normal: &Image, p: &GmmParams, tau: f32) -> Cleaned {
    Field::new(p, normal.size()).clean(normal, p, tau)
}

/// Largest absolute channel difference between two images, in network units (twice the `[0, 1]` difference).
pub fn max_difference(a: &Image, b: &Image) -> f32 {
    2.0 * a
        .data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------------------------
// Sampling

/// Which parameter distribution pseudo-defects are drawn from (`kestrel synth gmm --preset`, `kestrel pretrain
/// --defects`, `gmm.preset` in TOML; the ranges are in docs/pretraining.md, "Samplers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GmmPreset {
    /// Small, faint, local defects (1-6 components; spots, stains, scratches).
    #[default]
    Subtle,
    /// Larger and stronger defects (1-12 components).
    Medium,
    /// The published reference sampler: 30 large smooth components, often filling the image.
    Reference,
}

/// Draw mixture parameters from `preset`; subtle colours are chosen relative to `normal` (in `[0, 1]`).
pub fn sample_params(preset: GmmPreset, normal: &Image, rng: &mut impl Rng) -> GmmParams {
    match preset {
        GmmPreset::Reference => sample_reference(rng),
        GmmPreset::Subtle | GmmPreset::Medium => {
            sample_local(preset == GmmPreset::Subtle, normal, rng)
        }
    }
}

fn sample_reference(rng: &mut impl Rng) -> GmmParams {
    let softplus = |z: f64| if z > 20.0 { z } else { z.exp().ln_1p() };
    let logits: Vec<f64> = (0..GMM_COMPONENTS).map(|_| normal(rng)).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    let components = logits
        .iter()
        .map(|l| {
            let colour = [0; GMM_CHANNELS].map(|_| uniform(rng, -1.0, 1.0) as f32);
            let mu = [0; 2].map(|_| uniform(rng, -1.0, 1.0) as f32);
            let sigma = [0; 2].map(|_| (softplus(normal(rng)) + f64::from(SIGMA_MIN)) as f32);
            GmmComponent {
                mu,
                sigma,
                rho: (0.99 * uniform(rng, -1.0, 1.0)) as f32,
                pi: ((l - max).exp() / total) as f32,
                colour,
            }
        })
        .collect();
    GmmParams {
        components,
        strength: rng.gen::<f32>(),
    }
}

fn sample_local(subtle: bool, img: &Image, rng: &mut impl Rng) -> GmmParams {
    let no_defect = if subtle { 0.1 } else { 0.05 };
    if rng.gen_bool(no_defect) {
        return GmmParams::none();
    }
    let k_act = rng.gen_range(1..=if subtle { 6 } else { 12 });
    let reach = if subtle { 0.85 } else { 0.9 };
    let centre = [0; 2].map(|_| uniform(rng, -reach, reach));
    let spread = if subtle {
        log_uniform(rng, 0.02, 0.15)
    } else {
        log_uniform(rng, 0.05, 0.3)
    };
    let base_sigma = if subtle {
        log_uniform(rng, 0.01, 0.08)
    } else {
        log_uniform(rng, 0.02, 0.2)
    };
    let weights: Vec<f64> = (0..k_act).map(|_| exponential(rng)).collect();
    let total: f64 = weights.iter().sum();
    let mut components = vec![GmmComponent::INACTIVE; GMM_COMPONENTS];
    for (slot, w) in components.iter_mut().zip(&weights) {
        let mu = centre.map(|m| (m + spread * normal(rng)).clamp(-1.0, 1.0) as f32);
        let elongation = if !subtle {
            log_uniform(rng, 1.0, 6.0)
        } else if rng.gen_bool(0.3) {
            log_uniform(rng, 3.0, 15.0) // a scratch
        } else {
            log_uniform(rng, 1.0, 2.0)
        };
        let (mut sx, mut sy) = (
            base_sigma * elongation.sqrt(),
            base_sigma / elongation.sqrt(),
        );
        if rng.gen_bool(0.5) {
            std::mem::swap(&mut sx, &mut sy);
        }
        let sigma = [sx, sy].map(|s| ((s * (0.2 * normal(rng)).exp()) as f32).max(SIGMA_MIN));
        let rho_max = if subtle { 0.9 } else { 0.95 };
        let rho = uniform(rng, -rho_max, rho_max) as f32;
        let mut c = GmmComponent {
            mu,
            sigma,
            rho,
            pi: (w / total) as f32,
            colour: [0.0; GMM_CHANNELS],
        };
        c.colour = if subtle {
            subtle_colour(&c, img, rng)
        } else {
            [0; GMM_CHANNELS].map(|_| uniform(rng, -1.0, 1.0) as f32)
        };
        *slot = c;
    }
    let strength = if subtle {
        uniform(rng, 0.15, 0.6)
    } else {
        uniform(rng, 0.3, 1.0)
    } as f32;
    GmmParams {
        components,
        strength,
    }
}

/// A subtle defect's colour, near the surface it sits on: the mean of the image under the component, moved by
/// `δ ~ U(0.15, 0.8)` along a random direction (half the time along gray: a darker or lighter spot).
fn subtle_colour(c: &GmmComponent, img: &Image, rng: &mut impl Rng) -> [f32; GMM_CHANNELS] {
    let base = mean_under(c, img, img.size());
    let delta = uniform(rng, 0.15, 0.8) as f32;
    let dir = if rng.gen_bool(0.5) {
        let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
        [sign / 3f32.sqrt(); 3]
    } else {
        random_unit3(rng)
    };
    [0, 1, 2].map(|ch| (base[ch] + delta * dir[ch]).clamp(-1.0, 1.0))
}

/// Mean colour of `img` (network units) weighted by the component's footprint; the global mean if the
/// component lies off the grid.
fn mean_under(c: &GmmComponent, img: &Image, size: usize) -> [f32; 3] {
    let n = size * size;
    let px = img.data();
    let mut sum = [0f64; 3];
    let mut weight = 0f64;
    if let Some(fp) = Footprint::new(c, size) {
        for (i, f) in fp.iter(size) {
            for (ch, s) in sum.iter_mut().enumerate() {
                *s += f64::from(f * px[ch * n + i]);
            }
            weight += f64::from(f);
        }
    }
    if weight < 1e-6 {
        sum = [0.0; 3];
        for (ch, s) in sum.iter_mut().enumerate() {
            *s = px[ch * n..(ch + 1) * n].iter().map(|&v| f64::from(v)).sum();
        }
        weight = n as f64;
    }
    sum.map(|s| (2.0 * s / weight - 1.0) as f32)
}

fn random_unit3(rng: &mut impl Rng) -> [f32; 3] {
    loop {
        let v = [0; 3].map(|_| normal(rng));
        let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if len > 1e-6 {
            return v.map(|x| (x / len) as f32);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Generator

/// How pseudo-defect samples are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmConfig {
    /// Image side in pixels.
    pub size: usize,
    /// Parameter distribution.
    pub preset: GmmPreset,
    /// Components whose largest effect is at most this (network units) leave the target.
    pub tau: f32,
    /// Subtle and medium defects whose largest pixel change is below this (network units) are redrawn.
    pub visibility: f32,
    /// Draws before an invisible defect is accepted (cleaning then turns it into "no defect").
    pub max_tries: usize,
}

impl GmmConfig {
    /// Defaults at `size` pixels: subtle preset, τ = 0.02, visibility 0.04 (≈ 5/255), 16 tries.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            preset: GmmPreset::Subtle,
            tau: 0.02,
            visibility: 0.04,
            max_tries: 16,
        }
    }

    /// Check the ranges.
    pub fn validate(&self) -> Result<(), SynthError> {
        check_size(self.size)?;
        if !(0.0..2.0).contains(&self.tau) {
            return Err(invalid(
                "tau",
                format!("must be in [0, 2), got {}", self.tau),
            ));
        }
        if !(0.0..2.0).contains(&self.visibility) {
            return Err(invalid(
                "visibility",
                format!("must be in [0, 2), got {}", self.visibility),
            ));
        }
        if self.max_tries == 0 {
            return Err(invalid("max_tries", "need at least one try"));
        }
        Ok(())
    }
}

/// How a sample was made, beyond its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmInfo {
    /// Where the normal image came from.
    pub normal: NormalOrigin,
    /// The preset.
    pub preset: GmmPreset,
    /// Draws until the defect was visible.
    pub tries: usize,
    /// Components removed from the target as invisible.
    pub dropped: Vec<usize>,
    /// Strength before cleaning.
    pub raw_strength: f32,
    /// Largest pixel change, network units.
    pub max_difference: f32,
}

/// One pseudo-defect sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GmmSample {
    /// `I_N`, needed again by the re-render loss.
    pub normal: Image,
    /// `I_A`, the network input.
    pub image: Image,
    /// Soft defect mask α in `[0, s]`, row-major.
    pub alpha: Vec<f32>,
    /// The cleaned regression target (renders `image` from `normal`).
    pub target: GmmParams,
    /// Provenance.
    pub info: GmmInfo,
}

/// Pseudo-defect samples on normal images.
#[derive(Debug, Clone)]
pub struct GmmGenerator {
    cfg: GmmConfig,
    seed: u64,
    normals: NormalSource,
}

impl GmmGenerator {
    /// Samples from `seed` on images from `normals`.
    pub fn new(cfg: GmmConfig, normals: NormalSource, seed: u64) -> Result<Self, SynthError> {
        cfg.validate()?;
        Ok(Self { cfg, seed, normals })
    }

    /// The configuration.
    pub fn config(&self) -> &GmmConfig {
        &self.cfg
    }

    /// Sample `index`: a normal image, a mixture (redrawn until visible), its cleaned target, and the image
    /// rendered from that target.
    pub fn sample(&self, index: u64) -> GmmSample {
        let cfg = &self.cfg;
        let mut rng = stream(self.seed, role::GMM, index);
        let (normal, origin) = self.normals.sample(cfg.size, &mut rng);
        let check = cfg.preset != GmmPreset::Reference;
        let mut tries = 0;
        let (raw, field) = loop {
            tries += 1;
            let p = sample_params(cfg.preset, &normal, &mut rng);
            let field = Field::new(&p, cfg.size);
            if !check || p.strength == 0.0 || tries >= cfg.max_tries {
                break (p, field);
            }
            let r = field.render(&normal, &p);
            if max_difference(&r.image, &normal) >= cfg.visibility {
                break (p, field);
            }
        };
        let cleaned = field.clean(&normal, &raw, cfg.tau);
        let r = field.render(&normal, &cleaned.params);
        GmmSample {
            info: GmmInfo {
                normal: origin,
                preset: cfg.preset,
                tries,
                dropped: cleaned.dropped,
                raw_strength: raw.strength,
                max_difference: max_difference(&r.image, &normal),
            },
            normal,
            image: r.image,
            alpha: r.alpha,
            target: cleaned.params,
        }
    }

    /// Samples `indices`, rendered in parallel, in order.
    pub fn batch(&self, indices: Range<u64>) -> Vec<GmmSample> {
        indices.into_par_iter().map(|i| self.sample(i)).collect()
    }

    /// Samples at arbitrary `indices`, rendered in parallel, in order.
    pub fn batch_of(&self, indices: &[u64]) -> Vec<GmmSample> {
        indices.par_iter().map(|&i| self.sample(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat_image(size: usize, v: f32) -> Image {
        let mut img = Image::new(size);
        img.data_mut().fill(v);
        img
    }

    #[test]
    fn head_layout_has_271_values_in_documented_order() {
        assert_eq!(GMM_PARAMS, 271);
        let mut p = GmmParams::none();
        p.components[2] = GmmComponent {
            mu: [0.1, 0.2],
            sigma: [0.3, 0.4],
            rho: 0.5,
            pi: 0.6,
            colour: [0.7, 0.8, 0.9],
        };
        p.strength = 0.25;
        let v = p.to_flat();
        assert_eq!(v.len(), 271);
        assert_eq!(
            [v[2], v[32], v[62], v[92], v[122], v[152], v[186], v[187], v[188], v[270]],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.25]
        );
        assert_eq!(GmmParams::from_flat(&v).unwrap(), p);
        assert!(matches!(
            GmmParams::from_flat(&v[..270]),
            Err(SynthError::FlatLength { got: 270, .. })
        ));
    }

    #[test]
    fn zero_strength_leaves_the_image_unchanged() {
        let normal = flat_image(32, 0.3);
        let mut p = sample_reference(&mut stream(1, 0, 0));
        p.strength = 0.0;
        let r = render(&normal, &p);
        assert_eq!(r.image, normal);
        assert!(r.alpha.iter().all(|&a| a == 0.0));
    }

    #[test]
    fn peak_opacity_equals_strength() {
        let normal = flat_image(48, 0.5);
        for i in 0..20 {
            let mut rng = stream(2, 0, i);
            let p = if i % 2 == 0 {
                sample_reference(&mut rng)
            } else {
                sample_local(true, &normal, &mut rng)
            };
            let r = render(&normal, &p);
            let max = r.alpha.iter().copied().fold(0.0, f32::max);
            if p.active().count() > 0 {
                assert!(
                    (max - p.strength).abs() < 1e-6,
                    "max α {max} vs s {}",
                    p.strength
                );
            }
            assert!(r
                .alpha
                .iter()
                .all(|&a| (0.0..=p.strength + 1e-6).contains(&a)));
        }
    }

    #[test]
    fn a_single_component_blends_towards_its_colour() {
        let normal = flat_image(33, 0.5);
        let mut p = GmmParams::none();
        p.components[0] = GmmComponent {
            mu: [0.0, 0.0],
            sigma: [0.2, 0.1],
            rho: 0.0,
            pi: 1.0,
            colour: [1.0, -1.0, 0.0],
        };
        p.strength = 0.5;
        let r = render(&normal, &p);
        // The centre pixel (16, 16) sits at (0, 0): α = s there, so I = 0.5·0.5 + 0.5·(1, 0, 0.5).
        let centre = r.image.pixel(16 * 33 + 16);
        let want = [0.75, 0.25, 0.5];
        assert!(
            centre.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{centre:?}"
        );
        // Far corner: untouched.
        assert_eq!(r.image.pixel(0), [0.5; 3]);
    }

    #[test]
    fn cleaning_keeps_the_survivors_rendering() {
        let normal = flat_image(48, 0.4);
        for i in 0..20 {
            let mut rng = stream(3, 0, i);
            let p = sample_local(i % 2 == 0, &normal, &mut rng);
            let before = render(&normal, &p);
            // τ = 0 removes only components without effect: the picture must not change at all.
            let c0 = clean_target(&normal, &p, 0.0);
            let after = render(&normal, &c0.params);
            for (a, b) in before.image.data().iter().zip(after.image.data()) {
                assert!((a - b).abs() < 1e-5);
            }
            let mass: f32 = c0.params.components.iter().map(|c| c.pi).sum();
            assert!(c0.params.strength == 0.0 || (mass - 1.0).abs() < 1e-5);
            // A high τ drops components; what remains renders as it did, so the change is bounded by what was
            // dropped.
            let c = clean_target(&normal, &p, 0.3);
            let after = render(&normal, &c.params);
            let bound = 0.3 / 2.0 * c.dropped.len() as f32 + 1e-5;
            let diff = max_difference(&before.image, &after.image) / 2.0;
            assert!(
                diff <= bound,
                "diff {diff} > bound {bound} ({:?})",
                c.dropped
            );
            assert!(c.params.strength <= p.strength + 1e-6);
        }
    }

    #[test]
    fn subtle_samples_are_small_visible_and_cleaned() {
        let g = GmmGenerator::new(GmmConfig::new(64), NormalSource::Textures, 5).unwrap();
        let samples = g.batch(0..24);
        let mut defects = 0;
        for (i, s) in samples.iter().enumerate() {
            let active: Vec<usize> = s.target.active().collect();
            assert!(active.len() <= 6);
            if s.target.strength > 0.0 {
                defects += 1;
                assert!(s.info.max_difference >= 0.02, "#{i}: invisible defect kept");
                let area = s
                    .alpha
                    .iter()
                    .filter(|&&a| a > 0.1 * s.target.strength)
                    .count();
                assert!(area < 64 * 64 / 2, "#{i}: defect covers {area} px");
            } else {
                assert!(active.is_empty());
                assert_eq!(s.image, s.normal);
            }
            for c in &s.target.components {
                assert!(c.sigma.iter().all(|&v| v >= SIGMA_MIN));
            }
            // The target renders the image.
            let again = render(&s.normal, &s.target);
            assert!(max_difference(&again.image, &s.image) < 1e-5);
        }
        assert!(defects >= 16, "only {defects} of 24 samples have a defect");
        assert_eq!(samples[3], g.sample(3));
    }
}
