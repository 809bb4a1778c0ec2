//! PaDiM (Defard et al. 2020) as anomalib implements it, with one deliberate difference in how the inverse is stored.
//!
//! * Embedding: stages c1, c2, c3 (configurable: [`PadimConfig::layers`]); the later ones nearest-upsampled to the
//!   first one's grid and concatenated; a fixed random subset of `n_features` channels (`randperm(n)[:d]`, seeded)
//!   is kept.
//! * Fit: per grid position, the mean and the unbiased covariance over the training images, `+ 0.01·I`.
//!   Accumulated in one streaming pass (sums of shifted values and outer products, shifted by the first batch's mean so
//!   f32 sums do not cancel catastrophically), so memory is O(positions·d²) whatever the number of images.
//! * Score: Mahalanobis distance per position, `sqrt(max(0, δᵀ Σ⁻¹ δ))`.
//!
//! Difference from anomalib: we store `W = L⁻¹` (with `Σ = L Lᵀ`, Cholesky) instead of `Σ⁻¹`, and score
//! `‖W δ‖²`, which equals `δᵀ Σ⁻¹ δ` exactly in exact arithmetic. Cholesky + triangular inverse costs about 2/3 of a
//! general inverse and is the numerically stable way to invert an SPD matrix. anomalib's additional `+1e-5·I` before
//! inversion is also applied.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{
    Detector, DetectorConfig, DetectorError, DetectorFit, DetectorKind, DetectorSpec, Features,
    PatchScore,
};
use crate::map::ScoreMap;
use crate::postprocess::Upsample;

/// PaDiM hyper-parameters (stored in model.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PadimConfig {
    /// Number of randomly selected embedding channels (paper: 100 for ResNet-18, 550 for WRN-50).
    pub n_features: usize,
    /// Seed of the channel subset.
    pub seed: u64,
    /// Ridge added to every covariance (anomalib: 0.01).
    pub ridge: f64,
    /// Backbone stages embedded (1-based, increasing; anomalib: 1, 2, 3). The map has the first one's grid.
    #[serde(default = "default_layers")]
    pub layers: Vec<usize>,
}

fn default_layers() -> Vec<usize> {
    PADIM_STAGES.to_vec()
}

impl PadimConfig {
    /// Defaults for a backbone whose c1..c3 have `total_channels` channels together: 100 for ResNet-18-sized
    /// embeddings (448), 550 for WRN-50-sized (1792), otherwise about 22% of the channels (the R18 ratio), capped
    /// at the total.
    pub fn default_for(total_channels: usize) -> Self {
        let n_features = match total_channels {
            448 => 100,
            1792 => 550,
            t => ((t as f64 * 100.0 / 448.0).round() as usize).clamp(1, t),
        };
        Self {
            n_features,
            seed: 0,
            ridge: 0.01,
            layers: default_layers(),
        }
    }
}

impl PadimConfig {
    /// [`PadimConfig::default_for`] the embedding of a backbone with these stage channels (c1 + c2 + c3).
    pub fn for_backbone(stage_channels: [usize; 4]) -> Self {
        Self::for_layers(stage_channels, &PADIM_STAGES)
    }

    /// [`PadimConfig::default_for`] an embedding of the given stages.
    pub fn for_layers(stage_channels: [usize; 4], layers: &[usize]) -> Self {
        Self {
            layers: layers.to_vec(),
            ..Self::default_for(super::layer_channels(stage_channels, layers))
        }
    }
}

/// The stages PaDiM reads (1-based).
pub const PADIM_STAGES: [usize; 3] = [1, 2, 3];

/// Build the (N, d, H, W) embedding from the stages `layers` (1-based; `stages[i]` is stage `i + 1`): the later
/// ones nearest-upsampled to the first one's grid, concatenated, then the selected channels.
pub fn embed(
    stages: &[Tensor],
    layers: &[usize],
    channel_idx: &Tensor,
) -> candle_core::Result<Tensor> {
    let first = &stages[layers[0] - 1];
    let (_, _, h, w) = first.dims4()?;
    let mut parts = vec![first.clone()];
    for &l in &layers[1..] {
        parts.push(stages[l - 1].upsample_nearest2d(h, w)?);
    }
    Tensor::cat(&parts, 1)?.index_select(channel_idx, 1)
}

/// Streaming accumulator for the per-position Gaussian.
pub struct PadimFit {
    config: PadimConfig,
    channel_idx: Vec<u32>,
    shift: Option<Tensor>,  // (P, d)
    sum: Option<Tensor>,    // (P, d)
    sum_sq: Option<Tensor>, // (P, d, d)
    count: usize,
    grid: (usize, usize),
}

