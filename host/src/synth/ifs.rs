//! Iterated function systems (IFS): sampling codes, jittering them, and running the chaos game.
//!
//! A code is a short list of affine maps `w_i(x) = A_i x + b_i`; its attractor is the fractal. Codes are
//! sampled with Anderson & Farrell's SVD method (docs/pretraining.md, "IFS codes"): each `A_i` is built from two random
//! rotation-reflections around chosen singular values, so every map is contractive by construction and no
//! FractalDB-style search for "codes that don't diverge" is needed. The singular values are constrained by the
//! σ-factor `α = Σ_i (σ1_i + 2·σ2_i)`, which A&F found to control how "interesting" (neither dust nor blob)
//! the attractor is.

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::{invalid, uniform, SynthError};

/// One affine map `(x, y) ↦ (a·x + b·y + e, c·x + d·y + f)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Affine {
    /// Row 1, column 1 of the linear part.
    pub a: f64,
    /// Row 1, column 2.
    pub b: f64,
    /// Row 2, column 1.
    pub c: f64,
    /// Row 2, column 2.
    pub d: f64,
    /// Translation, x.
    pub e: f64,
    /// Translation, y.
    pub f: f64,
}

impl Affine {
    /// `w(p)`.
    #[inline]
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        [
            self.a * p[0] + self.b * p[1] + self.e,
            self.c * p[0] + self.d * p[1] + self.f,
        ]
    }

    /// Determinant of the linear part.
    pub fn det(&self) -> f64 {
        self.a * self.d - self.b * self.c
    }

    /// Singular values `(σ1, σ2)`, `σ1 ≥ σ2 ≥ 0`, of the linear part (closed form for 2×2).
    pub fn singular_values(&self) -> (f64, f64) {
        let frob = self.a * self.a + self.b * self.b + self.c * self.c + self.d * self.d;
        let det = self.det();
        let root = (frob * frob - 4.0 * det * det).max(0.0).sqrt();
        let s1 = ((frob + root) / 2.0).max(0.0).sqrt();
        let s2 = ((frob - root) / 2.0).max(0.0).sqrt();
        (s1, s2)
    }

    /// The fixed point `x* = (I − A)⁻¹ b`, or `None` when `I − A` is singular (never for a contractive map).
    pub fn fixed_point(&self) -> Option<[f64; 2]> {
        let den = 1.0 - self.a - self.d + self.det();
        if den.abs() < 1e-12 {
            return None;
        }
        Some([
            ((1.0 - self.d) * self.e + self.b * self.f) / den,
            ((1.0 - self.a) * self.f + self.c * self.e) / den,
        ])
    }

    /// The map with every coefficient multiplied by `k` (the "basic" jitter).
    fn scaled(&self, k: f64) -> Self {
        Self {
            a: self.a * k,
            b: self.b * k,
            c: self.c * k,
            d: self.d * k,
            e: self.e * k,
            f: self.f * k,
        }
    }
}

/// An IFS code: the maps; selection probabilities follow from them ([`Ifs::probabilities`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ifs {
    /// The maps, at least one.
    pub maps: Vec<Affine>,
}

impl Ifs {
    /// Selection probabilities `p_i ∝ |det A_i|` (a map's share of the attractor's area), uniform if every
    /// determinant is zero.
    pub fn probabilities(&self) -> Vec<f64> {
        let dets: Vec<f64> = self.maps.iter().map(|m| m.det().abs()).collect();
        let total: f64 = dets.iter().sum();
        if total > 0.0 && total.is_finite() {
            dets.iter().map(|d| d / total).collect()
        } else {
            vec![1.0 / self.maps.len() as f64; self.maps.len()]
        }
    }

    /// The σ-factor `Σ_i (σ1_i + 2·σ2_i)`.
    pub fn sigma_factor(&self) -> f64 {
        self.maps
            .iter()
            .map(|m| {
                let (s1, s2) = m.singular_values();
                s1 + 2.0 * s2
            })
            .sum()
    }

