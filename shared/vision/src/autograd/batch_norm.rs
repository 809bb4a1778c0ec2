//! Training-mode BatchNorm with its ReLU (and residual add) fused, forward and backward.
//!
//! candle-nn's `BatchNorm::forward_train` is a chain of about ten tensor ops (transpose, copy, mean, subtract,
//! square, mean, divide, transpose, multiply, add), each a pass over the activation, and the autograd graph adds as
//! many again backwards; the ReLU and the residual add after it are more. Here the forward is two passes (channel
//! statistics, then `relu(γ·x̂ + β (+ r))`) and the backward two (the channel sums `Σg'` and `Σg'·x̂`, then `dx`),
//! per channel, in parallel over channels (docs/training.md, "BatchNorm").
//!
//! The running statistics are updated exactly as candle-nn does (momentum on the batch mean and on the unbiased
//! batch variance), so checkpoints and BatchNorm folding do not change.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, Var};
use rayon::prelude::*;

use crate::conv::{contiguous_f32, with_cpu_f32, ConvError, Epilogue, OutPtr};

/// One training-mode BatchNorm layer: its affine parameters and the running statistics it updates.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormTrain<'a> {
    /// γ, one per channel.
    pub gamma: &'a Tensor,
    /// β, one per channel.
    pub beta: &'a Tensor,
    /// Running mean, updated in place on every forward.
    pub running_mean: &'a Var,
    /// Running (unbiased) variance, updated in place on every forward.
    pub running_var: &'a Var,
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the batch statistics in the running ones.
    pub momentum: f64,
}

/// Per-channel statistics of one batch.
#[derive(Debug, Clone, Default)]
struct BatchStats {
    mean: Vec<f32>,
    /// Biased variance (what the normalisation divides by).
    var: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    invstd: Vec<f32>,
}

impl BatchNormTrain<'_> {
    /// `epilogue(γ·(x − μ_B)/σ_B + β)` with batch statistics, updating the running statistics.
    ///
    /// f32 CPU tensors take the fused kernels; anything else runs the same computation in candle ops.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue<'_>) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if self.gamma.dims() != [c] || self.beta.dims() != [c] {
            return Err(ConvError::Bias {
                expected: c,
                got: self.gamma.dims().to_vec(),
            }
            .into());
        }
        let count = n * h * w;
        let fast = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
        let residual_ok = match epilogue {
            Epilogue::AddRelu(r) => fast(r),
            _ => true,
        };
        let (y, mean, var) = if fast(x) && fast(self.gamma) && fast(self.beta) && residual_ok {
            let stats = Arc::new(Mutex::new(None));
            let op = FusedBatchNorm {
                eps: self.eps as f32,
                relu: !matches!(epilogue, Epilogue::Linear),
                stats: stats.clone(),
            };
            // γ and β travel as one (2, C) operand so the residual fits a three-input op.
            let gb = Tensor::stack(&[self.gamma, self.beta], 0)?;
            let x = x.contiguous()?;
            let y = match epilogue {
                Epilogue::AddRelu(r) => {
                    x.apply_op3_arc(&gb, &r.contiguous()?, Arc::new(Box::new(op)))?
                }
                _ => x.apply_op2_arc(&gb, Arc::new(Box::new(op)))?,
            };
            let s = stats
                .lock()
                .map_err(|_| ConvError::Unsupported("an unpoisoned statistics lock"))?
                .as_ref()
                .map(|s| (s.mean.clone(), s.var.clone()))
                .ok_or(ConvError::Unsupported("statistics from the forward pass"))?;
            let mean = Tensor::from_vec(s.0, c, &Device::Cpu)?;
            let var = Tensor::from_vec(s.1, c, &Device::Cpu)?;
            (y, mean, var)
        } else {
            self.forward_candle(x, epilogue)?
        };
        // candle-nn's update: running = (1 − m)·running + m·batch, the variance unbiased (count / (count − 1)).
        let m = self.momentum;
        let unbias = count as f64 / (count.max(2) - 1) as f64;
        let rm =
            ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.to_device(x.device())? * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))?
            + (var.to_device(x.device())? * (m * unbias))?)?;
        self.running_mean.set(&rm.detach())?;
        self.running_var.set(&rv.detach())?;
        Ok(y)
    }

    /// The same computation in candle ops: (output, batch mean, biased batch variance).
    fn forward_candle(
        &self,
        x: &Tensor,
        epilogue: Epilogue<'_>,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (n, c, h, w) = x.dims4()?;
        let xt = x.transpose(0, 1)?.reshape((c, n * h * w))?;
        let mean = xt.mean_keepdim(1)?;
        let xc = xt.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(1)?;
        let xhat = xc.broadcast_div(&(&var + self.eps)?.sqrt()?)?;
        let y = xhat
            .broadcast_mul(&self.gamma.reshape((c, 1))?)?
            .broadcast_add(&self.beta.reshape((c, 1))?)?
            .reshape((c, n, h, w))?
            .transpose(0, 1)?;
        let y = match epilogue {
            Epilogue::Linear => y,
            Epilogue::Relu => y.relu()?,
            Epilogue::AddRelu(r) => (y + r)?.relu()?,
        };
        Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
    }
}