impl PadimFit {
    /// Start fitting for a backbone whose stages `config.layers` have `total_channels` channels in total.
    pub fn new(config: PadimConfig, total_channels: usize) -> Result<Self, DetectorError> {
        super::check_layers(&config.layers)?;
        if config.n_features == 0 || config.n_features > total_channels {
            return Err(DetectorError::Config(format!(
                "PaDiM n_features must be in 1..={total_channels} for this backbone, got {}",
                config.n_features
            )));
        }
        let mut perm: Vec<u32> = (0..total_channels as u32).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
        perm.shuffle(&mut rng);
        perm.truncate(config.n_features);
        Ok(Self {
            config,
            channel_idx: perm,
            shift: None,
            sum: None,
            sum_sq: None,
            count: 0,
            grid: (0, 0),
        })
    }

    /// The selected channels, as a tensor for [`embed`].
    pub fn channel_idx(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::new(self.channel_idx.as_slice(), device)
    }

    /// Add a batch of backbone stages (c1..c3) of good images.
    pub fn add(&mut self, stages: &[Tensor]) -> candle_core::Result<()> {
        let dev = stages[0].device().clone();
        let e = embed(stages, &self.config.layers, &self.channel_idx(&dev)?)?;
        let (n, d, h, w) = e.dims4()?;
        self.grid = (h, w);
        // (P, N, d): positions first, so per-position statistics are batched matmuls.
        // Detached: statistics are constants, and accumulating tracked tensors would chain every batch's graph.
        let x = e
            .reshape((n, d, h * w))?
            .permute((2, 0, 1))?
            .contiguous()?
            .detach();
        if self.shift.is_none() {
            self.shift = Some(x.mean(1)?);
        }
        let shift = self.shift.as_ref().expect("set above");
        let xc = x.broadcast_sub(&shift.unsqueeze(1)?)?;
        let s = xc.sum(1)?;
        let ss = xc.t()?.contiguous()?.matmul(&xc)?;
        self.sum = Some(match self.sum.take() {
            Some(a) => (a + s)?,
            None => s,
        });
        self.sum_sq = Some(match self.sum_sq.take() {
            Some(a) => (a + ss)?,
            None => ss,
        });
        self.count += n;
        Ok(())
    }

    /// Finish: covariances, Cholesky factors and their inverses.
    pub fn finish(self) -> Result<Padim, DetectorError> {
        let n = self.count;
        if n < 2 {
            return Err(DetectorError::NotEnoughImages { needed: 2, got: n });
        }
        let (sum, sum_sq, shift) = match (self.sum, self.sum_sq, self.shift) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err(DetectorError::NotEnoughImages { needed: 2, got: 0 }),
        };
        let (p, d) = sum.dims2()?;
        let sum_v: Vec<f32> = sum.flatten_all()?.to_vec1()?;
        let ss_v: Vec<f32> = sum_sq.flatten_all()?.to_vec1()?;
        let shift_v: Vec<f32> = shift.flatten_all()?.to_vec1()?;
        let nf = n as f64;
        let ridge = self.config.ridge;
        let results: Vec<PositionResult> = (0..p)
            .into_par_iter()
            .map(|pos| {
                let s = &sum_v[pos * d..(pos + 1) * d];
                let ss = &ss_v[pos * d * d..(pos + 1) * d * d];
                let mut cov = vec![0f64; d * d];
                for i in 0..d {
                    for j in 0..=i {
                        let c =
                            (ss[i * d + j] as f64 - s[i] as f64 * s[j] as f64 / nf) / (nf - 1.0);
                        cov[i * d + j] = c;
                        cov[j * d + i] = c;
                    }
                    cov[i * d + i] += ridge + 1e-5;
                }
                let mean: Vec<f32> = (0..d)
                    .map(|i| (shift_v[pos * d + i] as f64 + s[i] as f64 / nf) as f32)
                    .collect();
                let w = crate::stats::inverse_cholesky_factor(&mut cov, d).ok_or(pos)?;
                Ok((mean, w))
            })
            .collect();
        let mut mean = Vec::with_capacity(p * d);
        let mut whiten = Vec::with_capacity(p * d * d);
        for r in results {
            let (m, w) = r.map_err(|pos| DetectorError::Numerical(format!(
                "covariance at grid position {pos} is not positive definite even with the ridge; increase `ridge`"
            )))?;
            mean.extend(m);
            whiten.extend(w);
        }
        let dev = Device::Cpu;
        Ok(Padim::new(
            self.config,
            self.channel_idx,
            self.grid,
            Tensor::from_vec(mean, (p, d), &dev)?,
            Tensor::from_vec(whiten, (p, d, d), &dev)?,
            n,
        )?)
    }
}

