//! A 2-D convolution with a backward pass on the fused GEMM machinery of [`crate::conv`].
//!
//! Forward, weight gradient and input gradient are three GEMMs over the same im2col tiles (docs/training.md,
//! "Convolution backward"):
//!
//! - **forward** `Y_b = W · col(X_b)`: [`crate::conv`]'s tiled kernel, unchanged;
//! - **weight gradient** `dW = Σ_b dY_b · col(X_b)ᵀ`: each thread accumulates its share of the (image, tile) pairs
//!   into its own `dW`, then the per-thread sums are added;
//! - **input gradient** for stride 1 (square kernel, padding ≤ kernel − 1): a stride-1 convolution of `dY` with the
//!   flipped, transposed kernel, i.e. the forward kernel again; for other strides `dcol = Wᵀ · dY_b` per tile,
//!   added back ("col2im") along the same contiguous runs im2col copies, into stride-phase planes that are then
//!   interleaved into `dX`. The input gradient is skipped when the input does not need one (the image at the stem).
//!
//! Everything that is not an f32 CPU tensor goes to candle's own `conv2d` and its backward.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::conv::{
    contiguous_f32, conv_f32, for_each_run, gemm_strided, with_buffer, with_cpu_f32, ConvError,
    ConvSpec, Geom, MatRef, OutPtr, Src, Tile, COL, TILE_BYTES, TMP,
};

/// `conv2d(x, weight)` (NCHW, OIHW; no bias: in a ResNet BatchNorm follows) with a backward pass.
///
/// On the CPU in f32 the forward and both gradients run on the fused GEMM kernels; elsewhere this is candle's
/// `conv2d`, whose backward candle provides.
pub fn conv2d(x: &Tensor, weight: &Tensor, spec: ConvSpec) -> candle_core::Result<Tensor> {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    if !(cpu_f32(x) && cpu_f32(weight)) {
        return x.conv2d(weight, spec.padding, spec.stride, 1, 1);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, TrainConv { spec })
}

/// The custom op behind [`conv2d`].
struct TrainConv {
    spec: ConvSpec,
}

