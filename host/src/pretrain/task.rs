//! The pretraining tasks: how a batch is generated, what head sits on the backbone, and the loss.
//!
//! A batch for step `s` is samples `s·B .. (s+1)·B` of the task's generator, so it depends only on the seed and the
//! step: a resumed run sees exactly the batches the interrupted one would have, on any thread count.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use kestrel_vision::backbone::{ResNet, ResNetConfig};
use kestrel_vision::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

use super::config::{PretrainConfig, TaskKind};
use super::gmm_loss::{self, GmmTensors, Matching};
use super::PretrainError;
use crate::synth::cutpaste::{CutPasteConfig, CutPasteGenerator};
use crate::synth::fractal::{FractalConfig, FractalGenerator, MultiConfig, MultiFractalGenerator};
use crate::synth::gmm::{GmmConfig, GmmGenerator, GmmParams, GMM_PARAMS};
use crate::synth::render::resize_bilinear;
use crate::synth::texture::NormalSource;
use crate::synth::views::{CropBox, ViewConfig, ViewGenerator};
use crate::synth::Image;

/// Where samples come from.
#[derive(Clone)]
pub enum Sampler {
    /// One fractal per image, class label.
    Fractal(FractalGenerator),
    /// Several fractals per image, multi-hot label.
    Multi(MultiFractalGenerator),
    /// Pseudo-defect on a normal image, mixture target.
    Gmm(GmmGenerator),
    /// A good crop and its cut-paste and scar versions, 3-way label.
    CutPaste(CutPasteGenerator),
    /// Two views of a good image and their crop boxes (DS2).
    Views(ViewGenerator),
    /// One sampler per task of a multi-task run, with its image size.
    Tasks(Vec<(usize, Sampler)>),
}

/// Targets of one batch.
pub enum Target {
    /// Class per image.
    Classes(Vec<u32>),
    /// Multi-hot rows (B × classes) and a positive weight per image.
    MultiHot {
        /// Row-major B × classes.
        hot: Vec<f32>,
        /// A&F's per-image positive weight.
        pos_weight: Vec<f32>,
    },
    /// Cleaned mixtures and the normal images they were blended into, at the re-render size.
    Gmm {
        /// Regression targets.
        params: Vec<GmmParams>,
        /// B × 3 × R × R in `[0, 1]`.
        normals: Vec<f32>,
        /// R.
        render_size: usize,
    },
    /// DS2: the crop boxes of each sample's two views (the images are all first views, then all second views).
    Views(Vec<[CropBox; 2]>),
    /// Multi-task: one batch per task, with its image size (the outer batch holds no images).
    Tasks(Vec<(usize, Batch)>),
}

/// One generated batch, ready to become tensors.
pub struct Batch {
    /// B × 3 × S × S, ImageNet-normalised (the normalisation `kestrel fit` uses, so features transfer as trained).
    pub images: Vec<f32>,
    /// Batch size.
    pub len: usize,
    /// Targets.
    pub target: Target,
}

impl Sampler {
    /// The sampler for `cfg`'s task.
    pub fn new(cfg: &PretrainConfig) -> Result<Self, PretrainError> {
        let s = cfg.image_size;
        Ok(match cfg.task {
            TaskKind::MultiTask => Sampler::Tasks(
                cfg.multi
                    .tasks
                    .iter()
                    .map(|&t| {
                        let sub = cfg.subtask(t);
                        Ok((sub.image_size, Sampler::new(&sub)?))
                    })
                    .collect::<Result<_, PretrainError>>()?,
            ),
            TaskKind::Fractal => {
                let mut fc = FractalConfig::new(s);
                if cfg.fractal.n_iter > 0 {
                    fc.n_iter = cfg.fractal.n_iter;
                }
                Sampler::Fractal(FractalGenerator::new(fc, cfg.fractal.classes, cfg.seed)?)
            }
            TaskKind::MultiFractal => {
                let mut mc = MultiConfig::new(s);
                if cfg.fractal.n_iter > 0 {
                    mc.object.n_iter = cfg.fractal.n_iter;
                }
                Sampler::Multi(MultiFractalGenerator::new(
                    mc,
                    cfg.fractal.classes,
                    cfg.seed,
                )?)
            }
            TaskKind::Gmm => {
                let mut gc = GmmConfig::new(s);
                gc.preset = cfg.gmm.preset;
                let normals = NormalSource::from_dir(cfg.gmm.normal_images.as_deref(), s)?;
                Sampler::Gmm(GmmGenerator::new(gc, normals, cfg.seed)?)
            }
            TaskKind::Cutpaste => {
                let c = &cfg.cutpaste;
                // Loaded at twice the working size: 1/16-area crops then keep about half their pixels.
                let normals = NormalSource::from_dir(c.normal_images.as_deref(), 2 * s)?;
                Sampler::CutPaste(CutPasteGenerator::new(
                    CutPasteConfig {
                        crop_area: c.crop_area,
                        ..CutPasteConfig::new(s)
                    },
                    normals,
                    cfg.seed,
                )?)
            }
            TaskKind::Ds2 => {
                let d = &cfg.ds2;
                let normals = NormalSource::from_dir(d.normal_images.as_deref(), s)?;
                Sampler::Views(ViewGenerator::new(
                    ViewConfig {
                        crop_scale: d.crop_scale,
                        ..ViewConfig::new(s)
                    },
                    normals,
                    cfg.seed,
                )?)
            }
        })
    }

