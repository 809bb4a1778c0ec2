//! Fused f32 CPU convolution for inference with a BatchNorm-folded backbone.
//!
//! Why: candle 0.11's CPU `conv2d` runs at ~40 GFLOP/s on our 2-core AVX2 machine and every bias add, residual add
//! and ReLU after it is a separate pass over the activation, which left a folded ResNet 4–5× slower than PyTorch.
//! The GEMM candle uses (the `gemm` crate) is competitive on its own, so this module keeps it and removes the rest:
//!
//! - **Tiles.** Each convolution is split into (image, block of output pixels) tiles spread over rayon's threads.
//!   A tile gathers its receptive fields into a per-thread im2col buffer sized to stay in L2 (~256 KiB), runs one
//!   single-threaded GEMM `W (cout×k) · col (k×tile)` straight into the NCHW output, and applies bias, the residual
//!   and ReLU in one pass while the tile is still in cache.
//! - **No im2col for 1×1.** An unpadded 1×1 convolution is a GEMM on the input itself (stride 1) or on its (0, 0)
//!   stride phase.
//! - **Stride phases.** A strided convolution first splits its input into stride phases (one gather pass), so every
//!   im2col copy is a contiguous run.
//! - **Fused stem.** [`conv2d_relu_max_pool`] computes bands of the stem convolution and pools them at once, so
//!   the largest activation of the network is never stored.
//! - **Threads.** Parallelism is over tiles, with GEMM threading off (`Parallelism::None`): on 2 cores nested
//!   parallelism only adds synchronisation, and tiles balance well.
//!
//! Everything else (other devices and dtypes, autograd, dilation, groups) goes to candle's ops, so callers can use
//! these functions unconditionally.
//!
//! Measured (2 threads, quiet machine, `bench/compare.sh`; ±15 % VM noise): ResNet-18 to layer3 at 256×256 takes
//! 30 ms at batch 1 and 212 ms at batch 8 (PyTorch 2.15 CPU: 36 / 264 ms; candle's own conv2d path: 119 / 851 ms);
//! Wide-ResNet-50-2 150 / 1374 ms (PyTorch 167 / 1644; candle 421 / 2991). About 75 % of the time is now the gemm
//! microkernel, near the core's peak; im2col is ~8 %. The optimisation log is in `bench/results/NOTES.md`.

use std::cell::RefCell;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor,
};
use rayon::prelude::*;

/// Re-exported here because the pooling functions of this module take it; it lives with the rest of the pooling
/// rules in [`crate::pool`].
pub use crate::pool::PoolSpec;
use crate::pool::{max_pool_f32, pool_row_f32, PoolGeometryError, PoolShape};

