//! Post-processing of patch-level anomaly maps into full-resolution heatmaps, as anomalib does it: upsample to the
//! model input size, then a Gaussian blur with σ = 4 (kernel 2·⌊4σ + 0.5⌋ + 1 = 33, reflect padding).
//!
//! Written on [`ScoreMap`]s (not tensors) because the same code runs on the edge after scoring and in `kestrel eval`;
//! the blur is separable and parallel over images by the caller. The resize filters are in [`crate::resample`].

use crate::map::{MapError, ScoreMap};
use crate::resample;

/// Default blur σ (anomalib).
pub const DEFAULT_SIGMA: f32 = 4.0;

/// Normalised 1-D Gaussian kernel of size 2·⌊4σ + 0.5⌋ + 1.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (4.0 * sigma + 0.5) as usize;
    let mut k: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let x = i as f32 - radius as f32;
            (-(x * x) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Reflect an index into 0..n the way `torch.nn.functional.pad(mode="reflect")` does (edge not repeated).
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut i = i.rem_euclid(period);
    if i >= n as isize {
        i = period - i;
    }
    i as usize
}

/// Separable Gaussian blur with reflect padding. `sigma <= 0` returns the map unchanged.
pub fn gaussian_blur(map: &ScoreMap, sigma: f32) -> ScoreMap {
    if sigma <= 0.0 {
        return map.clone();
    }
    let (w, h) = (map.width(), map.height());
    let map = map.data();
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    // Precompute reflected source indices per output index so the inner loops have no branches.
    let idx = |n: usize| -> Vec<usize> {
        (0..n as isize)
            .flat_map(|o| (-r..=r).map(move |d| (o, d)))
            .map(|(o, d)| reflect(o + d, n))
            .collect()
    };
    let ix = idx(w);
    let iy = idx(h);
    let kl = k.len();
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        let row = &map[y * w..(y + 1) * w];
        let out = &mut tmp[y * w..(y + 1) * w];
        for (x, o) in out.iter_mut().enumerate() {
            let src = &ix[x * kl..(x + 1) * kl];
            *o = src.iter().zip(&k).map(|(&s, &kv)| row[s] * kv).sum();
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        let src = &iy[y * kl..(y + 1) * kl];
        let o = &mut out[y * w..(y + 1) * w];
        for (&s, &kv) in src.iter().zip(&k) {
            let row = &tmp[s * w..(s + 1) * w];
            for (ov, &rv) in o.iter_mut().zip(row) {
                *ov += rv * kv;
            }
        }
    }
    ScoreMap::new(w, h, out).expect("same size as the input map")
}

/// How a detector's patch map is brought to the model's input size before the blur. anomalib uses bilinear for
/// PaDiM and nearest (the `F.interpolate` default) for PatchCore; GDE spreads its overlapping windows' scores with
/// Gaussian weights. Each [`crate::detector::Detector`] says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsample {
    /// [`resample::bilinear`].
    Bilinear,
    /// [`resample::nearest`].
    Nearest,
    /// [`resample::gaussian_splat`]: a grid of overlapping `kernel` px windows at `stride` (GDE's patch scores).
    GaussianSplat {
        /// Window side, px.
        kernel: usize,
        /// Window stride, px.
        stride: usize,
    },
}

/// Patch map → full-resolution heatmap: upsample to `size × size`, then blur with `sigma` (anomalib's
/// post-processing; see the module docs).
pub fn heatmap(
    patch: &ScoreMap,
    upsample: Upsample,
    size: usize,
    sigma: f32,
) -> Result<ScoreMap, MapError> {
    let up = match upsample {
        Upsample::Bilinear => resample::bilinear(patch, size, size)?,
        Upsample::Nearest => resample::nearest(patch, size, size)?,
        Upsample::GaussianSplat { kernel, stride } => {
            resample::gaussian_splat(patch, kernel, stride, size, size)?
        }
    };
    Ok(gaussian_blur(&up, sigma))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_anomalib_size_and_sums_to_one() {
        let k = gaussian_kernel(4.0);
        assert_eq!(k.len(), 33);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(k[16] > k[15] && (k[0] - k[32]).abs() < 1e-9);
    }

    #[test]
    fn blur_keeps_constants_and_mass_centre() {
        let m = ScoreMap::filled(20, 10, 3.0).unwrap();
        let b = gaussian_blur(&m, 4.0);
        assert!(b.data().iter().all(|v| (v - 3.0).abs() < 1e-5));
        let mut d = ScoreMap::filled(41, 41, 0.0).unwrap();
        d.data_mut()[20 * 41 + 20] = 1.0;
        let b = gaussian_blur(&d, 2.0);
        let b = b.data();
        let max_at = b
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(max_at, 20 * 41 + 20);
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn reflect_matches_torch() {
        // torch reflect pad of [0,1,2,3] by 2 -> [2,1,0,1,2,3,2,1]
        let got: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 1, 2, 3, 2, 1]);
    }

    #[test]
    fn heatmap_upsamples_with_the_detector_rule_then_blurs() {
        let patch = ScoreMap::new(2, 2, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        let near = heatmap(&patch, Upsample::Nearest, 4, 0.0).unwrap();
        assert_eq!(near.row(0), &[0.0, 0.0, 1.0, 1.0]);
        let lin = heatmap(&patch, Upsample::Bilinear, 4, 0.0).unwrap();
        assert_eq!(lin, resample::bilinear(&patch, 4, 4).unwrap());
        let blurred = heatmap(&patch, Upsample::Bilinear, 4, 1.0).unwrap();
        assert_eq!(blurred, gaussian_blur(&lin, 1.0));
        assert_ne!(blurred, lin);
    }
}
