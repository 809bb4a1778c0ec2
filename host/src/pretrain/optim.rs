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
    /// All variables of `vm` except BatchNorm running statistics; weight decay on tensors of rank ≥ 2 only.
    pub fn new(vm: &VarMap, cfg: OptimizerConfig) -> Self {
        let data = vm.data().lock().expect("VarMap lock poisoned");
        let mut names: Vec<&String> = data.keys().filter(|n| !is_running_stat(n)).collect();
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
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
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
            let g = if scale != 1.0 { (g * scale)? } else { g };
            let w = &p.var.as_tensor().detach();
            let wd = if p.decay { cfg.weight_decay } else { 0.0 };
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

    /// Minimise ½‖w − target‖² and compare with PyTorch's update rule written out by hand.
    fn one_param(kind: OptimizerKind, wd: f64) -> (Vec<f32>, Vec<f32>) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let w = vb.get_with_hints((2, 2), "w", Init::Const(1.0)).unwrap();
        let target = Tensor::new(&[[0.0f32, 2.0], [3.0, -1.0]], &Device::Cpu).unwrap();
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
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (got, w_ref.iter().map(|&x| x as f32).collect())
    }

    #[test]
    fn sgd_and_adamw_follow_pytorch_update_rules() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
            for wd in [0.0, 0.05] {
                let (got, want) = one_param(kind, wd);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "{kind:?} wd={wd}: {got:?} vs {want:?}"
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