/// Per grid position: (mean, whitening matrix), or the position whose covariance is not positive definite.
type PositionResult = Result<(Vec<f32>, Vec<f32>), usize>;

/// A fitted PaDiM model.
#[derive(Debug, Clone)]
pub struct Padim {
    /// Hyper-parameters.
    pub config: PadimConfig,
    /// Selected embedding channels.
    pub channel_idx: Vec<u32>,
    /// Feature grid (h, w) at stage c1.
    pub grid: (usize, usize),
    /// Per-position means, (P, d).
    pub mean: Tensor,
    /// Per-position `L⁻¹` with `Σ = L Lᵀ`, (P, d, d).
    pub whiten: Tensor,
    /// Number of training images.
    pub images: usize,
    /// `Wᵀ` per position, prepared once: scoring multiplies by it, and transposing 4,096 d×d matrices per call cost
    /// more than the scoring itself at batch 1.
    whiten_t: Tensor,
}

impl Padim {
    /// Assemble a model (precomputes the transposed whitening matrices).
    pub fn new(
        config: PadimConfig,
        channel_idx: Vec<u32>,
        grid: (usize, usize),
        mean: Tensor,
        whiten: Tensor,
        images: usize,
    ) -> candle_core::Result<Self> {
        let whiten_t = whiten.t()?.contiguous()?;
        Ok(Self {
            config,
            channel_idx,
            grid,
            mean,
            whiten,
            images,
            whiten_t,
        })
    }

    /// Patch-level Mahalanobis maps for a batch of stages (c1..c3).
    pub fn score(&self, stages: &[Tensor]) -> Result<Vec<ScoreMap>, DetectorError> {
        let dev = stages[0].device();
        let idx = Tensor::new(self.channel_idx.as_slice(), dev)?;
        let e = embed(stages, &self.config.layers, &idx)?;
        let (n, d, h, w) = e.dims4()?;
        if (h, w) != self.grid {
            return Err(DetectorError::Config(format!(
                "feature grid {h}×{w} differs from the fitted {}×{} (different image size?)",
                self.grid.0, self.grid.1
            )));
        }
        let x = e.reshape((n, d, h * w))?.permute((2, 0, 1))?.contiguous()?; // (P, N, d)
        let mean = self.mean.to_device(dev)?;
        let delta = x.broadcast_sub(&mean.unsqueeze(1)?)?;
        let wt = self.whiten_t.to_device(dev)?; // (P, d, d) = Wᵀ
        let z = delta.matmul(&wt)?; // rows are (W δ)ᵀ
        let d2 = z.sqr()?.sum(2)?; // (P, N)
        let dist = d2.relu()?.sqrt()?.t()?.contiguous()?; // (N, P)
        let v: Vec<Vec<f32>> = dist.to_vec2()?;
        v.into_iter()
            .map(|data| Ok(ScoreMap::new(w, h, data)?))
            .collect()
    }

    /// Tensors to persist.
    pub fn tensors(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        Ok(vec![
            ("mean".into(), self.mean.clone()),
            ("whiten".into(), self.whiten.clone()),
            (
                "channel_idx".into(),
                Tensor::new(self.channel_idx.as_slice(), &Device::Cpu)?,
            ),
        ])
    }

    /// Rebuild from persisted tensors.
    pub fn from_tensors(
        config: PadimConfig,
        grid: (usize, usize),
        images: usize,
        get: &dyn Fn(&str) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Self> {
        let mean = get("mean")?.to_dtype(DType::F32)?;
        let whiten = get("whiten")?.to_dtype(DType::F32)?;
        let channel_idx: Vec<u32> = get("channel_idx")?.to_dtype(DType::U32)?.to_vec1()?;
        let (p, d) = mean.dims2()?;
        if whiten.dims() != [p, d, d] || p != grid.0 * grid.1 || channel_idx.len() != d {
            candle_core::bail!(
                "inconsistent PaDiM state: mean {:?}, whiten {:?}, grid {:?}, {} channels",
                mean.dims(),
                whiten.dims(),
                grid,
                channel_idx.len()
            );
        }
        Self::new(config, channel_idx, grid, mean, whiten, images)
    }
}

impl Detector for Padim {
    fn kind(&self) -> DetectorKind {
        DetectorKind::Padim
    }

    fn features(&self) -> Features {
        Features::Stages {
            last: *self.config.layers.iter().max().expect("checked non-empty"),
        }
    }

    /// anomalib upsamples PaDiM's map bilinearly.
    fn upsample(&self) -> Upsample {
        Upsample::Bilinear
    }

