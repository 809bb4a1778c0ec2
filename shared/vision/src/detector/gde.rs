//! GDE: Gaussian density estimation on pooled embeddings, the detector CutPaste and DS2 evaluate their features
//! with (docs/detectors.md, "GDE").
//!
//! * **Image score.** The whole input goes through the backbone to its last stage; the map is averaged over space
//!   (global average pooling) and L2-normalised. A Gaussian (mean, Ledoit–Wolf shrunk covariance) is fitted to the
//!   good images' embeddings; an image scores its Mahalanobis distance.
//! * **Map.** Square windows (`window` px at `stride`, DS2's patch protocol: 32 / 4 in the paper) are cut from the
//!   input and each goes through the backbone on its own, then the same pooling and normalisation. One Gaussian for
//!   all window positions (textures, the default) or one per position (`per_position`, aligned objects). A window
//!   scores its Mahalanobis distance; [`Upsample::GaussianSplat`] spreads the window scores back over the pixels.
//!   With [`GdeImageScore::MapMax`] the image score is the map's maximum instead of the image model's distance.
//!
//! Windows cost one backbone pass each: at 256 px, 32 / 16 gives 15 × 15 = 225 windows per image, 32 / 4 gives
//! 3249 (the paper's protocol, a GPU's job). DS2 also projects the embeddings with PCA before fitting; we do not:
//! the shrinkage keeps the covariance well conditioned at these dimensions, and the Mahalanobis distance is
//! invariant to the rotation PCA applies (the truncation is what it would change).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    Detector, DetectorConfig, DetectorError, DetectorFit, DetectorKind, DetectorSpec, Features,
    PatchScore,
};
use crate::map::ScoreMap;
use crate::postprocess::Upsample;
use crate::stats::{LedoitWolfFit, StatsError};

/// The backbone stage GDE pools (1-based): the last, as DS2 and CutPaste use.
pub const GDE_STAGES: [usize; 1] = [4];

/// GDE settings (stored in model.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GdeConfig {
    /// Window side in pixels of the model input (DS2: 32).
    pub window: usize,
    /// Window stride in pixels (DS2: 4; 16 keeps CPU scoring in the tens of milliseconds).
    pub stride: usize,
    /// One Gaussian per window position (aligned objects) instead of one for all positions (textures).
    pub per_position: bool,
    /// Where the image score comes from.
    #[serde(default)]
    pub image_score: GdeImageScore,
}

/// GDE's image score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GdeImageScore {
    /// Mahalanobis distance of the whole image's embedding (CutPaste's image-level rule): sees global changes,
    /// dilutes a defect that covers a few percent of the image.
    #[default]
    Embedding,
    /// The heatmap's maximum, like PaDiM: as sensitive to a small defect as the windows are.
    MapMax,
}

impl Default for GdeConfig {
    fn default() -> Self {
        Self {
            window: 32,
            stride: 16,
            per_position: false,
            image_score: GdeImageScore::Embedding,
        }
    }
}

impl GdeConfig {
    /// Windows per side for an input of `size` px: `(size − window) / stride + 1`, refused unless the windows
    /// tile the input exactly (so the map covers every pixel).
    pub fn grid(&self, size: usize) -> Result<usize, DetectorError> {
        if self.window == 0 || self.stride == 0 || self.window > size {
            return Err(DetectorError::Config(format!(
                "GDE windows of {} px at stride {} do not fit a {size} px input; use 0 < window ≤ {size}, stride ≥ 1",
                self.window, self.stride
            )));
        }
        if !(size - self.window).is_multiple_of(self.stride) {
            let n = (size - self.window) / self.stride;
            return Err(DetectorError::Config(format!(
                "GDE windows of {} px at stride {} do not tile a {size} px input (they cover {} px); choose a stride \
                 that divides {}, or an image size of {} or {}",
                self.window,
                self.stride,
                n * self.stride + self.window,
                size - self.window,
                n * self.stride + self.window,
                (n + 1) * self.stride + self.window
            )));
        }
        Ok((size - self.window) / self.stride + 1)
    }

    /// What GDE reads from the backbone.
    pub fn features(&self) -> Features {
        Features::PooledWindows {
            stage: GDE_STAGES[0],
            window: self.window,
            stride: self.stride,
        }
    }
}

