//! PatchCore (Roth et al. 2022) as anomalib implements it.
//!
//! * Patch features: stages c2 and c3, each locally aggregated with a 3×3 average (stride 1, zero padding counted,
//!   like `AvgPool2d(3, 1, 1)`), c3 bilinearly upsampled (align_corners=False) to the c2 grid, concatenated.
//! * Memory bank: greedy k-center coreset (Sener & Savarese) of all training patches, run on a sparse random
//!   projection (Johnson–Lindenstrauss dimension for ε = 0.9) of the features, keeping the original features of the
//!   selected patches. The first centre is a seeded random patch and is part of the coreset.
//! * Score: each test patch's L2 distance to its nearest bank entry; the image score is anomalib's re-weighted
//!   maximum with `num_neighbors` (default 9) support samples.
//!
//! Memory: full-dimensional training patches are kept in RAM only while they fit a budget (default 2 GiB); beyond
//! that they are spilled to an unnamed temporary file and only the selected rows are read back, so fitting WRN-50 on
//! hundreds of images does not need every patch feature in RAM (only the low-dimensional projection).

use std::io::{Read, Seek, SeekFrom, Write};

use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{
    Detector, DetectorConfig, DetectorError, DetectorFit, DetectorKind, DetectorSpec, PatchScore,
};
use crate::conv::{gemm_strided, MatRef, OutPtr};
use crate::map::ScoreMap;
use crate::postprocess::Upsample;

/// PatchCore hyper-parameters (stored in model.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchCoreConfig {
    /// Fraction of training patches kept in the memory bank (anomalib default 0.1).
    pub coreset_ratio: f64,
    /// Support samples for the re-weighted image score (anomalib default 9; 1 = plain maximum).
    pub num_neighbors: usize,
    /// ε of the Johnson–Lindenstrauss projection used only for coreset selection (anomalib 0.9).
    pub projection_eps: f64,
    /// Seed of the projection and of the first coreset centre.
    pub seed: u64,
    /// RAM budget in bytes for full-dimensional training patches before spilling to a temporary file.
    #[serde(default = "default_ram_budget")]
    pub ram_budget_bytes: u64,
    /// How the coreset is selected (models saved before this setting existed used [`CoresetMethod::Greedy`]).
    #[serde(default = "CoresetMethod::legacy")]
    pub coreset_method: CoresetMethod,
    /// Backbone stages embedded (1-based, increasing; anomalib: 2, 3). The map has the first one's grid.
    #[serde(default = "default_layers")]
    pub layers: Vec<usize>,
}

fn default_layers() -> Vec<usize> {
    PATCHCORE_STAGES.to_vec()
}

fn default_ram_budget() -> u64 {
    2 << 30
}

/// Coreset selection (docs/detectors.md, "Coreset selection").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CoresetMethod {
    /// Greedy k-center in rounds: each round picks up to [`ROUND_PICKS`] centres among the current farthest
    /// candidates while that provably matches one-at-a-time greedy, then updates every patch's distance to all of
    /// them with one GEMM. Same projection as [`CoresetMethod::Greedy`]. The default.
    #[default]
    Batched,
    /// anomalib's greedy k-center: one pass over all patches per centre, on the Johnson–Lindenstrauss projection.
    Greedy,
}

impl CoresetMethod {
    fn legacy() -> Self {
        Self::Greedy
    }
}

/// Most centres one round of [`CoresetMethod::Batched`] adds before updating all distances.
pub const ROUND_PICKS: usize = 256;

/// Candidates (current farthest patches) one round of [`CoresetMethod::Batched`] chooses among.
const ROUND_CANDIDATES: usize = 2048;

impl Default for PatchCoreConfig {
    fn default() -> Self {
        Self {
            coreset_ratio: 0.1,
            num_neighbors: 9,
            projection_eps: 0.9,
            seed: 0,
            ram_budget_bytes: default_ram_budget(),
            coreset_method: CoresetMethod::default(),
            layers: default_layers(),
        }
    }
}

/// The stages PatchCore reads (1-based).
pub const PATCHCORE_STAGES: [usize; 2] = [2, 3];

