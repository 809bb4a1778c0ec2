//! Synthetic pretraining images: formula-driven fractals and GMM pseudo-defects.
//!
//! kestrel ships no pretrained weights, and ImageNet weights come with licence and download strings attached. A
//! backbone pretrained on images drawn from formulas needs neither, and the detectors downstream (PaDiM,
//! PatchCore) only need its frozen features to be "generally visual". This module makes those images; the
//! training engine consumes them, and `kestrel synth` writes samples to disk so a person can look at them.
//!
//! # Map of the module
//!
//! - [`ifs`]: iterated function systems: sampling contractive codes (SVD method with the σ-factor constraint),
//!   parameter jitter, and the chaos game.
//! - [`render`]: rasterising chaos-game points (graded or binary, 3×3 patch stamp), render-window jitter,
//!   dihedral flips, blur and resizing.
//! - [`colour`]: HSV colouring of fractals and of the background plasma, and compositing.
//! - [`texture`]: diamond-square plasma, and the "normal" images the GMM defects are blended into.
//! - [`fractal`]: the single-class fractal generator (class = one IFS code) and the multi-instance composer
//!   (1–5 fractals pasted, multi-label targets).
//! - [`gmm`]: the Gaussian-mixture pseudo-defect renderer, its samplers and target cleaning.
//! - [`cutpaste`]: CutPaste's rectangle and scar pseudo-anomalies cut from good images.
//! - [`scratch`]: procedural scratches planted into good images (the defects the recipe chooser scores with).
//! - [`views`]: two augmented views of a good image with their crop boxes, for dense contrastive pretraining.
//!
//! # Conventions
//!
//! Images are [`Image`]: square, three channel planes (CHW, the layout a tensor wants), values in `[0, 1]`.
//! Networks see them normalised later (mean 0.5, std 0.5 gives the `[−1, 1]` units in which the GMM colours and
//! thresholds are specified).
//!
//! # Determinism and speed
//!
//! Sample `i` of a generator depends only on `(seed, role, i)`: every sample draws from its own ChaCha8 stream,
//! so batches render in parallel on all cores (rayon) and are still identical across runs and thread counts.
//! A 128 px fractal costs about a millisecond of one core, far below a training step, so nothing is cached or
//! stored: training renders on the fly.
//!
//! The formulas and parameter ranges the generators implement are written down in docs/pretraining.md.

pub mod colour;
pub mod cutpaste;
pub mod fractal;
pub mod gmm;
pub mod ifs;
pub mod render;
pub mod scratch;
pub mod texture;
pub mod views;

use std::path::PathBuf;

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The synthetic image families, each the data of one pretraining task: what `kestrel synth` writes and what
/// `kestrel pretrain` trains on (`fractal`, `multi-fractal`, `gmm` on the command line and in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One colourised fractal per image on a plasma background; task: which of `classes` IFS codes drew it
    /// (cross-entropy).
    Fractal,
    /// 1-5 fractals of random classes pasted on one background; task: which codes drew them (multi-label BCE with
    /// positive weight).
    MultiFractal,
    /// A Gaussian-mixture pseudo-defect blended into a normal image; task: regress the mixture (direct + re-render
    /// losses).
    Gmm,
    /// A crop of a good image and two versions with a patch of it pasted elsewhere (a rectangle, a thin rotated
    /// scar); task: which of the three (CutPaste 3-way, cross-entropy).
    Cutpaste,
    /// Two augmented views of a good image; task: matching positions of the views agree (DS2 dense contrastive
    /// learning with a momentum network).
    Ds2,
    /// Several of the tasks above on one backbone, each with its own head, the losses weighted and summed.
    MultiTask,
}

impl TaskKind {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Fractal => "fractal",
            TaskKind::MultiFractal => "multi-fractal",
            TaskKind::Gmm => "gmm",
            TaskKind::Cutpaste => "cutpaste",
            TaskKind::Ds2 => "ds2",
            TaskKind::MultiTask => "multi-task",
        }
    }
}

/// Smallest image side the generators accept (the GMM's generated textures need at least this).
pub const MIN_SIZE: usize = 32;
/// Largest image side the generators accept.
pub const MAX_SIZE: usize = 2048;

/// Errors from the synthetic generators.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// A generator setting is out of range.
    #[error("invalid synthetic-image setting `{field}`: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A folder of normal images holds no image files.
    #[error("{}: no images found (looked for extensions {})", dir.display(), kestrel_vision::dataset::IMAGE_EXTENSIONS.join(", "))]
    NoImages {
        /// The folder.
        dir: PathBuf,
    },
    /// A folder could not be listed.
    #[error("cannot read folder {}: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A normal image could not be decoded.
    #[error("cannot load normal image {}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Why (its kind decides the exit code: bad data).
        #[source]
        source: kestrel_vision::dataset::DatasetError,
    },
    /// A flat GMM parameter vector has the wrong length.
    #[error("GMM parameter vector has {got} values, expected {expected}")]
    FlatLength {
        /// The length the head layout needs.
        expected: usize,
        /// The length given.
        got: usize,
    },
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> SynthError {
    SynthError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

pub(crate) fn check_size(size: usize) -> Result<(), SynthError> {
    if (MIN_SIZE..=MAX_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(invalid(
            "size",
            format!("must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}"),
        ))
    }
}

/// A square RGB image: three channel planes (CHW), values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    size: usize,
    data: Vec<f32>,
}