    /// Whether every map's largest singular value is at most 1 (A&F's contractivity condition).
    pub fn is_contractive(&self) -> bool {
        self.maps.iter().all(|m| m.singular_values().0 <= 1.0)
    }
}

/// How an IFS code is sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IfsSampler {
    /// Fewest maps (A&F and Ugwu: 2).
    pub min_maps: usize,
    /// Most maps (A&F and Ugwu: 4; FractalDB: 7).
    pub max_maps: usize,
    /// Translations are drawn from `U[−bval, bval]²`.
    pub bval: f64,
}

impl Default for IfsSampler {
    fn default() -> Self {
        Self {
            min_maps: 2,
            max_maps: 4,
            bval: 1.0,
        }
    }
}

impl IfsSampler {
    /// Check the ranges.
    pub fn validate(&self) -> Result<(), SynthError> {
        // One map has α ≥ 3 = 3N: its only "attractor" would be an orthogonal map's orbit, not a fractal.
        if self.min_maps < 2 || self.min_maps > self.max_maps || self.max_maps > 16 {
            return Err(invalid(
                "maps",
                format!(
                    "need 2 ≤ min ≤ max ≤ 16 maps, got {}..={}",
                    self.min_maps, self.max_maps
                ),
            ));
        }
        if !(self.bval.is_finite() && self.bval > 0.0) {
            return Err(invalid(
                "bval",
                format!("must be positive, got {}", self.bval),
            ));
        }
        Ok(())
    }

    /// Draw a code: `N ~ U{min..max}`, `α ~ U[(5+N)/2, (6+N)/2]`, singular values by [`sample_svs`], random
    /// rotation-reflections around them, translations `U[−bval, bval]²`.
    pub fn sample(&self, rng: &mut impl Rng) -> Ifs {
        let n = rng.gen_range(self.min_maps..=self.max_maps);
        let alpha = sample_alpha(rng, n);
        let svs = sample_svs(rng, alpha, n);
        let maps = svs
            .into_iter()
            .map(|(s1, s2)| {
                let u = rotation_reflection(rng);
                let v = rotation_reflection(rng);
                // A = U · diag(σ1, σ2) · V.
                let us = [[u[0][0] * s1, u[0][1] * s2], [u[1][0] * s1, u[1][1] * s2]];
                let m = |r: usize, c: usize| us[r][0] * v[0][c] + us[r][1] * v[1][c];
                Affine {
                    a: m(0, 0),
                    b: m(0, 1),
                    c: m(1, 0),
                    d: m(1, 1),
                    e: uniform(rng, -self.bval, self.bval),
                    f: uniform(rng, -self.bval, self.bval),
                }
            })
            .collect();
        Ifs { maps }
    }
}

/// The σ-factor for `n` maps: `U[(5+n)/2, (6+n)/2]` (A&F's range; inside the hard limit `(0, 3n)` for
/// `n ≥ 2`).
pub fn sample_alpha(rng: &mut impl Rng, n: usize) -> f64 {
    let n = n as f64;
    uniform(rng, (5.0 + n) / 2.0, (6.0 + n) / 2.0)
}

/// `n` singular-value pairs `1 ≥ σ1 ≥ σ2 ≥ 0` with `Σ (σ1 + 2·σ2) = alpha` exactly (up to rounding), by A&F's
/// sequential sampler: each pair takes a random share of what is left, but never so little that the remaining
/// pairs (at most 3 each) could not finish, nor so much that the rest would go negative.
///
/// `alpha` must lie in `(0, 3n)`; values outside are clamped to that range.
pub fn sample_svs(rng: &mut impl Rng, alpha: f64, n: usize) -> Vec<(f64, f64)> {
    assert!(n > 0, "an IFS needs at least one map");
    let alpha = alpha.clamp(0.0, 3.0 * n as f64);
    let mut out = Vec::with_capacity(n);
    // p: weight still to allocate; q: the least the current pair must take.
    let mut p = alpha;
    let mut q = alpha - 3.0 * (n as f64 - 1.0);
    for _ in 0..n - 1 {
        let s1 = uniform(rng, (q / 3.0).max(0.0), p.min(1.0));
        p -= s1;
        q -= s1;
        let s2 = uniform(rng, (q / 2.0).max(0.0), s1.min(p / 2.0));
        p -= 2.0 * s2;
        q = q - 2.0 * s2 + 3.0;
        out.push((s1, s2));
    }
    let s2 = uniform(rng, ((p - 1.0) / 2.0).max(0.0), p / 3.0);
    out.push((p - 2.0 * s2, s2));
    out
}

