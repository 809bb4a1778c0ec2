//! Gaussian statistics for density detectors: a streaming Ledoit–Wolf covariance estimator.
//!
//! GDE (Gaussian density estimation, as CutPaste and DS2 evaluate their features) fits a mean and a *shrunk*
//! covariance to embeddings: with a few hundred good images and 500-dimensional features, the sample covariance is
//! ill-conditioned or singular, and its inverse (the Mahalanobis distance) amplifies noise. Ledoit–Wolf blends it
//! with a scaled identity, `Σ̂ = (1 − λ)·S + λ·(tr S / p)·I`, with the λ that minimises the expected squared error.
//! [`LedoitWolfFit`] computes scikit-learn's `LedoitWolf` (the same λ formula, the biased `S = XᵀX / n`) in one
//! streaming pass, so millions of patch embeddings need not be kept. The algebra is in docs/detectors.md
//! ("Ledoit–Wolf shrinkage"); parity with scikit-learn is tested on recorded fixtures.

use thiserror::Error;

/// What can go wrong fitting the statistics.
#[derive(Debug, Error, PartialEq)]
pub enum StatsError {
    /// A batch whose length is not a whole number of rows.
    #[error("a batch of {len} values is not a whole number of rows of {dim} features")]
    Ragged {
        /// Values in the batch.
        len: usize,
        /// Features per row.
        dim: usize,
    },
    /// Zero features.
    #[error("the embedding has no features")]
    NoFeatures,
    /// Too few rows for a covariance.
    #[error("a covariance needs at least 2 samples, got {0}; fit on more good images")]
    TooFewSamples(u64),
    /// NaN or infinity in the input.
    #[error("a sample holds a NaN or infinite value (feature {feature}); the features are broken")]
    NonFinite {
        /// Feature index of the first bad value.
        feature: usize,
    },
}

/// A fitted Gaussian: mean, shrunk covariance and the shrinkage that was applied.
#[derive(Debug, Clone, PartialEq)]
pub struct LedoitWolf {
    /// Features per sample.
    pub dim: usize,
    /// Sample mean.
    pub mean: Vec<f64>,
    /// `dim × dim`, row-major, symmetric: `(1 − λ)·S + λ·(tr S / dim)·I`.
    pub covariance: Vec<f64>,
    /// λ in [0, 1].
    pub shrinkage: f64,
}

/// Streaming Ledoit–Wolf: add batches of rows, then [`LedoitWolfFit::finish`].
///
/// Keeps `O(dim²)` sums. Rows are shifted by the first batch's mean before they are summed, so a large common
/// offset does not cancel catastrophically in the second and fourth moments.
#[derive(Debug, Clone)]
pub struct LedoitWolfFit {
    dim: usize,
    n: u64,
    /// The shift (first batch's mean); empty until the first batch.
    shift: Vec<f64>,
    /// Σ x (shifted rows).
    sum: Vec<f64>,
    /// Σ x xᵀ, `dim × dim` row-major.
    sxx: Vec<f64>,
    /// Σ |x|².
    s2: f64,
    /// Σ |x|⁴.
    s4: f64,
    /// Σ |x|²·x.
    s2x: Vec<f64>,
}

impl LedoitWolf {
    /// `L⁻¹` (row-major f32) with `Σ̂ = L Lᵀ`: `|L⁻¹(x − mean)|` is the Mahalanobis distance. `None` if `Σ̂` is not
    /// positive definite, which shrinkage > 0 rules out unless every feature is constant.
    pub fn whitening(&self) -> Option<Vec<f32>> {
        let mut a = self.covariance.clone();
        inverse_cholesky_factor(&mut a, self.dim)
    }
}

impl LedoitWolfFit {
    /// An empty fit for rows of `dim` features.
    pub fn new(dim: usize) -> Result<Self, StatsError> {
        if dim == 0 {
            return Err(StatsError::NoFeatures);
        }
        Ok(Self {
            dim,
            n: 0,
            shift: Vec::new(),
            sum: vec![0.0; dim],
            sxx: vec![0.0; dim * dim],
            s2: 0.0,
            s4: 0.0,
            s2x: vec![0.0; dim],
        })
    }

