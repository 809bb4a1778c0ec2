//! Property tests of the synthetic pretraining generators (docs/pretraining.md), plus an ignored
//! throughput measurement.
//!
//! The invariants here are what the training engine relies on: every sampled IFS map is contractive and meets
//! the σ-factor constraint, the chaos game starts on the attractor, and the GMM renderer's strength is exactly
//! the peak opacity (so it is learnable) while zero strength and target cleaning leave the picture alone.

use kestrel_host::synth::fractal::{
    FractalConfig, FractalGenerator, MultiConfig, MultiFractalGenerator,
};
use kestrel_host::synth::gmm::{
    clean_target, max_difference, render, GmmComponent, GmmConfig, GmmGenerator, GmmParams,
    GMM_COMPONENTS,
};
use kestrel_host::synth::ifs::{sample_svs, Affine, IfsSampler};
use kestrel_host::synth::texture::NormalSource;
use kestrel_host::synth::Image;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Σ(σ1 + 2σ2) = α to 1e-9 and 1 ≥ σ1 ≥ σ2 ≥ 0, for any feasible α and 1–7 maps.
    #[test]
    fn singular_values_meet_the_alpha_constraint(seed: u64, n in 1usize..=7, t in 0.001f64..0.999) {
        let alpha = t * 3.0 * n as f64;
        let svs = sample_svs(&mut ChaCha8Rng::seed_from_u64(seed), alpha, n);
        let total: f64 = svs.iter().map(|(a, b)| a + 2.0 * b).sum();
        prop_assert!((total - alpha).abs() < 1e-9, "Σ = {total}, α = {alpha}");
        for (s1, s2) in svs {
            prop_assert!(s1 <= 1.0 && s2 <= s1 && s2 >= 0.0, "({s1}, {s2})");
        }
    }

    /// Every sampled map is contractive, the code's σ-factor is in A&F's range, and the first map's fixed point
    /// (the chaos game's start) is fixed.
    #[test]
    fn sampled_codes_are_contractive_with_a_fixed_start(seed: u64, min in 2usize..=5, extra in 0usize..=3) {
        let sampler = IfsSampler { min_maps: min, max_maps: min + extra, bval: 1.0 };
        let ifs = sampler.sample(&mut ChaCha8Rng::seed_from_u64(seed));
        let n = ifs.maps.len() as f64;
        prop_assert!(ifs.is_contractive());
        for m in &ifs.maps {
            prop_assert!(m.singular_values().0 <= 1.0 + 1e-12);
            prop_assert!(m.e.abs() <= 1.0 && m.f.abs() <= 1.0);
        }
        let alpha = ifs.sigma_factor();
        prop_assert!(alpha >= (5.0 + n) / 2.0 - 1e-9 && alpha <= (6.0 + n) / 2.0 + 1e-9, "α = {alpha}");
        let w: Affine = ifs.maps[0];
        let x = w.fixed_point().unwrap();
        let y = w.apply(x);
        prop_assert!((y[0] - x[0]).hypot(y[1] - x[1]) < 1e-9);
        let p = ifs.probabilities();
        prop_assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    /// Zero strength renders the normal image bit for bit; otherwise the peak opacity is the strength.
    #[test]
    fn gmm_strength_is_the_peak_opacity(p in gmm_params(), v in 0.0f32..=1.0, zero: bool) {
        let normal = gradient(32, v);
        let mut p = p;
        if zero {
            p.strength = 0.0;
        }
        let r = render(&normal, &p);
        let max = r.alpha.iter().copied().fold(0.0, f32::max);
        if p.strength == 0.0 {
            prop_assert_eq!(&r.image, &normal);
            prop_assert_eq!(max, 0.0);
        } else if max > 0.0 {
            prop_assert!((max - p.strength).abs() < 1e-6, "max α {} vs s {}", max, p.strength);
        }
        prop_assert!(r.alpha.iter().all(|&a| a >= 0.0 && a <= p.strength + 1e-6));
        prop_assert!(r.image.data().iter().all(|&x| (-1e-6..=1.0 + 1e-6).contains(&x)));
    }

    /// Cleaning with τ = 0 keeps the rendering (to 1e-5) while renormalising π; any τ changes the picture by at
    /// most what it dropped.
    #[test]
    fn gmm_cleaning_preserves_the_survivors(p in gmm_params(), v in 0.0f32..=1.0, tau in 0.0f32..0.5) {
        let normal = gradient(32, v);
        let before = render(&normal, &p).image;
        let keep_all = clean_target(&normal, &p, 0.0);
        prop_assert!(max_difference(&before, &render(&normal, &keep_all.params).image) < 2e-5);
        let c = clean_target(&normal, &p, tau);
        let bound = tau * c.dropped.len() as f32 + 2e-5;
        prop_assert!(max_difference(&before, &render(&normal, &c.params).image) <= bound);
        prop_assert!(c.params.strength <= p.strength + 1e-6);
        let mass: f32 = c.params.components.iter().map(|k| k.pi).sum();
        prop_assert!(c.params.strength == 0.0 || (mass - 1.0).abs() < 1e-5);
    }
}