    /// Head outputs.
    pub fn outputs(&self) -> usize {
        match self {
            Sampler::Fractal(g) => g.classes(),
            Sampler::Multi(g) => g.classes(),
            Sampler::Gmm(_) => GMM_PARAMS,
            Sampler::CutPaste(_) => 3,
            Sampler::Views(_) | Sampler::Tasks(_) => 0,
        }
    }

    /// Head outputs per task of a multi-task sampler (the sampler's own for any other).
    pub fn task_outputs(&self) -> Vec<usize> {
        match self {
            Sampler::Tasks(subs) => subs.iter().map(|(_, s)| s.outputs()).collect(),
            s => vec![s.outputs()],
        }
    }

    /// The batch of `step` (samples `step·len .. (step+1)·len`, modulo `dataset_size` when it is not 0), rendered
    /// in parallel.
    pub fn batch(&self, step: u64, len: usize, dataset_size: u64, render_size: usize) -> Batch {
        let first = step * len as u64;
        let indices: Vec<u64> = (first..first + len as u64)
            .map(|i| {
                if dataset_size > 0 {
                    i % dataset_size
                } else {
                    i
                }
            })
            .collect();
        let mut images = Vec::new();
        let target = match self {
            Sampler::Tasks(subs) => {
                let batches = subs
                    .iter()
                    .map(|(size, s)| {
                        (
                            *size,
                            s.batch(step, len, dataset_size, render_size.min(*size)),
                        )
                    })
                    .collect();
                return Batch {
                    images,
                    len: 0,
                    target: Target::Tasks(batches),
                };
            }
            Sampler::Fractal(g) => {
                let samples = g.batch_of(&indices);
                samples
                    .iter()
                    .for_each(|s| push_normalised(&mut images, &s.image));
                Target::Classes(samples.iter().map(|s| s.params.class as u32).collect())
            }
            Sampler::Multi(g) => {
                let samples = g.batch_of(&indices);
                samples
                    .iter()
                    .for_each(|s| push_normalised(&mut images, &s.image));
                let c = g.classes();
                Target::MultiHot {
                    hot: samples.iter().flat_map(|s| s.params.target(c)).collect(),
                    pos_weight: samples.iter().map(|s| s.params.pos_weight(c)).collect(),
                }
            }
            Sampler::Gmm(g) => {
                let samples = g.batch_of(&indices);
                samples
                    .iter()
                    .for_each(|s| push_normalised(&mut images, &s.image));
                let mut normals = Vec::with_capacity(len * 3 * render_size * render_size);
                for s in &samples {
                    if s.normal.size() == render_size {
                        normals.extend_from_slice(s.normal.data());
                    } else {
                        normals.extend_from_slice(resize_bilinear(&s.normal, render_size).data());
                    }
                }
                Target::Gmm {
                    params: samples.into_iter().map(|s| s.target).collect(),
                    normals,
                    render_size,
                }
            }
            Sampler::CutPaste(g) => {
                let samples = g.batch_of(&indices);
                for s in &samples {
                    for img in [&s.normal, &s.cutpaste, &s.scar] {
                        push_normalised(&mut images, img);
                    }
                }
                return Batch {
                    images,
                    len: 3 * len,
                    target: Target::Classes([0, 1, 2].repeat(len)),
                };
            }
            Sampler::Views(g) => {
                let pairs = g.batch_of(&indices);
                for k in 0..2 {
                    pairs
                        .iter()
                        .for_each(|p| push_normalised(&mut images, &p.views[k]));
                }
                return Batch {
                    images,
                    len: 2 * len,
                    target: Target::Views(pairs.iter().map(|p| p.boxes).collect()),
                };
            }
        };
        Batch {
            images,
            len,
            target,
        }
    }
}

fn push_normalised(out: &mut Vec<f32>, img: &Image) {
    let area = img.area();
    for (ch, plane) in img.data().chunks(area).enumerate() {
        let (m, s) = (IMAGENET_MEAN[ch], IMAGENET_STD[ch]);
        out.extend(plane.iter().map(|v| (v - m) / s));
    }
}

