//! DS2 dense contrastive pretraining (PixPro's pixel-to-propagation consistency with DS2's positive pairs), on
//! two views of the product's good images ([`crate::synth::views`]). docs/pretraining.md ("DS2") has the rules.
//!
//! * An online backbone (the one exported) and a momentum copy updated by an exponential moving average whose rate
//!   goes from `momentum` to 1 on a cosine, before each step's targets are computed.
//! * One projector per scale (c4 = layer3, c5 = layer4): 1×1 conv → BatchNorm → ReLU → 1×1 conv, online and momentum.
//! * The pixel-to-propagation module on the online projections, shared by both scales: each position becomes the
//!   similarity-weighted sum (`max(cos, 0)^γ`) of a 1×1-transformed, normalised copy of every position.
//! * Positive pairs: positions of the two views whose bin centres in the original image lie closer than `radius`
//!   bin diagonals, plus the single most similar pair of raw backbone features (so every image has one).
//! * Loss per direction and scale: −2 · mean over images of the mean cosine over positive pairs; the two directions
//!   and the two scales are averaged and summed as DS2 does.
//!
//! Variables: the online backbone under torchvision names; everything else under `head.` (dropped from the
//! exported weights), the momentum copies under `head.momentum.` (updated by [`Ds2Net::update_momentum`], never by
//! the optimiser).

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use kestrel_vision::backbone::{ResNet, ResNetConfig};

use super::optim::is_running_stat;
use crate::synth::views::CropBox;

/// Prefix of the variables the moving average updates.
pub const MOMENTUM_PREFIX: &str = "head.momentum.";

/// 1×1 conv → BatchNorm (batch statistics) → ReLU → 1×1 conv, on every position of a feature map.
struct Projector {
    fc1: Linear,
    bn_weight: Tensor,
    bn_bias: Tensor,
    fc2: Linear,
}

impl Projector {
    fn new(input: usize, inner: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(input, inner, vb.pp("fc1"))?,
            bn_weight: vb.get(inner, "bn.weight")?,
            bn_bias: vb.get(inner, "bn.bias")?,
            fc2: candle_nn::linear(inner, out, vb.pp("fc2"))?,
        })
    }

    /// (B, C, H, W) → (B, H·W, out), positions row-major.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let rows = x.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
        let y = self.fc1.forward(&rows)?;
        // BatchNorm2d in training mode: statistics over batch and positions, per channel (biased variance).
        let mean = y.mean_keepdim(0)?;
        let centred = y.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(0)?;
        let y = centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.bn_weight)?
            .broadcast_add(&self.bn_bias)?
            .relu()?;
        let out = self.fc2.forward(&y)?;
        out.reshape((b, h * w, out.dim(1)?))
    }
}

/// Unit vectors along the last dimension.
fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&n)
}

/// The DS2 networks.
pub struct Ds2Net {
    /// The online backbone: what is trained and exported.
    pub backbone: ResNet,
    momentum: ResNet,
    proj: [Projector; 2],
    proj_m: [Projector; 2],
    ppm: Linear,
    gamma: f64,
    radius: f32,
}

/// Settings of the DS2 networks and loss.
#[derive(Debug, Clone, Copy)]
pub struct Ds2Settings {
    /// Projector inner width.
    pub inner_dim: usize,
    /// Projection width.
    pub out_dim: usize,
    /// Sharpness γ of the propagation similarity.
    pub gamma: f64,
    /// Positive-pair radius in bin diagonals (DS2: 0.1, PixPro: 0.7).
    pub radius: f32,
}

/// The loss of one step and what is logged with it.
pub struct Ds2Loss {
    /// c4 loss + c5 loss.
    pub total: Tensor,
    /// c4 loss.
    pub c4: f64,
    /// c5 loss.
    pub c5: f64,
    /// Mean positive pairs per image and direction, over both scales.
    pub positives: f64,
}