/// A fitted Gaussian in the form scoring uses: means `(Q, d)` and whitening factors `(Q, d, d)` (`L⁻¹` with
/// `Σ̂ = L Lᵀ`) for Q models.
#[derive(Debug, Clone)]
struct Gaussians {
    mean: Tensor,
    whiten: Tensor,
    /// `Wᵀ` per model, prepared once for scoring.
    whiten_t: Tensor,
}

impl Gaussians {
    fn new(mean: Tensor, whiten: Tensor) -> candle_core::Result<Self> {
        let whiten_t = whiten.transpose(1, 2)?.contiguous()?;
        Ok(Self {
            mean,
            whiten,
            whiten_t,
        })
    }

    fn from_fits(fits: &[LedoitWolfFit]) -> Result<Self, DetectorError> {
        let fitted: Vec<(Vec<f32>, Vec<f32>)> = fits
            .par_iter()
            .enumerate()
            .map(|(q, f)| {
                let g = f.finish().map_err(|e| match e {
                    StatsError::TooFewSamples(n) => DetectorError::NotEnoughImages {
                        needed: 2,
                        got: n as usize,
                    },
                    e => DetectorError::Numerical(e.to_string()),
                })?;
                let w = g.whitening().ok_or_else(|| {
                    DetectorError::Numerical(format!(
                        "the embeddings of GDE model {q} are constant (covariance not positive definite); \
                         the backbone's features carry no information on these images"
                    ))
                })?;
                Ok((g.mean.iter().map(|&v| v as f32).collect(), w))
            })
            .collect::<Result<_, DetectorError>>()?;
        let (q, d) = (fitted.len(), fits[0].dim());
        let mut mean = Vec::with_capacity(q * d);
        let mut whiten = Vec::with_capacity(q * d * d);
        for (m, w) in fitted {
            mean.extend(m);
            whiten.extend(w);
        }
        Ok(Self::new(
            Tensor::from_vec(mean, (q, d), &Device::Cpu)?,
            Tensor::from_vec(whiten, (q, d, d), &Device::Cpu)?,
        )?)
    }

    /// Mahalanobis distances of `x` (Q, M, d) under model q for row block q: (Q, M).
    fn distances(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dev = x.device();
        let delta = x.broadcast_sub(&self.mean.to_device(dev)?.unsqueeze(1)?)?;
        let z = delta.matmul(&self.whiten_t.to_device(dev)?)?;
        z.sqr()?.sum(2)?.relu()?.sqrt()
    }

    fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.mean.dims2()
    }
}

/// A fitted GDE detector.
#[derive(Debug, Clone)]
pub struct Gde {
    config: GdeConfig,
    /// Windows per side.
    grid: usize,
    images: usize,
    image: Gaussians,
    windows: Gaussians,
}

impl Gde {
    /// Rebuild from persisted tensors (`image_mean`, `image_whiten`, `window_mean`, `window_whiten`).
    pub fn from_tensors(
        config: GdeConfig,
        grid: (usize, usize),
        images: usize,
        get: &dyn Fn(&str) -> candle_core::Result<Tensor>,
    ) -> Result<Self, DetectorError> {
        let load = |name: &str| -> candle_core::Result<Gaussians> {
            Gaussians::new(
                get(&format!("{name}_mean"))?.to_dtype(DType::F32)?,
                get(&format!("{name}_whiten"))?.to_dtype(DType::F32)?,
            )
        };
        let (image, windows) = (load("image")?, load("window")?);
        let (qi, d) = image.dims()?;
        let (qw, dw) = windows.dims()?;
        let positions = grid.0 * grid.1;
        let expected_q = if config.per_position { positions } else { 1 };
        if grid.0 != grid.1
            || qi != 1
            || qw != expected_q
            || dw != d
            || image.whiten.dims() != [1, d, d]
            || windows.whiten.dims() != [qw, d, d]
        {
            return Err(DetectorError::Config(format!(
                "inconsistent GDE state: grid {grid:?}, image mean {:?} / whiten {:?}, window mean {:?} / whiten {:?}",
                image.mean.dims(),
                image.whiten.dims(),
                windows.mean.dims(),
                windows.whiten.dims()
            )));
        }
        Ok(Self {
            config,
            grid: grid.0,
            images,
            image,
            windows,
        })
    }

    /// Embedding width (channels of the pooled stage).
    pub fn dim(&self) -> usize {
        self.image.mean.dims()[1]
    }
}