/// Why the fused convolution rejected its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvError {
    /// A tensor that must be NCHW (or OIHW) is not rank 4.
    #[error("{what} must be a rank-4 tensor, got shape {got:?}")]
    Rank {
        /// Which argument.
        what: &'static str,
        /// Its shape.
        got: Vec<usize>,
    },
    /// Input channels differ from the weight's.
    #[error("input has {input} channels but the weight expects {weight}")]
    Channels {
        /// Channels of the input.
        input: usize,
        /// Input channels of the weight.
        weight: usize,
    },
    /// The bias does not have one element per output channel.
    #[error("bias has shape {got:?}, expected [{expected}] (one per output channel)")]
    Bias {
        /// Output channels.
        expected: usize,
        /// The bias shape.
        got: Vec<usize>,
    },
    /// The residual does not have the convolution's output shape.
    #[error("residual shape {got:?} differs from the convolution output {expected:?}")]
    Residual {
        /// Output shape.
        expected: Vec<usize>,
        /// Residual shape.
        got: Vec<usize>,
    },
    /// The kernel does not fit the padded input, or the stride is zero.
    #[error("kernel {kernel:?} (stride {stride}, padding {padding}) gives no output for input {input:?}")]
    Geometry {
        /// Input height and width.
        input: [usize; 2],
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Stride.
        stride: usize,
        /// Padding.
        padding: usize,
    },
    /// The max pool does not fit its input (the same rules as [`crate::ops::max_pool2d_padded`]).
    #[error(transparent)]
    Pool(#[from] PoolGeometryError),
    /// The fast path was asked to run on something it does not handle (the public functions fall back to candle
    /// instead of returning this).
    #[error("fused convolution needs {0}")]
    Unsupported(&'static str),
}

impl From<ConvError> for candle_core::Error {
    fn from(e: ConvError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// Stride and (symmetric) zero padding of a 2-D convolution. Dilation 1 and one group only: that is all a ResNet
/// uses, and candle's own `conv2d` serves everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

/// What happens to `conv(x) + bias` before it is written: applied in the same pass as the bias.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Nothing: `conv(x) + bias`.
    Linear,
    /// `relu(conv(x) + bias)`.
    Relu,
    /// `relu(conv(x) + bias + residual)`: a residual block's output. The residual has the output's shape.
    AddRelu(&'a Tensor),
}

/// Whether [`conv2d_fused`] takes its fast path for these arguments: f32 tensors (any layout) on the CPU that track
/// no autograd graph (the fast path has no backward).
pub fn fast_path_applies(x: &Tensor, weight: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu)
        && matches!(weight.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && !x.track_op()
        && !weight.track_op()
}

/// `epilogue(conv2d(x, weight) + bias)` for NCHW `x` and OIHW `weight`.
///
/// On the CPU in f32 without autograd this is one fused pass per output tile (im2col, GEMM, bias, residual, ReLU);
/// anywhere else it is the same computation in candle ops.
pub fn conv2d_fused(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: ConvSpec,
    epilogue: Epilogue<'_>,
) -> candle_core::Result<Tensor> {
    let residual_ok = match epilogue {
        Epilogue::AddRelu(r) => {
            matches!(r.device(), Device::Cpu) && r.dtype() == DType::F32 && !r.track_op()
        }
        _ => true,
    };
    let bias_ok = bias.is_none_or(|b| {
        matches!(b.device(), Device::Cpu) && b.dtype() == DType::F32 && !b.track_op()
    });
    if !(fast_path_applies(x, weight) && residual_ok && bias_ok) {
        return conv2d_candle(x, weight, bias, spec, epilogue);
    }
    let x = x.contiguous()?;
    // No-ops (a cheap clone) for the usual contiguous weights.
    let (weight, bias) = (
        weight.contiguous()?,
        bias.map(Tensor::contiguous).transpose()?,
    );
    let op = FusedConv {
        weight: &weight,
        bias: bias.as_ref(),
        spec,
        relu: !matches!(epilogue, Epilogue::Linear),
        pool: None,
    };
    match epilogue {
        Epilogue::AddRelu(r) => x.apply_op2_no_bwd(&r.contiguous()?, &op),
        _ => x.apply_op1_no_bwd(&op),
    }
}

/// `max_pool2d(relu(conv2d(x, weight) + bias))`: the ResNet stem in one op.
///
/// On the CPU path the full-resolution activation is never stored: bands of convolution rows are computed into a
/// per-thread buffer and pooled at once. That saves its write and re-read (for the stem at 256×256 and batch 8: 34 MB,
/// above glibc's largest mmap threshold, so every call also page-faults it in afresh).
pub fn conv2d_relu_max_pool(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: ConvSpec,
    pool: PoolSpec,
) -> candle_core::Result<Tensor> {
    let bias_ok = bias.is_none_or(|b| {
        matches!(b.device(), Device::Cpu) && b.dtype() == DType::F32 && !b.track_op()
    });
    if !(fast_path_applies(x, weight) && bias_ok) {
        let y = conv2d_candle(x, weight, bias, spec, Epilogue::Relu)?;
        return max_pool2d(&y, pool);
    }
    let (weight, bias) = (
        weight.contiguous()?,
        bias.map(Tensor::contiguous).transpose()?,
    );
    let op = FusedConv {
        weight: &weight,
        bias: bias.as_ref(),
        spec,
        relu: true,
        pool: Some(pool),
    };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// The same computation as [`conv2d_fused`] in plain candle ops (the fallback, and the reference in tests).
pub fn conv2d_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: ConvSpec,
    epilogue: Epilogue<'_>,
) -> candle_core::Result<Tensor> {
    let y = x.conv2d(weight, spec.padding, spec.stride, 1, 1)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    match epilogue {
        Epilogue::Linear => Ok(y),
        Epilogue::Relu => y.relu(),
        Epilogue::AddRelu(r) => (y + r)?.relu(),
    }
}

/// Max pooling with implicit `-inf` padding (PyTorch's `max_pool2d(x, kernel, stride, padding)`), e.g. the ResNet
/// stem's 3×3/s2/p1 pool, with [`crate::pool`]'s geometry and rules; on the CPU, NaN propagates as in PyTorch.
///
/// On the CPU in f32 without autograd this is [`crate::pool`]'s separable kernel. Other float tensors go to
/// [`crate::ops::max_pool2d_padded`] (the same geometry and maxima, with a backward pass; on a GPU, candle's pool,
/// which does not propagate NaN).
/// Integer tensors use replicate padding and candle's pool, which gives the same maxima because every window keeps
/// at least one real element.
pub fn max_pool2d(x: &Tensor, pool: PoolSpec) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let g = pool.shape(h, w).map_err(ConvError::from)?;
    let PoolSpec {
        kernel,
        stride,
        padding,
    } = pool;
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && !x.track_op() {
        return x.contiguous()?.apply_op1_no_bwd(&MaxPool(g));
    }
    if x.dtype().is_float() {
        return Ok(crate::ops::max_pool2d_padded(x, kernel, stride, padding)?);
    }
    let mut y = x.clone();
    if padding > 0 {
        y = y
            .pad_with_same(3, padding, padding)?
            .pad_with_same(2, padding, padding)?;
    }
    y.max_pool2d_with_stride(kernel, stride)
}

// ---------------------------------------------------------------------------------------------------------------
// Geometry

/// Sizes of one convolution, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    pub(crate) n: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cout: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
}

impl Geom {
    pub(crate) fn new(x: &[usize], w: &[usize], spec: ConvSpec) -> Result<Self, ConvError> {
        let [n, cin, h, wd] = *x else {
            return Err(ConvError::Rank {
                what: "input",
                got: x.to_vec(),
            });
        };
        let [cout, wcin, kh, kw] = *w else {
            return Err(ConvError::Rank {
                what: "weight",
                got: w.to_vec(),
            });
        };
        if wcin != cin {
            return Err(ConvError::Channels {
                input: cin,
                weight: wcin,
            });
        }
        let (s, p) = (spec.stride, spec.padding);
        let bad = ConvError::Geometry {
            input: [h, wd],
            kernel: [kh, kw],
            stride: s,
            padding: p,
        };
        if s == 0 || kh == 0 || kw == 0 || h + 2 * p < kh || wd + 2 * p < kw {
            return Err(bad);
        }
        Ok(Self {
            n,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride: s,
            pad: p,
            ho: (h + 2 * p - kh) / s + 1,
            wo: (wd + 2 * p - kw) / s + 1,
        })
    }

    /// Output pixels per image.
    pub(crate) fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// GEMM depth: one row of the im2col matrix per (input channel, ky, kx).
    pub(crate) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// An unpadded 1×1 convolution is a plain GEMM on the input (stride 1) or on its (0, 0) stride phase: no
    /// im2col.
    pub(crate) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0
    }

    pub(crate) fn out_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Custom ops

struct FusedConv<'a> {
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    spec: ConvSpec,
    relu: bool,
    /// Max-pool the (ReLU'd) output in the same op.
    pool: Option<PoolSpec>,
}

/// Run `f` on the contiguous f32 CPU data of `t`.
///
/// The storage read lock is held only for `f`. Weights and biases are never written during inference, so taking
/// it inside a custom op (whose own input lock is already held) cannot deadlock.
pub(crate) fn with_cpu_f32<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(ConvError::Unsupported("CPU tensors").into());
    };
    f(contiguous_f32(cpu, layout)?)
}

pub(crate) fn contiguous_f32<'s>(s: &'s CpuStorage, l: &Layout) -> candle_core::Result<&'s [f32]> {
    let data = s.as_slice::<f32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or(ConvError::Unsupported("contiguous tensors"))?;
    Ok(&data[a..b])
}

