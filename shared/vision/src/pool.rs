//! Max pooling, written once for the two places kestrel pools: the fast f32 inference path
//! ([`crate::conv::max_pool2d`], and the ResNet stem fused into [`crate::conv::conv2d_relu_max_pool`]) and the
//! differentiable op used while pretraining ([`crate::ops::max_pool2d_padded`]).
//!
//! Why a module of its own: both paths must compute the same thing, and they used to carry their own geometry,
//! validation and window arithmetic. What they must agree on lives here, so agreement holds by construction:
//!
//! * **Geometry** — [`PoolSpec`] (PyTorch's `max_pool2d(kernel, stride, padding)`: square window, no dilation, floor
//!   mode) checked against an input size gives a [`PoolShape`], or a [`PoolGeometryError`] saying which rule was
//!   broken: `kernel, stride ≥ 1`, `padding ≤ kernel / 2` (PyTorch's limit), a non-empty input, and
//!   `H + 2·padding ≥ kernel`. The output is `⌊(H + 2·padding − kernel) / stride⌋ + 1` high, and the same for the width.
//! * **Window** — output row `o` covers input rows `o·stride − padding .. o·stride − padding + kernel`, clipped to the
//!   input ([`PoolShape::rows`], [`PoolShape::cols`]). Padding is `-inf`, which never wins, so it is skipped rather
//!   than stored. The rules above keep every window overlapping the input.
//! * **Maximum** — PyTorch's: a value replaces the running maximum when it is strictly greater or NaN
//!   ([`replaces_max`]). NaN therefore propagates (a window holding NaN pools to NaN) and ties keep the first value.
//!
//! Two kernels apply these rules. [`max_pool_f32`] is separable — a vertical maximum of the window's rows into a row
//! buffer, then the horizontal windows of that buffer — on contiguous f32; it is what inference runs.
//! [`PoolShape::argmax`] scans one window in row-major order through an accessor, so it serves any layout and dtype;
//! the differentiable op uses it for its forward and, in its backward, to route each output gradient to the window's
//! first maximum, so a forward value is always the input element that receives its gradient. The two kernels give
//! the same maxima for every input, bit for bit, with one exception that compares equal: when a window's maximum is a
//! zero present with both signs (or NaN with different payloads), the separable kernel returns the one in the
//! leftmost column and the scan the one in the topmost row. `pool::tests` checks the two public functions against
//! each other.

use std::ops::Range;

use rayon::prelude::*;

/// A max pool: window, stride and implicit `-inf` padding (PyTorch's `max_pool2d` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// Window size in both directions.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Padding on every side (at most `kernel / 2`).
    pub padding: usize,
}

impl PoolSpec {
    /// The ResNet stem pool: 3×3, stride 2, padding 1.
    pub const RESNET_STEM: PoolSpec = PoolSpec {
        kernel: 3,
        stride: 2,
        padding: 1,
    };

    /// This pool applied to an `h × w` input: its output size and windows, or which rule the arguments break.
    pub fn shape(self, h: usize, w: usize) -> Result<PoolShape, PoolGeometryError> {
        let PoolSpec {
            kernel,
            stride,
            padding,
        } = self;
        if h == 0 || w == 0 {
            return Err(PoolGeometryError::EmptyInput { h, w });
        }
        if kernel == 0 || stride == 0 {
            return Err(PoolGeometryError::ZeroKernelOrStride { kernel, stride });
        }
        if padding > kernel / 2 {
            return Err(PoolGeometryError::PaddingTooLarge { kernel, padding });
        }
        if h + 2 * padding < kernel || w + 2 * padding < kernel {
            return Err(PoolGeometryError::KernelTooLarge {
                kernel,
                padding,
                h,
                w,
            });
        }
        Ok(PoolShape {
            spec: self,
            h,
            w,
            out_h: (h + 2 * padding - kernel) / stride + 1,
            out_w: (w + 2 * padding - kernel) / stride + 1,
        })
    }
}