impl Detector for Gde {
    fn kind(&self) -> DetectorKind {
        DetectorKind::Gde
    }

    fn features(&self) -> Features {
        self.config.features()
    }

    fn upsample(&self) -> Upsample {
        Upsample::GaussianSplat {
            kernel: self.config.window,
            stride: self.config.stride,
        }
    }

    /// `features` = [image embeddings (N, d), window embeddings (N, P, d)] from [`Features::extract`].
    fn score(&self, features: &[Tensor]) -> Result<Vec<PatchScore>, DetectorError> {
        let (img, win) = split_features(features)?;
        let (n, p, d) = win.dims3()?;
        if p != self.grid * self.grid || d != self.dim() {
            return Err(DetectorError::Config(format!(
                "GDE got {p} windows of {d} features, fitted on {} of {} (different image size or backbone?)",
                self.grid * self.grid,
                self.dim()
            )));
        }
        let image_scores: Vec<f32> = self
            .image
            .distances(&img.unsqueeze(0)?)?
            .flatten_all()?
            .to_vec1()?;
        let window_scores: Vec<f32> = if self.config.per_position {
            // (P, N, d) against P models → (P, N) → image-major.
            let x = win.transpose(0, 1)?.contiguous()?;
            self.windows.distances(&x)?.t()?.flatten_all()?.to_vec1()?
        } else {
            self.windows
                .distances(&win.reshape((1, n * p, d))?)?
                .flatten_all()?
                .to_vec1()?
        };
        window_scores
            .chunks_exact(p)
            .zip(image_scores)
            .map(|(w, s)| {
                Ok(PatchScore {
                    map: ScoreMap::new(self.grid, self.grid, w.to_vec())?,
                    image_score: match self.config.image_score {
                        GdeImageScore::Embedding => Some(s),
                        GdeImageScore::MapMax => None,
                    },
                })
            })
            .collect()
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>, DetectorError> {
        Ok(vec![
            ("image_mean".into(), self.image.mean.clone()),
            ("image_whiten".into(), self.image.whiten.clone()),
            ("window_mean".into(), self.windows.mean.clone()),
            ("window_whiten".into(), self.windows.whiten.clone()),
        ])
    }

    fn spec(&self) -> DetectorSpec {
        DetectorSpec {
            config: DetectorConfig::Gde(self.config.clone()),
            grid: (self.grid, self.grid),
            train_images: self.images,
        }
    }
}

fn split_features(features: &[Tensor]) -> Result<(&Tensor, &Tensor), DetectorError> {
    match features {
        [img, win] if img.rank() == 2 && win.rank() == 3 && img.dims()[0] == win.dims()[0] => {
            Ok((img, win))
        }
        _ => Err(DetectorError::Config(format!(
            "GDE needs [image embeddings (N, d), window embeddings (N, P, d)], got shapes {:?}",
            features
                .iter()
                .map(|t| t.dims().to_vec())
                .collect::<Vec<_>>()
        ))),
    }
}

/// Streaming GDE fit: Ledoit–Wolf sums for the image model and the window model(s).
pub struct GdeFit {
    config: GdeConfig,
    grid: usize,
    dim: usize,
    images: usize,
    image: LedoitWolfFit,
    windows: Vec<LedoitWolfFit>,
}

impl GdeFit {
    /// Start fitting on `dim`-wide embeddings of a `size` px input.
    pub fn new(config: GdeConfig, dim: usize, size: usize) -> Result<Self, DetectorError> {
        let grid = config.grid(size)?;
        let q = if config.per_position { grid * grid } else { 1 };
        let lw = || LedoitWolfFit::new(dim).map_err(|e| DetectorError::Config(e.to_string()));
        Ok(Self {
            grid,
            dim,
            images: 0,
            image: lw()?,
            windows: (0..q).map(|_| lw()).collect::<Result<_, _>>()?,
            config,
        })
    }
}

fn stats_error(e: StatsError) -> DetectorError {
    DetectorError::Numerical(format!("GDE embeddings: {e}"))
}

impl DetectorFit for GdeFit {
    fn add(&mut self, features: &[Tensor]) -> Result<(), DetectorError> {
        let (img, win) = split_features(features)?;
        let (n, p, d) = win.dims3()?;
        if p != self.grid * self.grid || d != self.dim {
            return Err(DetectorError::Config(format!(
                "GDE expected {} windows of {} features, got {p} of {d}",
                self.grid * self.grid,
                self.dim
            )));
        }
        let img: Vec<f32> = img.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let win: Vec<f32> = win.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        self.image.add(&img).map_err(stats_error)?;
        if self.config.per_position {
            self.windows
                .par_iter_mut()
                .enumerate()
                .try_for_each(|(q, fit)| {
                    let rows: Vec<f32> = (0..n)
                        .flat_map(|i| &win[(i * p + q) * d..(i * p + q + 1) * d])
                        .copied()
                        .collect();
                    fit.add(&rows)
                })
                .map_err(stats_error)?;
        } else {
            self.windows[0].add(&win).map_err(stats_error)?;
        }
        self.images += n;
        Ok(())
    }