impl FusedConv<'_> {
    fn run(
        &self,
        x: &[f32],
        x_dims: &[usize],
        residual: Option<(&[f32], &[usize])>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(x_dims, self.weight.dims(), self.spec)?;
        if let Some(b) = self.bias {
            if b.dims() != [g.cout] {
                return Err(ConvError::Bias {
                    expected: g.cout,
                    got: b.dims().to_vec(),
                }
                .into());
            }
        }
        if let Some((_, rd)) = residual {
            if rd != g.out_dims() {
                return Err(ConvError::Residual {
                    expected: g.out_dims().to_vec(),
                    got: rd.to_vec(),
                }
                .into());
            }
        }
        let pool = self
            .pool
            .map(|p| p.shape(g.ho, g.wo).map_err(ConvError::from))
            .transpose()?;
        let run = |w: &[f32], b: Option<&[f32]>| match &pool {
            Some(pg) => conv_relu_pool_f32(&ConvArgs::new(x, w, b, g), pg),
            // Inference: per-image tiles only, so a frame scores bit for bit the same alone (a unit) as in a batch
            // (the host): a multi-image GEMM may sum in another order.
            None => conv_f32(x, w, b, residual.map(|r| r.0), self.relu, &g, false),
        };
        let y = with_cpu_f32(self.weight, |w| match self.bias {
            Some(b) => with_cpu_f32(b, |b| Ok(run(w, Some(b)))),
            None => Ok(run(w, None)),
        })?;
        let dims = match &pool {
            Some(pg) => [g.n, g.cout, pg.out_h, pg.out_w],
            None => g.out_dims(),
        };
        Ok((CpuStorage::F32(y), Shape::from(dims.to_vec())))
    }
}

impl CustomOp1 for FusedConv<'_> {
    fn name(&self) -> &'static str {
        "kestrel-fused-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(contiguous_f32(s, l)?, l.dims(), None)
    }
}

impl CustomOp2 for FusedConv<'_> {
    fn name(&self) -> &'static str {
        "kestrel-fused-conv2d-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(
            contiguous_f32(s1, l1)?,
            l1.dims(),
            Some((contiguous_f32(s2, l2)?, l2.dims())),
        )
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The kernel

/// Bytes of one im2col tile (k rows × tile columns), or of the output tile for 1×1 convolutions: half of the
/// 512 KiB L2, leaving room for the GEMM's packed panels. Not critical: budgets from 64 KiB to a whole image per tile
/// changed ResNet-18's single-thread convolution time by under 5 %.
pub(crate) const TILE_BYTES: usize = 256 * 1024;

/// Smallest tile: below this the GEMM's per-call packing of the weights dominates.
const MIN_TILE: usize = 64;

/// Output columns (pixels) per tile: a multiple of 16 (two 8-float vectors, the GEMM microkernel's row block).
fn tile_cols(g: &Geom, threads: usize) -> usize {
    let p = g.p();
    let rows = if g.pointwise() {
        g.cout
    } else {
        g.k().max(g.cout)
    };
    let mut t = (TILE_BYTES / 4 / rows.max(1)).max(MIN_TILE);
    // Enough tiles that every thread gets work (and rayon can balance a little).
    let want = 2 * threads;
    if g.n * p.div_ceil(t) < want {
        let per_image = want.div_ceil(g.n.max(1));
        t = p.div_ceil(per_image);
    }
    // Not capped at p: a tile wider than an image takes several images (see [`Tile`]).
    t.next_multiple_of(16).max(1)
}

thread_local! {
    /// Per-thread im2col buffer, reused across calls so steady-state inference allocates none.
    pub(crate) static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread band of convolution output awaiting the fused max pool.
    static BAND: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread GEMM output of a multi-image [`Tile`], before it is scattered into NCHW.
    pub(crate) static TMP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A block of GEMM columns: pixels `p0..p0 + tw` of images `b0..b0 + nb`.
///
/// Late ResNet stages have few pixels per image (4×4 and 2×2 at a 64×64 training size), and a GEMM only `p` columns
/// wide runs its microkernel on one partial register block. So when an image has fewer than half a tile of pixels,
/// one tile takes several whole images (`nb > 1`, `p0 = 0`, `tw = p`); otherwise a tile is part of one image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    pub(crate) b0: usize,
    pub(crate) nb: usize,
    pub(crate) p0: usize,
    pub(crate) tw: usize,
}

impl Tile {
    /// GEMM columns.
    pub(crate) fn cols(&self) -> usize {
        self.nb * self.tw
    }

    /// Split the `n · p` output columns of a convolution into tiles of about `tile` columns, at least `threads`
    /// of them where the batch allows.
    pub(crate) fn plan(g: &Geom, tile: usize, threads: usize, multi_image: bool) -> Vec<Tile> {
        let p = g.p();
        if p == 0 || g.n == 0 {
            return Vec::new();
        }
        if multi_image && 2 * p <= tile {
            let per = (tile / p).min(g.n.div_ceil(threads.max(1))).max(1);
            return (0..g.n.div_ceil(per))
                .map(|t| Tile {
                    b0: t * per,
                    nb: per.min(g.n - t * per),
                    p0: 0,
                    tw: p,
                })
                .collect();
        }
        let per_img = p.div_ceil(tile);
        (0..g.n * per_img)
            .map(|t| {
                let p0 = (t % per_img) * tile;
                Tile {
                    b0: t / per_img,
                    nb: 1,
                    p0,
                    tw: tile.min(p - p0),
                }
            })
            .collect()
    }

    /// Fill `col` (k rows × [`Tile::cols`]) with the tile's im2col columns, image after image. For a 1×1
    /// convolution the rows are the source planes themselves.
    pub(crate) fn fill_cols(&self, src: &Src<'_>, g: &Geom, col: &mut [f32]) {
        let ld = self.cols();
        for i in 0..self.nb {
            let b = self.b0 + i;
            if g.pointwise() {
                let (image, cs) = (src.image(b), src.channel_stride());
                for ci in 0..g.cin {
                    col[ci * ld + i * self.tw..][..self.tw]
                        .copy_from_slice(&image[ci * cs + self.p0..][..self.tw]);
                }
            } else {
                im2col(src, b, g, (self.p0, self.tw), col, (ld, i * self.tw));
            }
        }
    }
}

/// Run `f` on this thread's buffer `key`, grown to at least `len` elements and cut to `len`.
pub(crate) fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