/// Backbone + global-average-pool + head (one linear layer, or an MLP with ReLUs for CutPaste). Backbone tensors
/// carry torchvision names; the head lives under `head.` and is dropped from the exported weights.
pub struct PretrainNet {
    /// The feature extractor being trained.
    pub backbone: ResNet,
    /// Linear layers; a ReLU between consecutive ones.
    head: Vec<Linear>,
    grid: usize,
}

/// Prefix of the head's variables.
pub const HEAD_PREFIX: &str = "head.";

impl PretrainNet {
    /// Build on `vb` (a `VarMap`-backed builder, so everything trains). The head reads the last stage pooled to a
    /// `grid × grid` grid (1: global average pooling); with `hidden` widths it is an MLP (`head.0`, `head.1`, ...),
    /// else one linear layer (`head`).
    pub fn new(
        config: &ResNetConfig,
        outputs: usize,
        grid: usize,
        hidden: &[usize],
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Self::with_head_name(config, outputs, grid, hidden, vb, "head")
    }

    /// [`PretrainNet::new`] with the head under `head_name` (multi-task runs have one head per task, all sharing
    /// the backbone's variables).
    pub fn with_head_name(
        config: &ResNetConfig,
        outputs: usize,
        grid: usize,
        hidden: &[usize],
        vb: VarBuilder,
        head_name: &str,
    ) -> candle_core::Result<Self> {
        let backbone = ResNet::new(config, vb.clone())?;
        let c4 = config.stage_channels()[3];
        let widths: Vec<usize> = std::iter::once(c4 * grid * grid)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(outputs))
            .collect();
        let head = if hidden.is_empty() {
            vec![candle_nn::linear(widths[0], outputs, vb.pp(head_name))?]
        } else {
            widths
                .windows(2)
                .enumerate()
                .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("{head_name}.{i}"))))
                .collect::<candle_core::Result<_>>()?
        };
        Ok(Self {
            backbone,
            head,
            grid,
        })
    }

    /// Logits (B × outputs) for a normalised batch.
    pub fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let c4 = self
            .backbone
            .stages(x, 4, train)?
            .pop()
            .expect("four stages");
        let mut y = if self.grid == 1 {
            gmm_loss::spatial_mean(&c4)?
        } else {
            grid_pool(&c4, self.grid)?
        };
        for (i, layer) in self.head.iter().enumerate() {
            if i > 0 {
                y = y.relu()?;
            }
            y = layer.forward(&y)?;
        }
        Ok(y)
    }
}

/// Average-pool `x` (B × C × H × W, H and W divisible by `g`) to B × C × g × g and flatten to B × (C·g·g), in
/// channel-major order. Reshape and mean only, so candle's autograd differentiates it.
pub fn grid_pool(x: &Tensor, g: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !h.is_multiple_of(g) || !w.is_multiple_of(g) {
        candle_core::bail!("grid_pool: {h}×{w} is not divisible by {g}");
    }
    x.reshape((b, c, g, h / g, g, w / g))?
        .mean(5)?
        .mean(3)?
        .flatten_from(1)
}

/// Loss of a batch and the figures logged with it.
pub struct StepLoss {
    /// What is minimised.
    pub total: Tensor,
    /// Named extra figures (accuracy, loss parts), in a fixed order per task.
    pub parts: Vec<(&'static str, f64)>,
}

/// Names of the extra figures of a run, for the CSV header: the task's own, or for multi-task each task's loss
/// (unweighted) in order.
pub fn part_names(cfg: &PretrainConfig) -> Vec<&'static str> {
    match cfg.task {
        TaskKind::MultiTask => cfg.multi.tasks.iter().map(|t| t.name()).collect(),
        t => single_part_names(t).to_vec(),
    }
}

fn single_part_names(task: TaskKind) -> &'static [&'static str] {
    match task {
        TaskKind::MultiTask => &[],
        TaskKind::Fractal => &["accuracy"],
        TaskKind::MultiFractal => &["precision_at_k"],
        TaskKind::Gmm => &["direct", "param", "mass", "strength", "indirect"],
        TaskKind::Cutpaste => &["accuracy"],
        TaskKind::Ds2 => &["c4", "c5", "positives"],
    }
}