impl CustomOp2 for TrainConv {
    fn name(&self) -> &'static str {
        "kestrel-conv2d-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.spec)?;
        let y = conv_f32(
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            None,
            None,
            false,
            &g,
            true,
        );
        Ok((CpuStorage::F32(y), Shape::from(g.out_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dims(), self.spec)?;
        if grad.dims() != g.out_dims() {
            return Err(ConvError::Residual {
                expected: g.out_dims().to_vec(),
                got: grad.dims().to_vec(),
            }
            .into());
        }
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            let dx = with_cpu_f32(&grad, |dy| with_cpu_f32(w, |w| Ok(input_grad(dy, w, &g))))?;
            Some(Tensor::from_vec(dx, x.dims(), &Device::Cpu)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let dw = with_cpu_f32(&grad, |dy| with_cpu_f32(x, |x| Ok(weight_grad(x, dy, &g))))?;
            Some(Tensor::from_vec(dw, w.dims(), &Device::Cpu)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Output columns per tile of the backward GEMMs: an im2col tile of about [`TILE_BYTES`], and at least 256 columns
/// so the weight gradient's GEMM (whose depth is the tile width) amortises reading and writing its `dW` block.
fn backward_tile(g: &Geom) -> usize {
    let rows = if g.pointwise() { 1 } else { g.k() };
    (TILE_BYTES / 4 / rows.max(1)).max(256).next_multiple_of(16)
}

/// The output gradient of a [`Tile`] as a GEMM operand (cout × cols): a view into `dy` for a single-image tile,
/// else the tile's images gathered side by side into `buf`.
fn dy_operand(dy: &[f32], g: &Geom, t: &Tile, buf: &mut [f32]) -> MatRef {
    let p = g.p();
    if t.nb == 1 {
        return MatRef {
            ptr: dy[t.b0 * g.cout * p + t.p0..].as_ptr(),
            rs: p,
            cs: 1,
        };
    }
    let cols = t.cols();
    for i in 0..t.nb {
        for co in 0..g.cout {
            buf[co * cols + i * p..][..p]
                .copy_from_slice(&dy[((t.b0 + i) * g.cout + co) * p..][..p]);
        }
    }
    MatRef {
        ptr: buf.as_ptr(),
        rs: cols,
        cs: 1,
    }
}

/// `dW (cout × k) = Σ_b dY_b (cout × P) · col(X_b)ᵀ (P × k)`.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let src = Src::new(x, g);
    let (k, cout) = (g.k(), g.cout);
    let threads = rayon::current_num_threads();
    let tiles = Tile::plan(g, backward_tile(g), threads, true);
    let parts = threads.min(tiles.len()).max(1);
    let partial = |part: usize| {
        let mut acc = vec![0f32; cout * k];
        let dst = OutPtr(acc.as_mut_ptr());
        for t in &tiles[tiles.len() * part / parts..tiles.len() * (part + 1) / parts] {
            let cols = t.cols();
            with_buffer(&TMP, if t.nb > 1 { cout * cols } else { 0 }, |buf| {
                let lhs = dy_operand(dy, g, t, buf);
                with_buffer(&COL, k * cols, |col| {
                    t.fill_cols(&src, g, col);
                    let col = MatRef {
                        ptr: col.as_ptr(),
                        rs: cols,
                        cs: 1,
                    };
                    // SAFETY: lhs = dY tile (cout × cols) inside `dy` or `buf`; col = k × cols, contiguous;
                    // dst = acc (cout × k), owned here.
                    unsafe { gemm_strided((cout, k, cols), dst, (k, 1), lhs, col.t(), true) };
                });
            });
        }
        acc
    };
    let mut parts: Vec<Vec<f32>> = (0..parts).into_par_iter().map(partial).collect();
    let mut dw = parts.swap_remove(0);
    for part in &parts {
        dw.par_iter_mut().zip(part).for_each(|(a, b)| *a += *b);
    }
    dw
}

/// `dX` of `Y = conv(X, W)` given `dY`.
pub(crate) fn input_grad(dy: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    if g.stride == 1 && g.kh == g.kw && g.pad < g.kh {
        transposed_conv_s1(dy, w, g)
    } else {
        col2im_grad(dy, w, g)
    }
}

/// Stride 1: `dX = conv(dY, W')` with `W'[ci][co][ky][kx] = W[co][ci][kh−1−ky][kw−1−kx]` and padding
/// `kh − 1 − pad`, which gives back the input's size. Runs on the (fully parallel) forward kernel.
fn transposed_conv_s1(dy: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    let (kh, kw) = (g.kh, g.kw);
    let mut wt = vec![0f32; w.len()];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            let src = &w[(co * g.cin + ci) * kh * kw..][..kh * kw];
            let dst = &mut wt[(ci * g.cout + co) * kh * kw..][..kh * kw];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    let gt = Geom {
        n: g.n,
        cin: g.cout,
        h: g.ho,
        w: g.wo,
        cout: g.cin,
        kh,
        kw,
        stride: 1,
        pad: kh - 1 - g.pad,
        ho: g.h,
        wo: g.w,
    };
    conv_f32(dy, &wt, None, None, false, &gt, true)
}

/// Any stride: `dcol = Wᵀ · dY` one [`Tile`] at a time, added back along im2col's runs into the stride-phase planes
/// of each image, which are then interleaved into `dX`. A task owns whole images (all tiles of one image, or one
/// multi-image tile), so no two threads add into the same plane.
fn col2im_grad(dy: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cout) = (g.k(), g.cout);
    let (phases, hp, wp) = Src::phase_layout(g);
    let plane = hp * wp;
    let cs = phases.len() * plane;
    let (h, wd, s) = (g.h, g.w, g.stride);
    let tiles = Tile::plan(g, backward_tile(g), rayon::current_num_threads(), true);
    // Tasks: runs of tiles that start at the same first image.
    let mut tasks: Vec<&[Tile]> = Vec::new();
    let mut rest = &tiles[..];
    while let Some(first) = rest.first() {
        let len = rest.iter().take_while(|t| t.b0 == first.b0).count();
        tasks.push(&rest[..len]);
        rest = &rest[len..];
    }
    let mut dx = vec![0f32; g.n * g.cin * h * wd];
    let image_len = g.cin * h * wd;
    let out = OutPtr(dx.as_mut_ptr());
    tasks.par_iter().for_each(|task| {
        let (b0, nb) = (task[0].b0, task[0].nb);
        // Wᵀ (k × cout) as a strided view of W (cout × k).
        let wt = MatRef {
            ptr: w.as_ptr(),
            rs: 1,
            cs: k,
        };
        let mut ph = vec![0f32; nb * g.cin * cs];
        for t in task.iter() {
            let cols = t.cols();
            with_buffer(&TMP, if t.nb > 1 { cout * cols } else { 0 }, |buf| {
                let dyt = dy_operand(dy, g, t, buf);
                with_buffer(&COL, k * cols, |col| {
                    // SAFETY: dst = col (k × cols contiguous), lhs = Wᵀ (k × cout) inside `w`, rhs = dY tile.
                    unsafe {
                        gemm_strided(
                            (k, cols, cout),
                            OutPtr(col.as_mut_ptr()),
                            (cols, 1),
                            wt,
                            dyt,
                            false,
                        )
                    };
                    for i in 0..t.nb {
                        let phi = &mut ph[i * g.cin * cs..][..g.cin * cs];
                        if g.pointwise() {
                            // One phase of ho × wo: the columns are that plane's pixels.
                            for ci in 0..g.cin {
                                let src = &col[ci * cols + i * t.tw..][..t.tw];
                                for (d, v) in phi[ci * cs + t.p0..].iter_mut().zip(src) {
                                    *d += *v;
                                }
                            }
                            continue;
                        }
                        for_each_run(g, wp, t.p0, t.tw, |r| {
                            if r.lo < r.hi {
                                let idx = phases
                                    .iter()
                                    .position(|&q| q == (r.py, r.px))
                                    .expect("im2col reads only phases the kernel touches");
                                let base = r.ci * cs + idx * plane + r.start;
                                let at = r.row * cols + i * t.tw + r.at;
                                let src = &col[at + r.lo..at + r.hi];
                                for (d, v) in phi[base..base + src.len()].iter_mut().zip(src) {
                                    *d += *v;
                                }
                            }
                        });
                    }
                });
            });
        }
        // Interleave the phases: dX[y·s + py][x·s + px] = phase (py, px)[y][x]. Positions of phases no tap reads
        // keep their zero gradient.
        for i in 0..nb {
            // SAFETY: image b0 + i belongs to this task alone and lies inside `dx`.
            let dxb = unsafe {
                std::slice::from_raw_parts_mut(out.get().add((b0 + i) * image_len), image_len)
            };
            for (ci, dplane) in dxb.chunks_exact_mut(h * wd).enumerate() {
                for (j, &(py, px)) in phases.iter().enumerate() {
                    let src = &ph[(i * g.cin + ci) * cs + j * plane..][..plane];
                    for (yp, srow) in src.chunks_exact(wp).enumerate() {
                        let y = yp * s + py;
                        if y >= h {
                            break;
                        }
                        let drow = &mut dplane[y * wd..(y + 1) * wd];
                        for (d, v) in drow.iter_mut().skip(px).step_by(s).zip(srow) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    /// Max |a − b| / max(1, max |b|).
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        crate::testing::max_rel_diff(a, b).unwrap() as f32
    }

    /// (n, cin, h, w, cout, kernel, stride, padding)
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    const CASES: [Case; 9] = [
        // (n, cin, h, w, cout, kernel, stride, padding)
        (2, 4, 9, 9, 5, 3, 1, 1),
        (2, 4, 9, 8, 6, 3, 2, 1),
        (3, 6, 8, 8, 5, 1, 1, 0),
        (2, 6, 9, 7, 8, 1, 2, 0),
        (2, 3, 15, 14, 4, 7, 2, 3),
        // padding ≥ kernel at stride 1: the col2im path
        (1, 3, 5, 5, 2, 1, 1, 1),
        (2, 8, 16, 16, 16, 3, 1, 1),
        (2, 8, 16, 16, 16, 3, 2, 1),
        (1, 2, 6, 6, 3, 5, 3, 2),
    ];

    #[test]
    fn forward_and_gradients_match_candle_on_resnet_shapes() {
        let dev = Device::Cpu;
        for (i, &(n, cin, h, w, cout, k, s, pad)) in CASES.iter().enumerate() {
            let spec = ConvSpec {
                stride: s,
                padding: pad,
            };
            let x = Var::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 0.5, (cout, cin, k, k), &dev).unwrap();
            let up = Tensor::randn(
                0f32,
                1.0,
                (
                    n,
                    cout,
                    (h + 2 * pad - k) / s + 1,
                    (w + 2 * pad - k) / s + 1,
                ),
                &dev,
            )
            .unwrap();
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), spec).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), pad, s, 1, 1).unwrap();
            assert!(rel_err(&ours, &theirs) < 1e-5, "case {i}: forward");
            if (h + 2 * pad - k) % s != 0 || (w + 2 * pad - k) % s != 0 {
                // candle's own conv2d backward gets the input-gradient shape wrong when the stride does not divide
                // the padded extent (its transposed convolution has no output padding): finite differences
                // cover these cases below.
                continue;
            }
            let go = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("dx", &x), ("dw", &wt)] {
                let (a, b) = (go.get(v).unwrap(), gt.get(v).unwrap());
                let e = rel_err(a, b);
                assert!(
                    e < 1e-5,
                    "case {i} {:?}: {name} differs from candle's by {e}",
                    CASES[i]
                );
            }
        }
    }

    /// Central differences in f64 on the loss `Σ conv(x, w) · u`, against our f32 gradients.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        for &(n, cin, h, w, cout, k, s, pad) in &CASES {
            let spec = ConvSpec {
                stride: s,
                padding: pad,
            };
            let x = Var::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
            let wt = Var::randn(0f32, 0.5, (cout, cin, k, k), &dev).unwrap();
            let y = conv2d(x.as_tensor(), wt.as_tensor(), spec).unwrap();
            let u = Tensor::randn(0f32, 1.0, y.shape(), &dev).unwrap();
            let grads = (&y * &u).unwrap().sum_all().unwrap().backward().unwrap();
            let u64 = u.to_dtype(DType::F64).unwrap();
            let loss = |x: &Tensor, w: &Tensor| -> f64 {
                let y = x.conv2d(w, pad, s, 1, 1).unwrap();
                (y * &u64)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            for (v, other, is_x) in [(&x, &wt, true), (&wt, &x, false)] {
                let g = grads
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let base = v.as_tensor().to_dtype(DType::F64).unwrap();
                let o = other.as_tensor().to_dtype(DType::F64).unwrap();
                let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                // A spread of entries, including the first and last (corners touch the padding).
                let picks = [
                    0,
                    flat.len() / 3,
                    flat.len() / 2,
                    2 * flat.len() / 3,
                    flat.len() - 1,
                ];
                for &j in &picks {
                    let eps = 1e-4;
                    let mut plus = flat.clone();
                    plus[j] += eps;
                    let mut minus = flat.clone();
                    minus[j] -= eps;
                    let t = |v: Vec<f64>| Tensor::from_vec(v, base.shape(), &dev).unwrap();
                    let (lp, lm) = if is_x {
                        (loss(&t(plus), &o), loss(&t(minus), &o))
                    } else {
                        (loss(&o, &t(plus)), loss(&o, &t(minus)))
                    };
                    let fd = (lp - lm) / (2.0 * eps);
                    let got = g[j] as f64;
                    assert!(
                        (got - fd).abs() <= 1e-3 * fd.abs().max(1.0),
                        "{:?} {} [{j}]: autograd {got}, finite difference {fd}",
                        (n, cin, h, w, cout, k, s, pad),
                        if is_x { "dx" } else { "dw" }
                    );
                }
            }
        }
    }

    #[test]
    fn input_without_graph_gets_no_gradient_and_other_devices_fall_back() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 12, 12), &dev).unwrap();
        let w = Var::randn(0f32, 0.5, (4, 3, 7, 7), &dev).unwrap();
        let spec = ConvSpec {
            stride: 2,
            padding: 3,
        };
        let y = conv2d(&x, w.as_tensor(), spec).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert_eq!(grads.get(w.as_tensor()).unwrap().dims(), [4, 3, 7, 7]);
        // f64 goes to candle's conv2d (and its backward).
        let y64 = conv2d(
            &x.to_dtype(DType::F64).unwrap(),
            &w.as_tensor().to_dtype(DType::F64).unwrap(),
            spec,
        )
        .unwrap();
        assert!(rel_err(&y64.to_dtype(DType::F32).unwrap(), &y) < 1e-5);
        assert_eq!(y.mean(D::Minus1).unwrap().dims(), [2, 4, 6]);
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
        let spec = ConvSpec {
            stride: 1,
            padding: 1,
        };
        let e = conv2d(&x, &w, spec).unwrap_err().to_string();
        assert!(e.contains("channels"), "{e}");
    }
}
