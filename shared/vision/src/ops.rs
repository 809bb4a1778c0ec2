//! Differentiable versions of the two tensor ops candle 0.11 cannot back-propagate through: padded max pooling with
//! overlapping windows (the torchvision ResNet stem pool, 3×3, stride 2, padding 1) and bilinear upsampling.
//!
//! Why they exist: candle's `max_pool2d_with_stride` refuses its backward whenever kernel ≠ stride, and
//! `upsample_bilinear2d` has no backward at all (candle 0.11's `backprop.rs` bails on both). Without them a
//! torchvision-compatible backbone could only be pretrained with a 2×2 stem pool, which changes the architecture and
//! would have to be recorded with the weights. With them the same network trains and loads torchvision checkpoints
//! unchanged.
//!
//! Design decisions:
//! * Both are candle [`CustomOp1`]s whose `bwd` applies a second, forward-only custom op (the backward kernel), so the
//!   gradient is computed in plain Rust on the CPU, one rayon task per N×C plane. Second derivatives are not supported.
//! * Semantics follow PyTorch: max-pool padding acts as `-inf`, the gradient of each output goes to the first maximum
//!   of its window in row-major order (ties) and accumulates where windows overlap, and NaN propagates (a NaN in a
//!   window is its maximum). Bilinear upsampling uses exactly candle's own arithmetic (f64 weights, PyTorch's
//!   `align_corners` rules, size mode), so forwards are bit-identical to `Tensor::upsample_bilinear2d`.
//! * The pool's geometry, validation, window and maximum rules are [`crate::pool`]'s, shared with the fast inference
//!   pool [`crate::conv::max_pool2d`]; the two give the same outputs (tested there). The forward keeps its own
//!   row-major scan ([`crate::pool::PoolShape::argmax`]) rather than the separable f32 kernel inference uses: the
//!   scan is what the backward routes gradients with, so every forward value is exactly the input element that gets
//!   its gradient (the separable kernel may pick the other sign when a window's maximum is a zero present with both
//!   signs), and for the 3×3 stem pool the forward is a small part of a training step.
//! * Why a second bilinear resize next to [`crate::resample::bilinear`]: that one resizes plain `f32` maps with
//!   torch's `f32` arithmetic (what anomalib does to anomaly maps, on host and edge alike); this one works on candle
//!   tensors, needs a backward pass, and must equal candle's `f64`-weight `upsample_bilinear2d`, whose rounding can
//!   differ from torch's `f32` kernel in the last bit. Each is bit-exact against its own reference, so neither can
//!   replace the other.
//! * Kernels read any CPU layout (strides, offsets) in f16, bf16, f32 or f64. On another device, an input that needs no
//!   gradient runs candle's own forward ops there (for the pool, explicit `-inf` padding and
//!   `max_pool2d_with_stride`; it does not propagate NaN); one that needs a gradient makes a round trip through the
//!   CPU, slow but correct, as candle's `to_device` is differentiable.
//! * Bad arguments are an [`OpsError`], never a panic; it converts into `candle_core::Error`, so `?` works in code
//!   returning `candle_core::Result`.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::pool::{PoolGeometryError, PoolShape, PoolSpec};

/// Errors of the differentiable ops.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The input is not a 4-D N×C×H×W tensor.
    #[error("{op}: expected an N×C×H×W tensor, got shape {shape:?}")]
    NotNchw {
        /// The op.
        op: &'static str,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// The input has a spatial size of zero.
    #[error("{op}: the input's spatial size {h}×{w} is empty")]
    EmptyInput {
        /// The op.
        op: &'static str,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
    },
    /// Only floating-point dtypes are supported.
    #[error("{op}: unsupported dtype {dtype:?}; f16, bf16, f32 and f64 are supported")]
    UnsupportedDType {
        /// The op.
        op: &'static str,
        /// The dtype given.
        dtype: DType,
    },
    /// The forward input and the incoming gradient of a backward pass disagree in dtype.
    #[error("{op}: the gradient's dtype {grad:?} differs from the input's {input:?}")]
    GradDType {
        /// The op.
        op: &'static str,
        /// The forward input's dtype.
        input: DType,
        /// The gradient's dtype.
        grad: DType,
    },
    /// A pooling kernel or stride of zero.
    #[error("max_pool2d_padded: kernel ({kernel}) and stride ({stride}) must be at least 1")]
    ZeroKernelOrStride {
        /// Kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// More padding than half the kernel, so some window could hold padding only (PyTorch rejects it too).
    #[error("max_pool2d_padded: padding {padding} exceeds half the kernel size {kernel}")]
    PaddingTooLarge {
        /// Kernel size.
        kernel: usize,
        /// Padding.
        padding: usize,
    },
    /// The kernel is larger than the padded input.
    #[error(
        "max_pool2d_padded: kernel {kernel} is larger than the input {h}×{w} padded by {padding}"
    )]
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
    /// A requested output size of zero.
    #[error("upsample_bilinear2d_grad: the output size {h}×{w} must be positive")]
    EmptyOutput {
        /// Requested height.
        h: usize,
        /// Requested width.
        w: usize,
    },
    /// An error of the underlying tensor operations.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<PoolGeometryError> for OpsError {
    /// The shared pool validation's answer, as this op's variant of it.
    fn from(e: PoolGeometryError) -> Self {
        match e {
            PoolGeometryError::EmptyInput { h, w } => OpsError::EmptyInput {
                op: MAX_POOL_OP,
                h,
                w,
            },
            PoolGeometryError::ZeroKernelOrStride { kernel, stride } => {
                OpsError::ZeroKernelOrStride { kernel, stride }
            }
            PoolGeometryError::PaddingTooLarge { kernel, padding } => {
                OpsError::PaddingTooLarge { kernel, padding }
            }
            PoolGeometryError::KernelTooLarge {
                kernel,
                padding,
                h,
                w,
            } => OpsError::KernelTooLarge {
                kernel,
                padding,
                h,
                w,
            },
        }
    }
}

