//! One pretraining step (forward + cross-entropy + backward + SGD-momentum update) timed the way
//! `bench/torch_train_bench.py` times PyTorch, so `bench/train_compare.sh` can print ratios.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo bench -p kestrel-host --bench train_step -- --repeat 5 --json /tmp/rust-train.json
//! ```
//!
//! Cases: `train_narrow_b32_64` (the `--preset tiny` network: narrow ResNet-18, 100 classes, 32×3×64×64) and
//! `train_r18_b32_64` (ResNet-18 widths). Random input and labels; the network is kestrel's `PretrainNet` with
//! BatchNorm in train mode and the custom 3×3/s2 stem max-pool with its own backward; the optimiser is the engine's.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kestrel_host::pretrain::optim::{Optimizer, OptimizerConfig};
use kestrel_host::pretrain::task::PretrainNet;
use kestrel_vision::backbone::Arch;
use serde_json::json;

fn main() {
    // As `kestrel` does at start (kestrel_vision::process); KESTREL_UNTUNED=1 measures without it.
    kestrel_vision::process::tune_at_start();
    let mut repeat = 5usize;
    let mut warmup = 2usize;
    let mut json_out: Option<String> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--repeat" => repeat = it.next().and_then(|v| v.parse().ok()).expect("--repeat N"),
            "--warmup" => warmup = it.next().and_then(|v| v.parse().ok()).expect("--warmup N"),
            "--json" => json_out = it.next(),
            "--bench" => {}
            other => {
                eprintln!("train_step bench: unknown argument {other}; use [--repeat N] [--warmup N] [--json FILE]");
                std::process::exit(2);
            }
        }
    }
    let dev = Device::Cpu;
    let mut results = serde_json::Map::new();
    for (key, arch) in [
        ("train_narrow_b32_64", Arch::Resnet18Narrow),
        ("train_r18_b32_64", Arch::Resnet18),
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let net = PretrainNet::new(&arch.config(), 100, 1, &[], vb).expect("network");
        let mut opt = Optimizer::new(&vm, OptimizerConfig::sgd());
        let x = Tensor::randn(0f32, 1.0, (32, 3, 64, 64), &dev).expect("input");
        let labels: Vec<u32> = (0..32).map(|i| (i * 37 % 100) as u32).collect();
        let y = Tensor::new(labels.as_slice(), &dev).expect("labels");
        let mut times = Vec::new();
        for i in 0..warmup + repeat {
            let t0 = Instant::now();
            let logits = net.forward(&x, true).expect("forward");
            let loss = candle_nn::loss::cross_entropy(&logits, &y).expect("loss");
            opt.backward_step(&loss, 0.1, None).expect("step");
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if i >= warmup {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        eprintln!("{key}: {median:.1} ms");
        results.insert(
            key.into(),
            json!({"median_ms": median, "min_ms": times[0], "max_ms": times[times.len() - 1], "repeat": repeat}),
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = json!({
        "meta": {"threads": candle_core::utils::get_num_threads(), "loadavg_start": load.split_whitespace().next()},
        "results": results,
    });
    let text = serde_json::to_string_pretty(&out).expect("json");
    println!("{text}");
    if let Some(p) = json_out {
        std::fs::write(&p, &text).expect("write --json file");
    }
}