impl Ds2Net {
    /// Build on `vb`.
    pub fn new(config: &ResNetConfig, s: Ds2Settings, vb: VarBuilder) -> Result<Self> {
        let ch = config.stage_channels();
        let head = vb.pp("head");
        let projectors = |vb: VarBuilder| -> Result<[Projector; 2]> {
            Ok([
                Projector::new(ch[2], s.inner_dim, s.out_dim, vb.pp("proj4"))?,
                Projector::new(ch[3], s.inner_dim, s.out_dim, vb.pp("proj5"))?,
            ])
        };
        Ok(Self {
            backbone: ResNet::new(config, vb.clone())?,
            momentum: ResNet::new(config, head.pp("momentum").pp("backbone"))?,
            proj: projectors(head.clone())?,
            proj_m: projectors(head.pp("momentum"))?,
            ppm: candle_nn::linear(s.out_dim, s.out_dim, head.pp("ppm"))?,
            gamma: s.gamma,
            radius: s.radius,
        })
    }

    /// Pixel-to-propagation: `y_i = Σ_j max(cos(x_i, x_j), 0)^γ · v_j` with `v = normalise(T x)`, normalised.
    fn propagate(&self, x: &Tensor) -> Result<Tensor> {
        let xn = l2_normalise(x)?;
        let sim = xn.matmul(&xn.transpose(1, 2)?.contiguous()?)?.relu()?;
        let sim = if self.gamma == 2.0 {
            sim.sqr()?
        } else {
            sim.powf(self.gamma)?
        };
        let v = l2_normalise(&self.ppm.forward(x)?)?;
        l2_normalise(&sim.matmul(&v)?)
    }

    /// The DS2 loss of a batch: `x1`, `x2` are the two views (B×3×S×S), `boxes[b]` their crop boxes.
    pub fn loss(&self, x1: &Tensor, x2: &Tensor, boxes: &[[CropBox; 2]]) -> Result<Ds2Loss> {
        let on = [
            self.backbone.stages(x1, 4, true)?,
            self.backbone.stages(x2, 4, true)?,
        ];
        let mo = [
            self.momentum.stages(x1, 4, true)?,
            self.momentum.stages(x2, 4, true)?,
        ];
        let mut scale_losses = Vec::with_capacity(2);
        let mut positives = 0.0;
        for (k, stage) in [2usize, 3].into_iter().enumerate() {
            let y: Vec<Tensor> = on
                .iter()
                .map(|s| self.propagate(&self.proj[k].forward(&s[stage])?))
                .collect::<Result<_>>()?;
            let t: Vec<Tensor> = mo
                .iter()
                .map(|s| {
                    l2_normalise(&self.proj_m[k].forward(&s[stage].detach())?).map(|t| t.detach())
                })
                .collect::<Result<_>>()?;
            let mut dir = Vec::with_capacity(2);
            for (q, kk) in [(0usize, 1usize), (1, 0)] {
                let (mask, count) = self.mask(
                    &on[q][stage].detach(),
                    &mo[kk][stage].detach(),
                    boxes,
                    q,
                    kk,
                )?;
                positives += count;
                dir.push(direction_loss(&y[q], &t[kk], &mask)?);
            }
            scale_losses.push(((&dir[0] + &dir[1])? * 0.5)?);
        }
        let scalar = |t: &Tensor| t.to_dtype(DType::F64)?.to_scalar::<f64>();
        Ok(Ds2Loss {
            c4: scalar(&scale_losses[0])?,
            c5: scalar(&scale_losses[1])?,
            positives: positives / 4.0,
            total: (&scale_losses[0] + &scale_losses[1])?,
        })
    }

