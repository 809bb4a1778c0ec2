//! Post-processing of patch-level anomaly maps into full-resolution heatmaps, as anomalib does it: upsample to the
//! model input size, then a Gaussian blur with σ = 4 (kernel 2·⌊4σ + 0.5⌋ + 1 = 33, reflect padding).
//!
//! Written on plain slices (not tensors) because the same code runs on the edge after scoring and in `kestrel eval`;
//! the blur is separable and parallel over images by the caller.

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

/// Separable Gaussian blur of a `w`×`h` row-major map with reflect padding. `sigma <= 0` returns the map unchanged.
pub fn gaussian_blur(map: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    assert_eq!(map.len(), w * h, "map size mismatch");
    if sigma <= 0.0 || map.is_empty() {
        return map.to_vec();
    }
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
    out
}

/// Nearest-neighbour upsampling (torch `F.interpolate(mode="nearest")`: source index ⌊dst · in/out⌋).
pub fn upsample_nearest(map: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(nw * nh);
    for y in 0..nh {
        let sy = ((y * h) / nh).min(h - 1);
        for x in 0..nw {
            let sx = ((x * w) / nw).min(w - 1);
            out.push(map[sy * w + sx]);
        }
    }
    out
}

/// Bilinear upsampling with `align_corners=False` and no antialiasing (torch `F.interpolate(mode="bilinear")`).
pub fn upsample_bilinear(map: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    let coords = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let cx = coords(w, nw);
    let cy = coords(h, nh);
    let mut out = Vec::with_capacity(nw * nh);
    for &(y0, y1, fy) in &cy {
        for &(x0, x1, fx) in &cx {
            let a = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let b = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            out.push(a * (1.0 - fy) + b * fy);
        }
    }
    out
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
        let m = vec![3.0f32; 20 * 10];
        let b = gaussian_blur(&m, 20, 10, 4.0);
        assert!(b.iter().all(|v| (v - 3.0).abs() < 1e-5));
        let mut d = vec![0f32; 41 * 41];
        d[20 * 41 + 20] = 1.0;
        let b = gaussian_blur(&d, 41, 41, 2.0);
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
    fn bilinear_matches_hand_computed_torch_values() {
        // torch: F.interpolate([[0,1],[2,3]], size=4, mode="bilinear", align_corners=False) first row:
        // [0, 0.25, 0.75, 1]
        let out = upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let row0 = &out[0..4];
        for (a, b) in row0.iter().zip([0.0, 0.25, 0.75, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{row0:?}");
        }
        assert!((out[15] - 3.0).abs() < 1e-6);
        let n = upsample_nearest(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        assert_eq!(&n[0..4], &[0.0, 0.0, 1.0, 1.0]);
    }
}
