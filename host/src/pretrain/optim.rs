//! Optimisers and the learning-rate schedule of the training engine.
//!
//! Written here rather than taken from candle-nn because pretraining needs two things candle's optimisers lack:
//! SGD with momentum (candle's `SGD` is plain gradient descent), and parameter groups so weight decay skips
//! BatchNorm parameters and biases (candle's `AdamW` decays every variable). Both follow PyTorch's update rules
//! exactly (`torch.optim.SGD` with `dampening = 0`, `torch.optim.AdamW`), so hyperparameters from the papers carry
//! over unchanged. State (momentum buffers, Adam moments) can be saved and restored for `--resume`.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (heavy-ball) momentum and L2 weight decay added to the gradient, as `torch.optim.SGD`.
    Sgd,
    /// Adam with decoupled weight decay, as `torch.optim.AdamW`.
    Adamw,
}

/// Optimiser hyperparameters (the learning rate comes from the schedule at every step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Update rule.
    pub kind: OptimizerKind,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f64,
    /// Weight decay, applied only to convolution and linear weights (never to BatchNorm parameters or biases).
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
}

impl OptimizerConfig {
    /// SGD, momentum 0.9, weight decay 1e-4 (the fractal-pretraining recipe).
    pub fn sgd() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// AdamW, weight decay 1e-4 (the GMM-regression recipe).
    pub fn adamw() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            ..Self::sgd()
        }
    }
}

/// One trainable tensor and its optimiser state.
struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// SGD momentum buffer, or AdamW first moment.
    m: Option<Tensor>,
    /// AdamW second moment.
    v: Option<Tensor>,
}

impl Param {
    /// The same update as the tensor-op path of [`Optimizer::backward_step`], in place on f32 CPU tensors: one pass
    /// per state tensor instead of one per arithmetic op, and no allocation after the first step.
    fn update_fused(
        &mut self,
        cfg: &OptimizerConfig,
        g: &Tensor,
        scale: f64,
        wd: f64,
        lr: f64,
        t: i32,
    ) -> Result<()> {
        let w = self.var.as_tensor();
        // A missing or restored (maybe non-contiguous, foreign) state tensor becomes a fresh contiguous buffer.
        let state = |slot: &mut Option<Tensor>| -> Result<(Tensor, bool)> {
            match slot.take() {
                Some(s) if fused::applies(&[&s]) => Ok((s, false)),
                Some(s) => Ok((s.to_dtype(DType::F32)?.contiguous()?.copy()?, false)),
                None => Ok((w.zeros_like()?, true)),
            }
        };
        match cfg.kind {
            OptimizerKind::Sgd => {
                let (buf, fresh) = state(&mut self.m)?;
                // torch: buf = d on the first step, momentum·buf + d after (and without momentum, buf = d).
                let momentum = if fresh || cfg.momentum <= 0.0 {
                    0.0
                } else {
                    cfg.momentum
                };
                buf.inplace_op3(
                    g,
                    w,
                    &fused::SgdBuffer {
                        momentum,
                        scale,
                        wd,
                    },
                )?;
                w.inplace_op2(&buf, &fused::Axpy { alpha: -lr })?;
                self.m = Some(buf);
            }
            OptimizerKind::Adamw => {
                let (m, _) = state(&mut self.m)?;
                let (v, _) = state(&mut self.v)?;
                m.inplace_op2(
                    g,
                    &fused::Moment {
                        beta: cfg.beta1,
                        scale,
                        square: false,
                    },
                )?;
                v.inplace_op2(
                    g,
                    &fused::Moment {
                        beta: cfg.beta2,
                        scale,
                        square: true,
                    },
                )?;
                w.inplace_op3(
                    &m,
                    &v,
                    &fused::AdamWStep {
                        lr,
                        wd,
                        bc1: 1.0 - cfg.beta1.powi(t),
                        bc2: 1.0 - cfg.beta2.powi(t),
                        eps: cfg.eps,
                    },
                )?;
                self.m = Some(m);
                self.v = Some(v);
            }
        }
        Ok(())
    }
}

/// In-place optimiser kernels on contiguous f32 CPU tensors (candle `InplaceOp`s), and the gradient norm.
mod fused {
    use candle_core::{
        CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor,
    };