/// Locally aware patch features (N, C, h, w) from the stages `layers` (1-based; anomalib: c2 and c3, `stages[1]`
/// and `stages[2]`): each 3×3 average-pooled, the later ones bilinearly upsampled to the first one's grid.
pub fn embed(stages: &[Tensor], layers: &[usize]) -> candle_core::Result<Tensor> {
    let pool = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.pad_with_zeros(D::Minus1, 1, 1)?
            .pad_with_zeros(D::Minus2, 1, 1)?
            .avg_pool2d_with_stride(3, 1)
    };
    let first = pool(&stages[layers[0] - 1])?;
    let (_, _, h, w) = first.dims4()?;
    let mut parts = vec![first];
    for &l in &layers[1..] {
        parts.push(pool(&stages[l - 1])?.upsample_bilinear2d(h, w, false)?);
    }
    Tensor::cat(&parts, 1)
}

/// (N, C, h, w) → (N·h·w, C) rows ordered image, row, column.
fn to_rows(e: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = e.dims4()?;
    e.reshape((n, c, h * w))?
        .permute((0, 2, 1))?
        .reshape((n * h * w, c))?
        .contiguous()
}

/// Johnson–Lindenstrauss minimum dimension, as scikit-learn's `johnson_lindenstrauss_min_dim`.
pub fn jl_min_dim(n_samples: usize, eps: f64) -> usize {
    let denom = eps * eps / 2.0 - eps * eps * eps / 3.0;
    (4.0 * (n_samples.max(2) as f64).ln() / denom) as usize
}

/// Sparse random projection matrix (C, k) with density 1/√C and entries ±√(1/density)/√k, as scikit-learn's
/// `SparseRandomProjection` (stored dense; it is only used once per fit).
fn sparse_projection(c: usize, k: usize, seed: u64) -> Vec<f32> {
    let density = 1.0 / (c as f64).sqrt();
    let v = ((1.0 / density).sqrt() / (k as f64).sqrt()) as f32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    (0..c * k)
        .map(|_| {
            let u: f64 = rng.gen();
            if u < density / 2.0 {
                -v
            } else if u < density {
                v
            } else {
                0.0
            }
        })
        .collect()
}

/// Full-dimensional patch rows, in RAM or spilled to a temporary file.
enum PatchStore {
    Memory(Vec<f32>),
    Spill(std::fs::File),
}

/// Streaming PatchCore fit.
pub struct PatchCoreFit {
    config: PatchCoreConfig,
    dim: usize,
    grid: (usize, usize),
    expected_patches: usize,
    proj: Option<(Vec<f32>, usize)>,
    projected: Vec<f32>,
    store: PatchStore,
    rows: usize,
}

impl PatchCoreFit {
    /// Start fitting. `dim` is the patch feature dimension (c2 + c3 channels); `expected_images` and `grid` size the
    /// projection (JL dimension depends on the number of patches).
    pub fn new(
        config: PatchCoreConfig,
        dim: usize,
        grid: (usize, usize),
        expected_images: usize,
    ) -> Result<Self, DetectorError> {
        if !(config.coreset_ratio > 0.0 && config.coreset_ratio <= 1.0) {
            return Err(DetectorError::Config(format!(
                "coreset ratio must be in (0, 1], got {}",
                config.coreset_ratio
            )));
        }
        if config.num_neighbors == 0 {
            return Err(DetectorError::Config(
                "num_neighbors must be at least 1".into(),
            ));
        }
        let expected_patches = expected_images * grid.0 * grid.1;
        let k = jl_min_dim(expected_patches, config.projection_eps);
        // A projection only helps if it is smaller than the features themselves (sklearn refuses otherwise).
        let proj = (k < dim).then(|| (sparse_projection(dim, k, config.seed), k));
        let full_bytes = (expected_patches * dim * 4) as u64;
        let store = if full_bytes > config.ram_budget_bytes {
            PatchStore::Spill(tempfile::tempfile().map_err(DetectorError::Io)?)
        } else {
            PatchStore::Memory(Vec::with_capacity(expected_patches * dim))
        };
        Ok(Self {
            config,
            dim,
            grid,
            expected_patches,
            proj,
            projected: Vec::new(),
            store,
            rows: 0,
        })
    }