/// `R(θ)·D` with `θ ~ U(−π, π)` and `D = diag(±1, ±1)`: a random rotation, possibly with reflections.
fn rotation_reflection(rng: &mut impl Rng) -> [[f64; 2]; 2] {
    let theta = uniform(rng, -std::f64::consts::PI, std::f64::consts::PI);
    let (sin, cos) = theta.sin_cos();
    let d0 = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
    let d1 = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
    [[cos * d0, -sin * d1], [sin * d0, cos * d1]]
}

/// Per-sample variation of a class's code (docs/pretraining.md, "Rendering one image" step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Jitter {
    /// Render the code as it is.
    None,
    /// A&F `basic`: one map, chosen uniformly, is scaled as a whole (`[A_i | b_i]`) by `U(0.8, 1.1)`.
    #[default]
    Basic,
}

/// Attempts before a jitter that breaks contractivity gives up and keeps the code as it is.
const JITTER_ATTEMPTS: usize = 4;

/// Apply `mode` to `ifs`. A jittered map whose largest singular value exceeds 1 is retried; after four failed
/// attempts the un-jittered code is returned. The flag says whether jitter was applied.
pub fn jitter(ifs: &Ifs, mode: Jitter, rng: &mut impl Rng) -> (Ifs, bool) {
    match mode {
        Jitter::None => (ifs.clone(), false),
        Jitter::Basic => {
            for _ in 0..JITTER_ATTEMPTS {
                let i = rng.gen_range(0..ifs.maps.len());
                let k = uniform(rng, 0.8, 1.1);
                let m = ifs.maps[i].scaled(k);
                if m.singular_values().0 <= 1.0 {
                    let mut out = ifs.clone();
                    out.maps[i] = m;
                    return (out, true);
                }
            }
            (ifs.clone(), false)
        }
    }
}