/// Output base pointer shared by the tile tasks.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the tasks write disjoint (row, column-range) segments of the output; see `conv_f32`.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access) so closures capture the whole `Sync` wrapper, not the raw pointer.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A strided f32 matrix operand: element (i, j) at `ptr + i·rs + j·cs`. Transposing one is swapping its strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef {
    pub(crate) ptr: *const f32,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl MatRef {
    /// The transposed view of the same elements.
    pub(crate) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst (m×n) (+)= lhs (m×k) · rhs (k×n)` on strided operands, single-threaded (callers parallelise outside):
/// the convolution backward's GEMMs, whose operands are transposed views of activations and weights.
///
/// # Safety
/// Every element the shapes and strides address must be valid (reads for `lhs`, `rhs`; reads and writes for
/// `dst`), and no other thread may access the `dst` elements meanwhile. With `accumulate` false `dst` may be
/// uninitialised.
pub(crate) unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    dst: OutPtr,
    (dst_rs, dst_cs): (usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller. gemm computes dst := alpha·dst + beta·lhs·rhs and reads dst only when
    // read_dst is true.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.get(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`; row-major operands with the given row strides and unit column strides.
///
/// # Safety
/// `lhs` must be valid for reads of `(m-1)·lhs_rs + k` elements, `rhs` for `(k-1)·rhs_rs + n`, `dst` for writes of
/// `(m-1)·dst_rs + n`, and no other thread may access the `dst` elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
) {
    // SAFETY: forwarded from the caller. gemm computes dst := alpha·dst + beta·lhs·rhs and, with
    // read_dst = false, never reads dst, so it may be uninitialised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            1,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            // The tiles are already spread over rayon's threads; nested GEMM threading would only add sync.
            gemm::Parallelism::None,
        )
    }
}

/// The operands of one convolution, shared by its tile tasks.
struct ConvArgs<'a> {
    src: Src<'a>,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    g: Geom,
    /// Output columns per GEMM tile.
    tile: usize,
}

impl<'a> ConvArgs<'a> {
    fn new(x: &'a [f32], w: &'a [f32], bias: Option<&'a [f32]>, g: Geom) -> Self {
        let tile = tile_cols(&g, rayon::current_num_threads());
        Self {
            src: Src::new(x, &g),
            w,
            bias,
            g,
            tile,
        }
    }

    /// Output pixels `p0..p0 + tw` of image `b`, all output channels: GEMM, then bias (+ the residual, whose layout
    /// is the output's) (+ ReLU) in one pass over the tile while it is still in cache. Channel `co` goes to
    /// `dst + co·dst_rs`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cout` rows of `tw` elements at row stride `dst_rs`, and no other thread
    /// may access those elements during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        b: usize,
        p0: usize,
        tw: usize,
        residual: Option<&[f32]>,
        relu: bool,
        dst: OutPtr,
        dst_rs: usize,
    ) {
        let g = &self.g;
        let (p, k) = (g.p(), g.k());
        if g.pointwise() {
            // The source planes are ho × wo here (the input, or its (0, 0) phase), one per channel.
            let cs = self.src.channel_stride();
            let image = self.src.image(b);
            assert!(self.src.hp * self.src.wp == p && (g.cin - 1) * cs + p0 + tw <= image.len());
            // SAFETY: lhs = weight (cout×cin), rhs = columns p0..p0+tw of this image's cin source planes (row
            // stride cs), inside `image` by the assertion; dst per the contract.
            unsafe {
                sgemm(
                    g.cout,
                    tw,
                    k,
                    dst.get(),
                    dst_rs,
                    self.w.as_ptr(),
                    k,
                    image.as_ptr().add(p0),
                    cs,
                )
            }
        } else {
            COL.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() < k * tw {
                    c.resize(k * tw, 0.0);
                }
                let col = &mut c[..k * tw];
                im2col(&self.src, b, g, (p0, tw), col, (tw, 0));
                // SAFETY: lhs = weight (cout×k), rhs = col (k×tw, contiguous), dst per the contract.
                unsafe {
                    sgemm(
                        g.cout,
                        tw,
                        k,
                        dst.get(),
                        dst_rs,
                        self.w.as_ptr(),
                        k,
                        col.as_ptr(),
                        tw,
                    )
                }
            });
        }
        for co in 0..g.cout {
            // SAFETY: row co of the tile, owned by this call per the contract and fully written by the GEMM.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.get().add(co * dst_rs), tw) };
            let r_off = (b * g.cout + co) * p + p0;
            epilogue(
                row,
                self.bias.map_or(0.0, |bias| bias[co]),
                residual.map(|r| &r[r_off..r_off + tw]),
                relu,
            );
        }
    }
}

impl ConvArgs<'_> {
    /// A [`Tile`] of whole images: one GEMM into a per-thread buffer, then each (image, channel) row is copied to
    /// its place in the NCHW output with the epilogue applied.
    ///
    /// # Safety
    /// `out` must be the convolution's output allocation (n·cout·p elements), and no other thread may access the
    /// tile's images meanwhile.
    unsafe fn multi_image_tile(&self, t: &Tile, residual: Option<&[f32]>, relu: bool, out: OutPtr) {
        let g = &self.g;
        let (p, k, cols) = (g.p(), g.k(), t.cols());
        with_buffer(&COL, k * cols, |col| {
            t.fill_cols(&self.src, g, col);
            with_buffer(&TMP, g.cout * cols, |tmp| {
                // SAFETY: lhs = weight (cout×k), rhs = col (k×cols, contiguous), dst = tmp (cout×cols), ours.
                unsafe {
                    sgemm(
                        g.cout,
                        cols,
                        k,
                        tmp.as_mut_ptr(),
                        cols,
                        self.w.as_ptr(),
                        k,
                        col.as_ptr(),
                        cols,
                    )
                };
                for i in 0..t.nb {
                    for co in 0..g.cout {
                        let off = ((t.b0 + i) * g.cout + co) * p;
                        // SAFETY: row (image b0+i, channel co) lies inside `out` and belongs to this tile.
                        let row = unsafe { std::slice::from_raw_parts_mut(out.get().add(off), p) };
                        row.copy_from_slice(&tmp[co * cols + i * p..][..p]);
                        epilogue(
                            row,
                            self.bias.map_or(0.0, |bias| bias[co]),
                            residual.map(|r| &r[off..off + p]),
                            relu,
                        );
                    }
                }
            })
        })
    }
}