    /// Whether training patches are being spilled to disk (for the CLI to say so).
    pub fn spills(&self) -> bool {
        matches!(self.store, PatchStore::Spill(_))
    }

    /// Add a batch of stages (c1..c3) of good images.
    pub fn add(&mut self, stages: &[Tensor]) -> Result<(), DetectorError> {
        let e = embed(stages, &self.config.layers)?;
        let (_, c, h, w) = e.dims4()?;
        if c != self.dim || (h, w) != self.grid {
            return Err(DetectorError::Config(format!(
                "patch features {c}×{h}×{w} differ from the expected {}×{}×{}",
                self.dim, self.grid.0, self.grid.1
            )));
        }
        let rows = to_rows(&e)?;
        let n = rows.dims2()?.0;
        if let Some((p, k)) = &self.proj {
            let pt = Tensor::from_slice(p, (self.dim, *k), rows.device())?;
            let pr: Vec<f32> = rows.matmul(&pt)?.flatten_all()?.to_vec1()?;
            self.projected.extend(pr);
        }
        let flat: Vec<f32> = rows.flatten_all()?.to_vec1()?;
        if self.proj.is_none() {
            self.projected.extend_from_slice(&flat);
        }
        match &mut self.store {
            PatchStore::Memory(v) => v.extend_from_slice(&flat),
            PatchStore::Spill(f) => {
                let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
                f.write_all(&bytes).map_err(DetectorError::Io)?;
            }
        }
        self.rows += n;
        Ok(())
    }

    /// Select the coreset and build the memory bank. `progress` is called with (done, total) selections.
    pub fn finish(self, progress: &dyn Fn(usize, usize)) -> Result<PatchCore, DetectorError> {
        let n = self.rows;
        if n == 0 {
            return Err(DetectorError::NotEnoughImages { needed: 1, got: 0 });
        }
        let _ = self.expected_patches;
        let k = self.proj.as_ref().map(|(_, k)| *k).unwrap_or(self.dim);
        let target = ((n as f64 * self.config.coreset_ratio) as usize).clamp(1, n);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.config.seed);
        let start = rng.gen_range(0..n);
        let mut idx = match self.config.coreset_method {
            CoresetMethod::Greedy => greedy_k_center(&self.projected, k, start, target, progress),
            CoresetMethod::Batched => {
                greedy_k_center_batched(&self.projected, k, start, target, progress)
            }
        };
        idx.sort_unstable();
        let d = self.dim;
        let mut bank = vec![0f32; idx.len() * d];
        match self.store {
            PatchStore::Memory(v) => {
                for (r, &i) in idx.iter().enumerate() {
                    bank[r * d..(r + 1) * d].copy_from_slice(&v[i * d..(i + 1) * d]);
                }
            }
            PatchStore::Spill(mut f) => {
                let mut buf = vec![0u8; d * 4];
                for (r, &i) in idx.iter().enumerate() {
                    f.seek(SeekFrom::Start((i * d * 4) as u64))
                        .map_err(DetectorError::Io)?;
                    f.read_exact(&mut buf).map_err(DetectorError::Io)?;
                    for (o, ch) in bank[r * d..(r + 1) * d].iter_mut().zip(buf.chunks_exact(4)) {
                        *o = f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
                    }
                }
            }
        }
        let bank = Tensor::from_vec(bank, (idx.len(), d), &Device::Cpu)?;
        Ok(PatchCore::new(
            self.config,
            self.grid,
            n / (self.grid.0 * self.grid.1),
            bank,
        )?)
    }
}