impl Image {
    /// A black `size × size` image.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            data: vec![0.0; 3 * size * size],
        }
    }

    /// Side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Pixels per channel plane.
    pub fn area(&self) -> usize {
        self.size * self.size
    }

    /// The CHW values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The CHW values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The CHW values, owned.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The RGB value of pixel `i` (row-major index).
    #[inline]
    pub fn pixel(&self, i: usize) -> [f32; 3] {
        let n = self.area();
        [self.data[i], self.data[n + i], self.data[2 * n + i]]
    }

    /// Set pixel `i` (row-major index).
    #[inline]
    pub fn set_pixel(&mut self, i: usize, rgb: [f32; 3]) {
        let n = self.area();
        self.data[i] = rgb[0];
        self.data[n + i] = rgb[1];
        self.data[2 * n + i] = rgb[2];
    }

    /// 8-bit RGB, rounded and clamped.
    pub fn to_rgb8(&self) -> RgbImage {
        let n = self.area();
        let mut raw = Vec::with_capacity(3 * n);
        for i in 0..n {
            for v in self.pixel(i) {
                raw.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        RgbImage::from_raw(self.size as u32, self.size as u32, raw)
            .expect("buffer length matches the image size")
    }

    /// From a square 8-bit RGB image.
    ///
    /// # Panics
    /// If the image is not square.
    pub fn from_rgb8(img: &RgbImage) -> Self {
        assert_eq!(img.width(), img.height(), "Image must be square");
        let mut out = Self::new(img.width() as usize);
        for (i, p) in img.pixels().enumerate() {
            out.set_pixel(i, p.0.map(|v| f32::from(v) / 255.0));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Random streams and distributions

/// Roles keep the random streams of different uses of one seed apart.
pub(crate) mod role {
    pub const IFS_CODE: u64 = 1;
    pub const FRACTAL: u64 = 2;
    pub const MULTI: u64 = 3;
    pub const GMM: u64 = 4;
    pub const CUTPASTE: u64 = 5;
    pub const VIEWS: u64 = 6;
    pub const SCRATCH: u64 = 7;
}

/// The random stream of item `index` of `role` under `seed` (kestrel-vision's, so the product textures and these
/// generators share one scheme).
pub(crate) use kestrel_vision::synthetic::stream;

/// Uniform in `[lo, hi)`; returns `lo` for an empty or inverted range instead of panicking, because the IFS
/// sampler's bounds can cross by a rounding error.
#[inline]
pub(crate) fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        lo + (hi - lo) * rng.gen::<f64>()
    } else {
        lo
    }
}

/// Log-uniform in `[lo, hi)`.
pub(crate) fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    uniform(rng, lo.ln(), hi.ln()).exp()
}

/// Standard normal (Box–Muller; one value per call keeps the stream layout simple).
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln stays finite
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Exponential with rate 1 (a Dirichlet(1, …, 1) draw is a normalised vector of these).
pub(crate) fn exponential(rng: &mut impl Rng) -> f64 {
    -(1.0 - rng.gen::<f64>()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trips_through_rgb8() {
        let mut img = Image::new(4);
        for i in 0..16 {
            img.set_pixel(i, [i as f32 / 15.0, 0.5, 1.0 - i as f32 / 15.0]);
        }
        let back = Image::from_rgb8(&img.to_rgb8());
        for (a, b) in img.data().iter().zip(back.data()) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
        }
    }

    #[test]
    fn streams_are_independent_and_reproducible() {
        let a: u64 = stream(1, role::FRACTAL, 0).gen();
        assert_eq!(a, stream(1, role::FRACTAL, 0).gen::<u64>());
        assert_ne!(a, stream(1, role::FRACTAL, 1).gen::<u64>());
        assert_ne!(a, stream(1, role::GMM, 0).gen::<u64>());
        assert_ne!(a, stream(2, role::FRACTAL, 0).gen::<u64>());
    }

    #[test]
    fn uniform_tolerates_crossed_bounds() {
        let mut rng = stream(0, 0, 0);
        assert_eq!(uniform(&mut rng, 1.0, 1.0 - 1e-15), 1.0);
        for _ in 0..100 {
            let v = uniform(&mut rng, 2.0, 3.0);
            assert!((2.0..3.0).contains(&v));
        }
    }
}