    /// Features per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Samples added so far.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Add `rows.len() / dim` samples, row-major. Refused as a whole (nothing added) if ragged or not finite.
    pub fn add(&mut self, rows: &[f32]) -> Result<(), StatsError> {
        let p = self.dim;
        if !rows.len().is_multiple_of(p) {
            return Err(StatsError::Ragged {
                len: rows.len(),
                dim: p,
            });
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(StatsError::NonFinite { feature: i % p });
        }
        let m = rows.len() / p;
        if m == 0 {
            return Ok(());
        }
        if self.shift.is_empty() {
            let mut c = vec![0f64; p];
            for row in rows.chunks_exact(p) {
                for (c, &v) in c.iter_mut().zip(row) {
                    *c += f64::from(v);
                }
            }
            c.iter_mut().for_each(|c| *c /= m as f64);
            self.shift = c;
        }
        let mut x = vec![0f64; rows.len()];
        for (xr, row) in x.chunks_exact_mut(p).zip(rows.chunks_exact(p)) {
            let mut r2 = 0.0;
            for ((d, &v), c) in xr.iter_mut().zip(row).zip(&self.shift) {
                *d = f64::from(v) - c;
                r2 += *d * *d;
            }
            self.s2 += r2;
            self.s4 += r2 * r2;
            for ((s, sx), &d) in self.sum.iter_mut().zip(self.s2x.iter_mut()).zip(xr.iter()) {
                *s += d;
                *sx += r2 * d;
            }
        }
        // Σ x xᵀ += Xᵀ·X: the O(m·p²) part, on the GEMM kernels.
        // SAFETY: dst is the p×p sxx (row stride p); lhs = Xᵀ (p×m: element (i, k) at k·p + i), rhs = X (m×p,
        // row-major); both inside `x` (m·p elements), nothing else touches them.
        unsafe {
            gemm::gemm(
                p,
                p,
                m,
                self.sxx.as_mut_ptr(),
                1,
                p as isize,
                true,
                x.as_ptr(),
                p as isize,
                1,
                x.as_ptr(),
                1,
                p as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        self.n += m as u64;
        Ok(())
    }

    /// The fitted Gaussian (scikit-learn's `LedoitWolf().fit(X)`: `location_`, `covariance_`, `shrinkage_`).
    pub fn finish(&self) -> Result<LedoitWolf, StatsError> {
        if self.n < 2 {
            return Err(StatsError::TooFewSamples(self.n));
        }
        let (p, n) = (self.dim, self.n as f64);
        // Mean of the shifted rows, and the biased sample covariance S = Σ x xᵀ / n − μ μᵀ.
        let mu: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mut s = vec![0f64; p * p];
        for i in 0..p {
            for j in 0..p {
                s[i * p + j] = self.sxx[i * p + j] / n - mu[i] * mu[j];
            }
        }
        // GEMM sums may differ in the last bit between (i, j) and (j, i): make S exactly symmetric.
        for i in 0..p {
            for j in 0..i {
                let v = 0.5 * (s[i * p + j] + s[j * p + i]);
                s[i * p + j] = v;
                s[j * p + i] = v;
            }
        }
        let trace: f64 = (0..p).map(|i| s[i * p + i]).sum();
        let mu_tr = trace / p as f64;
        let shrinkage = if p == 1 {
            // scikit-learn returns the plain variance for one feature.
            0.0
        } else {
            // δ̄ = Σ (Xcᵀ Xc)² / n² = |S|²_F and β̄ = Σ_k |x_k − μ|⁴, from the streamed moments (docs/detectors.md).
            let delta_bar: f64 = s.iter().map(|v| v * v).sum();
            let m2: f64 = mu.iter().map(|v| v * v).sum();
            let mu_s2x: f64 = mu.iter().zip(&self.s2x).map(|(a, b)| a * b).sum();
            let mut mu_sxx_mu = 0.0;
            for i in 0..p {
                let row = &self.sxx[i * p..(i + 1) * p];
                mu_sxx_mu += mu[i] * row.iter().zip(&mu).map(|(a, b)| a * b).sum::<f64>();
            }
            let beta_bar =
                self.s4 - 4.0 * mu_s2x + 4.0 * mu_sxx_mu + 2.0 * m2 * self.s2 - 3.0 * n * m2 * m2;
            let beta = (beta_bar / n - delta_bar) / (p as f64 * n);
            let delta = (delta_bar - 2.0 * mu_tr * trace + p as f64 * mu_tr * mu_tr) / p as f64;
            let beta = beta.min(delta);
            if beta <= 0.0 || delta <= 0.0 {
                0.0
            } else {
                (beta / delta).min(1.0)
            }
        };
        let mut covariance: Vec<f64> = s.iter().map(|v| (1.0 - shrinkage) * v).collect();
        for i in 0..p {
            covariance[i * p + i] += shrinkage * mu_tr;
        }
        let mean = mu.iter().zip(&self.shift).map(|(m, c)| m + c).collect();
        Ok(LedoitWolf {
            dim: p,
            mean,
            covariance,
            shrinkage,
        })
    }
}

/// Cholesky factorisation in place (lower triangle), then returns `L⁻¹` row-major as f32.
/// `None` if the matrix is not positive definite. With `Σ = L Lᵀ`, `|L⁻¹(x − μ)|` is the Mahalanobis distance
/// (PaDiM's per-position Gaussians, GDE's).
pub(crate) fn inverse_cholesky_factor(a: &mut [f64], d: usize) -> Option<Vec<f32>> {
    for j in 0..d {
        let mut diag = a[j * d + j];
        for k in 0..j {
            diag -= a[j * d + k] * a[j * d + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return None;
        }
        let ljj = diag.sqrt();
        a[j * d + j] = ljj;
        for i in (j + 1)..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = v / ljj;
        }
    }
    // Invert the lower-triangular L by forward substitution, column by column: L X = I.
    let mut inv = vec![0f64; d * d];
    for c in 0..d {
        for i in c..d {
            let mut v = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                v -= a[i * d + k] * inv[k * d + c];
            }
            inv[i * d + c] = v / a[i * d + i];
        }
    }
    Some(inv.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rows(n: usize, p: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * p).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn cholesky_inverse_whitens() {
        // Σ = [[4, 2], [2, 3]]; W Σ Wᵀ must be I.
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let w = inverse_cholesky_factor(&mut a, 2).unwrap();
        let s = [4.0f32, 2.0, 2.0, 3.0];
        for i in 0..2 {
            for j in 0..2 {
                let mut v = 0.0;
                for k in 0..2 {
                    for l in 0..2 {
                        v += w[i * 2 + k] * s[k * 2 + l] * w[j * 2 + l];
                    }
                }
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(inverse_cholesky_factor(&mut bad, 2).is_none());
    }

    #[test]
    fn batches_add_up_to_one_fit() {
        let (n, p) = (97, 7);
        let x = rows(n, p, 1);
        let mut one = LedoitWolfFit::new(p).unwrap();
        one.add(&x).unwrap();
        let mut many = LedoitWolfFit::new(p).unwrap();
        for chunk in x.chunks(13 * p) {
            many.add(chunk).unwrap();
        }
        let (a, b) = (one.finish().unwrap(), many.finish().unwrap());
        assert_eq!(one.samples(), n as u64);
        assert!((a.shrinkage - b.shrinkage).abs() < 1e-12);
        for (u, v) in a.covariance.iter().zip(&b.covariance) {
            assert!((u - v).abs() < 1e-12, "{u} vs {v}");
        }
    }

    #[test]
    fn covariance_is_symmetric_and_shrinkage_in_range() {
        for (n, p) in [(5, 40), (400, 3), (60, 60)] {
            let mut f = LedoitWolfFit::new(p).unwrap();
            f.add(&rows(n, p, n as u64)).unwrap();
            let g = f.finish().unwrap();
            assert!((0.0..=1.0).contains(&g.shrinkage), "{}", g.shrinkage);
            for i in 0..p {
                assert!(g.covariance[i * p + i] > 0.0);
                for j in 0..p {
                    assert_eq!(g.covariance[i * p + j], g.covariance[j * p + i]);
                }
            }
        }
    }

    #[test]
    fn whitening_turns_the_shrunk_covariance_into_the_identity() {
        let p = 9;
        let mut f = LedoitWolfFit::new(p).unwrap();
        f.add(&rows(40, p, 3)).unwrap();
        let g = f.finish().unwrap();
        let w = g.whitening().unwrap();
        for i in 0..p {
            for j in 0..p {
                let mut v = 0f64;
                for k in 0..p {
                    for l in 0..p {
                        v += f64::from(w[i * p + k])
                            * g.covariance[k * p + l]
                            * f64::from(w[j * p + l]);
                    }
                }
                assert!(
                    (v - f64::from(u8::from(i == j))).abs() < 1e-4,
                    "({i}, {j}): {v}"
                );
            }
        }
    }

    #[test]
    fn bad_input_is_refused_and_leaves_the_fit_unchanged() {
        let mut f = LedoitWolfFit::new(3).unwrap();
        assert_eq!(
            f.add(&[1.0, 2.0]),
            Err(StatsError::Ragged { len: 2, dim: 3 })
        );
        assert_eq!(
            f.add(&[1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0]),
            Err(StatsError::NonFinite { feature: 1 })
        );
        assert_eq!(f.samples(), 0);
        f.add(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(f.finish(), Err(StatsError::TooFewSamples(1)));
        assert_eq!(LedoitWolfFit::new(0).unwrap_err(), StatsError::NoFeatures);
    }
}