/// Run the chaos game for `n_iter` steps and return the visited points.
///
/// Starts at the fixed point of the first map, which lies on the attractor, so no burn-in is needed. Each step
/// picks map `k` with probability [`Ifs::probabilities`]; the walk stops early if a coordinate becomes
/// non-finite (impossible for contractive codes, kept for codes from elsewhere).
pub fn chaos_game(ifs: &Ifs, n_iter: usize, rng: &mut impl RngCore) -> Vec<[f32; 2]> {
    let probs = ifs.probabilities();
    // Cumulative thresholds on a 32-bit draw: one `next_u32` per step instead of a float, and no bias worth
    // the name (2⁻³² per map).
    let mut thresholds = Vec::with_capacity(probs.len());
    let mut cum = 0.0;
    for p in &probs {
        cum += p;
        thresholds.push(((cum * 4_294_967_296.0) as u64).min(1 << 32));
    }
    *thresholds.last_mut().expect("an IFS has maps") = 1 << 32;
    let mut p = ifs.maps[0].fixed_point().unwrap_or([0.0, 0.0]);
    let mut out = Vec::with_capacity(n_iter);
    for _ in 0..n_iter {
        let u = u64::from(rng.next_u32());
        let k = thresholds.iter().position(|&t| u < t).unwrap_or(0);
        p = ifs.maps[k].apply(p);
        if !(p[0].is_finite() && p[1].is_finite()) {
            break;
        }
        out.push([p[0] as f32, p[1] as f32]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::stream;
    use super::*;

    #[test]
    fn svs_meet_the_alpha_constraint_exactly() {
        let mut rng = stream(11, 0, 0);
        for trial in 0..3000 {
            let n = 2 + trial % 6;
            let alpha = sample_alpha(&mut rng, n);
            assert!(alpha > 0.0 && alpha < 3.0 * n as f64);
            let svs = sample_svs(&mut rng, alpha, n);
            assert_eq!(svs.len(), n);
            let total: f64 = svs.iter().map(|(s1, s2)| s1 + 2.0 * s2).sum();
            assert!((total - alpha).abs() < 1e-9, "n={n}: Σ={total} α={alpha}");
            for &(s1, s2) in &svs {
                assert!(
                    (0.0..=1.0).contains(&s1) && (0.0..=s1).contains(&s2),
                    "n={n}: pair ({s1}, {s2})"
                );
            }
        }
    }

    #[test]
    fn sampler_rejects_single_map_codes() {
        let one = IfsSampler {
            min_maps: 1,
            ..IfsSampler::default()
        };
        assert!(one.validate().is_err());
        assert!(IfsSampler::default().validate().is_ok());
    }

    #[test]
    fn fixed_point_is_fixed() {
        let mut rng = stream(12, 0, 0);
        for _ in 0..500 {
            let ifs = IfsSampler::default().sample(&mut rng);
            let w = ifs.maps[0];
            let x = w.fixed_point().expect("contractive map has a fixed point");
            let y = w.apply(x);
            assert!((y[0] - x[0]).hypot(y[1] - x[1]) < 1e-9);
        }
    }

    #[test]
    fn singular_values_of_known_matrices() {
        let m = Affine {
            a: 3.0,
            b: 0.0,
            c: 0.0,
            d: -2.0,
            e: 0.0,
            f: 0.0,
        };
        let (s1, s2) = m.singular_values();
        assert!((s1 - 3.0).abs() < 1e-12 && (s2 - 2.0).abs() < 1e-12);
        let shear = Affine { b: 1.0, ..m };
        let (s1, s2) = Affine {
            a: 1.0,
            d: 1.0,
            ..shear
        }
        .singular_values();
        let golden = (1.0 + 5f64.sqrt()) / 2.0;
        assert!((s1 - golden).abs() < 1e-12 && (s2 - 1.0 / golden).abs() < 1e-12);
    }

    #[test]
    fn probabilities_follow_determinants() {
        let ifs = IfsSampler {
            min_maps: 3,
            max_maps: 3,
            bval: 1.0,
        }
        .sample(&mut stream(13, 0, 0));
        let p = ifs.probabilities();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for (pi, m) in p.iter().zip(&ifs.maps) {
            assert!(
                (pi * ifs.maps.iter().map(|m| m.det().abs()).sum::<f64>() - m.det().abs()).abs()
                    < 1e-12
            );
        }
    }

    #[test]
    fn jitter_keeps_codes_contractive() {
        let mut rng = stream(14, 0, 0);
        let mut applied = 0;
        for _ in 0..500 {
            let ifs = IfsSampler::default().sample(&mut rng);
            let (j, did) = jitter(&ifs, Jitter::Basic, &mut rng);
            assert!(j.is_contractive());
            applied += usize::from(did);
            if !did {
                assert_eq!(j, ifs);
            }
        }
        assert!(applied > 400, "jitter almost never applied: {applied}/500");
    }

    #[test]
    fn chaos_game_stays_bounded_and_starts_on_the_attractor() {
        let mut rng = stream(15, 0, 0);
        let ifs = IfsSampler::default().sample(&mut rng);
        let pts = chaos_game(&ifs, 5000, &mut rng);
        assert_eq!(pts.len(), 5000);
        // A contractive IFS with |b| ≤ 1 and σ ≤ 1 − ε keeps the orbit of an attractor point bounded.
        assert!(pts.iter().all(|p| p[0].is_finite() && p[1].is_finite()));
    }
}