/// Everything the loss needs besides logits and targets.
pub struct LossSettings {
    /// GMM matching.
    pub matching: Matching,
    /// GMM re-render weight.
    pub lambda_indirect: f64,
    /// GMM opacity weight inside the re-render loss.
    pub lambda_alpha: f64,
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// The task's loss of `logits` against `target`.
pub fn loss(logits: &Tensor, target: &Target, s: &LossSettings) -> candle_core::Result<StepLoss> {
    match target {
        Target::Classes(labels) => classification_loss(logits, labels),
        Target::MultiHot { hot, pos_weight } => multi_label_loss(logits, hot, pos_weight),
        Target::Gmm {
            params,
            normals,
            render_size,
        } => gmm_regression_loss(logits, params, normals, *render_size, s),
        Target::Views(_) | Target::Tasks(_) => {
            candle_core::bail!(
                "DS2 and multi-task batches are scored by the trainer, not by a head"
            )
        }
    }
}

/// Fractal: softmax cross-entropy over the classes, and the batch's top-1 accuracy.
fn classification_loss(logits: &Tensor, labels: &[u32]) -> candle_core::Result<StepLoss> {
    let b = logits.dim(0)?;
    let y = Tensor::from_slice(labels, b, logits.device())?;
    let total = candle_nn::loss::cross_entropy(logits, &y)?;
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let acc = pred.iter().zip(labels).filter(|(p, y)| p == y).count() as f64 / b as f64;
    Ok(StepLoss {
        total,
        parts: vec![("accuracy", acc)],
    })
}

/// Multi-fractal: binary cross-entropy with logits and a per-image positive weight, and precision at k (k = the
/// number of true labels of each image).
fn multi_label_loss(
    logits: &Tensor,
    hot: &[f32],
    pos_weight: &[f32],
) -> candle_core::Result<StepLoss> {
    let dev = logits.device();
    let (b, c) = logits.dims2()?;
    let y = Tensor::from_slice(hot, (b, c), dev)?;
    let pw = Tensor::from_slice(pos_weight, (b, 1), dev)?;
    // Stable form: −[pw·y·log σ(x) + (1−y)·log(1−σ(x))] with log σ(x) = −softplus(−x) and
    // log(1−σ(x)) = −softplus(x).
    let pos = y
        .broadcast_mul(&pw)?
        .mul(&gmm_loss::softplus(&logits.neg()?)?)?;
    let neg = (y.neg()? + 1.0)?.mul(&gmm_loss::softplus(logits)?)?;
    let total = (pos + neg)?.mean_all()?;
    let l = logits.to_vec2::<f32>()?;
    let mut hits = 0usize;
    let mut positives = 0usize;
    for (row, truth) in l.iter().zip(hot.chunks(c)) {
        let k = truth.iter().filter(|v| **v > 0.5).count();
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        hits += order[..k].iter().filter(|&&j| truth[j] > 0.5).count();
        positives += k;
    }
    Ok(StepLoss {
        total,
        parts: vec![("precision_at_k", hits as f64 / positives.max(1) as f64)],
    })
}

/// GMM: the direct loss, plus `lambda_indirect` times the re-render loss on the normals (B × 3 × R × R).
fn gmm_regression_loss(
    logits: &Tensor,
    params: &[GmmParams],
    normals: &[f32],
    render_size: usize,
    s: &LossSettings,
) -> candle_core::Result<StepLoss> {
    let dev = logits.device();
    let b = logits.dim(0)?;
    let pred = GmmTensors::from_head(logits)?;
    let d = gmm_loss::direct_loss(&pred, params, s.matching)?;
    let mut total = d.total.clone();
    let mut indirect = 0.0;
    if s.lambda_indirect > 0.0 {
        let r = render_size;
        let normal = Tensor::from_slice(normals, (b, 3, r, r), dev)?;
        let truth = GmmTensors::from_params(params, dev)?;
        let ind = gmm_loss::indirect_loss(&pred, &truth, &normal, s.lambda_alpha)?;
        indirect = scalar(&ind)?;
        total = (total + (ind * s.lambda_indirect)?)?;
    }
    Ok(StepLoss {
        parts: vec![
            ("direct", scalar(&d.total)?),
            ("param", scalar(&d.param)?),
            ("mass", scalar(&d.mass)?),
            ("strength", scalar(&d.strength)?),
            ("indirect", indirect),
        ],
        total,
    })
}

/// The images of a batch as a tensor.
pub fn images_tensor(batch: &Batch, size: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(&batch.images, (batch.len, 3, size, size), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_pool_averages_each_cell_channel_major() {
        // One image, 2 channels, 4×4: channel c holds 100·c + 10·row + col.
        let v: Vec<f32> = (0..2)
            .flat_map(|c| (0..16).map(move |i| (100 * c + 10 * (i / 4) + i % 4) as f32))
            .collect();
        let x = Tensor::from_vec(v, (1, 2, 4, 4), &Device::Cpu).unwrap();
        let got = grid_pool(&x, 2).unwrap().to_vec2::<f32>().unwrap();
        // Cell (0,0) of channel 0 averages rows 0–1, cols 0–1: (0 + 1 + 10 + 11) / 4 = 5.5.
        let want = [5.5, 7.5, 25.5, 27.5, 105.5, 107.5, 125.5, 127.5];
        assert_eq!(got[0], want);
        // Grid 1 is the global mean.
        let g1 = grid_pool(&x, 1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g1[0], [16.5, 116.5]);
        assert!(grid_pool(&x, 3).is_err());
    }
}