    fn score(&self, stages: &[Tensor]) -> Result<Vec<PatchScore>, DetectorError> {
        Ok(Padim::score(self, stages)?
            .into_iter()
            .map(|map| PatchScore {
                map,
                image_score: None,
            })
            .collect())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>, DetectorError> {
        Ok(self.tensors()?)
    }

    fn spec(&self) -> DetectorSpec {
        DetectorSpec {
            config: DetectorConfig::Padim(self.config.clone()),
            grid: self.grid,
            train_images: self.images,
        }
    }
}

impl DetectorFit for PadimFit {
    fn add(&mut self, stages: &[Tensor]) -> Result<(), DetectorError> {
        Ok(PadimFit::add(self, stages)?)
    }

    fn finish(
        self: Box<Self>,
        _progress: &dyn Fn(usize, usize),
    ) -> Result<Arc<dyn Detector>, DetectorError> {
        Ok(Arc::new(PadimFit::finish(*self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mahalanobis distances against a direct computation on the same data.
    #[test]
    fn mahalanobis_matches_direct_computation() {
        let dev = Device::Cpu;
        // Fake "stages": c1 (N,3,2,2), c2 (N,2,1,1), c3 (N,1,1,1) → 6 channels, keep all.
        let n = 12;
        let mk = |c, s| Tensor::randn(0f32, 1.0, (n, c, s, s), &dev).unwrap();
        let stages = vec![
            mk(3, 2),
            (mk(2, 1) * 2.0).unwrap(),
            (mk(1, 1) + 5.0).unwrap(),
        ];
        let cfg = PadimConfig {
            n_features: 6,
            seed: 3,
            ridge: 0.01,
            layers: PADIM_STAGES.to_vec(),
        };
        let mut fit = PadimFit::new(cfg, 6).unwrap();
        // Two batches to exercise accumulation.
        let first: Vec<Tensor> = stages.iter().map(|t| t.narrow(0, 0, 5).unwrap()).collect();
        let rest: Vec<Tensor> = stages.iter().map(|t| t.narrow(0, 5, 7).unwrap()).collect();
        fit.add(&first).unwrap();
        fit.add(&rest).unwrap();
        let model = fit.finish().unwrap();
        let maps = model.score(&stages).unwrap();

        // Direct: per position, mean/cov in f64, solve with the same ridge.
        let e = embed(
            &stages,
            &PADIM_STAGES,
            &Tensor::new(model.channel_idx.as_slice(), &dev).unwrap(),
        )
        .unwrap();
        let v: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
        let (d, p) = (6, 4);
        let at = |img: usize, ch: usize, pos: usize| v[img * d * p + ch * p + pos] as f64;
        for pos in 0..p {
            let mean: Vec<f64> = (0..d)
                .map(|c| (0..n).map(|i| at(i, c, pos)).sum::<f64>() / n as f64)
                .collect();
            let mut cov = vec![0f64; d * d];
            for a in 0..d {
                for b in 0..d {
                    cov[a * d + b] = (0..n)
                        .map(|i| (at(i, a, pos) - mean[a]) * (at(i, b, pos) - mean[b]))
                        .sum::<f64>()
                        / (n as f64 - 1.0);
                }
                cov[a * d + a] += 0.01 + 1e-5;
            }
            // Gauss-Jordan inverse.
            let mut aug = vec![0f64; d * 2 * d];
            for r in 0..d {
                for c in 0..d {
                    aug[r * 2 * d + c] = cov[r * d + c];
                }
                aug[r * 2 * d + d + r] = 1.0;
            }
            for c in 0..d {
                let piv = aug[c * 2 * d + c];
                for k in 0..2 * d {
                    aug[c * 2 * d + k] /= piv;
                }
                for r in 0..d {
                    if r != c {
                        let f = aug[r * 2 * d + c];
                        for k in 0..2 * d {
                            aug[r * 2 * d + k] -= f * aug[c * 2 * d + k];
                        }
                    }
                }
            }
            for (img, map) in maps.iter().enumerate() {
                let delta: Vec<f64> = (0..d).map(|c| at(img, c, pos) - mean[c]).collect();
                let mut m2 = 0.0;
                for a in 0..d {
                    for b in 0..d {
                        m2 += delta[a] * aug[a * 2 * d + d + b] * delta[b];
                    }
                }
                let expect = m2.max(0.0).sqrt();
                let got = map.data()[pos] as f64;
                assert!(
                    (got - expect).abs() < 1e-3 * expect.max(1.0),
                    "pos {pos} img {img}: {got} vs {expect}"
                );
            }
        }
    }
}