/// Greedy k-center selection over `n` rows of dimension `k` (row-major `x`): start from `start`, then repeatedly add
/// the row farthest (L2) from the selected set. Returns `target` distinct indices including `start`.
///
/// One fused, parallel pass per step computes the distance to the newest centre, updates the running minimum and
/// finds the arg-max, so each step reads the data once (the algorithm is memory-bound).
pub fn greedy_k_center(
    x: &[f32],
    k: usize,
    start: usize,
    target: usize,
    progress: &dyn Fn(usize, usize),
) -> Vec<usize> {
    let n = x.len() / k;
    let target = target.min(n);
    let mut min_d = vec![f32::INFINITY; n];
    let mut selected = Vec::with_capacity(target);
    let mut centre = start;
    const CHUNK: usize = 4096;
    while selected.len() < target {
        selected.push(centre);
        if selected.len() == target {
            break;
        }
        let c = &x[centre * k..(centre + 1) * k];
        let (best, _) = min_d
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(ci, md)| {
                let base = ci * CHUNK;
                let mut best = (usize::MAX, f32::NEG_INFINITY);
                for (j, m) in md.iter_mut().enumerate() {
                    let row = &x[(base + j) * k..(base + j + 1) * k];
                    let d = squared_distance(row, c);
                    if d < *m {
                        *m = d;
                    }
                    if *m > best.1 {
                        best = (base + j, *m);
                    }
                }
                best
            })
            .reduce(
                || (usize::MAX, f32::NEG_INFINITY),
                |a, b| {
                    if b.1 > a.1 || (b.1 == a.1 && b.0 < a.0) {
                        b
                    } else {
                        a
                    }
                },
            );
        if best == usize::MAX || min_d[best] <= 0.0 {
            // Every remaining row duplicates a centre: more centres add nothing.
            break;
        }
        centre = best;
        if selected.len() % 256 == 0 {
            progress(selected.len(), target);
        }
    }
    progress(selected.len(), target);
    selected
}