impl From<OpsError> for candle_core::Error {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::Candle(e) => e,
            e => candle_core::Error::wrap(e),
        }
    }
}

/// Max pooling over N×C×H×W with implicit `-inf` padding, as PyTorch's `max_pool2d(x, kernel, stride, padding)`
/// (square kernel, no dilation, floor mode): the output is `⌊(H + 2·padding − kernel) / stride⌋ + 1` high (and the same
/// rule for the width). Unlike candle's pool it has a backward pass for any kernel and stride.
///
/// Requirements: `kernel ≥ 1`, `stride ≥ 1`, `padding ≤ kernel / 2`, `H, W ≥ 1`, `H + 2·padding ≥ kernel` (and the same
/// for W), a floating-point dtype.
pub fn max_pool2d_padded(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor, OpsError> {
    let (_, _, h, w) = dims4(x, MAX_POOL_OP)?;
    check_float(x, MAX_POOL_OP)?;
    let spec = PoolSpec {
        kernel,
        stride,
        padding,
    };
    apply_differentiable(x, MaxPool2dPadded(spec.shape(h, w)?), |x| {
        pad_neg_inf(x, padding)?.max_pool2d_with_stride(kernel, stride)
    })
}

/// Bilinear resizing of N×C×H×W to N×C×`out_h`×`out_w`, with the same forward as candle's
/// `Tensor::upsample_bilinear2d` (PyTorch's `interpolate(size=…, mode="bilinear", align_corners=…)`) and a backward pass
/// that scatters each output gradient to its four source pixels with the bilinear weights.
///
/// Requirements: non-empty input and output sizes, a floating-point dtype.
pub fn upsample_bilinear2d_grad(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor, OpsError> {
    const OP: &str = "upsample_bilinear2d_grad";
    let (_, _, h, w) = dims4(x, OP)?;
    check_float(x, OP)?;
    if out_h == 0 || out_w == 0 {
        return Err(OpsError::EmptyOutput { h: out_h, w: out_w });
    }
    let op = UpsampleBilinear {
        in_h: h,
        in_w: w,
        out_h,
        out_w,
        align_corners,
    };
    apply_differentiable(x, op, |x| {
        x.upsample_bilinear2d(out_h, out_w, align_corners)
    })
}

/// Runs `op` on the CPU with its backward recorded; elsewhere runs `device_fwd` (candle ops, forward only) when no
/// gradient is needed, else makes a round trip through the CPU.
fn apply_differentiable<C: CustomOp1 + Send + Sync + 'static>(
    x: &Tensor,
    op: C,
    device_fwd: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor, OpsError> {
    if x.device().is_cpu() {
        Ok(x.apply_op1(op)?)
    } else if !x.track_op() {
        Ok(device_fwd(x)?)
    } else {
        Ok(x.to_device(&Device::Cpu)?
            .apply_op1(op)?
            .to_device(x.device())?)
    }
}

/// `x` padded by `padding` `-inf` rows and columns on every side, with candle ops.
fn pad_neg_inf(x: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    if padding == 0 {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let neg_inf = |shape: (usize, usize, usize, usize)| {
        Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
    };
    let cols = neg_inf((n, c, h, padding))?;
    let x = Tensor::cat(&[&cols, x, &cols], 3)?;
    let rows = neg_inf((n, c, padding, w + 2 * padding))?;
    Tensor::cat(&[&rows, &x, &rows], 2)
}

fn dims4(x: &Tensor, op: &'static str) -> Result<(usize, usize, usize, usize), OpsError> {
    match *x.dims() {
        [n, c, h, w] if h > 0 && w > 0 => Ok((n, c, h, w)),
        [_, _, h, w] => Err(OpsError::EmptyInput { op, h, w }),
        _ => Err(OpsError::NotNchw {
            op,
            shape: x.dims().to_vec(),
        }),
    }
}

fn check_float(x: &Tensor, op: &'static str) -> Result<(), OpsError> {
    match x.dtype() {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(()),
        dtype => Err(OpsError::UnsupportedDType { op, dtype }),
    }
}

/// Maps a float `CpuStorage` through a generic kernel, keeping its dtype.
macro_rules! map_float_storage {
    ($op:expr, $storage:expr, |$s:ident| $body:expr) => {
        match $storage {
            CpuStorage::F16($s) => CpuStorage::F16($body),
            CpuStorage::BF16($s) => CpuStorage::BF16($body),
            CpuStorage::F32($s) => CpuStorage::F32($body),
            CpuStorage::F64($s) => CpuStorage::F64($body),
            other => {
                return Err(OpsError::UnsupportedDType {
                    op: $op,
                    dtype: other.dtype(),
                }
                .into())
            }
        }
    };
}

/// Maps a pair of float `CpuStorage`s of one dtype (forward input, gradient) through a generic kernel.
macro_rules! map_float_storage_pair {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $g:ident| $body:expr) => {
        match ($a, $b) {
            (CpuStorage::F16($x), CpuStorage::F16($g)) => CpuStorage::F16($body),
            (CpuStorage::BF16($x), CpuStorage::BF16($g)) => CpuStorage::BF16($body),
            (CpuStorage::F32($x), CpuStorage::F32($g)) => CpuStorage::F32($body),
            (CpuStorage::F64($x), CpuStorage::F64($g)) => CpuStorage::F64($body),
            (a, b) if a.dtype() == b.dtype() => {
                return Err(OpsError::UnsupportedDType {
                    op: $op,
                    dtype: a.dtype(),
                }
                .into())
            }
            (a, b) => {
                return Err(OpsError::GradDType {
                    op: $op,
                    input: a.dtype(),
                    grad: b.dtype(),
                }
                .into())
            }
        }
    };
}

/// A strided N×C×H×W view of a storage slice.
#[derive(Debug, Clone, Copy)]
struct View4 {
    offset: usize,
    stride: [usize; 4],
}

impl View4 {
    fn new(layout: &Layout) -> candle_core::Result<Self> {
        match *layout.stride() {
            [s0, s1, s2, s3] => Ok(Self {
                offset: layout.start_offset(),
                stride: [s0, s1, s2, s3],
            }),
            _ => Err(candle_core::Error::UnexpectedNumberOfDims {
                expected: 4,
                got: layout.dims().len(),
                shape: layout.shape().clone(),
            }
            .bt()),
        }
    }

    /// Offset of the (n, c) plane whose index is `plane` (= n·C + c).
    fn plane(&self, plane: usize, channels: usize) -> usize {
        self.offset + (plane / channels) * self.stride[0] + (plane % channels) * self.stride[1]
    }

    /// Element (row, column) of that plane of `src`.
    fn reader<'s, T: Copy>(
        &self,
        src: &'s [T],
        plane: usize,
        channels: usize,
    ) -> impl Fn(usize, usize) -> T + 's {
        let (base, [.., sy, sx]) = (self.plane(plane, channels), self.stride);
        move |y, x| src[base + y * sy + x * sx]
    }
}