    /// Whether every tensor is a contiguous f32 CPU tensor (the kernels' precondition).
    pub(super) fn applies(ts: &[&Tensor]) -> bool {
        ts.iter().all(|t| {
            matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.is_contiguous()
        })
    }

    /// Σ g², accumulated in f64 over f32 lanes.
    pub(super) fn sum_sq(g: &Tensor) -> Result<f64> {
        if !applies(&[g]) {
            return g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>();
        }
        let (storage, layout) = g.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("sum_sq: not a CPU tensor")
        };
        let xs = read(cpu, layout)?;
        Ok(xs
            .chunks(4096)
            .map(|c| {
                let mut acc = [0f32; 8];
                for (i, v) in c.iter().enumerate() {
                    acc[i & 7] += v * v;
                }
                acc.iter().map(|&a| a as f64).sum::<f64>()
            })
            .sum())
    }

    fn read<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("optimizer state must be contiguous".into()))?;
        Ok(&s.as_slice::<f32>()?[a..b])
    }

    fn write<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("optimizer state must be contiguous".into()))?;
        match s {
            CpuStorage::F32(v) => Ok(&mut v[a..b]),
            _ => candle_core::bail!("optimizer state must be f32"),
        }
    }

    /// `f(dst[i], a[i])` for every element, after checking the lengths agree.
    fn map2(
        name: &str,
        (s1, l1): (&mut CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        f: impl Fn(&mut f32, f32),
    ) -> Result<()> {
        let (dst, a) = (write(s1, l1)?, read(s2, l2)?);
        if dst.len() != a.len() {
            candle_core::bail!("{name}: {} elements updated from {}", dst.len(), a.len());
        }
        dst.iter_mut().zip(a).for_each(|(d, &a)| f(d, a));
        Ok(())
    }

    /// `f(dst[i], a[i], b[i])` for every element, after checking the lengths agree.
    fn map3(
        name: &str,
        (s1, l1): (&mut CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
        f: impl Fn(&mut f32, f32, f32),
    ) -> Result<()> {
        let (dst, a, b) = (write(s1, l1)?, read(s2, l2)?, read(s3, l3)?);
        if dst.len() != a.len() || dst.len() != b.len() {
            candle_core::bail!(
                "{name}: {} elements updated from {} and {}",
                dst.len(),
                a.len(),
                b.len()
            );
        }
        dst.iter_mut()
            .zip(a)
            .zip(b)
            .for_each(|((d, &a), &b)| f(d, a, b));
        Ok(())
    }

    /// `buf = momentum·buf + scale·g + wd·w` (SGD's momentum buffer with L2 decay folded into the gradient).
    pub(super) struct SgdBuffer {
        pub(super) momentum: f64,
        pub(super) scale: f64,
        pub(super) wd: f64,
    }

    impl InplaceOp3 for SgdBuffer {
        fn name(&self) -> &'static str {
            "kestrel-sgd-buffer"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let (m, s, wd) = (self.momentum as f32, self.scale as f32, self.wd as f32);
            map3(self.name(), (s1, l1), (s2, l2), (s3, l3), |b, g, w| {
                *b = m * *b + s * g + wd * w
            })
        }
    }

    /// `w += alpha·x`.
    pub(super) struct Axpy {
        pub(super) alpha: f64,
    }

    impl InplaceOp2 for Axpy {
        fn name(&self) -> &'static str {
            "kestrel-axpy"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<()> {
            let a = self.alpha as f32;
            map2(self.name(), (s1, l1), (s2, l2), |w, x| *w += a * x)
        }
    }

    /// Adam's moment: `m = β·m + (1 − β)·(scale·g)` (or of `(scale·g)²`).
    pub(super) struct Moment {
        pub(super) beta: f64,
        pub(super) scale: f64,
        pub(super) square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "kestrel-adam-moment"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<()> {
            let (b, s) = (self.beta as f32, self.scale as f32);
            if self.square {
                map2(self.name(), (s1, l1), (s2, l2), |m, g| {
                    *m = b * *m + (1.0 - b) * (s * g) * (s * g)
                })
            } else {
                map2(self.name(), (s1, l1), (s2, l2), |m, g| {
                    *m = b * *m + (1.0 - b) * (s * g)
                })
            }
        }
    }

    /// AdamW's step: `w = w·(1 − lr·wd) − lr·(m / bc1) / (sqrt(v / bc2) + eps)`.
    pub(super) struct AdamWStep {
        pub(super) lr: f64,
        pub(super) wd: f64,
        pub(super) bc1: f64,
        pub(super) bc2: f64,
        pub(super) eps: f64,
    }

    impl InplaceOp3 for AdamWStep {
        fn name(&self) -> &'static str {
            "kestrel-adamw-step"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let decay = (1.0 - self.lr * self.wd) as f32;
            let (lr, bc1, bc2, eps) = (
                self.lr as f32,
                self.bc1 as f32,
                self.bc2 as f32,
                self.eps as f32,
            );
            map3(self.name(), (s1, l1), (s2, l2), (s3, l3), |w, m, v| {
                *w = *w * decay - lr * (m / bc1) / ((v / bc2).sqrt() + eps)
            })
        }
    }
}