/// [`greedy_k_center`]'s selection in rounds, with the distance updates as GEMMs (docs/detectors.md).
///
/// A round takes the [`ROUND_CANDIDATES`] patches farthest from the selected set and `threshold`, the largest
/// distance among all the others. It then runs greedy on the candidates alone, updating only their distances,
/// and stops after [`ROUND_PICKS`] picks or as soon as the best candidate is closer than `threshold`: until then
/// the best candidate is also the farthest patch overall (distances only shrink), so the picks are exactly the
/// one-at-a-time ones. Finally every patch's distance is updated against all of the round's centres at once,
/// `‖x‖² + ‖c‖² − 2·x·c` with one GEMM per block of patches. Returns `target` distinct indices including `start`
/// (fewer if the remaining patches duplicate centres), in selection order.
pub fn greedy_k_center_batched(
    x: &[f32],
    k: usize,
    start: usize,
    target: usize,
    progress: &dyn Fn(usize, usize),
) -> Vec<usize> {
    let n = x.len() / k.max(1);
    let target = target.min(n);
    if target == 0 {
        return Vec::new();
    }
    let row = |i: usize| &x[i * k..(i + 1) * k];
    let zero = vec![0f32; k];
    let norms: Vec<f32> = x
        .par_chunks(k)
        .map(|r| squared_distance(r, &zero))
        .collect();
    let mut min_d = vec![f32::INFINITY; n];
    // The centre each patch is nearest to (as far as the GEMM form can tell).
    let mut nearest = vec![start as u32; n];
    let mut selected = vec![start];
    let mut pending = vec![start];
    let mut order: Vec<u32> = (0..n as u32).collect();
    loop {
        update_min_distances(x, k, &norms, &pending, &mut min_d, &mut nearest);
        pending.clear();
        progress(selected.len(), target);
        if selected.len() >= target {
            break;
        }
        let t = ROUND_CANDIDATES.min(n);
        // Farthest first; ties to the lower index, as greedy_k_center.
        let farther = |a: &u32, b: &u32| {
            min_d[*b as usize]
                .total_cmp(&min_d[*a as usize])
                .then(a.cmp(b))
        };
        if t < n {
            order.select_nth_unstable_by(t - 1, farther);
        }
        let cand = &order[..t];
        let threshold = order[t..]
            .iter()
            .map(|&i| min_d[i as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        // The candidates' distances again in the direct form greedy_k_center uses, to their nearest centre, so
        // that they compare (and tie) exactly as greedy's do: the GEMM form rounds differently, and among 500 000
        // patches near-ties are common enough to send the two selections different ways.
        let mut val: Vec<f32> = cand
            .iter()
            .map(|&i| squared_distance(row(i as usize), row(nearest[i as usize] as usize)))
            .collect();
        // The candidates' rows side by side: every pick reads all of them, so keep them contiguous (cache-resident).
        let cx: Vec<f32> = cand
            .iter()
            .flat_map(|&i| row(i as usize).iter().copied())
            .collect();
        let mut picks = 0;
        while picks < ROUND_PICKS && selected.len() < target {
            let (j, v) =
                val.iter()
                    .enumerate()
                    .fold((usize::MAX, f32::NEG_INFINITY), |best, (j, &v)| {
                        let better = v > best.1
                            || (v == best.1 && best.0 != usize::MAX && cand[j] < cand[best.0]);
                        if better {
                            (j, v)
                        } else {
                            best
                        }
                    });
            if j == usize::MAX || v <= 0.0 {
                // Every remaining patch duplicates a centre: more centres add nothing.
                return selected;
            }
            if v < threshold {
                break;
            }
            let c = cand[j] as usize;
            selected.push(c);
            pending.push(c);
            picks += 1;
            let cr = row(c);
            val.par_iter_mut()
                .zip(cx.par_chunks(k))
                .with_min_len(512)
                .for_each(|(v, r)| {
                    let d = squared_distance(r, cr);
                    if d < *v {
                        *v = d;
                    }
                });
        }
    }
    selected
}

/// `min_d[i] = min(min_d[i], min_c ‖x_i − x_c‖²)` over the centres `cs`, blocks of patches in parallel, each one GEMM
/// `X_block · Cᵀ` with the norms folded in after.
fn update_min_distances(
    x: &[f32],
    k: usize,
    norms: &[f32],
    cs: &[usize],
    min_d: &mut [f32],
    nearest: &mut [u32],
) {
    const BLOCK: usize = 2048;
    let p = cs.len();
    if p == 0 {
        return;
    }
    let mut c = Vec::with_capacity(p * k);
    for &i in cs {
        c.extend_from_slice(&x[i * k..(i + 1) * k]);
    }
    let cn: Vec<f32> = cs.iter().map(|&i| norms[i]).collect();
    min_d
        .par_chunks_mut(BLOCK)
        .zip(nearest.par_chunks_mut(BLOCK))
        .enumerate()
        .for_each(|(bi, (md, nn))| {
            let r0 = bi * BLOCK;
            let rows = md.len();
            let mut dots = vec![0f32; rows * p];
            let lhs = MatRef {
                ptr: x[r0 * k..].as_ptr(),
                rs: k,
                cs: 1,
            };
            let rhs = MatRef {
                ptr: c.as_ptr(),
                rs: 1,
                cs: k,
            };
            // SAFETY: lhs = rows × k patches inside `x`; rhs = Cᵀ (k × p) inside `c`; dst = dots (rows × p), ours.
            unsafe {
                gemm_strided(
                    (rows, p, k),
                    OutPtr(dots.as_mut_ptr()),
                    (p, 1),
                    lhs,
                    rhs,
                    false,
                )
            };
            for (j, (m, near)) in md.iter_mut().zip(nn.iter_mut()).enumerate() {
                let xn = norms[r0 + j];
                let (at, best) = dots[j * p..(j + 1) * p]
                    .iter()
                    .zip(&cn)
                    .enumerate()
                    .map(|(q, (&d, &c))| (q, (xn + c - 2.0 * d).max(0.0)))
                    .fold(
                        (usize::MAX, f32::INFINITY),
                        |a, b| if b.1 < a.1 { b } else { a },
                    );
                if best < *m {
                    *m = best;
                    *near = cs[at] as u32;
                }
            }
        });
    // A centre is at distance 0 from itself (the GEMM form may leave rounding there).
    for &i in cs {
        min_d[i] = 0.0;
        nearest[i] = i as u32;
    }
}

/// Squared L2 distance with eight independent accumulators: a single running sum is a dependency chain the compiler
/// may not reorder (float addition is not associative), so it cannot vectorise it. Eight lanes let it emit SIMD FMAs;
/// on 100k × 384 this took a greedy step from 17.6 ms to 6.7 ms (torch 13.5 ms, numpy 7.1 ms; bench/results/NOTES.md).
#[inline]
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut d: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        let t = x - y;
        d += t * t;
    }
    d
}