    fn finish(
        self: Box<Self>,
        _progress: &dyn Fn(usize, usize),
    ) -> Result<Arc<dyn Detector>, DetectorError> {
        if self.images < 2 {
            return Err(DetectorError::NotEnoughImages {
                needed: 2,
                got: self.images,
            });
        }
        Ok(Arc::new(Gde {
            grid: self.grid,
            images: self.images,
            image: Gaussians::from_fits(std::slice::from_ref(&self.image))?,
            windows: Gaussians::from_fits(&self.windows)?,
            config: self.config,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_must_tile_the_input() {
        let c = GdeConfig::default();
        assert_eq!(c.grid(256).unwrap(), 15);
        assert_eq!(c.grid(32).unwrap(), 1);
        let e = GdeConfig {
            stride: 5,
            ..c.clone()
        }
        .grid(256)
        .unwrap_err()
        .to_string();
        assert!(e.contains("do not tile") && e.contains("252"), "{e}");
        assert!(GdeConfig { window: 300, ..c }.grid(256).is_err());
    }

    /// Embeddings drawn around a known centre: the fitted model scores a far point higher than a near one, for
    /// the image model and both window layouts, and the windows map comes back in grid order.
    #[test]
    fn fit_and_score_separate_outliers() {
        let dev = Device::Cpu;
        for per_position in [false, true] {
            let config = GdeConfig {
                window: 4,
                stride: 2,
                per_position,
                ..GdeConfig::default()
            };
            let (size, d) = (8, 6);
            let grid = config.grid(size).unwrap();
            let p = grid * grid;
            let mut fit = GdeFit::new(config.clone(), d, size).unwrap();
            for _ in 0..4 {
                let img = Tensor::randn(0f32, 1.0, (8, d), &dev).unwrap();
                let win = Tensor::randn(0f32, 1.0, (8, p, d), &dev).unwrap();
                fit.add(&[img, win]).unwrap();
            }
            let det = Box::new(fit).finish(&|_, _| {}).unwrap();
            let mut near = vec![0f32; p * d];
            near[(p - 1) * d] = 8.0; // the last window is an outlier
            let img = Tensor::new(&[[0f32; 6], [9.0, 0.0, 0.0, 0.0, 0.0, 0.0]], &dev).unwrap();
            let win = Tensor::from_vec([near.clone(), near].concat(), (2, p, d), &dev).unwrap();
            let s = det.score(&[img, win]).unwrap();
            assert!(s[1].image_score.unwrap() > 3.0 * s[0].image_score.unwrap());
            let m = s[0].map.data();
            assert_eq!((s[0].map.width(), s[0].map.height()), (grid, grid));
            assert!(m[p - 1] > 3.0 * m[0], "{per_position}: {m:?}");
            assert_eq!(
                det.upsample(),
                Upsample::GaussianSplat {
                    kernel: 4,
                    stride: 2
                }
            );
        }
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        let dev = Device::Cpu;
        let mut fit = GdeFit::new(GdeConfig::default(), 4, 64).unwrap();
        let img = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let win = Tensor::zeros((2, 5, 4), DType::F32, &dev).unwrap();
        assert!(fit.add(&[img.clone(), win]).is_err());
        assert!(fit.add(&[img]).is_err());
        let one = Box::new(GdeFit::new(GdeConfig::default(), 4, 64).unwrap());
        assert!(matches!(
            one.finish(&|_, _| {}),
            Err(DetectorError::NotEnoughImages { needed: 2, got: 0 })
        ));
    }
}