/// An optimiser over the trainable variables of a [`VarMap`].
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<Param>,
    /// Updates applied so far (AdamW bias correction).
    t: u64,
}

/// BatchNorm running statistics live in the `VarMap` (so they are saved) but are updated by the forward pass, not by
/// gradients.
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl Optimizer {
    /// All variables of `vm` except BatchNorm running statistics and DS2's momentum networks (a moving average
    /// updates those); weight decay on tensors of rank ≥ 2 only.
    pub fn new(vm: &VarMap, cfg: OptimizerConfig) -> Self {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        let mut names: Vec<&String> = data
            .keys()
            .filter(|n| !is_running_stat(n) && !n.starts_with(super::ds2::MOMENTUM_PREFIX))
            .collect();
        names.sort();
        let params = names
            .into_iter()
            .map(|n| {
                let var = data[n].clone();
                Param {
                    name: n.clone(),
                    decay: var.rank() >= 2,
                    var,
                    m: None,
                    v: None,
                }
            })
            .collect();
        Self { cfg, params, t: 0 }
    }

    /// Trainable tensors and how many of them are weight-decayed.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.params.len(),
            self.params.iter().filter(|p| p.decay).count(),
        )
    }

    /// Backpropagate `loss`, clip the global gradient norm to `clip` (if given), and apply one update at learning
    /// rate `lr`. Returns the gradient norm before clipping.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64, clip: Option<f64>) -> Result<f64> {
        let grads = loss.backward()?;
        let mut gs: Vec<Option<Tensor>> = Vec::with_capacity(self.params.len());
        let mut sq = 0f64;
        for p in &self.params {
            let g = grads.get(p.var.as_tensor()).cloned();
            if let Some(g) = &g {
                sq += fused::sum_sq(g)?;
            }
            gs.push(g);
        }
        let norm = sq.sqrt();
        let scale = match clip {
            Some(c) if norm > c && norm.is_finite() => c / (norm + 1e-6),
            _ => 1.0,
        };
        self.t += 1;
        let cfg = self.cfg.clone();
        let t = self.t as i32;
        for (p, g) in self.params.iter_mut().zip(gs) {
            let Some(g) = g else { continue };
            // Detach everything the update touches: the gradient and the weight still reference this step's
            // graph, and a momentum buffer built from them would keep every step's graph alive through the
            // chain buf_t → buf_{t−1} → … (memory grows by the activations of each step until the OOM killer).
            let g = g.detach();
            let wd = if p.decay { cfg.weight_decay } else { 0.0 };
            if fused::applies(&[p.var.as_tensor(), &g]) {
                p.update_fused(&cfg, &g, scale, wd, lr, t)?;
                continue;
            }
            let g = if scale != 1.0 { (g * scale)? } else { g };
            let w = &p.var.as_tensor().detach();
            match cfg.kind {
                OptimizerKind::Sgd => {
                    let d = if wd > 0.0 { (&g + (w * wd)?)? } else { g };
                    let buf = match p.m.take() {
                        Some(b) if cfg.momentum > 0.0 => ((b * cfg.momentum)? + &d)?,
                        _ => d,
                    };
                    p.var.set(&(w - (&buf * lr)?)?)?;
                    p.m = Some(buf.detach());
                }
                OptimizerKind::Adamw => {
                    let m = match p.m.take() {
                        Some(m) => ((m * cfg.beta1)? + (&g * (1.0 - cfg.beta1))?)?,
                        None => (&g * (1.0 - cfg.beta1))?,
                    };
                    let v = match p.v.take() {
                        Some(v) => ((v * cfg.beta2)? + (g.sqr()? * (1.0 - cfg.beta2))?)?,
                        None => (g.sqr()? * (1.0 - cfg.beta2))?,
                    };
                    let bc1 = 1.0 - cfg.beta1.powi(t);
                    let bc2 = 1.0 - cfg.beta2.powi(t);
                    let denom = ((&v / bc2)?.sqrt()? + cfg.eps)?;
                    let step = ((&m / bc1)? / denom)?;
                    let decayed = if wd > 0.0 {
                        (w * (1.0 - lr * wd))?
                    } else {
                        w.clone()
                    };
                    p.var.set(&(decayed - (step * lr)?)?)?;
                    p.m = Some(m.detach());
                    p.v = Some(v.detach());
                }
            }
        }
        Ok(norm)
    }

    /// The optimiser state as named tensors (`m.<param>`, `v.<param>`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            if let Some(m) = &p.m {
                out.insert(format!("m.{}", p.name), m.clone());
            }
            if let Some(v) = &p.v {
                out.insert(format!("v.{}", p.name), v.clone());
            }
        }
        out
    }

    /// Restore [`state`](Self::state) and the update count; tensors of unknown parameters or wrong shape are an
    /// error (the checkpoint belongs to another network).
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for p in &mut self.params {
            for (slot, key) in [
                (&mut p.m, format!("m.{}", p.name)),
                (&mut p.v, format!("v.{}", p.name)),
            ] {
                if let Some(s) = state.remove(&key) {
                    if s.shape() != p.var.shape() {
                        candle_core::bail!(
                            "optimizer state {key} has shape {:?}, the parameter has {:?}",
                            s.dims(),
                            p.var.dims()
                        );
                    }
                    *slot = Some(s);
                }
            }
        }
        if let Some(k) = state.keys().next() {
            candle_core::bail!("optimizer state has {k}, which is not a parameter of this network");
        }
        self.t = t;
        Ok(())
    }

    /// Updates applied so far.
    pub fn updates(&self) -> u64 {
        self.t
    }
}