/// A fitted PatchCore model.
#[derive(Debug, Clone)]
pub struct PatchCore {
    /// Hyper-parameters.
    pub config: PatchCoreConfig,
    /// Patch grid (h, w).
    pub grid: (usize, usize),
    /// Number of training images.
    pub images: usize,
    /// Memory bank (M, C).
    pub bank: Tensor,
    /// `[b, ‖b‖²]ᵀ`, (C+1, M): folds the norms into one matmul for nearest-neighbour search.
    bank_aug_t: Tensor,
    /// The bank as host rows, for the per-image re-weighting (copied once, not per call).
    bank_rows: Vec<f32>,
}

/// Bank columns per matmul chunk in nearest-neighbour search (bounds the (queries × chunk) distance block).
const NN_CHUNK: usize = 8192;

impl PatchCore {
    /// Build from a bank (precomputes the augmented transposed bank).
    pub fn new(
        config: PatchCoreConfig,
        grid: (usize, usize),
        images: usize,
        bank: Tensor,
    ) -> candle_core::Result<Self> {
        let bank = bank.to_dtype(DType::F32)?;
        let norms = bank.sqr()?.sum_keepdim(1)?;
        let bank_aug_t = Tensor::cat(&[&bank, &norms], 1)?.t()?.contiguous()?;
        let bank_rows = bank.flatten_all()?.to_vec1()?;
        Ok(Self {
            config,
            grid,
            images,
            bank,
            bank_aug_t,
            bank_rows,
        })
    }

    /// Nearest bank entry for each query row: (squared distance, index). Uses `‖q‖² − 2q·b + ‖b‖²` as one matmul
    /// of `[−2q, 1]` with `[b, ‖b‖²]ᵀ` per bank chunk.
    pub fn nearest(&self, q: &Tensor) -> candle_core::Result<(Vec<f32>, Vec<u32>)> {
        let dev = q.device();
        let (m, _) = q.dims2()?;
        let q_aug = Tensor::cat(&[(q * -2.0)?, Tensor::ones((m, 1), DType::F32, dev)?], 1)?;
        let qn: Vec<f32> = q.sqr()?.sum(1)?.to_vec1()?;
        let bank_t = self.bank_aug_t.to_device(dev)?;
        let total = bank_t.dims2()?.1;
        let mut best_d = vec![f32::INFINITY; m];
        let mut best_i = vec![0u32; m];
        let mut s = 0;
        while s < total {
            let len = NN_CHUNK.min(total - s);
            let prod = q_aug.matmul(&bank_t.narrow(1, s, len)?)?;
            let mins: Vec<f32> = prod.min(1)?.to_vec1()?;
            let args: Vec<u32> = prod.argmin(1)?.to_vec1()?;
            for r in 0..m {
                if mins[r] < best_d[r] {
                    best_d[r] = mins[r];
                    best_i[r] = args[r] + s as u32;
                }
            }
            s += len;
        }
        for (d, n) in best_d.iter_mut().zip(qn) {
            *d = (*d + n).max(0.0);
        }
        Ok((best_d, best_i))
    }

    /// Patch maps and re-weighted image scores for a batch of stages (c1..c3).
    pub fn score(&self, stages: &[Tensor]) -> Result<Vec<(ScoreMap, f32)>, DetectorError> {
        let e = embed(stages, &self.config.layers)?;
        let (n, c, h, w) = e.dims4()?;
        if (h, w) != self.grid {
            return Err(DetectorError::Config(format!(
                "patch grid {h}×{w} differs from the fitted {}×{} (different image size?)",
                self.grid.0, self.grid.1
            )));
        }
        let rows = to_rows(&e)?;
        let (d2, nn) = self.nearest(&rows)?;
        let feats: Vec<f32> = rows.flatten_all()?.to_vec1()?;
        let p = h * w;
        let mut out = Vec::with_capacity(n);
        for img in 0..n {
            let dist: Vec<f32> = d2[img * p..(img + 1) * p]
                .iter()
                .map(|v| v.sqrt())
                .collect();
            let (arg, &s_star) = dist
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .expect("non-empty grid");
            let score = if self.config.num_neighbors <= 1 {
                s_star
            } else {
                let m_test = &feats[(img * p + arg) * c..(img * p + arg + 1) * c];
                let nn_idx = nn[img * p + arg] as usize;
                self.reweight(s_star, m_test, nn_idx, &self.bank_rows, c)
            };
            out.push((ScoreMap::new(w, h, dist)?, score));
        }
        Ok(out)
    }