/// The fused op: inputs `x` (N×C×H×W), `gb` (2×C: γ then β) and, for a residual block, `r` (x's shape).
struct FusedBatchNorm {
    eps: f32,
    relu: bool,
    /// Written by the forward: read by the caller (running statistics) and by the backward.
    stats: Arc<Mutex<Option<BatchStats>>>,
}

/// Sizes of one BatchNorm input.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    /// Pixels per plane.
    p: usize,
}

impl Dims {
    fn new(x: &[usize], gb: &[usize]) -> Result<Self, ConvError> {
        let [n, c, h, w] = *x else {
            return Err(ConvError::Rank {
                what: "batch-norm input",
                got: x.to_vec(),
            });
        };
        if gb != [2, c] {
            return Err(ConvError::Bias {
                expected: c,
                got: gb.to_vec(),
            });
        }
        Ok(Self { n, c, p: h * w })
    }

    /// Elements per channel over the batch.
    fn count(&self) -> usize {
        self.n * self.p
    }

    /// The planes of channel `ch`, one per image.
    fn planes(&self, ch: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.n).map(move |b| {
            let o = (b * self.c + ch) * self.p;
            o..o + self.p
        })
    }
}

/// Σ xs in eight f32 lanes (vectorised), returned in f64 so channel totals over a batch keep their precision.
fn lane_sum(xs: impl Iterator<Item = f32>) -> f64 {
    let mut acc = [0f32; 8];
    for (i, v) in xs.enumerate() {
        acc[i & 7] += v;
    }
    acc.iter().map(|&v| v as f64).sum()
}

impl FusedBatchNorm {
    fn forward(
        &self,
        x: &[f32],
        d: Dims,
        gb: &[f32],
        residual: Option<&[f32]>,
    ) -> candle_core::Result<Vec<f32>> {
        let m = d.count().max(1) as f64;
        let per_channel: Vec<(f32, f32)> = (0..d.c)
            .into_par_iter()
            .map(|ch| {
                let mean = d
                    .planes(ch)
                    .map(|r| lane_sum(x[r].iter().copied()))
                    .sum::<f64>()
                    / m;
                let mf = mean as f32;
                let var = d
                    .planes(ch)
                    .map(|r| lane_sum(x[r].iter().map(|&v| (v - mf) * (v - mf))))
                    .sum::<f64>()
                    / m;
                (mf, var as f32)
            })
            .collect();
        let stats = BatchStats {
            mean: per_channel.iter().map(|s| s.0).collect(),
            var: per_channel.iter().map(|s| s.1).collect(),
            invstd: per_channel
                .iter()
                .map(|s| 1.0 / (s.1 + self.eps).sqrt())
                .collect(),
        };
        let len = d.n * d.c * d.p;
        let mut y: Vec<f32> = Vec::with_capacity(len);
        let out = OutPtr(y.as_mut_ptr());
        let relu = self.relu;
        (0..d.n * d.c).into_par_iter().for_each(|plane| {
            let ch = plane % d.c;
            let a = gb[ch] * stats.invstd[ch];
            let shift = gb[d.c + ch] - stats.mean[ch] * a;
            let r = plane * d.p..(plane + 1) * d.p;
            // SAFETY: plane `plane` of the output is written by this task alone, inside the allocation of len.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(r.start), d.p) };
            let src = &x[r.clone()];
            match residual {
                Some(res) => {
                    for ((o, &v), &rv) in dst.iter_mut().zip(src).zip(&res[r]) {
                        let s = v * a + shift + rv;
                        *o = if s > 0.0 { s } else { 0.0 };
                    }
                }
                None if relu => {
                    for (o, &v) in dst.iter_mut().zip(src) {
                        let s = v * a + shift;
                        *o = if s > 0.0 { s } else { 0.0 };
                    }
                }
                None => {
                    for (o, &v) in dst.iter_mut().zip(src) {
                        *o = v * a + shift;
                    }
                }
            }
        });
        // SAFETY: every plane was written above.
        unsafe { y.set_len(len) };
        *self
            .stats
            .lock()
            .map_err(|_| ConvError::Unsupported("an unpoisoned statistics lock"))? = Some(stats);
        Ok(y)
    }