/// The name [`max_pool2d_padded`] reports in errors.
const MAX_POOL_OP: &str = "max_pool2d_padded";

/// [`max_pool2d_padded`]'s forward on any float layout: [`PoolShape::argmax`]'s row-major scan, the same scan the
/// backward uses to route gradients.
fn max_pool_forward<T: WithDType>(
    g: &PoolShape,
    src: &[T],
    view: View4,
    c: usize,
    planes: usize,
) -> Vec<T> {
    let plane_len = g.out_h * g.out_w;
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    let mut dst = vec![T::zero(); planes * plane_len];
    dst.par_chunks_mut(plane_len)
        .enumerate()
        .for_each(|(p, out)| {
            let at = view.reader(src, p, c);
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    out[oy * g.out_w + ox] = g.argmax(oy, ox, neg_inf, &at).1;
                }
            }
        });
    dst
}

/// dL/dx of [`max_pool2d_padded`]: each output gradient added at its window's first maximum (PyTorch's rule).
fn max_pool_backward<T: WithDType>(
    geom: &PoolShape,
    x: &[T],
    xv: View4,
    g: &[T],
    gv: View4,
    c: usize,
    planes: usize,
) -> Vec<T> {
    let plane_len = geom.h * geom.w;
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    let mut dst = vec![T::zero(); planes * plane_len];
    dst.par_chunks_mut(plane_len)
        .enumerate()
        .for_each(|(p, dx)| {
            let at = xv.reader(x, p, c);
            let gbase = gv.plane(p, c);
            for oy in 0..geom.out_h {
                for ox in 0..geom.out_w {
                    let (best, _) = geom.argmax(oy, ox, neg_inf, &at);
                    dx[best] += g[gbase + oy * gv.stride[2] + ox * gv.stride[3]];
                }
            }
        });
    dst
}

