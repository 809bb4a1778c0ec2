//! GMM pseudo-defect regression in candle: the head activations, a differentiable renderer, component matching and
//! the direct and indirect losses (docs/pretraining.md, "Losses").
//!
//! The renderer here is the tensor twin of [`crate::synth::gmm`]'s (which makes the training images): same
//! unnormalised Gaussians, same max-normalisation by `G*`, same blend `I_A = I_N + Σ_k a_k (c_k − I_N)`. The
//! indirect loss renders the *prediction* and the *target* with this one function on the same (possibly
//! downsampled) normal image, so both sides see exactly the same discretisation.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::synth::gmm::{GmmParams, GMM_CHANNELS, GMM_COMPONENTS, GMM_PARAMS, SIGMA_MIN};

const K: usize = GMM_COMPONENTS;
/// ρ = (1 − ε_ρ)·tanh(z).
const RHO_SCALE: f64 = 0.99;

/// How predicted components are paired with true ones in the direct loss.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Matching {
    /// Each true component takes the predicted one nearest in position (several may share one).
    Nearest,
    /// One-to-one assignment minimising the total squared position distance (Hungarian algorithm).
    Hungarian,
}

/// A batch of mixtures as tensors, every field (B, K) except `colour` (B, K, C) and `strength` (B).
#[derive(Debug, Clone)]
pub struct GmmTensors {
    /// Means, x.
    pub mu_x: Tensor,
    /// Means, y.
    pub mu_y: Tensor,
    /// Standard deviations, x.
    pub sigma_x: Tensor,
    /// Standard deviations, y.
    pub sigma_y: Tensor,
    /// Correlations.
    pub rho: Tensor,
    /// Mixture weights.
    pub pi: Tensor,
    /// Colours in `[−1, 1]`.
    pub colour: Tensor,
    /// Peak opacity.
    pub strength: Tensor,
}

/// `ln(1 + eˣ)`, elementwise.
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    // relu(x) + log(1 + exp(−|x|)): no overflow for large |x|.
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

impl GmmTensors {
    /// Head activations on raw outputs `z` (B, 271): tanh means and colours, softplus + 0.01 scales, 0.99·tanh
    /// correlations, softmax weights, sigmoid strength.
    pub fn from_head(z: &Tensor) -> Result<Self> {
        let b = z.dim(0)?;
        let part = |i: usize| z.narrow(1, i * K, K)?.contiguous();
        Ok(Self {
            mu_x: part(0)?.tanh()?,
            mu_y: part(1)?.tanh()?,
            sigma_x: (softplus(&part(2)?)? + f64::from(SIGMA_MIN))?,
            sigma_y: (softplus(&part(3)?)? + f64::from(SIGMA_MIN))?,
            rho: (part(4)?.tanh()? * RHO_SCALE)?,
            pi: candle_nn::ops::softmax_last_dim(&part(5)?)?,
            colour: z
                .narrow(1, 6 * K, K * GMM_CHANNELS)?
                .contiguous()?
                .tanh()?
                .reshape((b, K, GMM_CHANNELS))?,
            strength: candle_nn::ops::sigmoid(
                &z.narrow(1, GMM_PARAMS - 1, 1)?.squeeze(1)?.contiguous()?,
            )?,
        })
    }

    /// Targets as tensors (no activations: the values are already in parameter space).
    pub fn from_params(params: &[GmmParams], device: &Device) -> Result<Self> {
        let b = params.len();
        let flat: Vec<f32> = params.iter().flat_map(GmmParams::to_flat).collect();
        let z = Tensor::from_vec(flat, (b, GMM_PARAMS), device)?;
        let part = |i: usize| z.narrow(1, i * K, K)?.contiguous();
        Ok(Self {
            mu_x: part(0)?,
            mu_y: part(1)?,
            sigma_x: part(2)?.clamp(SIGMA_MIN, f32::MAX)?,
            sigma_y: part(3)?.clamp(SIGMA_MIN, f32::MAX)?,
            rho: part(4)?.clamp(-0.999_999f32, 0.999_999f32)?,
            pi: part(5)?,
            colour: z
                .narrow(1, 6 * K, K * GMM_CHANNELS)?
                .reshape((b, K, GMM_CHANNELS))?,
            strength: z.narrow(1, GMM_PARAMS - 1, 1)?.squeeze(1)?.contiguous()?,
        })
    }