    /// (dx, d(γ, β), dr): gradients given the forward's input `x`, output `y` and output gradient `g`.
    fn backward(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        g: &Tensor,
        with_residual: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let d = Dims::new(x.dims(), gb.dims())?;
        let stats = self
            .stats
            .lock()
            .map_err(|_| ConvError::Unsupported("an unpoisoned statistics lock"))?
            .clone()
            .ok_or(ConvError::Unsupported("statistics from the forward pass"))?;
        let (x, y, g) = (x.contiguous()?, y.contiguous()?, g.contiguous()?);
        let len = d.n * d.c * d.p;
        let mut dx: Vec<f32> = Vec::with_capacity(len);
        let mut dr: Vec<f32> = Vec::with_capacity(if with_residual { len } else { 0 });
        let (dx_out, dr_out) = (OutPtr(dx.as_mut_ptr()), OutPtr(dr.as_mut_ptr()));
        let relu = self.relu;
        let m = d.count().max(1) as f32;
        let dgb: Vec<(f32, f32)> = with_cpu_f32(&x, |x| {
            with_cpu_f32(&y, |y| {
                with_cpu_f32(&g, |g| {
                    with_cpu_f32(gb, |gb| {
                        Ok((0..d.c)
                            .into_par_iter()
                            .map(|ch| {
                                let (mu, is) = (stats.mean[ch], stats.invstd[ch]);
                                // g' = g masked by the ReLU (y > 0 exactly where its input was positive).
                                let masked = |r: std::ops::Range<usize>| {
                                    g[r.clone()].iter().zip(&y[r]).map(move |(&gv, &yv)| {
                                        if !relu || yv > 0.0 {
                                            gv
                                        } else {
                                            0.0
                                        }
                                    })
                                };
                                let (mut sg, mut sgx) = (0f64, 0f64);
                                for r in d.planes(ch) {
                                    sg += lane_sum(masked(r.clone()));
                                    sgx += lane_sum(
                                        masked(r.clone())
                                            .zip(&x[r])
                                            .map(|(gv, &xv)| gv * (xv - mu)),
                                    );
                                }
                                let (sg, sgx) = (sg as f32, sgx as f32);
                                // dx = a·g' − a·Σg'/M − a·is²·Σg'(x − μ)/M·(x − μ), a = γ·is.
                                let a = gb[ch] * is;
                                let k0 = -a * sg / m;
                                let k2 = -a * is * is * sgx / m;
                                for r in d.planes(ch) {
                                    // SAFETY: plane r of channel ch is written by this task alone.
                                    let dst = unsafe {
                                        std::slice::from_raw_parts_mut(
                                            dx_out.get().add(r.start),
                                            d.p,
                                        )
                                    };
                                    for ((o, gv), &xv) in
                                        dst.iter_mut().zip(masked(r.clone())).zip(&x[r.clone()])
                                    {
                                        *o = a * gv + k0 + k2 * (xv - mu);
                                    }
                                    if with_residual {
                                        // SAFETY: as above, for the residual gradient.
                                        let dst = unsafe {
                                            std::slice::from_raw_parts_mut(
                                                dr_out.get().add(r.start),
                                                d.p,
                                            )
                                        };
                                        for (o, gv) in dst.iter_mut().zip(masked(r)) {
                                            *o = gv;
                                        }
                                    }
                                }
                                (sgx * is, sg)
                            })
                            .collect())
                    })
                })
            })
        })?;
        // SAFETY: every plane of every channel was written above (dr only when it was allocated for len).
        unsafe {
            dx.set_len(len);
            if with_residual {
                dr.set_len(len);
            }
        }
        let dims = x.dims().to_vec();
        let mut dgb_flat: Vec<f32> = dgb.iter().map(|v| v.0).collect();
        dgb_flat.extend(dgb.iter().map(|v| v.1));
        let dx = Tensor::from_vec(dx, dims.clone(), &Device::Cpu)?;
        let dgb = Tensor::from_vec(dgb_flat, (2, d.c), &Device::Cpu)?;
        let dr = with_residual
            .then(|| Tensor::from_vec(dr, dims, &Device::Cpu))
            .transpose()?;
        Ok((dx, dgb, dr))
    }
}