/// Forward of [`max_pool2d_padded`].
struct MaxPool2dPadded(PoolShape);

impl CustomOp1 for MaxPool2dPadded {
    fn name(&self) -> &'static str {
        MAX_POOL_OP
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (n, c, ..) = layout.shape().dims4()?;
        let view = View4::new(layout)?;
        let out = map_float_storage!(MAX_POOL_OP, storage, |s| max_pool_forward(
            g,
            s,
            view,
            c,
            n * c
        ));
        Ok((out, Shape::from((n, c, g.out_h, g.out_w))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(grad_res, &MaxPool2dBackward(self.0))?,
        ))
    }
}

/// Backward of [`max_pool2d_padded`]: (forward input, output gradient) → input gradient.
struct MaxPool2dBackward(PoolShape);

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "max_pool2d_padded_backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geom = &self.0;
        let (n, c, h, w) = xl.shape().dims4()?;
        let expected = Shape::from((n, c, geom.out_h, geom.out_w));
        if gl.shape() != &expected {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: expected,
                rhs: gl.shape().clone(),
                op: "max_pool2d_padded_backward",
            }
            .bt());
        }
        let (xv, gv) = (View4::new(xl)?, View4::new(gl)?);
        let out = map_float_storage_pair!(self.name(), xs, gs, |x, g| max_pool_backward(
            geom,
            x,
            xv,
            g,
            gv,
            c,
            n * c
        ));
        Ok((out, Shape::from((n, c, h, w))))
    }
}

/// Per output row (or column): the two source rows and the weight of the second, as candle (and PyTorch) compute them.
fn bilinear_taps(in_size: usize, out_size: usize, align_corners: bool) -> Vec<(usize, usize, f64)> {
    let scale = if align_corners {
        if out_size > 1 {
            (in_size - 1) as f64 / (out_size - 1) as f64
        } else {
            0.0
        }
    } else {
        in_size as f64 / out_size as f64
    };
    (0..out_size)
        .map(|o| {
            let src = if align_corners {
                scale * o as f64
            } else {
                scale * (o as f64 + 0.5) - 0.5
            };
            let src = src.max(0.0);
            // The `min` never binds (the source coordinate stays below `in_size`); it only guards the index.
            let i0 = (src.floor() as usize).min(in_size - 1);
            let i1 = (i0 + 1).min(in_size - 1);
            (i0, i1, (src - i0 as f64).clamp(0.0, 1.0))
        })
        .collect()
}

/// Forward of [`upsample_bilinear2d_grad`]; its backward is [`UpsampleBilinearBackward`].
#[derive(Debug, Clone, Copy)]
struct UpsampleBilinear {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
}

impl UpsampleBilinear {
    /// candle copies the input when the size does not change (bilinear weights would still turn an `inf` neighbour
    /// into NaN); so do we, in both directions.
    fn is_identity(&self) -> bool {
        self.in_h == self.out_h && self.in_w == self.out_w
    }

    fn forward<T: WithDType>(
        &self,
        src: &[T],
        view: View4,
        channels: usize,
        planes: usize,
    ) -> Vec<T> {
        let plane_len = self.out_h * self.out_w;
        let mut dst = vec![T::zero(); planes * plane_len];
        let ys = bilinear_taps(self.in_h, self.out_h, self.align_corners);
        let xs = bilinear_taps(self.in_w, self.out_w, self.align_corners);
        let s = view.stride;
        dst.par_chunks_mut(plane_len)
            .enumerate()
            .for_each(|(p, out)| {
                let base = view.plane(p, channels);
                for (oy, &(y0, y1, wy)) in ys.iter().enumerate() {
                    let (r0, r1) = (base + y0 * s[2], base + y1 * s[2]);
                    for (ox, &(x0, x1, wx)) in xs.iter().enumerate() {
                        if self.is_identity() {
                            out[oy * self.out_w + ox] = src[r0 + x0 * s[3]];
                            continue;
                        }
                        // The same expression, in the same order, as candle's CPU kernel.
                        let v00 = src[r0 + x0 * s[3]].to_f64();
                        let v10 = src[r0 + x1 * s[3]].to_f64();
                        let v01 = src[r1 + x0 * s[3]].to_f64();
                        let v11 = src[r1 + x1 * s[3]].to_f64();
                        let top = v00 * (1.0 - wx) + v10 * wx;
                        let bottom = v01 * (1.0 - wx) + v11 * wx;
                        out[oy * self.out_w + ox] = T::from_f64(top * (1.0 - wy) + bottom * wy);
                    }
                }
            });
        dst
    }