/// `row = act(row + bias (+ residual))`, one pass.
#[inline(never)]
fn epilogue(row: &mut [f32], bias: f32, residual: Option<&[f32]>, relu: bool) {
    match residual {
        Some(r) => {
            for (v, r) in row.iter_mut().zip(r) {
                let s = *v + bias + *r;
                *v = if s > 0.0 { s } else { 0.0 };
            }
        }
        None if relu => {
            for v in row.iter_mut() {
                let s = *v + bias;
                *v = if s > 0.0 { s } else { 0.0 };
            }
        }
        None => {
            if bias != 0.0 {
                for v in row.iter_mut() {
                    *v += bias;
                }
            }
        }
    }
}

/// The fused convolution on contiguous slices. `x`: N×Cin×H×W, `w`: Cout×Cin×kh×kw, `bias`: Cout, `residual`:
/// the output's shape (it implies ReLU). `multi_image` lets a tile span several small images ([`Tile`]): faster
/// for training batches, but then an image's result depends (in the last bits) on its batch.
pub(crate) fn conv_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    g: &Geom,
    multi_image: bool,
) -> Vec<f32> {
    let a = ConvArgs::new(x, w, bias, *g);
    let p = g.p();
    let out_len = g.n * g.cout * p;
    let tiles = Tile::plan(g, a.tile, rayon::current_num_threads(), multi_image);
    let mut y: Vec<f32> = Vec::with_capacity(out_len);
    let out = OutPtr(y.as_mut_ptr());
    tiles.par_iter().for_each(|t| {
        // SAFETY: a tile owns columns p0..p0+tw of its images' cout output rows (row stride p); tiles are disjoint
        // and all lie inside the allocation of n·cout·p elements.
        unsafe {
            if t.nb == 1 {
                let dst = OutPtr(out.get().add(t.b0 * g.cout * p + t.p0));
                a.tile(t.b0, t.p0, t.tw, residual, relu, dst, p);
            } else {
                a.multi_image_tile(t, residual, relu, out);
            }
        }
    });
    // SAFETY: the tiles cover every (image, channel, pixel) exactly once and each was written.
    unsafe { y.set_len(out_len) };
    y
}

/// Max pooling over the ReLU'd convolution output, fused: each task computes a band of convolution rows into a
/// per-thread buffer and pools it straight away, so the full-resolution activation is never stored.
fn conv_relu_pool_f32(a: &ConvArgs<'_>, pg: &PoolShape) -> Vec<f32> {
    let g = &a.g;
    // Pooled rows per band: the band's conv rows (m·s + k − s of them) should fit ~1 MiB for all channels, and
    // there should be enough bands for every thread.
    let row_bytes = (g.cout * g.wo * 4).max(1);
    let (k, s) = (pg.spec.kernel, pg.spec.stride);
    let fit = ((1 << 20) / row_bytes).saturating_sub(k.saturating_sub(s)) / s;
    let want = 2 * rayon::current_num_threads();
    let mut m = fit.clamp(1, pg.out_h);
    if g.n * pg.out_h.div_ceil(m) < want {
        m = pg.out_h.div_ceil(want.div_ceil(g.n.max(1))).max(1);
    }
    let bands = pg.out_h.div_ceil(m);
    let out_plane = pg.out_h * pg.out_w;
    let out_len = g.n * g.cout * out_plane;
    let mut y: Vec<f32> = Vec::with_capacity(out_len);
    let out = OutPtr(y.as_mut_ptr());
    (0..g.n * bands).into_par_iter().for_each(|t| {
        let (b, band) = (t / bands, t % bands);
        let (oy0, oy1) = (band * m, ((band + 1) * m).min(pg.out_h));
        let r0 = pg.rows(oy0).start;
        let r1 = pg.rows(oy1 - 1).end;
        let band_px = (r1 - r0) * g.wo;
        BAND.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < g.cout * band_px {
                buf.resize(g.cout * band_px, 0.0);
            }
            let buf = &mut buf[..g.cout * band_px];
            let base = OutPtr(buf.as_mut_ptr());
            let mut p = r0 * g.wo;
            while p < r1 * g.wo {
                let tw = a.tile.min(r1 * g.wo - p);
                // SAFETY: columns p..p+tw of the band buffer (cout rows of stride band_px), owned by this thread.
                unsafe {
                    let dst = OutPtr(base.get().add(p - r0 * g.wo));
                    a.tile(b, p, tw, None, true, dst, band_px);
                }
                p += tw;
            }
            let mut vmax = vec![f32::NEG_INFINITY; g.wo];
            for (co, plane) in buf.chunks_exact(band_px).enumerate() {
                let out_off = (b * g.cout + co) * out_plane + oy0 * pg.out_w;
                // SAFETY: pooled rows oy0..oy1 of channel co of image b: this task's alone, inside the allocation.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out.get().add(out_off), (oy1 - oy0) * pg.out_w)
                };
                for (oy, orow) in (oy0..oy1).zip(dst.chunks_exact_mut(pg.out_w)) {
                    let rows = pg.rows(oy);
                    pool_row_f32(
                        &plane[(rows.start - r0) * g.wo..(rows.end - r0) * g.wo],
                        pg,
                        &mut vmax,
                        orow,
                    );
                }
            }
        });
    });
    // SAFETY: the bands cover every (image, channel, pooled row) exactly once and each row was written.
    unsafe { y.set_len(out_len) };
    y
}

/// Fill `col` (k rows × `tw` columns) with the receptive fields of output pixels `p0..p0+tw` of image `b`.
///
/// Every kernel tap reads contiguous runs of one source plane (the input, or one of its stride phases), so the
/// copies are plain `memcpy`s; the row segments of the tile are worked out once, not once per (channel, tap).
/// Column `j` of the tile goes to `col[row·ld + off + j]` (`ld = tw`, `off = 0` for a tile of its own; wider when
/// several images share one GEMM, see [`Tile`]).
#[inline(never)]
pub(crate) fn im2col(
    src: &Src<'_>,
    b: usize,
    g: &Geom,
    (p0, tw): (usize, usize),
    col: &mut [f32],
    (ld, off): (usize, usize),
) {
    // The runs of one im2col row share their source plane: look it up once per row, not once per run.
    let mut plane: (usize, &[f32]) = (usize::MAX, &[]);
    for_each_run(g, src.wp, p0, tw, |r| {
        let at = r.row * ld + off + r.at;
        let seg = &mut col[at..at + r.len];
        if plane.0 != r.row {
            plane = (r.row, src.plane(b, r.ci, r.py, r.px));
        }
        // Late stages have runs of a few elements (a 2×2 image has 2-pixel rows): a loop beats memcpy calls.
        if r.len <= 8 {
            for (j, v) in seg.iter_mut().enumerate() {
                *v = if j >= r.lo && j < r.hi {
                    plane.1[r.start + j - r.lo]
                } else {
                    0.0
                };
            }
            return;
        }
        seg[..r.lo].fill(0.0);
        seg[r.hi..].fill(0.0);
        if r.lo < r.hi {
            seg[r.lo..r.hi].copy_from_slice(&plane.1[r.start..r.start + (r.hi - r.lo)]);
        }
    });
}