/// Why a [`PoolSpec`] does not fit an input. The rules are PyTorch's, so a pool torch refuses is refused here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolGeometryError {
    /// The input has no rows or no columns, so there is nothing to pool.
    #[error("max pool: the input's spatial size {h}×{w} is empty")]
    EmptyInput {
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
    },
    /// A kernel or stride of zero.
    #[error("max pool: kernel ({kernel}) and stride ({stride}) must be at least 1")]
    ZeroKernelOrStride {
        /// Kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// More padding than half the kernel, so some window could hold padding only.
    #[error("max pool: padding {padding} exceeds half the kernel size {kernel}; use at most {}", kernel / 2)]
    PaddingTooLarge {
        /// Kernel size.
        kernel: usize,
        /// Padding.
        padding: usize,
    },
    /// The kernel is larger than the padded input.
    #[error("max pool: kernel {kernel} is larger than the input {h}×{w} padded by {padding}")]
    KernelTooLarge {
        /// Kernel size.
        kernel: usize,
        /// Padding.
        padding: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
    },
}

/// A [`PoolSpec`] checked against an `h × w` input: the output size and the window of every output row and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// The pool.
    pub spec: PoolSpec,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl PoolShape {
    /// The input rows of output row `oy`'s window that are not padding. Never empty.
    pub fn rows(&self, oy: usize) -> Range<usize> {
        self.window(oy, self.h)
    }

    /// The input columns of output column `ox`'s window that are not padding. Never empty.
    pub fn cols(&self, ox: usize) -> Range<usize> {
        self.window(ox, self.w)
    }

    /// `[o·s − p, o·s − p + k)` clipped to `[0, len)`. Validation guarantees `p ≤ k / 2` and `len ≥ 1`, so the
    /// window starts before `len` and ends after 0.
    fn window(&self, o: usize, len: usize) -> Range<usize> {
        let PoolSpec {
            kernel,
            stride,
            padding,
        } = self.spec;
        let start = o * stride;
        start.saturating_sub(padding)..(start + kernel - padding).min(len)
    }

    /// Position (`row · w + column`) and value of the first maximum of output (`oy`, `ox`)'s window, scanning in
    /// row-major order with [`replaces_max`]; `at(row, column)` reads the input. A window of `-inf` only gives its
    /// first element.
    pub fn argmax<T: PartialOrd + Copy>(
        &self,
        oy: usize,
        ox: usize,
        neg_inf: T,
        at: impl Fn(usize, usize) -> T,
    ) -> (usize, T) {
        let (rows, cols) = (self.rows(oy), self.cols(ox));
        let mut best = rows.start * self.w + cols.start;
        let mut max = neg_inf;
        for iy in rows {
            for ix in cols.clone() {
                let v = at(iy, ix);
                if replaces_max(v, max) {
                    max = v;
                    best = iy * self.w + ix;
                }
            }
        }
        (best, max)
    }
}

/// PyTorch's max-pool rule: `v` becomes the running maximum when it is strictly greater, or NaN. So the first of
/// equal values is kept, and NaN, once taken, stays (nothing is greater than NaN) — it propagates.
#[inline(always)]
pub fn replaces_max<T: PartialOrd>(v: T, max: T) -> bool {
    // `partial_cmp` of a value with itself is `None` exactly for NaN; for f32 this compiles to one unordered compare.
    v > max || v.partial_cmp(&v).is_none()
}

/// Max pooling of `planes` contiguous `h × w` f32 planes (N·C of them, NCHW order) into `out_h × out_w` planes, one
/// rayon task per plane.
pub fn max_pool_f32(x: &[f32], planes: usize, g: &PoolShape) -> Vec<f32> {
    assert_eq!(
        x.len(),
        planes * g.h * g.w,
        "input is not {planes} planes of {}×{}",
        g.h,
        g.w
    );
    let mut y = vec![0f32; planes * g.out_h * g.out_w];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(g.out_h * g.out_w)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(yp, xp)| {
            let mut vmax = vec![f32::NEG_INFINITY; g.w];
            for (oy, yrow) in yp.chunks_exact_mut(g.out_w).enumerate() {
                let rows = g.rows(oy);
                pool_row_f32(&xp[rows.start * g.w..rows.end * g.w], g, &mut vmax, yrow);
            }
        });
    y
}