    /// dL/dx: each output gradient split over its four taps with the bilinear weights, accumulated in f64.
    fn backward<T: WithDType>(
        &self,
        g: &[T],
        view: View4,
        channels: usize,
        planes: usize,
    ) -> Vec<T> {
        let plane_len = self.in_h * self.in_w;
        let mut dst = vec![T::zero(); planes * plane_len];
        let ys = bilinear_taps(self.in_h, self.out_h, self.align_corners);
        let xs = bilinear_taps(self.in_w, self.out_w, self.align_corners);
        let s = view.stride;
        let w = self.in_w;
        dst.par_chunks_mut(plane_len)
            .enumerate()
            .for_each(|(p, dx)| {
                let base = view.plane(p, channels);
                let mut acc = vec![0f64; plane_len];
                for (oy, &(y0, y1, wy)) in ys.iter().enumerate() {
                    for (ox, &(x0, x1, wx)) in xs.iter().enumerate() {
                        let gv = g[base + oy * s[2] + ox * s[3]].to_f64();
                        if self.is_identity() {
                            acc[y0 * w + x0] += gv;
                            continue;
                        }
                        acc[y0 * w + x0] += gv * (1.0 - wy) * (1.0 - wx);
                        acc[y0 * w + x1] += gv * (1.0 - wy) * wx;
                        acc[y1 * w + x0] += gv * wy * (1.0 - wx);
                        acc[y1 * w + x1] += gv * wy * wx;
                    }
                }
                for (d, a) in dx.iter_mut().zip(acc) {
                    *d = T::from_f64(a);
                }
            });
        dst
    }
}

impl CustomOp1 for UpsampleBilinear {
    fn name(&self) -> &'static str {
        "upsample_bilinear2d_grad"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, ..) = layout.shape().dims4()?;
        let view = View4::new(layout)?;
        let out = map_float_storage!(self.name(), storage, |s| self.forward(s, view, c, n * c));
        Ok((out, Shape::from((n, c, self.out_h, self.out_w))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad_res.apply_op1_no_bwd(&UpsampleBilinearBackward(*self))?,
        ))
    }
}

/// Backward of [`upsample_bilinear2d_grad`]: output gradient → input gradient.
struct UpsampleBilinearBackward(UpsampleBilinear);