/// One contiguous run of an im2col tile: columns `at..at + len` of im2col row `row` (input channel `ci`, one
/// kernel tap), all on one output row. Of those, `at + lo..at + hi` read phase plane (`py`, `px`) of channel `ci`
/// from element `start` on; the rest fall on the zero padding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) row: usize,
    pub(crate) ci: usize,
    pub(crate) py: usize,
    pub(crate) px: usize,
    pub(crate) at: usize,
    pub(crate) len: usize,
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    pub(crate) start: usize,
}

/// Visit every [`Run`] of the im2col tile of output pixels `p0..p0+tw` (phase planes `wp` wide), im2col row by
/// im2col row. im2col copies the runs; the convolution backward adds its column gradient back along the same runs.
pub(crate) fn for_each_run(g: &Geom, wp: usize, p0: usize, tw: usize, mut f: impl FnMut(Run)) {
    let (h, w, s, wo) = (g.h as isize, g.w as isize, g.stride as isize, g.wo);
    let pad = g.pad as isize;
    // (output row, first output column, length, offset in the tile)
    let mut segs: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(tw / wo + 2);
    let (mut p, mut at) = (p0, 0);
    while at < tw {
        let (oy, ox0) = (p / wo, p % wo);
        let len = (wo - ox0).min(tw - at);
        segs.push((oy, ox0, len, at));
        at += len;
        p += len;
    }
    let mut row = 0;
    for ci in 0..g.cin {
        for ky in 0..g.kh {
            let dy = ky as isize - pad;
            let (py, qy) = (dy.rem_euclid(s) as usize, dy.div_euclid(s));
            for kx in 0..g.kw {
                let dx = kx as isize - pad;
                let (px, qx) = (dx.rem_euclid(s) as usize, dx.div_euclid(s));
                // Output columns whose input column ox·s + dx lies inside [0, w).
                let lo = if dx >= 0 { 0 } else { (-dx + s - 1) / s } as usize;
                let hi = if w > dx {
                    (((w - dx - 1) / s + 1) as usize).min(wo)
                } else {
                    0
                };
                for &(oy, ox0, len, at) in &segs {
                    let iy = oy as isize * s + dy;
                    let mut run = Run {
                        row,
                        ci,
                        py,
                        px,
                        at,
                        len,
                        lo: 0,
                        hi: 0,
                        start: 0,
                    };
                    let (a, e) = (lo.clamp(ox0, ox0 + len), hi.clamp(ox0, ox0 + len));
                    // An empty valid range (a == e) leaves the whole run on the padding; its start is never read.
                    if iy >= 0 && iy < h && a < e {
                        // Phase-plane row oy + qy and column ox + qx hold input (iy, ox·s + dx).
                        run.lo = a - ox0;
                        run.hi = e - ox0;
                        run.start = (oy as isize + qy) as usize * wp + (a as isize + qx) as usize;
                    }
                    f(run);
                }
                row += 1;
            }
        }
    }
}

/// Where im2col (and the 1×1 GEMM) read the input from.
///
/// Stride-1 convolutions read the input itself. Strided ones first split each input plane into its stride phases,
/// plane (py, px) holding `x[y·s + py][x·s + px]` (zero beyond the edge): one gather pass over the input, after
/// which every tap of every kernel row reads contiguous runs. Gathering per tap instead (what a direct strided
/// im2col does) costs k² scalar gathers per input element and was ~10 % of ResNet-18's time. Only the phases the
/// kernel touches are kept (a 1×1/s2 convolution needs just (0, 0), which then is its GEMM operand as is).
pub(crate) struct Src<'a> {
    data: std::borrow::Cow<'a, [f32]>,
    /// The (py, px) phases kept for each channel, in storage order.
    pub(crate) phases: Vec<(usize, usize)>,
    pub(crate) hp: usize,
    pub(crate) wp: usize,
    cin: usize,
}