    /// Positive mask (B, Pq, Pk) for query view `q` against key view `k`: the geometric pairs plus each image's
    /// most similar pair of raw backbone features (`fq` online on view q, `fk` momentum on view k). Also returns
    /// the mean number of positives per image.
    fn mask(
        &self,
        fq: &Tensor,
        fk: &Tensor,
        boxes: &[[CropBox; 2]],
        q: usize,
        k: usize,
    ) -> Result<(Tensor, f64)> {
        let (b, c, h, w) = fq.dims4()?;
        let p = h * w;
        let fqr = fq.reshape((b, c, p))?.transpose(1, 2)?.contiguous()?;
        let fkr = fk.reshape((b, c, p))?;
        let sim: Vec<Vec<f32>> = (fqr.matmul(&fkr)? / c as f64)?
            .reshape((b, p * p))?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let mut data = Vec::with_capacity(b * p * p);
        for (bx, s) in boxes.iter().zip(&sim) {
            let mut m = positive_mask(bx[q], bx[k], (h, w), (h, w), self.radius);
            m[top1(s)] = 1.0;
            data.extend(m);
        }
        let count = data.iter().sum::<f32>() as f64 / b as f64;
        Ok((Tensor::from_vec(data, (b, p, p), fq.device())?, count))
    }

    /// Moving-average update of the momentum copies: `θ_m ← m·θ_m + (1 − m)·θ_online`. BatchNorm running statistics
    /// are left to each network's own forward passes, as PixPro does. `m = 0` copies everything, statistics too
    /// (the start of a run).
    pub fn update_momentum(vm: &VarMap, m: f64) -> Result<()> {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            let Some(rest) = name.strip_prefix(MOMENTUM_PREFIX) else {
                continue;
            };
            if m > 0.0 && is_running_stat(name) {
                continue;
            }
            let online_name = match rest.strip_prefix("backbone.") {
                Some(bb) => bb.to_string(),
                None => format!("head.{rest}"),
            };
            let online: &Var = data.get(&online_name).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "momentum variable {name} has no online twin {online_name}"
                ))
            })?;
            let o = online.as_tensor().detach();
            let new = if m == 0.0 {
                o
            } else {
                ((var.as_tensor().detach() * m)? + (o * (1.0 - m))?)?
            };
            var.set(&new)?;
        }
        Ok(())
    }
}

/// The momentum rate at `step` of `total`: from `base` to 1 on a cosine (BYOL's schedule).
pub fn momentum_at(base: f64, step: u64, total: u64) -> f64 {
    let t = step as f64 / total.max(1) as f64;
    1.0 - (1.0 - base) * ((std::f64::consts::PI * t).cos() + 1.0) / 2.0
}

/// `−2 · mean_b Σ M⊙(y tᵀ) / (Σ M + 1e−6)` for unit rows `y` (B, Pq, D), `t` (B, Pk, D) and mask (B, Pq, Pk).
fn direction_loss(y: &Tensor, t: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let cos = y.matmul(&t.transpose(1, 2)?.contiguous()?)?;
    let num = (cos * mask)?.sum((1, 2))?;
    let den = (mask.sum((1, 2))? + 1e-6)?;
    (num / den)?.mean_all()? * -2.0
}