    /// Per-component regression features (B, K, 5 + C): μx, μy, ln σx, ln σy, ρ, colour.
    fn features(&self) -> Result<Tensor> {
        let scalar = Tensor::stack(
            &[
                &self.mu_x,
                &self.mu_y,
                &self.sigma_x.log()?,
                &self.sigma_y.log()?,
                &self.rho,
            ],
            2,
        )?;
        Tensor::cat(&[&scalar, &self.colour], 2)
    }
}

/// Render mixtures onto `normal` (B, 3, R, R) in `[0, 1]`: returns `I_A` (B, 3, R, R) and `α` (B, 1, R, R).
pub fn render(normal: &Tensor, p: &GmmTensors) -> Result<(Tensor, Tensor)> {
    let (b, c, r, r2) = normal.dims4()?;
    if r != r2 || c != GMM_CHANNELS {
        candle_core::bail!(
            "render expects B×3×R×R normal images, got {:?}",
            normal.dims()
        );
    }
    let dev = normal.device();
    let coords: Vec<f32> = (0..r)
        .map(|j| 2.0 * j as f32 / (r as f32 - 1.0).max(1.0) - 1.0)
        .collect();
    let grid = Tensor::from_vec(coords, r, dev)?;
    let x = grid.reshape((1, 1, 1, r))?;
    let y = grid.reshape((1, 1, r, 1))?;
    let col = |t: &Tensor| t.reshape((b, K, 1, 1));
    let zx = x
        .broadcast_sub(&col(&p.mu_x)?)?
        .broadcast_div(&col(&p.sigma_x)?)?; // (B,K,1,R)
    let zy = y
        .broadcast_sub(&col(&p.mu_y)?)?
        .broadcast_div(&col(&p.sigma_y)?)?; // (B,K,R,1)
    let rho = col(&p.rho)?;
    let cross = zx.broadcast_mul(&zy)?.broadcast_mul(&(&rho * 2.0)?)?; // (B,K,R,R)
    let quad = zx.sqr()?.broadcast_add(&zy.sqr()?)?.sub(&cross)?;
    let denom = ((rho.sqr()?.neg()? + 1.0)? * -2.0)?; // −2(1 − ρ²)
    let f = quad.broadcast_div(&denom)?.exp()?;
    let g = f.broadcast_mul(&col(&p.pi)?)?; // (B,K,R,R)
    let big_g = g.sum(1)?; // (B,R,R)
    let g_max = (big_g.flatten_from(1)?.max_keepdim(1)? + 1e-12)?; // (B,1)
    let scale = p
        .strength
        .reshape((b, 1))?
        .div(&g_max)?
        .reshape((b, 1, 1, 1))?;
    let a = g.broadcast_mul(&scale)?; // a_k (B,K,R,R)
    let alpha = a.sum_keepdim(1)?; // (B,1,R,R)
    let colour01 = ((&p.colour + 1.0)? * 0.5)?; // (B,K,C)
    let painted = colour01
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&a.reshape((b, K, r * r))?)? // (B,C,R²)
        .reshape((b, c, r, r))?;
    let image = (normal - normal.broadcast_mul(&alpha)?)?.add(&painted)?;
    Ok((image, alpha))
}