impl<'a> Src<'a> {
    pub(crate) fn new(x: &'a [f32], g: &Geom) -> Self {
        let s = g.stride;
        if s == 1 {
            return Self {
                data: std::borrow::Cow::Borrowed(x),
                phases: vec![(0, 0)],
                hp: g.h,
                wp: g.w,
                cin: g.cin,
            };
        }
        let (phases, hp, wp) = Self::phase_layout(g);
        let (h, w) = (g.h, g.w);
        let mut data = vec![0f32; g.n * g.cin * phases.len() * hp * wp];
        data.par_chunks_mut(phases.len() * hp * wp)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                for (&(py, px), dst) in phases.iter().zip(dst.chunks_exact_mut(hp * wp)) {
                    for (yp, drow) in dst.chunks_exact_mut(wp).enumerate() {
                        let y = yp * s + py;
                        if y >= h {
                            break;
                        }
                        let srow = &plane[y * w..(y + 1) * w];
                        for (d, v) in drow.iter_mut().zip(srow.iter().skip(px).step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            });
        Self {
            data: std::borrow::Cow::Owned(data),
            phases,
            hp,
            wp,
            cin: g.cin,
        }
    }

    /// The stride phases a convolution reads (in storage order) and the size of one phase plane. For stride 1 that
    /// is the input plane itself; the convolution backward scatters its input gradient into the same layout.
    pub(crate) fn phase_layout(g: &Geom) -> (Vec<(usize, usize)>, usize, usize) {
        let s = g.stride;
        if s == 1 {
            return (vec![(0, 0)], g.h, g.w);
        }
        let phase = |k: usize| (k as isize - g.pad as isize).rem_euclid(s as isize) as usize;
        let mut phases: Vec<(usize, usize)> = (0..g.kh)
            .flat_map(|ky| (0..g.kw).map(move |kx| (phase(ky), phase(kx))))
            .collect();
        phases.sort_unstable();
        phases.dedup();
        (phases, g.h.div_ceil(s), g.w.div_ceil(s))
    }

    /// Phase plane (py, px) of channel `ci` of image `b`: `hp × wp`, row-major.
    pub(crate) fn plane(&self, b: usize, ci: usize, py: usize, px: usize) -> &[f32] {
        let idx = self
            .phases
            .iter()
            .position(|&ph| ph == (py, px))
            .expect("im2col reads only phases the kernel touches");
        let len = self.hp * self.wp;
        let off = ((b * self.cin + ci) * self.phases.len() + idx) * len;
        &self.data[off..off + len]
    }

    /// All source planes of image `b` (channel-major, phases within a channel).
    pub(crate) fn image(&self, b: usize) -> &[f32] {
        let len = self.cin * self.channel_stride();
        &self.data[b * len..(b + 1) * len]
    }

    /// Elements between consecutive channels of one image (all their phases).
    pub(crate) fn channel_stride(&self) -> usize {
        self.phases.len() * self.hp * self.wp
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Max pool

/// [`max_pool2d`]'s fast path: [`crate::pool`]'s separable f32 kernel as a candle op.
struct MaxPool(PoolShape);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "kestrel-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (n, c, ..) = l.shape().dims4()?;
        let y = max_pool_f32(contiguous_f32(s, l)?, n * c, g);
        Ok((CpuStorage::F32(y), Shape::from((n, c, g.out_h, g.out_w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::testing::max_rel_diff(a, b).unwrap() as f32
    }

    /// Every kernel/stride/padding combination the backbone uses, plus others that exercise the stride-phase split
    /// (even kernels, stride 3, padded 1×1), odd sizes, channel counts that are not multiples of 8, batches 1 and 3.
    #[test]
    fn fused_conv_matches_candle_over_a_grid() {
        let dev = Device::Cpu;
        let mut cases = 0;
        for &(k, stride, pad) in &[
            (1, 1, 0),
            (1, 2, 0),
            (3, 1, 1),
            (3, 2, 1),
            (7, 2, 3),
            (3, 1, 0),
            (1, 1, 1),
            (7, 1, 3),
            (3, 2, 0),
            (1, 2, 1),
            (5, 2, 2),
            (2, 2, 0),
            (3, 3, 1),
        ] {
            for &(n, cin, cout, h, w) in &[
                (1, 3, 5, 13, 11),
                (3, 7, 12, 9, 16),
                (1, 20, 33, 17, 17),
                (3, 13, 9, 8, 5),
            ] {
                if h + 2 * pad < k || w + 2 * pad < k {
                    continue;
                }
                let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &dev).unwrap();
                let wt = Tensor::randn(0f32, 0.3, (cout, cin, k, k), &dev).unwrap();
                let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
                let spec = ConvSpec {
                    stride,
                    padding: pad,
                };
                let lin = conv2d_fused(&x, &wt, Some(&b), spec, Epilogue::Linear).unwrap();
                let want = conv2d_candle(&x, &wt, Some(&b), spec, Epilogue::Linear).unwrap();
                assert_eq!(lin.dims(), want.dims());
                let d = rel_diff(&lin, &want);
                assert!(
                    d <= 1e-4,
                    "linear k{k} s{stride} p{pad} {:?}: {d}",
                    x.dims()
                );

                let relu = conv2d_fused(&x, &wt, Some(&b), spec, Epilogue::Relu).unwrap();
                let want = conv2d_candle(&x, &wt, Some(&b), spec, Epilogue::Relu).unwrap();
                assert!(rel_diff(&relu, &want) <= 1e-4, "relu k{k} s{stride} p{pad}");

                let r = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
                let add = conv2d_fused(&x, &wt, None, spec, Epilogue::AddRelu(&r)).unwrap();
                let want = conv2d_candle(&x, &wt, None, spec, Epilogue::AddRelu(&r)).unwrap();
                assert!(
                    rel_diff(&add, &want) <= 1e-4,
                    "add-relu k{k} s{stride} p{pad}"
                );
                cases += 1;
            }
        }
        assert!(cases >= 45, "{cases}");
    }

    /// Tiles that split output rows, and several tiles per image.
    #[test]
    fn many_tiles_match() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 64, 40, 37), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.1, (70, 64, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 70, &dev).unwrap();
        let spec = ConvSpec {
            stride: 1,
            padding: 1,
        };
        let got = conv2d_fused(&x, &wt, Some(&b), spec, Epilogue::Relu).unwrap();
        let want = conv2d_candle(&x, &wt, Some(&b), spec, Epilogue::Relu).unwrap();
        assert!(rel_diff(&got, &want) <= 1e-4);
    }

    /// Late-stage shapes (a few pixels per image, a large batch): tiles take several whole images, and the
    /// scatter back to NCHW applies bias, residual and ReLU per image.
    #[test]
    fn multi_image_tiles_match() {
        let dev = Device::Cpu;
        for (n, cin, hw, cout, k, stride) in [
            (16, 24, 4, 20, 3, 1),
            (13, 16, 2, 8, 3, 1),
            (9, 12, 5, 10, 1, 2),
            (8, 8, 3, 6, 1, 1),
        ] {
            let g = Geom::new(
                &[n, cin, hw, hw],
                &[cout, cin, k, k],
                ConvSpec {
                    stride,
                    padding: k / 2,
                },
            )
            .unwrap();
            let tiles = Tile::plan(&g, tile_cols(&g, 2), 2, true);
            assert!(
                tiles.iter().any(|t| t.nb > 1),
                "{:?}: expected multi-image tiles",
                (n, hw)
            );
            assert_eq!(tiles.iter().map(|t| t.nb).sum::<usize>(), n);
            let x = Tensor::randn(0f32, 1.0, (n, cin, hw, hw), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.2, (cout, cin, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let spec = ConvSpec {
                stride,
                padding: k / 2,
            };
            let lin = conv2d_candle(&x, &wt, Some(&b), spec, Epilogue::Linear).unwrap();
            let r = lin.randn_like(0.0, 1.0).unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (xs, ws, bs, rs) = (v(&x), v(&wt), v(&b), v(&r));
            for ep in [Epilogue::Linear, Epilogue::Relu, Epilogue::AddRelu(&r)] {
                let (relu, res) = match ep {
                    Epilogue::Linear => (false, None),
                    Epilogue::Relu => (true, None),
                    Epilogue::AddRelu(_) => (true, Some(rs.as_slice())),
                };
                let got = conv_f32(&xs, &ws, Some(&bs), res, relu, &g, true);
                let got = Tensor::from_vec(got, g.out_dims().to_vec(), &dev).unwrap();
                let want = conv2d_candle(&x, &wt, Some(&b), spec, ep).unwrap();
                assert!(
                    rel_diff(&got, &want) <= 1e-4,
                    "{:?} {ep:?}",
                    (n, cin, hw, cout, k, stride)
                );
            }
        }
    }

    /// Inference scores a frame bit for bit the same alone (as a unit does) as inside a batch (as the host does):
    /// tiles never span images there.
    #[test]
    fn inference_is_batch_invariant() {
        let dev = Device::Cpu;
        for (cin, hw, cout) in [(24, 4, 20), (16, 16, 32), (8, 33, 8)] {
            let x = Tensor::randn(0f32, 1.0, (8, cin, hw, hw), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.2, (cout, cin, 3, 3), &dev).unwrap();
            let spec = ConvSpec {
                stride: 1,
                padding: 1,
            };
            let batch = conv2d_fused(&x, &wt, None, spec, Epilogue::Relu).unwrap();
            for i in 0..8 {
                let one =
                    conv2d_fused(&x.narrow(0, i, 1).unwrap(), &wt, None, spec, Epilogue::Relu)
                        .unwrap();
                let a = batch
                    .narrow(0, i, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let b = one.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "image {i} of {cin}×{hw}²"
                );
            }
        }
    }

    #[test]
    fn non_contiguous_input_and_fallbacks() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 6, 9, 9), &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        // A weight stored with its kernel axes swapped: non-contiguous.
        let wt = Tensor::randn(0f32, 0.3, (4, 6, 3, 3), &dev)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let spec = ConvSpec {
            stride: 2,
            padding: 1,
        };
        let got = conv2d_fused(&x, &wt, None, spec, Epilogue::Linear).unwrap();
        let want = conv2d_candle(&x, &wt, None, spec, Epilogue::Linear).unwrap();
        assert!(rel_diff(&got, &want) <= 1e-4);
        // f64 falls back to candle and still computes the same thing.
        let got64 = conv2d_fused(
            &x.to_dtype(DType::F64).unwrap(),
            &wt.to_dtype(DType::F64).unwrap(),
            None,
            spec,
            Epilogue::Linear,
        )
        .unwrap();
        assert_eq!(got64.dtype(), DType::F64);
        assert!(rel_diff(&got64.to_dtype(DType::F32).unwrap(), &want) <= 1e-4);
    }

    #[test]
    fn empty_batch_and_zero_channels() {
        let dev = Device::Cpu;
        let spec = ConvSpec {
            stride: 2,
            padding: 1,
        };
        let x = Tensor::zeros((0, 4, 9, 9), DType::F32, &dev).unwrap();
        let wt = Tensor::ones((6, 4, 3, 3), DType::F32, &dev).unwrap();
        let y = conv2d_fused(&x, &wt, None, spec, Epilogue::Relu).unwrap();
        assert_eq!(y.dims(), &[0, 6, 5, 5]);
        let x = Tensor::ones((2, 4, 9, 9), DType::F32, &dev).unwrap();
        let wt = Tensor::ones((0, 4, 3, 3), DType::F32, &dev).unwrap();
        let y = conv2d_fused(&x, &wt, None, spec, Epilogue::Relu).unwrap();
        assert_eq!(y.dims(), &[2, 0, 5, 5]);
        let y = conv2d_relu_max_pool(&x, &wt, None, spec, PoolSpec::RESNET_STEM).unwrap();
        assert_eq!(y.dims(), &[2, 0, 3, 3]);
    }

    #[test]
    fn shape_errors_are_typed() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
        let wt = Tensor::zeros((4, 5, 3, 3), DType::F32, &dev).unwrap();
        let spec = ConvSpec {
            stride: 1,
            padding: 1,
        };
        let e = conv2d_fused(&x, &wt, None, spec, Epilogue::Linear).unwrap_err();
        let inner = match crate::backbone::without_backtrace(e) {
            candle_core::Error::Wrapped(b) => b.to_string(),
            other => panic!("unexpected {other}"),
        };
        assert!(inner.contains("3 channels"), "{inner}");
        let wt = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).unwrap();
        let bad_bias = Tensor::zeros(5, DType::F32, &dev).unwrap();
        assert!(conv2d_fused(&x, &wt, Some(&bad_bias), spec, Epilogue::Linear).is_err());
    }