/// Index of the largest value (the first of equals).
fn top1(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Geometric positives between a query map of `hq × wq` bins over box `bq` and a key map over `bk`: 1 where the
/// bin centres, in original-image coordinates, are closer than `radius` times the larger bin diagonal. Row-major
/// `(Pq, Pk)`, positions row-major.
pub fn positive_mask(
    bq: CropBox,
    bk: CropBox,
    (hq, wq): (usize, usize),
    (hk, wk): (usize, usize),
    radius: f32,
) -> Vec<f32> {
    let centres = |b: CropBox, h: usize, w: usize| -> (Vec<(f32, f32)>, f32) {
        let bw = (b[2] - b[0]) / w as f32;
        let bh = (b[3] - b[1]) / h as f32;
        let c = (0..h * w)
            .map(|i| {
                let (v, u) = (i / w, i % w);
                (b[0] + (u as f32 + 0.5) * bw, b[1] + (v as f32 + 0.5) * bh)
            })
            .collect();
        (c, (bw * bw + bh * bh).sqrt())
    };
    let (cq, dq) = centres(bq, hq, wq);
    let (ck, dk) = centres(bk, hk, wk);
    let d = dq.max(dk).max(f32::MIN_POSITIVE);
    let mut m = Vec::with_capacity(cq.len() * ck.len());
    for a in &cq {
        for b in &ck {
            let dist = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt() / d;
            m.push(if dist < radius { 1.0 } else { 0.0 });
        }
    }
    m
}

/// The images of the two views as tensors (ImageNet-normalised rows `2B × 3 × S × S`: view 1 of every sample, then
/// view 2).
pub fn split_views(images: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = images.dim(0)? / 2;
    Ok((images.narrow(0, 0, n)?, images.narrow(0, n, n)?))
}

/// A CPU tensor of zeros, for tests.
#[cfg(test)]
fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &candle_core::Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use kestrel_vision::backbone::Arch;

    const FULL: CropBox = [0.0, 0.0, 1.0, 1.0];

    #[test]
    fn identical_crops_pair_positions_on_the_diagonal() {
        let m = positive_mask(FULL, FULL, (4, 4), (4, 4), 0.1);
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(m[i * 16 + j], if i == j { 1.0 } else { 0.0 }, "({i}, {j})");
            }
        }
    }

    #[test]
    fn a_mirrored_view_mirrors_the_diagonal() {
        let flipped = [1.0, 0.0, 0.0, 1.0];
        let m = positive_mask(FULL, flipped, (4, 4), (4, 4), 0.1);
        for i in 0..16 {
            let (row, col) = (i / 4, i % 4);
            let mirror = row * 4 + (3 - col);
            for j in 0..16 {
                assert_eq!(m[i * 16 + j], if j == mirror { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn disjoint_crops_have_no_geometric_pairs_and_pixpro_radius_pairs_more() {
        let left = [0.0, 0.0, 0.4, 1.0];
        let right = [0.6, 0.0, 1.0, 1.0];
        assert!(positive_mask(left, right, (4, 4), (4, 4), 0.1)
            .iter()
            .all(|&v| v == 0.0));
        let a = [0.0, 0.0, 0.8, 0.8];
        let b = [0.1, 0.1, 0.9, 0.9];
        let ds2: f32 = positive_mask(a, b, (4, 4), (4, 4), 0.1).iter().sum();
        let pixpro: f32 = positive_mask(a, b, (4, 4), (4, 4), 0.7).iter().sum();
        assert!(pixpro > ds2, "{pixpro} vs {ds2}");
    }

    #[test]
    fn the_most_similar_feature_pair_is_always_a_positive() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = Ds2Net::new(&Arch::Resnet18Narrow.config(), settings(), vb).unwrap();
        // Disjoint crops: no geometric pair, so each image's positives are its top-1 pair alone, and that pair is
        // where the features agree most: query position 5 and key position 2 share a strong channel.
        let mut q = vec![0f32; 2 * 4 * 9];
        let mut k = vec![0f32; 2 * 4 * 9];
        for b in 0..2 {
            q[b * 36 + 3 * 9 + 5] = 10.0;
            k[b * 36 + 3 * 9 + 2] = 10.0;
        }
        let fq = Tensor::from_vec(q, (2, 4, 3, 3), &Device::Cpu).unwrap();
        let fk = Tensor::from_vec(k, (2, 4, 3, 3), &Device::Cpu).unwrap();
        let boxes = [[[0.0, 0.0, 0.4, 1.0], [0.6, 0.0, 1.0, 1.0]]; 2];
        let (mask, count) = net.mask(&fq, &fk, &boxes, 0, 1).unwrap();
        assert_eq!(count, 1.0);
        let m: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
        for b in 0..2 {
            let ones: Vec<usize> = (0..81).filter(|&i| m[b * 81 + i] == 1.0).collect();
            assert_eq!(ones, vec![5 * 9 + 2], "image {b}");
        }
    }

    #[test]
    fn momentum_schedule_runs_from_base_to_one() {
        assert!((momentum_at(0.99, 0, 100) - 0.99).abs() < 1e-12);
        assert!((momentum_at(0.99, 100, 100) - 1.0).abs() < 1e-12);
        assert!((momentum_at(0.99, 50, 100) - 0.995).abs() < 1e-9);
    }

    fn settings() -> Ds2Settings {
        Ds2Settings {
            inner_dim: 16,
            out_dim: 8,
            gamma: 2.0,
            radius: 0.1,
        }
    }

    #[test]
    fn projector_and_propagation_shapes_and_unit_rows() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = Ds2Net::new(&Arch::Resnet18Narrow.config(), settings(), vb).unwrap();
        let c4 = Tensor::randn(0f32, 1.0, (2, 128, 4, 4), &Device::Cpu).unwrap();
        let p = net.proj[0].forward(&c4).unwrap();
        assert_eq!(p.dims(), [2, 16, 8]);
        let y = net.propagate(&p).unwrap();
        assert_eq!(y.dims(), [2, 16, 8]);
        let norms: Vec<f32> = y
            .sqr()
            .unwrap()
            .sum(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
    }

    #[test]
    fn momentum_update_moves_towards_the_online_weights_and_skips_statistics() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let _net = Ds2Net::new(&Arch::Resnet18Narrow.config(), settings(), vb).unwrap();
        let get = |n: &str| {
            vm.data().lock().unwrap()[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
        };
        let set = |n: &str, v: f32| {
            let data = vm.data().lock().unwrap();
            let var = &data[n];
            var.set(&(zeros(var.dims()) + v as f64).unwrap()).unwrap();
        };
        set("conv1.weight", 1.0);
        set("head.momentum.backbone.conv1.weight", 0.0);
        set("head.proj4.fc1.weight", 2.0);
        set("head.momentum.proj4.fc1.weight", 0.0);
        set("bn1.running_mean", 5.0);
        set("head.momentum.backbone.bn1.running_mean", 3.0);
        Ds2Net::update_momentum(&vm, 0.75).unwrap();
        let first = |n: &str| get(n).to_vec1::<f32>().unwrap()[0];
        assert!((first("head.momentum.backbone.conv1.weight") - 0.25).abs() < 1e-6);
        assert!((first("head.momentum.proj4.fc1.weight") - 0.5).abs() < 1e-6);
        assert_eq!(
            first("head.momentum.backbone.bn1.running_mean"),
            3.0,
            "statistics untouched"
        );
        Ds2Net::update_momentum(&vm, 0.0).unwrap();
        assert_eq!(
            first("head.momentum.backbone.bn1.running_mean"),
            5.0,
            "m = 0 copies everything"
        );
        assert_eq!(first("head.momentum.backbone.conv1.weight"), 1.0);
    }

    #[test]
    fn loss_of_identical_views_with_equal_networks_is_minus_two_at_most() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = Ds2Net::new(&Arch::Resnet18Narrow.config(), settings(), vb).unwrap();
        Ds2Net::update_momentum(&vm, 0.0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let l = net.loss(&x, &x, &[[FULL, FULL]; 2]).unwrap();
        let total = l.total.to_scalar::<f32>().unwrap();
        // Each scale's loss is −2·(mean cosine) ∈ [−2, 2]; two scales.
        assert!((-4.0..=4.0).contains(&total), "{total}");
        // At 64 px c4 is 4×4 and c5 2×2: 16 and 4 diagonal positives per direction, a mean of 10, plus at most
        // one top-1 pair off the diagonal.
        assert!((10.0..=11.0).contains(&l.positives), "{}", l.positives);
    }
}