    /// anomalib's re-weighting: `(1 − softmax(d)₀) · s*`, with `d` the distances from the test patch to the
    /// `num_neighbors` bank entries nearest to its own nearest bank entry `m*` (which is one of them, at index 0).
    fn reweight(&self, s_star: f32, m_test: &[f32], nn_idx: usize, bank: &[f32], c: usize) -> f32 {
        let m = bank.len() / c;
        let b = self.config.num_neighbors.min(m);
        let m_star = &bank[nn_idx * c..(nn_idx + 1) * c];
        let dist = |a: &[f32], b: &[f32]| -> f32 {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
        };
        let mut cand: Vec<(f32, usize)> = (0..m)
            .map(|j| (dist(m_star, &bank[j * c..(j + 1) * c]), j))
            .collect();
        cand.select_nth_unstable_by(b - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        cand.truncate(b);
        cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // m* itself is at distance 0; make sure it is first even with duplicate bank rows.
        if let Some(pos) = cand.iter().position(|&(_, j)| j == nn_idx) {
            cand.swap(0, pos);
        }
        let d: Vec<f32> = cand
            .iter()
            .map(|&(_, j)| dist(m_test, &bank[j * c..(j + 1) * c]).sqrt())
            .collect();
        let mx = d.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = d.iter().map(|v| (v - mx).exp()).collect();
        let w = 1.0 - exps[0] / exps.iter().sum::<f32>();
        w * s_star
    }

    /// Tensors to persist.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        vec![("bank".into(), self.bank.clone())]
    }
}

impl Detector for PatchCore {
    fn kind(&self) -> DetectorKind {
        DetectorKind::Patchcore
    }

    fn features(&self) -> super::Features {
        super::Features::Stages {
            last: *self.config.layers.iter().max().expect("checked non-empty"),
        }
    }

    /// anomalib upsamples PatchCore's map with `F.interpolate`'s default, nearest.
    fn upsample(&self) -> Upsample {
        Upsample::Nearest
    }

    fn score(&self, stages: &[Tensor]) -> Result<Vec<PatchScore>, DetectorError> {
        Ok(PatchCore::score(self, stages)?
            .into_iter()
            .map(|(map, s)| PatchScore {
                map,
                image_score: Some(s),
            })
            .collect())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>, DetectorError> {
        Ok(self.tensors())
    }

    fn spec(&self) -> DetectorSpec {
        DetectorSpec {
            config: DetectorConfig::Patchcore(self.config.clone()),
            grid: self.grid,
            train_images: self.images,
        }
    }
}

impl DetectorFit for PatchCoreFit {
    fn add(&mut self, stages: &[Tensor]) -> Result<(), DetectorError> {
        PatchCoreFit::add(self, stages)
    }

    fn spills_to_disk(&self) -> bool {
        self.spills()
    }