/// Optimal one-to-one assignment of every row to a distinct column of `cost` (rows ≤ columns), minimising the total
/// cost: the O(n²·m) Hungarian algorithm with potentials. Returns the column of each row.
pub fn hungarian(cost: &[Vec<f64>]) -> Vec<usize> {
    let n = cost.len();
    if n == 0 {
        return Vec::new();
    }
    let m = cost[0].len();
    assert!(n <= m, "hungarian: more rows ({n}) than columns ({m})");
    // 1-based arrays; column 0 is the virtual start.
    let (mut u, mut v) = (vec![0.0f64; n + 1], vec![0.0f64; m + 1]);
    let mut owner = vec![0usize; m + 1]; // row assigned to column j
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        owner[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = owner[j0];
            let (mut delta, mut j1) = (f64::INFINITY, 0);
            for j in 1..=m {
                if !used[j] {
                    let cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[owner[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if owner[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            owner[j0] = owner[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![0; n];
    for j in 1..=m {
        if owner[j] > 0 {
            out[owner[j] - 1] = j - 1;
        }
    }
    out
}

/// Pair each active true component of `target` with a predicted component, by squared distance of the means.
/// `pred_mu` holds the K predicted means. Returns `(true k, predicted j)` pairs.
pub fn match_components(
    pred_mu: &[[f32; 2]],
    target: &GmmParams,
    matching: Matching,
) -> Vec<(usize, usize)> {
    let active: Vec<usize> = target.active().collect();
    let d2 = |k: usize, j: usize| {
        let t = target.components[k].mu;
        let p = pred_mu[j];
        f64::from((t[0] - p[0]).powi(2) + (t[1] - p[1]).powi(2))
    };
    match matching {
        Matching::Nearest => active
            .iter()
            .map(|&k| {
                let j = (0..pred_mu.len())
                    .min_by(|&a, &b| d2(k, a).total_cmp(&d2(k, b)))
                    .unwrap_or(0);
                (k, j)
            })
            .collect(),
        Matching::Hungarian => {
            let cost: Vec<Vec<f64>> = active
                .iter()
                .map(|&k| (0..pred_mu.len()).map(|j| d2(k, j)).collect())
                .collect();
            active.iter().copied().zip(hungarian(&cost)).collect()
        }
    }
}

/// The parts of the direct loss, averaged over the batch.
pub struct DirectLoss {
    /// L_param + L_π + L_s.
    pub total: Tensor,
    /// Matched-component parameter error.
    pub param: Tensor,
    /// Mixture-mass error.
    pub mass: Tensor,
    /// Strength error.
    pub strength: Tensor,
}

/// Weight of each regression feature in L_param: μ (2), ln σ (2), ρ (½), colour (C).
const FEATURE_WEIGHTS: [f32; 5 + GMM_CHANNELS] = [1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0];

/// Direct loss `L_param + L_π + L_s` of predictions `pred` against cleaned targets.
pub fn direct_loss(
    pred: &GmmTensors,
    targets: &[GmmParams],
    matching: Matching,
) -> Result<DirectLoss> {
    let dev = pred.mu_x.device();
    let b = targets.len();
    let nf = 5 + GMM_CHANNELS;
    let mux = pred.mu_x.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let muy = pred.mu_y.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (mut idx, mut rows, mut pair_w) = (Vec::new(), Vec::new(), Vec::new());
    let mut mass = vec![0f32; b * K];
    let mut defect = vec![0f32; b];
    for (i, t) in targets.iter().enumerate() {
        let pred_mu: Vec<[f32; 2]> = (0..K).map(|j| [mux[i][j], muy[i][j]]).collect();
        let pairs = match_components(&pred_mu, t, matching);
        if pairs.is_empty() || t.strength <= 0.0 {
            continue;
        }
        defect[i] = 1.0;
        let w = 1.0 / pairs.len() as f32;
        for (k, j) in pairs {
            let c = &t.components[k];
            idx.push((i * K + j) as u32);
            rows.extend_from_slice(&[
                c.mu[0],
                c.mu[1],
                c.sigma[0].max(SIGMA_MIN).ln(),
                c.sigma[1].max(SIGMA_MIN).ln(),
                c.rho,
            ]);
            rows.extend_from_slice(&c.colour);
            pair_w.push(w);
            mass[i * K + j] += c.pi;
        }
    }
    let bf = b.max(1) as f64;
    let param = if idx.is_empty() {
        Tensor::zeros((), DType::F32, dev)?
    } else {
        let m = idx.len();
        let feats = pred.features()?.reshape((b * K, nf))?;
        let chosen = feats.index_select(&Tensor::from_vec(idx, m, dev)?, 0)?;
        let truth = Tensor::from_vec(rows, (m, nf), dev)?;
        let fw = Tensor::from_slice(&FEATURE_WEIGHTS, (1, nf), dev)?;
        let pw = Tensor::from_vec(pair_w, (m, 1), dev)?;
        ((chosen - truth)?
            .abs()?
            .broadcast_mul(&fw)?
            .broadcast_mul(&pw)?
            .sum_all()?
            / bf)?
    };
    let defect_t = Tensor::from_vec(defect, (b, 1), dev)?;
    let mass_t = Tensor::from_vec(mass, (b, K), dev)?;
    let mass_loss = ((&pred.pi - mass_t)?
        .abs()?
        .broadcast_mul(&defect_t)?
        .sum_all()?
        / bf)?;
    let s_true: Vec<f32> = targets.iter().map(|t| t.strength).collect();
    let strength = (&pred.strength - Tensor::from_vec(s_true, b, dev)?)?
        .abs()?
        .mean_all()?;
    Ok(DirectLoss {
        total: ((&param + &mass_loss)? + &strength)?,
        param,
        mass: mass_loss,
        strength,
    })
}

/// Indirect (re-render) loss: both mixtures rendered on the same normal images (B, 3, R, R), compared pixelwise
/// with weights `ε + α + α̂` (held constant) so small defects are not drowned by the unchanged background.
pub fn indirect_loss(
    pred: &GmmTensors,
    target: &GmmTensors,
    normal: &Tensor,
    lambda_alpha: f64,
) -> Result<Tensor> {
    let (img_hat, alpha_hat) = render(normal, pred)?;
    let (img, alpha) = render(normal, target)?;
    let (img, alpha) = (img.detach(), alpha.detach());
    let w = ((&alpha + alpha_hat.detach())? + 0.01)?; // (B,1,R,R)
    let w_sum = w.sum_all()?;
    let c = normal.dim(1)? as f64;
    let pix = ((img_hat - img)?.sqr()?.broadcast_mul(&w)?.sum_all()? / c)?.div(&w_sum)?;
    let a = (alpha_hat - alpha)?
        .abs()?
        .mul(&w)?
        .sum_all()?
        .div(&w_sum)?;
    pix + (a * lambda_alpha)?
}

/// Inverse of the head activations for one mixture (tests and warm starts): raw outputs that [`GmmTensors::from_head`]
/// maps back onto `p` (inactive components get a very low π logit).
pub fn head_logits(p: &GmmParams) -> Vec<f32> {
    let atanh = |v: f32| 0.5 * ((1.0 + v) / (1.0 - v)).ln();
    let inv_softplus = |v: f32| (v.exp() - 1.0).max(1e-12).ln();
    let mut z = vec![0f32; GMM_PARAMS];
    for (k, c) in p.components.iter().enumerate() {
        z[k] = atanh(c.mu[0].clamp(-0.999_999, 0.999_999));
        z[K + k] = atanh(c.mu[1].clamp(-0.999_999, 0.999_999));
        z[2 * K + k] = inv_softplus((c.sigma[0] - SIGMA_MIN).max(1e-6));
        z[3 * K + k] = inv_softplus((c.sigma[1] - SIGMA_MIN).max(1e-6));
        z[4 * K + k] = atanh((c.rho / RHO_SCALE as f32).clamp(-0.999_999, 0.999_999));
        z[5 * K + k] = if c.pi > 0.0 { c.pi.ln() } else { -30.0 };
        for ch in 0..GMM_CHANNELS {
            z[6 * K + k * GMM_CHANNELS + ch] = atanh(c.colour[ch].clamp(-0.999_999, 0.999_999));
        }
    }
    let s = p.strength.clamp(1e-6, 1.0 - 1e-6);
    z[GMM_PARAMS - 1] = (s / (1.0 - s)).ln();
    z
}

/// Images (B, 3, R, R) from synth images (CHW in `[0, 1]`).
pub fn images_tensor(images: &[&crate::synth::Image], device: &Device) -> Result<Tensor> {
    let r = images.first().map_or(0, |i| i.size());
    let data: Vec<f32> = images
        .iter()
        .flat_map(|i| i.data().iter().copied())
        .collect();
    Tensor::from_vec(data, (images.len(), 3, r, r), device)
}

/// Mean over the last two dims, kept for callers that pool feature maps.
pub fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    x.mean(D::Minus1)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::gmm::{render as render_cpu, GmmComponent};
    use crate::synth::Image;

    fn mixture() -> GmmParams {
        let mut p = GmmParams::none();
        p.components[3] = GmmComponent {
            mu: [0.2, -0.3],
            sigma: [0.15, 0.08],
            rho: 0.4,
            pi: 0.7,
            colour: [0.9, -0.5, 0.1],
        };
        p.components[17] = GmmComponent {
            mu: [-0.5, 0.4],
            sigma: [0.05, 0.2],
            rho: -0.6,
            pi: 0.3,
            colour: [-0.8, 0.8, -0.2],
        };
        p.strength = 0.6;
        p
    }

    fn normal(size: usize) -> Image {
        let mut img = Image::new(size);
        for (i, v) in img.data_mut().iter_mut().enumerate() {
            *v = ((i * 37 % 101) as f32) / 100.0;
        }
        img
    }

    #[test]
    fn tensor_renderer_matches_the_cpu_renderer() {
        let (p, n) = (mixture(), normal(24));
        let want = render_cpu(&n, &p);
        let t = GmmTensors::from_params(std::slice::from_ref(&p), &Device::Cpu).unwrap();
        let (img, alpha) = render(&images_tensor(&[&n], &Device::Cpu).unwrap(), &t).unwrap();
        let got = img.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = got
            .iter()
            .zip(want.image.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "image differs by {err}");
        let a = alpha.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let amax = a.iter().copied().fold(0.0, f32::max);
        assert!((amax - 0.6).abs() < 1e-5, "max opacity {amax} must equal s");
        let err = a
            .iter()
            .zip(&want.alpha)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "alpha differs by {err}");
    }

    #[test]
    fn zero_strength_leaves_the_image_unchanged_and_zero_head_is_uniform() {
        let z = Tensor::zeros((1, GMM_PARAMS), DType::F32, &Device::Cpu).unwrap();
        let p = GmmTensors::from_head(&z).unwrap();
        let pi = p.pi.to_vec2::<f32>().unwrap();
        assert!(pi[0].iter().all(|v| (v - 1.0 / K as f32).abs() < 1e-6));
        assert!((p.strength.to_vec1::<f32>().unwrap()[0] - 0.5).abs() < 1e-6);
        assert!(p.mu_x.to_vec2::<f32>().unwrap()[0]
            .iter()
            .all(|v| v.abs() < 1e-7));
        let mut none = mixture();
        none.strength = 0.0;
        let n = normal(16);
        let t = GmmTensors::from_params(&[none], &Device::Cpu).unwrap();
        let nt = images_tensor(&[&n], &Device::Cpu).unwrap();
        let (img, _) = render(&nt, &t).unwrap();
        let d = kestrel_vision::testing::max_abs_diff(&img, &nt).unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn hungarian_finds_the_optimal_assignment() {
        // Greedy would give row 0 column 0 (cost 1) and row 1 column 1 (cost 10): total 11. Optimal: 2 + 2 = 4.
        let cost = vec![vec![1.0, 2.0, 9.0], vec![2.0, 10.0, 9.0]];
        assert_eq!(hungarian(&cost), vec![1, 0]);
        // Brute force on random 4×6 problems.
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..50 {
            let cost: Vec<Vec<f64>> = (0..4).map(|_| (0..6).map(|_| rnd()).collect()).collect();
            let got = hungarian(&cost);
            let total: f64 = got.iter().enumerate().map(|(i, &j)| cost[i][j]).sum();
            let mut best = f64::INFINITY;
            for a in 0..6 {
                for b in 0..6 {
                    for c in 0..6 {
                        for d in 0..6 {
                            let s = [a, b, c, d];
                            let distinct = (0..4).all(|x| (x + 1..4).all(|y| s[x] != s[y]));
                            if distinct {
                                best = best.min(cost[0][a] + cost[1][b] + cost[2][c] + cost[3][d]);
                            }
                        }
                    }
                }
            }
            assert!((total - best).abs() < 1e-12, "{total} vs {best}");
            let mut cols = got.clone();
            cols.sort();
            cols.dedup();
            assert_eq!(cols.len(), 4);
        }
    }

    #[test]
    fn nearest_matching_may_share_hungarian_may_not() {
        let target = mixture(); // true means (0.2, −0.3) and (−0.5, 0.4)
        let mut pred = vec![[0.9f32, 0.9]; K];
        pred[5] = [0.25, -0.25]; // close to both relative to the rest
        pred[6] = [-0.45, 0.45];
        let near = match_components(&pred, &target, Matching::Nearest);
        assert_eq!(near, vec![(3, 5), (17, 6)]);
        pred[6] = [0.9, 0.9];
        let near = match_components(&pred, &target, Matching::Nearest);
        assert_eq!(near, vec![(3, 5), (17, 5)]);
        let hung = match_components(&pred, &target, Matching::Hungarian);
        assert_eq!(hung[0], (3, 5));
        assert_ne!(hung[1].1, 5);
    }

    #[test]
    fn losses_vanish_at_the_target_and_grow_away_from_it() {
        let p = mixture();
        let n = normal(16);
        let nt = images_tensor(&[&n], &Device::Cpu).unwrap();
        let target = GmmTensors::from_params(std::slice::from_ref(&p), &Device::Cpu).unwrap();
        let exact = Tensor::from_vec(head_logits(&p), (1, GMM_PARAMS), &Device::Cpu).unwrap();
        let pred = GmmTensors::from_head(&exact).unwrap();
        let d = direct_loss(&pred, std::slice::from_ref(&p), Matching::Hungarian).unwrap();
        let v = d.total.to_scalar::<f32>().unwrap();
        assert!(v < 1e-3, "direct loss at the target: {v}");
        let ind = indirect_loss(&pred, &target, &nt, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(ind < 1e-6, "indirect loss at the target: {ind}");
        // Shift every predicted mean: both losses grow.
        let mut moved = p.clone();
        for c in &mut moved.components {
            if c.pi == 0.0 {
                c.mu = [-0.9, -0.9]; // keep the unused slots far from the true components
            }
            c.mu = [c.mu[0] + 0.3, c.mu[1] - 0.2];
        }
        let off = Tensor::from_vec(head_logits(&moved), (1, GMM_PARAMS), &Device::Cpu).unwrap();
        let pred = GmmTensors::from_head(&off).unwrap();
        let d = direct_loss(&pred, std::slice::from_ref(&p), Matching::Nearest).unwrap();
        // Two components each off by |0.3| + |0.2| in position: L_param = 0.5.
        assert!((d.param.to_scalar::<f32>().unwrap() - 0.5).abs() < 1e-3);
        let ind2 = indirect_loss(&pred, &target, &nt, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(ind2 > 100.0 * ind.max(1e-6), "{ind2}");
    }

    #[test]
    fn renderer_gradients_reach_every_parameter() {
        let p = mixture();
        let n = normal(12);
        let nt = images_tensor(&[&n], &Device::Cpu).unwrap();
        let target = GmmTensors::from_params(std::slice::from_ref(&p), &Device::Cpu).unwrap();
        let z = candle_core::Var::from_tensor(
            &(Tensor::from_vec(head_logits(&p), (1, GMM_PARAMS), &Device::Cpu).unwrap() + 0.1)
                .unwrap(),
        )
        .unwrap();
        let pred = GmmTensors::from_head(z.as_tensor()).unwrap();
        let loss = indirect_loss(&pred, &target, &nt, 1.0).unwrap();
        let g = loss.backward().unwrap();
        let grad = g.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // Active components (3, 17): their mean, scale and colour logits all receive gradient; so does s.
        for k in [3, 17] {
            for part in [0, 1, 2, 3] {
                assert!(
                    grad[0][part * K + k].abs() > 0.0,
                    "no gradient for part {part} of component {k}"
                );
            }
            assert!(grad[0][6 * K + k * 3].abs() > 0.0);
        }
        assert!(grad[0][GMM_PARAMS - 1].abs() > 0.0);
        assert!(grad[0].iter().all(|v| v.is_finite()));
    }
}
