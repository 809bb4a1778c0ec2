//! Backbone forward parity, CPU vs a CUDA device: the same seeded network and input on both, the largest difference
//! per stage (c1..c4) and the forward time on each. `scripts/gpu_check.sh` runs it; docs/cuda.md explains the check.
//!
//! ```sh
//! cargo build --release -p kestrel-vision --features cuda --example cuda_parity
//! target/release/examples/cuda_parity [cuda:0]
//! ```
//!
//! Two networks per architecture: the BatchNorm-folded inference network (on the CPU it runs kestrel's fused im2col
//! convolution, on CUDA candle's convolution: two independent implementations) and the unfolded training network
//! (candle ops on both). A stage fails when `max |cuda − cpu| / max(1, max |cpu|)` exceeds 1e-3: both sides compute
//! in f32, so anything near that is a bug, not rounding.
//!
//! Exit status: 0 when every stage agrees, and also when there is nothing to compare (a build without the `cuda`
//! feature, or no device opens: it prints `skipped: <reason>`), 1 when a stage differs.

use std::time::Instant;

use candle_core::{Device, Tensor};
use kestrel_vision::backbone::{self, Arch, ResNet};
use kestrel_vision::device::parse_device;
use kestrel_vision::testing::{max_abs_diff, max_rel_diff};
use rand::{Rng, SeedableRng};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOLERANCE: f64 = 1e-3;
const BATCH: usize = 2;
const SIZE: usize = 224;
const TIMED_RUNS: usize = 3;

fn main() -> Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "cuda:0".into());
    let gpu = match parse_device(&spec) {
        Ok(d) if !d.is_cpu() => d,
        Ok(_) => return Err(format!("give a CUDA device (cuda:N), not `{spec}`").into()),
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let values: Vec<f32> = (0..BATCH * 3 * SIZE * SIZE)
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    let x_cpu = Tensor::from_vec(values, (BATCH, 3, SIZE, SIZE), &Device::Cpu)?;
    let x_gpu = x_cpu.to_device(&gpu)?;
    println!("{BATCH}×3×{SIZE}×{SIZE}, {spec}; max |Δ| relative to max(1, max |cpu|), tolerance {TOLERANCE:e}");
    println!(
        "{:<16} {:<8} {:>5} {:>12} {:>10} {:>10} {:>10}",
        "arch", "network", "stage", "max |Δ|", "rel", "cpu ms", "cuda ms"
    );
    let mut failed = 0;
    for arch in [Arch::Resnet18, Arch::WideResnet50_2] {
        let config = arch.config();
        let weights = backbone::random_weights(&config, 7, &Device::Cpu)?;
        let on = |dev: &Device| -> Result<ResNet> {
            let w = weights
                .iter()
                .map(|(k, t)| Ok((k.clone(), t.to_device(dev)?)))
                .collect::<candle_core::Result<_>>()?;
            let origin = std::path::Path::new("random weights (seed 7)");
            Ok(backbone::resnet_from_weights(
                &config,
                arch.name(),
                w,
                origin,
                dev,
            )?)
        };
        let (unfolded_cpu, unfolded_gpu) = (on(&Device::Cpu)?, on(&gpu)?);
        let pairs = [
            (
                "folded",
                unfolded_cpu.fold_batch_norm()?,
                unfolded_gpu.fold_batch_norm()?,
            ),
            ("unfolded", unfolded_cpu, unfolded_gpu),
        ];
        for (label, net_cpu, net_gpu) in pairs {
            let (cpu_out, cpu_ms) = forward(&net_cpu, &x_cpu, &Device::Cpu)?;
            let (gpu_out, gpu_ms) = forward(&net_gpu, &x_gpu, &gpu)?;
            for (i, (c, g)) in cpu_out.iter().zip(&gpu_out).enumerate() {
                let g = g.to_device(&Device::Cpu)?;
                let (abs, rel) = (max_abs_diff(&g, c)?, max_rel_diff(&g, c)?);
                let ok = rel <= TOLERANCE;
                failed += usize::from(!ok);
                let times = if i == 0 {
                    format!("{cpu_ms:>10.1} {gpu_ms:>10.1}")
                } else {
                    String::new()
                };
                println!(
                    "{:<16} {:<8} {:>5} {abs:>12.3e} {rel:>10.2e} {times}{}",
                    arch.name(),
                    label,
                    format!("c{}", i + 1),
                    if ok { "" } else { "  FAIL" }
                );
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} stage(s) differ between the CPU and {spec} by more than {TOLERANCE:e}"
        )
        .into());
    }
    println!("parity ok");
    Ok(())
}

/// Stages c1..c4 of `net` on `x`, and the median forward time in ms over [`TIMED_RUNS`] runs after one warm-up (the
/// first CUDA run also loads the kernels).
fn forward(net: &ResNet, x: &Tensor, dev: &Device) -> Result<(Vec<Tensor>, f64)> {
    let mut out = net.stages(x, 4, false)?;
    dev.synchronize()?;
    let mut ms = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let t = Instant::now();
        out = net.stages(x, 4, false)?;
        dev.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((out, ms[TIMED_RUNS / 2]))
}