/// A normal image with a gentle horizontal gradient around `v`.
fn gradient(size: usize, v: f32) -> Image {
    let mut img = Image::new(size);
    for i in 0..size * size {
        let x = (i % size) as f32 / size as f32;
        img.set_pixel(i, [v, (v + 0.3 * x).min(1.0), (1.0 - v) * x]);
    }
    img
}

/// 1–30 active components anywhere in (and a little outside) the image, at any size and strength.
fn gmm_params() -> impl Strategy<Value = GmmParams> {
    let component = (
        (-1.2f32..1.2, -1.2f32..1.2),
        (0.01f32..1.5, 0.01f32..1.5),
        -0.99f32..0.99,
        0.001f32..1.0,
        (-1.0f32..=1.0, -1.0f32..=1.0, -1.0f32..=1.0),
    )
        .prop_map(|(mu, sigma, rho, pi, c)| GmmComponent {
            mu: [mu.0, mu.1],
            sigma: [sigma.0, sigma.1],
            rho,
            pi,
            colour: [c.0, c.1, c.2],
        });
    (
        proptest::collection::vec(component, 1..=GMM_COMPONENTS),
        0.0f32..=1.0,
    )
        .prop_map(|(active, strength)| {
            let total: f32 = active.iter().map(|c| c.pi).sum();
            let mut components = vec![GmmComponent::INACTIVE; GMM_COMPONENTS];
            for (slot, mut c) in components.iter_mut().zip(active) {
                c.pi /= total;
                *slot = c;
            }
            GmmParams {
                components,
                strength,
            }
        })
}

/// Generator throughput on one core: `cargo test -p kestrel-host --test synth_generators -- --ignored
/// --nocapture` (build optimised for meaningful numbers). Prints, never asserts on time.
#[test]
#[ignore = "timing measurement; run by hand"]
fn throughput_per_core() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        for size in [64usize, 128, 256] {
            let n = match size {
                64 => 400,
                128 => 200,
                _ => 60,
            };
            let fractal = FractalGenerator::new(FractalConfig::new(size), 100, 0).unwrap();
            let multi = MultiFractalGenerator::new(MultiConfig::new(size), 100, 0).unwrap();
            let gmm = GmmGenerator::new(GmmConfig::new(size), NormalSource::Textures, 0).unwrap();
            // Images per second of this thread's CPU time, so that other processes on a busy machine do not
            // distort the figure (wall-clock time when the kernel does not report it).
            let time = |f: &dyn Fn(u64)| {
                f(0); // warm up allocations
                let (t, cpu) = (std::time::Instant::now(), thread_cpu_seconds());
                for i in 1..=n {
                    f(i);
                }
                let secs = match (cpu, thread_cpu_seconds()) {
                    (Some(a), Some(b)) => b - a,
                    _ => t.elapsed().as_secs_f64(),
                };
                n as f64 / secs
            };
            let fr = time(&|i| drop(fractal.sample(i)));
            let mu = time(&|i| drop(multi.sample(i)));
            let gm = time(&|i| drop(gmm.sample(i)));
            println!(
                "{size:>4} px (n_iter {:>6}): fractal {fr:>7.0} img/s/core, multi-fractal {mu:>7.0}, gmm (textures) {gm:>7.0}",
                fractal.config().n_iter
            );
        }
    });
}

/// CPU time of the calling thread (Linux: first field of `/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}