/// Cosine decay to `final_fraction × base` after a linear warm-up from 0, the schedule of every pretraining recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Peak learning rate (reached at the end of warm-up).
    pub base_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Total steps.
    pub total_steps: u64,
    /// Learning rate at the last step, as a fraction of `base_lr`.
    pub final_fraction: f64,
}

impl Schedule {
    /// Learning rate for step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let floor = self.base_lr * self.final_fraction;
        floor + (self.base_lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{Init, VarBuilder};

    /// Minimise ½‖w − target‖² and compare with PyTorch's update rule written out by hand. f32 takes the fused
    /// in-place kernels, f64 the tensor-op path.
    fn one_param(kind: OptimizerKind, wd: f64, dtype: DType) -> (Vec<f32>, Vec<f32>) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
        let w = vb.get_with_hints((2, 2), "w", Init::Const(1.0)).unwrap();
        let target = Tensor::new(&[[0.0f32, 2.0], [3.0, -1.0]], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let mut cfg = if kind == OptimizerKind::Sgd {
            OptimizerConfig::sgd()
        } else {
            OptimizerConfig::adamw()
        };
        cfg.weight_decay = wd;
        let mut opt = Optimizer::new(&vm, cfg.clone());
        let lr = 0.1;
        let mut w_ref = [1.0f64; 4];
        let t_ref = [0.0f64, 2.0, 3.0, -1.0];
        let (mut m, mut v) = ([0.0f64; 4], [0.0f64; 4]);
        for t in 1..=3 {
            let loss = ((&w - &target).unwrap().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            opt.backward_step(&loss, lr, None).unwrap();
            for i in 0..4 {
                let g = w_ref[i] - t_ref[i];
                match kind {
                    OptimizerKind::Sgd => {
                        let d = g + wd * w_ref[i];
                        m[i] = if t == 1 { d } else { 0.9 * m[i] + d };
                        w_ref[i] -= lr * m[i];
                    }
                    OptimizerKind::Adamw => {
                        m[i] = 0.9 * m[i] + 0.1 * g;
                        v[i] = 0.999 * v[i] + 0.001 * g * g;
                        let mh = m[i] / (1.0 - 0.9f64.powi(t));
                        let vh = v[i] / (1.0 - 0.999f64.powi(t));
                        w_ref[i] = w_ref[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + 1e-8);
                    }
                }
            }
        }
        let got = vm.data().lock().unwrap()["w"]
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (got, w_ref.iter().map(|&x| x as f32).collect())
    }

    #[test]
    fn sgd_and_adamw_follow_pytorch_update_rules() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
            for (wd, dtype) in [(0.0, DType::F32), (0.05, DType::F32), (0.05, DType::F64)] {
                let (got, want) = one_param(kind, wd, dtype);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "{kind:?} wd={wd} {dtype:?}: {got:?} vs {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_decay_skips_batch_norm_and_bias_and_running_stats_are_not_trained() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        candle_nn::conv2d(3, 4, 3, Default::default(), vb.pp("conv")).unwrap();
        candle_nn::batch_norm(4, 1e-5, vb.pp("bn")).unwrap();
        let opt = Optimizer::new(&vm, OptimizerConfig::sgd());
        let decayed: Vec<&str> = opt
            .params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(decayed, ["conv.weight"]);
        assert!(opt.params.iter().all(|p| !is_running_stat(&p.name)));
        assert_eq!(opt.counts(), (4, 1)); // conv weight + bias, bn weight + bias
    }

    #[test]
    fn clipping_bounds_the_update() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let w = vb.get_with_hints(4, "w", Init::Const(0.0)).unwrap();
        let mut cfg = OptimizerConfig::sgd();
        cfg.momentum = 0.0;
        cfg.weight_decay = 0.0;
        let mut opt = Optimizer::new(&vm, cfg);
        let loss = (w.sum_all().unwrap() * 100.0).unwrap(); // gradient 100 per element, norm 200
        let norm = opt.backward_step(&loss, 1.0, Some(1.0)).unwrap();
        assert!((norm - 200.0).abs() < 1e-3);
        let after = vm.data().lock().unwrap()["w"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        let step: f32 = after.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((step - 1.0).abs() < 1e-3, "clipped update has norm {step}");
    }

    #[test]
    fn state_round_trips_and_rejects_foreign_tensors() {
        let (vm, mut opt) = {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let w = vb.get_with_hints((3, 3), "w", Init::Const(1.0)).unwrap();
            let mut opt = Optimizer::new(&vm, OptimizerConfig::adamw());
            opt.backward_step(&w.sqr().unwrap().sum_all().unwrap(), 0.01, None)
                .unwrap();
            (vm, opt)
        };
        let state = opt.state();
        assert_eq!(state.len(), 2);
        // Regression: state built from tracked tensors kept every step's graph alive (23 GB after 120 steps).
        assert!(
            state.values().all(|t| !t.track_op()),
            "optimizer state must not hold a graph"
        );
        let mut fresh = Optimizer::new(&vm, OptimizerConfig::adamw());
        fresh.load_state(state.clone(), opt.updates()).unwrap();
        assert_eq!(fresh.updates(), 1);
        let mut bad = state;
        bad.insert(
            "m.nope".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(opt.load_state(bad, 1).is_err());
    }

    #[test]
    fn schedule_warms_up_then_follows_a_cosine() {
        let s = Schedule {
            base_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            final_fraction: 0.0,
        };
        assert!((s.lr(0) - 0.01).abs() < 1e-12);
        assert!((s.lr(9) - 0.1).abs() < 1e-12);
        assert!((s.lr(10) - 0.1).abs() < 1e-12);
        assert!((s.lr(60) - 0.05).abs() < 1e-12);
        assert!(s.lr(109) < 1e-3);
        assert!((1..110).all(|t| t < 10 || s.lr(t) <= s.lr(t - 1) + 1e-15));
    }
}