    fn finish(
        self: Box<Self>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Arc<dyn Detector>, DetectorError> {
        Ok(Arc::new(PatchCoreFit::finish(*self, progress)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jl_dim_matches_sklearn() {
        // sklearn.random_projection.johnson_lindenstrauss_min_dim(204800, eps=0.9) == 301
        assert_eq!(jl_min_dim(204_800, 0.9), 301);
    }

    #[test]
    fn greedy_k_center_picks_farthest_points() {
        // 1-D points 0, 1, 2, 10, 11, 50 starting from 0: the farthest is 50; then 11 (11 from 0, 39 from 50); then 2
        // (2 from 0, 9 from 11) beats 1 and 10 (both 1 away from a centre).
        let x = [0.0f32, 1.0, 2.0, 10.0, 11.0, 50.0];
        let sel = greedy_k_center(&x, 1, 0, 4, &|_, _| {});
        assert_eq!(sel, vec![0, 5, 4, 2]);
    }

    #[test]
    fn squared_distance_matches_the_plain_sum() {
        for n in [0usize, 1, 7, 8, 9, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum();
            assert!(
                (squared_distance(&a, &b) as f64 - plain).abs() <= 1e-4 * plain.max(1.0),
                "n={n}"
            );
        }
    }

    /// The batched selection makes the one-at-a-time picks: more patches than one round's candidates (so the
    /// threshold stops rounds early) and several rounds of picks.
    #[test]
    fn batched_selection_matches_greedy() {
        let (n, k, target) = (ROUND_CANDIDATES + 1904, 12, 700);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let a = greedy_k_center(&x, k, 17, target, &|_, _| {});
        let b = greedy_k_center_batched(&x, k, 17, target, &|_, _| {});
        assert_eq!(b.len(), target);
        let same = a.iter().zip(&b).take_while(|(p, q)| p == q).count();
        assert_eq!(
            same, target,
            "only the first {same} of {target} picks agree"
        );
        let mut sorted = b.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), target, "picks are distinct");
        // Duplicates: stops like greedy does.
        let x = vec![1.0f32, 1.0, 1.0, 1.0, 5.0, 5.0];
        assert_eq!(greedy_k_center_batched(&x, 2, 0, 3, &|_, _| {}), vec![0, 2]);
    }

    #[test]
    fn greedy_stops_on_duplicates() {
        let x = [1.0f32, 1.0, 1.0];
        let sel = greedy_k_center(&x, 1, 1, 3, &|_, _| {});
        assert_eq!(sel, vec![1]);
    }

    #[test]
    fn nearest_matches_brute_force() {
        let dev = Device::Cpu;
        let bank = Tensor::randn(0f32, 1.0, (300, 7), &dev).unwrap();
        let pc = PatchCore::new(PatchCoreConfig::default(), (1, 1), 1, bank.clone()).unwrap();
        let q = Tensor::randn(0f32, 1.0, (20, 7), &dev).unwrap();
        let (d2, idx) = pc.nearest(&q).unwrap();
        let b: Vec<Vec<f32>> = bank.to_vec2().unwrap();
        let qv: Vec<Vec<f32>> = q.to_vec2().unwrap();
        for (r, qr) in qv.iter().enumerate() {
            let (bi, bd) = b
                .iter()
                .enumerate()
                .map(|(i, br)| {
                    (
                        i,
                        qr.iter()
                            .zip(br)
                            .map(|(a, c)| (a - c) * (a - c))
                            .sum::<f32>(),
                    )
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert_eq!(idx[r] as usize, bi);
            assert!((d2[r] - bd).abs() < 1e-4);
        }
    }

    #[test]
    fn reweighting_with_one_neighbour_is_plain_max() {
        let dev = Device::Cpu;
        let stages = vec![
            Tensor::zeros((2, 1, 8, 8), DType::F32, &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (2, 2, 2, 2), &dev).unwrap(),
        ];
        let mut fit = PatchCoreFit::new(
            PatchCoreConfig {
                coreset_ratio: 0.5,
                num_neighbors: 1,
                ..Default::default()
            },
            5,
            (4, 4),
            2,
        )
        .unwrap();
        fit.add(&stages).unwrap();
        let model = fit.finish(&|_, _| {}).unwrap();
        assert_eq!(model.bank.dims(), &[16, 5]);
        let test = vec![
            stages[0].clone(),
            (&stages[1] * 3.0).unwrap(),
            stages[2].clone(),
        ];
        for (map, score) in model.score(&test).unwrap() {
            let mx = map.data().iter().cloned().fold(0.0, f32::max);
            assert_eq!(score, mx);
        }
    }

    #[test]
    fn spilled_and_in_memory_fits_agree() {
        let dev = Device::Cpu;
        let stages = vec![
            Tensor::zeros((3, 1, 8, 8), DType::F32, &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (3, 4, 4, 4), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (3, 4, 2, 2), &dev).unwrap(),
        ];
        let fit = |budget| {
            let mut f = PatchCoreFit::new(
                PatchCoreConfig {
                    ram_budget_bytes: budget,
                    coreset_ratio: 0.25,
                    ..Default::default()
                },
                8,
                (4, 4),
                3,
            )
            .unwrap();
            assert_eq!(f.spills(), budget == 0);
            f.add(&stages).unwrap();
            f.finish(&|_, _| {}).unwrap()
        };
        let a: Vec<f32> = fit(0).bank.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = fit(1 << 30).bank.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }
}