/// One pooled output row from the input rows of its window (`rows`: whole rows of width `g.w`, i.e. `g.rows(oy)`):
/// a vertical maximum into `vmax` (length `g.w`), then the horizontal windows. The fused stem calls this on bands of
/// convolution output it has just computed.
#[inline]
pub(crate) fn pool_row_f32(rows: &[f32], g: &PoolShape, vmax: &mut [f32], out: &mut [f32]) {
    vmax.fill(f32::NEG_INFINITY);
    for xrow in rows.chunks_exact(g.w) {
        for (m, &v) in vmax.iter_mut().zip(xrow) {
            *m = if replaces_max(v, *m) { v } else { *m };
        }
    }
    for (ox, o) in out.iter_mut().enumerate() {
        *o =
            vmax[g.cols(ox)].iter().fold(
                f32::NEG_INFINITY,
                |m, &v| {
                    if replaces_max(v, m) {
                        v
                    } else {
                        m
                    }
                },
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{self, ConvError};
    use crate::ops::{self, OpsError};
    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Pools exercised against each other: the stem, overlapping, gapped, kernel = stride, maximal padding, even
    /// and large kernels, the identity.
    const SPECS: [(usize, usize, usize); 8] = [
        (3, 2, 1),
        (3, 1, 1),
        (2, 3, 0),
        (2, 2, 0),
        (4, 2, 2),
        (5, 3, 2),
        (7, 2, 3),
        (1, 1, 0),
    ];

    fn spec((kernel, stride, padding): (usize, usize, usize)) -> PoolSpec {
        PoolSpec {
            kernel,
            stride,
            padding,
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    #[test]
    fn output_size_and_windows_follow_torch_rules() {
        for k in 1..=7 {
            for s in 1..=4 {
                for p in 0..=k / 2 {
                    for h in 1..=12 {
                        let Ok(g) = spec((k, s, p)).shape(h, 1 + k) else {
                            assert!(h + 2 * p < k, "k{k} s{s} p{p} h{h} refused");
                            continue;
                        };
                        assert_eq!(g.out_h, (h + 2 * p - k) / s + 1);
                        for oy in 0..g.out_h {
                            let r = g.rows(oy);
                            // Non-empty, inside the input, and exactly the unpadded part of [oy·s − p, oy·s − p + k).
                            assert!(
                                r.start < r.end && r.end <= h,
                                "k{k} s{s} p{p} h{h} oy{oy}: {r:?}"
                            );
                            let lo = (oy * s) as isize - p as isize;
                            assert_eq!(r.start as isize, lo.max(0));
                            assert_eq!(r.end as isize, (lo + k as isize).min(h as isize));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn max_rule_keeps_the_first_tie_and_propagates_nan() {
        assert!(replaces_max(2.0f32, 1.0));
        assert!(!replaces_max(1.0f32, 1.0));
        assert!(!replaces_max(f32::NEG_INFINITY, f32::NEG_INFINITY));
        assert!(replaces_max(f32::NAN, 5.0));
        assert!(replaces_max(f32::NAN, f32::NAN));
        assert!(!replaces_max(5.0f32, f32::NAN));
        let g = spec((3, 2, 1)).shape(4, 4).unwrap();
        let mut x = [1f32; 16];
        x[5] = f32::NAN;
        let y = max_pool_f32(&x, 1, &g);
        // Windows 0..2 × 0..2 hold (1, 1); every window at rows/columns 1..4 does too.
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
        x[5] = 1.0;
        x[15] = f32::NAN;
        assert_eq!(
            max_pool_f32(&x, 1, &g)
                .iter()
                .map(|v| v.is_nan())
                .collect::<Vec<_>>(),
            [false, false, false, true]
        );
    }

    /// The fast inference pool and the differentiable op are two kernels over one geometry: on random input, with
    /// and without padding, with infinities and NaNs, they give the same bits.
    #[test]
    fn fast_and_differentiable_forwards_are_bit_identical() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut cases = 0;
        for (i, &sp) in SPECS.iter().enumerate() {
            for &(n, c, h, w) in &[(2, 3, 9, 11), (1, 4, 16, 16), (3, 2, 7, 5), (1, 1, 1, 9)] {
                let len = n * c * h * w;
                let mut v: Vec<f32> = (0..len).map(|_| rng.gen_range(-4.0..4.0)).collect();
                if i % 2 == 1 {
                    for (j, x) in v.iter_mut().enumerate() {
                        match j % 37 {
                            0 => *x = f32::NAN,
                            5 => *x = f32::NEG_INFINITY,
                            9 => *x = f32::INFINITY,
                            _ => {}
                        }
                    }
                }
                let x = Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap();
                let pool = spec(sp);
                if pool.shape(h, w).is_err() {
                    continue;
                }
                let fast = conv::max_pool2d(&x, pool).unwrap();
                let diff =
                    ops::max_pool2d_padded(&x, pool.kernel, pool.stride, pool.padding).unwrap();
                assert_eq!(fast.dims(), diff.dims(), "{sp:?} {:?}", x.dims());
                let (a, b) = (bits(&fast), bits(&diff));
                for (j, (a, b)) in a.iter().zip(&b).enumerate() {
                    let (fa, fb) = (f32::from_bits(*a), f32::from_bits(*b));
                    assert!(
                        a == b || (fa.is_nan() && fb.is_nan()),
                        "{sp:?} {:?} output {j}: {fa} vs {fb}",
                        x.dims()
                    );
                }
                cases += 1;
            }
        }
        assert!(cases >= 28, "{cases}");
    }

    #[test]
    fn both_paths_refuse_the_same_geometries() {
        // (kernel, stride, padding, h, w): zero kernel, zero stride, too much padding, kernel over the padded input
        // (in either direction), empty input.
        let bad = [
            (0, 2, 0, 5, 5),
            (3, 0, 1, 5, 5),
            (3, 2, 2, 5, 5),
            (8, 2, 1, 5, 9),
            (4, 1, 0, 9, 3),
            (2, 1, 1, 0, 5),
            (3, 1, 1, 5, 0),
        ];
        for (k, s, p, h, w) in bad {
            let pool = spec((k, s, p));
            let want = pool.shape(h, w).unwrap_err();
            let x = Tensor::zeros((1, 2, h, w), DType::F32, &Device::Cpu).unwrap();

            // candle keeps a wrapped error as `Display` only (a backtrace may follow on later lines).
            let e = conv::max_pool2d(&x, pool).unwrap_err().to_string();
            let first = e.lines().next().unwrap_or_default();
            assert_eq!(
                first,
                ConvError::Pool(want).to_string(),
                "k{k} s{s} p{p} {h}×{w}"
            );

            let e = ops::max_pool2d_padded(&x, k, s, p).unwrap_err();
            let matches = match (want, &e) {
                (PoolGeometryError::EmptyInput { .. }, OpsError::EmptyInput { .. })
                | (
                    PoolGeometryError::ZeroKernelOrStride { .. },
                    OpsError::ZeroKernelOrStride { .. },
                )
                | (PoolGeometryError::PaddingTooLarge { .. }, OpsError::PaddingTooLarge { .. })
                | (PoolGeometryError::KernelTooLarge { .. }, OpsError::KernelTooLarge { .. }) => {
                    OpsError::from(want).to_string() == e.to_string()
                }
                _ => false,
            };
            assert!(matches, "k{k} s{s} p{p} {h}×{w}: {want} vs {e}");
        }
        // The limits themselves are accepted by both.
        let x = Tensor::zeros((1, 2, 3, 5), DType::F32, &Device::Cpu).unwrap();
        let edge = spec((5, 1, 1));
        assert_eq!(edge.shape(3, 5).unwrap().out_h, 1);
        assert_eq!(conv::max_pool2d(&x, edge).unwrap().dims(), [1, 2, 1, 3]);
        assert_eq!(
            ops::max_pool2d_padded(&x, 5, 1, 1).unwrap().dims(),
            [1, 2, 1, 3]
        );
    }
}