impl CustomOp2 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "kestrel-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims())?;
        let y = self.forward(contiguous_f32(s1, l1)?, d, contiguous_f32(s2, l2)?, None)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, _) = self.backward(x, gb, res, grad, false)?;
        Ok((Some(dx), Some(dgb)))
    }
}

impl CustomOp3 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "kestrel-batch-norm-add-relu-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims())?;
        if l3.dims() != l1.dims() {
            return Err(ConvError::Residual {
                expected: l1.dims().to_vec(),
                got: l3.dims().to_vec(),
            }
            .into());
        }
        let y = self.forward(
            contiguous_f32(s1, l1)?,
            d,
            contiguous_f32(s2, l2)?,
            Some(contiguous_f32(s3, l3)?),
        )?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        _r: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, dr) = self.backward(x, gb, res, grad, true)?;
        Ok((Some(dx), Some(dgb), dr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{BatchNormConfig, ModuleT, VarBuilder, VarMap};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::testing::max_abs_diff(a, b).unwrap() as f32
    }

    /// Forward, gradients of x, γ, β (and the residual) and the running statistics against candle-nn's BatchNorm
    /// followed by candle's ReLU / add, for each epilogue.
    #[test]
    fn matches_candle_nn_batch_norm_and_its_gradients() {
        let dev = Device::Cpu;
        for (case, (n, c, h, w)) in [(4, 3, 5, 6), (2, 8, 8, 8), (1, 2, 3, 1)]
            .into_iter()
            .enumerate()
        {
            for kind in 0..3 {
                let vm = VarMap::new();
                let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
                let bn = candle_nn::batch_norm(
                    c,
                    BatchNormConfig {
                        eps: 1e-5,
                        momentum: 0.1,
                        ..Default::default()
                    },
                    vb.pp("bn"),
                )
                .unwrap();
                let (gamma, beta) = bn.weight_and_bias().unwrap();
                // Non-trivial affine parameters (they start at 1 and 0).
                let gamma_var = Var::from_tensor(gamma).unwrap();
                gamma_var
                    .set(&Tensor::randn(1f32, 0.3, c, &dev).unwrap())
                    .unwrap();
                let beta_var = Var::from_tensor(beta).unwrap();
                beta_var
                    .set(&Tensor::randn(0f32, 0.3, c, &dev).unwrap())
                    .unwrap();
                let rm = Var::from_tensor(bn.running_mean()).unwrap();
                let rv = Var::from_tensor(bn.running_var()).unwrap();
                // A shifted, scaled input so the mean and variance matter.
                let x = Var::from_tensor(
                    &((Tensor::randn(0f32, 2.0, (n, c, h, w), &dev).unwrap() + 3.0).unwrap()),
                )
                .unwrap();
                let r = Var::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
                let u = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
                let epilogue = match kind {
                    0 => Epilogue::Linear,
                    1 => Epilogue::Relu,
                    _ => Epilogue::AddRelu(r.as_tensor()),
                };
                // Reference first (it updates the running stats once), keep them, then ours from the same start.
                let before = (
                    rm.as_tensor().copy().unwrap(),
                    rv.as_tensor().copy().unwrap(),
                );
                let yr = bn.forward_t(x.as_tensor(), true).unwrap();
                let yr = match epilogue {
                    Epilogue::Linear => yr,
                    Epilogue::Relu => yr.relu().unwrap(),
                    Epilogue::AddRelu(r) => (yr + r).unwrap().relu().unwrap(),
                };
                let after_ref = (
                    rm.as_tensor().copy().unwrap(),
                    rv.as_tensor().copy().unwrap(),
                );
                rm.set(&before.0).unwrap();
                rv.set(&before.1).unwrap();
                let layer = BatchNormTrain {
                    gamma,
                    beta,
                    running_mean: &rm,
                    running_var: &rv,
                    eps: 1e-5,
                    momentum: 0.1,
                };
                let yo = layer.forward(x.as_tensor(), epilogue).unwrap();
                let at = format!("case {case} epilogue {kind}");
                // 1e-4: with three samples per channel the variance can be small, and f32 rounding of the mean is then
                // amplified by 1/σ in both implementations (a real error would be of order one).
                let e = max_diff(&yo, &yr);
                assert!(e < 1e-4, "{at}: forward differs by {e}");
                assert!(
                    max_diff(rm.as_tensor(), &after_ref.0) < 1e-6,
                    "{at}: running mean"
                );
                assert!(
                    max_diff(rv.as_tensor(), &after_ref.1) < 1e-5,
                    "{at}: running var"
                );
                let go = (yo * &u).unwrap().sum_all().unwrap().backward().unwrap();
                let gr = (yr * &u).unwrap().sum_all().unwrap().backward().unwrap();
                let mut vars = vec![("x", x.as_tensor()), ("gamma", gamma), ("beta", beta)];
                if kind == 2 {
                    vars.push(("residual", r.as_tensor()));
                }
                for (name, v) in vars {
                    let (a, b) = (go.get(v).unwrap(), gr.get(v).unwrap());
                    let scale = b
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        .max(1.0);
                    let e = max_diff(a, b) / scale;
                    assert!(e < 2e-5, "{at}: d{name} differs by {e} (relative)");
                }
            }
        }
    }

    #[test]
    fn candle_fallback_matches_the_fused_kernel() {
        let dev = Device::Cpu;
        let c = 4;
        let gamma = Tensor::randn(1f32, 0.3, c, &dev).unwrap();
        let beta = Tensor::randn(0f32, 0.3, c, &dev).unwrap();
        let rm = Var::zeros(c, DType::F32, &dev).unwrap();
        let rv = Var::ones(c, DType::F32, &dev).unwrap();
        let layer = BatchNormTrain {
            gamma: &gamma,
            beta: &beta,
            running_mean: &rm,
            running_var: &rv,
            eps: 1e-5,
            momentum: 0.1,
        };
        let x = Tensor::randn(0f32, 1.0, (3, c, 4, 4), &dev).unwrap();
        let fused = layer.forward(&x, Epilogue::Relu).unwrap();
        let (reference, _, _) = layer.forward_candle(&x, Epilogue::Relu).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
    }

    #[test]
    fn shape_errors_are_typed() {
        let dev = Device::Cpu;
        let gamma = Tensor::ones(3, DType::F32, &dev).unwrap();
        let beta = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let rm = Var::zeros(3, DType::F32, &dev).unwrap();
        let rv = Var::ones(3, DType::F32, &dev).unwrap();
        let layer = BatchNormTrain {
            gamma: &gamma,
            beta: &beta,
            running_mean: &rm,
            running_var: &rv,
            eps: 1e-5,
            momentum: 0.1,
        };
        let x = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev).unwrap();
        assert!(layer.forward(&x, Epilogue::Linear).is_err());
        let x = Tensor::zeros((2, 3, 9), DType::F32, &dev).unwrap();
        assert!(layer.forward(&x, Epilogue::Linear).is_err());
    }
}