    /// The fused stem (conv + ReLU + pool) over shapes that split into several bands, odd sizes included.
    #[test]
    fn fused_conv_pool_matches_separate_ops() {
        let dev = Device::Cpu;
        for &(n, h, w, cout) in &[(1, 64, 64, 16), (3, 37, 30, 9), (2, 130, 18, 64)] {
            let x = Tensor::randn(0f32, 1.0, (n, 3, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.2, (cout, 3, 7, 7), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
            let spec = ConvSpec {
                stride: 2,
                padding: 3,
            };
            let got = conv2d_relu_max_pool(&x, &wt, Some(&b), spec, PoolSpec::RESNET_STEM).unwrap();
            let y = conv2d_candle(&x, &wt, Some(&b), spec, Epilogue::Relu).unwrap();
            let want = y
                .pad_with_zeros(3, 1, 1)
                .unwrap()
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(rel_diff(&got, &want) <= 1e-4, "{:?}", x.dims());
        }
    }

    #[test]
    fn max_pool_matches_padded_candle_pool() {
        let dev = Device::Cpu;
        for &(h, w) in &[(16, 16), (15, 9), (7, 12)] {
            let x = Tensor::randn(0f32, 1.0, (2, 5, h, w), &dev).unwrap();
            let got = max_pool2d(&x, PoolSpec::RESNET_STEM).unwrap();
            let want = x
                .pad_with_same(3, 1, 1)
                .unwrap()
                .pad_with_same(2, 1, 1)
                .unwrap()
                .max_pool2d_with_stride(3, 2)
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(rel_diff(&got, &want), 0.0, "{h}×{w}");
        }
    }
}