impl CustomOp1 for UpsampleBilinearBackward {
    fn name(&self) -> &'static str {
        "upsample_bilinear2d_grad_backward"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let up = &self.0;
        let (n, c, h, w) = layout.shape().dims4()?;
        if (h, w) != (up.out_h, up.out_w) {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: Shape::from((n, c, up.out_h, up.out_w)),
                rhs: layout.shape().clone(),
                op: "upsample_bilinear2d_grad_backward",
            }
            .bt());
        }
        let view = View4::new(layout)?;
        let out = map_float_storage!(self.name(), storage, |g| up.backward(g, view, c, n * c));
        Ok((out, Shape::from((n, c, up.in_h, up.in_w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type Shape4 = (usize, usize, usize, usize);

    fn random(shape: Shape4, dtype: DType, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// Distinct values (a shuffled 0.5-spaced grid), so every window has a unique maximum and max pooling is
    /// differentiable at this point.
    fn distinct(shape: Shape4, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let mut v: Vec<f64> = (0..n).map(|i| 0.5 * i as f64 - 0.25 * n as f64).collect();
        v.shuffle(&mut rng);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        crate::testing::max_abs_diff(a, b).unwrap()
    }

    fn to_vec(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Max |autograd − central difference| of L(x) = Σ w ⊙ op(x) at `x` (f64), relative to max(1, max |grad|).
    fn finite_difference_error(
        x: &Tensor,
        op: impl Fn(&Tensor) -> Tensor,
        step: f64,
        seed: u64,
    ) -> f64 {
        let out = op(x);
        let w = random(out.dims4().unwrap(), DType::F64, seed);
        let loss = |x: &Tensor| {
            (op(x) * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };

        let var = Var::from_tensor(x).unwrap();
        let grads = (op(var.as_tensor()) * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = to_vec(
            grads
                .get(var.as_tensor())
                .expect("no gradient reached the input"),
        );

        let x0 = to_vec(x);
        let mut worst = 0f64;
        for i in 0..x0.len() {
            let mut probe = x0.clone();
            probe[i] = x0[i] + step;
            let plus = loss(&Tensor::from_vec(probe.clone(), x.shape(), &Device::Cpu).unwrap());
            probe[i] = x0[i] - step;
            let minus = loss(&Tensor::from_vec(probe, x.shape(), &Device::Cpu).unwrap());
            worst = worst.max((grad[i] - (plus - minus) / (2.0 * step)).abs());
        }
        let scale = grad.iter().fold(1f64, |m, g| m.max(g.abs()));
        worst / scale
    }

    /// Pool configurations: torchvision's stem, overlap with stride 1, no overlap, kernel = stride without padding
    /// (candle's own case), and the largest padding allowed.
    const POOLS: [(usize, usize, usize); 5] =
        [(3, 2, 1), (3, 1, 1), (2, 3, 0), (2, 2, 0), (4, 2, 2)];

    #[test]
    fn max_pool_forward_matches_candle_with_neg_inf_padding() {
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            for (i, &(k, s, p)) in POOLS.iter().enumerate() {
                let x = random((2, 3, 9, 11), dtype, i as u64);
                let got = max_pool2d_padded(&x, k, s, p).unwrap();
                let want = pad_neg_inf(&x, p)
                    .unwrap()
                    .max_pool2d_with_stride(k, s)
                    .unwrap();
                assert_eq!(got.dtype(), dtype);
                assert_eq!(
                    max_abs_diff(&got, &want),
                    0.0,
                    "{dtype:?} k={k} s={s} p={p}"
                );
            }
        }
    }

    #[test]
    fn max_pool_reads_strided_inputs() {
        // A non-contiguous view with an offset: the transposed interior of a larger tensor.
        let big = random((2, 3, 13, 10), DType::F32, 7);
        let x = big
            .narrow(2, 2, 9)
            .unwrap()
            .narrow(3, 1, 7)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(!x.is_contiguous());
        let got = max_pool2d_padded(&x, 3, 2, 1).unwrap();
        let want = max_pool2d_padded(&x.contiguous().unwrap(), 3, 2, 1).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);

        let w = random(got.dims4().unwrap(), DType::F32, 8);
        let grad_of = |x: &Tensor| {
            let var = Var::from_tensor(x).unwrap();
            let loss = (max_pool2d_padded(var.as_tensor(), 3, 2, 1).unwrap() * &w)
                .unwrap()
                .sum_all()
                .unwrap();
            loss.backward()
                .unwrap()
                .get(var.as_tensor())
                .unwrap()
                .clone()
        };
        // A strided input that needs a gradient: the same view, taken of a Var.
        let var = Var::from_tensor(&big).unwrap();
        let view = var
            .as_tensor()
            .narrow(2, 2, 9)
            .unwrap()
            .narrow(3, 1, 7)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let loss = (max_pool2d_padded(&view, 3, 2, 1).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let g_big = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .clone();
        let g_view = g_big
            .narrow(2, 2, 9)
            .unwrap()
            .narrow(3, 1, 7)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert_eq!(
            max_abs_diff(&g_view, &grad_of(&x.contiguous().unwrap())),
            0.0
        );
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        for (i, &(k, s, p)) in POOLS.iter().enumerate() {
            let x = distinct((2, 3, 7, 9), 10 + i as u64);
            let err = finite_difference_error(
                &x,
                |x| max_pool2d_padded(x, k, s, p).unwrap(),
                1e-3,
                i as u64,
            );
            eprintln!("max_pool2d_padded k={k} s={s} p={p}: max relative finite-difference error {err:.2e}");
            assert!(err < 1e-9, "k={k} s={s} p={p}: {err}");
        }
    }

    #[test]
    fn max_pool_gradient_accumulates_over_overlapping_windows() {
        // The centre is the maximum of all nine 3×3 windows (stride 1, padding 1): it collects every gradient.
        let x = Tensor::new(
            &[[[[0f32, 1., 2.], [3., 9., 4.], [5., 6., 7.]]]],
            &Device::Cpu,
        )
        .unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let y = max_pool2d_padded(var.as_tensor(), 3, 1, 1).unwrap();
        assert_eq!(to_vec(&y), vec![9.0; 9]);
        let w = Tensor::arange(1f32, 10., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap();
        let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = to_vec(grads.get(var.as_tensor()).unwrap());
        assert_eq!(g, vec![0., 0., 0., 0., 45., 0., 0., 0., 0.]);
    }

    #[test]
    fn max_pool_ties_route_to_the_first_maximum_like_torch() {
        // All equal: each window's gradient goes to its first (top-left) non-padding pixel. For 4×4, k=3, s=2, p=1 the
        // windows cover rows/columns 0..2 and 1..4, so (0,0), (0,1), (1,0), (1,1) — what torch returns.
        let var = Var::from_tensor(&Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let loss = max_pool2d_padded(var.as_tensor(), 3, 2, 1)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = to_vec(loss.backward().unwrap().get(var.as_tensor()).unwrap());
        #[rustfmt::skip]
        let want = vec![
            1., 1., 0., 0.,
            1., 1., 0., 0.,
            0., 0., 0., 0.,
            0., 0., 0., 0.,
        ];
        assert_eq!(g, want);
    }

    #[test]
    fn max_pool_propagates_nan_like_torch() {
        let x = Tensor::new(&[[[[1f32, f32::NAN], [3., 2.]]]], &Device::Cpu).unwrap();
        let y = max_pool2d_padded(&x, 2, 2, 0).unwrap();
        assert!(to_vec(&y)[0].is_nan());
    }

    #[test]
    fn torchvision_stem_shape_rule_holds() {
        // conv 7×7/2 pad 3, then the 3×3/2 pad 1 pool: 64 → 32 → 16, 224 → 112 → 56, odd 65 → 33 → 17.
        let conv_w = random((4, 3, 7, 7), DType::F32, 3);
        for (size, after_conv, after_pool) in [(64, 32, 16), (224, 112, 56), (65, 33, 17)] {
            let x = random((1, 3, size, size), DType::F32, size as u64);
            let y = x.conv2d(&conv_w, 3, 2, 1, 1).unwrap();
            assert_eq!(y.dims4().unwrap(), (1, 4, after_conv, after_conv));
            let y = max_pool2d_padded(&y, 3, 2, 1).unwrap();
            assert_eq!(y.dims4().unwrap(), (1, 4, after_pool, after_pool));
        }
    }

    /// Up, down, mixed and degenerate sizes; (in_h, in_w, out_h, out_w).
    const RESIZES: [(usize, usize, usize, usize); 6] = [
        (5, 7, 11, 13),
        (9, 8, 4, 5),
        (5, 6, 5, 9),
        (3, 3, 1, 1),
        (1, 4, 3, 7),
        (6, 5, 6, 5),
    ];

    #[test]
    fn bilinear_forward_matches_candle() {
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            for align_corners in [false, true] {
                for (i, &(h, w, oh, ow)) in RESIZES.iter().enumerate() {
                    let x = random((2, 3, h, w), dtype, i as u64);
                    let got = upsample_bilinear2d_grad(&x, oh, ow, align_corners).unwrap();
                    let want = x.upsample_bilinear2d(oh, ow, align_corners).unwrap();
                    let err = max_abs_diff(&got, &want);
                    assert_eq!(
                        err, 0.0,
                        "{dtype:?} {h}×{w} → {oh}×{ow} align_corners={align_corners}"
                    );
                }
            }
        }
        // Strided input.
        let big = random((2, 3, 12, 12), DType::F32, 99);
        let x = big.narrow(2, 1, 7).unwrap().transpose(2, 3).unwrap();
        let got = upsample_bilinear2d_grad(&x, 15, 10, false).unwrap();
        let want = x
            .contiguous()
            .unwrap()
            .upsample_bilinear2d(15, 10, false)
            .unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
    }

    #[test]
    fn bilinear_gradient_matches_finite_differences() {
        for align_corners in [false, true] {
            for (i, &(h, w, oh, ow)) in RESIZES.iter().enumerate() {
                let x = random((2, 2, h, w), DType::F64, 20 + i as u64);
                let op = |x: &Tensor| upsample_bilinear2d_grad(x, oh, ow, align_corners).unwrap();
                let err = finite_difference_error(&x, op, 1e-3, i as u64);
                eprintln!(
                    "upsample_bilinear2d_grad {h}×{w} → {oh}×{ow} align_corners={align_corners}: \
                     max relative finite-difference error {err:.2e}"
                );
                assert!(
                    err < 1e-9,
                    "{h}×{w} → {oh}×{ow} align_corners={align_corners}: {err}"
                );
            }
        }
    }

    #[test]
    fn gradients_flow_through_a_tiny_model() {
        // loss = Σ r ⊙ upsample(pool(conv(x, k))): the conv weight gets its gradient through both ops, checked
        // against central differences in f64.
        let x = random((2, 3, 12, 10), DType::F64, 1);
        let k0 = random((4, 3, 3, 3), DType::F64, 2);
        let forward = |k: &Tensor| {
            let y = x.conv2d(k, 1, 2, 1, 1).unwrap();
            let y = max_pool2d_padded(&y, 3, 2, 1).unwrap();
            upsample_bilinear2d_grad(&y, 6, 5, false).unwrap()
        };
        let r = random(forward(&k0).dims4().unwrap(), DType::F64, 3);
        let loss = |k: &Tensor| (forward(k) * &r).unwrap().sum_all().unwrap();

        let k = Var::from_tensor(&k0).unwrap();
        let grads = loss(k.as_tensor()).backward().unwrap();
        let grad = to_vec(
            grads
                .get(k.as_tensor())
                .expect("the conv weight got no gradient"),
        );
        assert!(grad.iter().any(|g| *g != 0.0));

        let base = to_vec(&k0);
        let step = 1e-6;
        let mut worst = 0f64;
        for i in 0..base.len() {
            let mut probe = base.clone();
            probe[i] += step;
            let plus = loss(&Tensor::from_vec(probe.clone(), k0.shape(), &Device::Cpu).unwrap());
            probe[i] -= 2.0 * step;
            let minus = loss(&Tensor::from_vec(probe, k0.shape(), &Device::Cpu).unwrap());
            let fd = (plus.to_scalar::<f64>().unwrap() - minus.to_scalar::<f64>().unwrap())
                / (2.0 * step);
            worst = worst.max((grad[i] - fd).abs());
        }
        eprintln!("tiny model: max |autograd − finite difference| over conv weights {worst:.2e}");
        assert!(worst < 1e-6, "{worst}");

        // The same model in f32 trains: one SGD step lowers the loss.
        let k32 = Var::from_tensor(&k0.to_dtype(DType::F32).unwrap()).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let r32 = r.to_dtype(DType::F32).unwrap();
        let loss32 = |k: &Tensor| {
            let y = x32.conv2d(k, 1, 2, 1, 1).unwrap();
            let y = max_pool2d_padded(&y, 3, 2, 1).unwrap();
            let y = upsample_bilinear2d_grad(&y, 6, 5, false).unwrap();
            (y * &r32).unwrap().sum_all().unwrap()
        };
        let before = loss32(k32.as_tensor());
        let g = before
            .backward()
            .unwrap()
            .get(k32.as_tensor())
            .unwrap()
            .clone();
        k32.set(&(k32.as_tensor() - (g * 1e-3).unwrap()).unwrap())
            .unwrap();
        let after = loss32(k32.as_tensor());
        assert!(after.to_scalar::<f32>().unwrap() < before.to_scalar::<f32>().unwrap());
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let x = random((1, 2, 5, 5), DType::F32, 0);
        let pool = |x: &Tensor, k, s, p| max_pool2d_padded(x, k, s, p).unwrap_err();
        assert!(matches!(
            pool(&x, 0, 2, 0),
            OpsError::ZeroKernelOrStride { .. }
        ));
        assert!(matches!(
            pool(&x, 3, 0, 1),
            OpsError::ZeroKernelOrStride { .. }
        ));
        assert!(matches!(
            pool(&x, 3, 2, 2),
            OpsError::PaddingTooLarge {
                kernel: 3,
                padding: 2
            }
        ));
        assert!(matches!(pool(&x, 8, 2, 1), OpsError::KernelTooLarge { .. }));
        let x3 = x.squeeze(0).unwrap();
        assert!(matches!(pool(&x3, 3, 2, 1), OpsError::NotNchw { .. }));
        let empty = Tensor::zeros((1, 2, 0, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(pool(&empty, 1, 1, 0), OpsError::EmptyInput { .. }));
        let ints = x.to_dtype(DType::U32).unwrap();
        assert!(matches!(
            pool(&ints, 3, 2, 1),
            OpsError::UnsupportedDType {
                dtype: DType::U32,
                ..
            }
        ));

        let up = |x: &Tensor, h, w| upsample_bilinear2d_grad(x, h, w, false).unwrap_err();
        assert!(matches!(up(&x, 0, 4), OpsError::EmptyOutput { .. }));
        assert!(matches!(up(&empty, 4, 4), OpsError::EmptyInput { .. }));
        assert!(matches!(up(&x3, 4, 4), OpsError::NotNchw { .. }));
        assert!(matches!(up(&ints, 4, 4), OpsError::UnsupportedDType { .. }));

        // Typed errors stay readable after `?` into a candle error.
        let e: candle_core::Error = pool(&x, 3, 2, 2).into();
        assert!(
            e.to_string()
                .contains("padding 2 exceeds half the kernel size 3"),
            "{e}"
        );

        // An empty batch is fine.
        let none = Tensor::zeros((0, 2, 5, 5), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            max_pool2d_padded(&none, 3, 2, 1).unwrap().dims4().unwrap(),
            (0, 2, 3, 3)
        );
        assert_eq!(
            upsample_bilinear2d_grad(&none, 7, 7, true)
                .unwrap()
                .dims4()
                .unwrap(),
            (0, 2, 7, 7)
        );
    }
}
