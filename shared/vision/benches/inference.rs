//! Inference hot paths, timed the way `bench/torch_bench.py` times PyTorch, so `bench/compare.sh` can print ratios.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo bench -p kestrel-vision --bench inference -- --json /tmp/rust.json
//! RAYON_NUM_THREADS=2 cargo bench -p kestrel-vision --bench inference -- --only r18 --profile
//! ```
//!
//! Cases (keys match torch_bench.py where the workload is the same):
//! - `r18_l123_b{1,8}`, `wrn50_l123_b{1,8}`: ResNet-18 / Wide-ResNet-50-2 (random torchvision-style weights, BN
//!   folded) stem → layer3 on B×3×256×256, through the fused CPU convolution (the default path);
//!   `*_stock`: the same folded network with candle's `conv2d` and elementwise ops (`ConvImpl::Candle`).
//! - `knn_patchcore_nearest`: `PatchCore::nearest`, 4096 queries × 384 against a 50,000-entry bank
//!   (torch: `knn_torch_addmm_chunk8192`).
//! - `coreset_greedy`: `greedy_k_center` on 100,000 × 384 selecting `--coreset-select` rows (default 10,000 = 10 %;
//!   torch: `coreset_torch`); `per_step_ms` and `extrapolated_10pct_ms` are recorded.
//!
//! `--only` takes key prefixes, or an exact key ending in `$` (`--only 'r18_l123_b1$'`). `--profile` adds per-stage times and every distinct convolution of both backbones timed alone (fused vs candle),
//! to stderr.
//!
//! Each case reports the median of `--repeat` runs after `--warmup` runs, and `other_cpu_frac`: the share of the
//! machine's CPU that other processes used meanwhile (above 0.10 the numbers are contended). JSON goes to stdout
//! (and `--json FILE`), a readable table to stderr. Timing is a plain median-of-N: no statistics crate needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use kestrel_vision::backbone::{self, Arch, BlockKind, ConvImpl, ResNet, ResNetConfig};
use kestrel_vision::conv::{self, ConvSpec, Epilogue, PoolSpec};
use kestrel_vision::detector::patchcore::{greedy_k_center, PatchCore, PatchCoreConfig};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

struct Args {
    json: Option<PathBuf>,
    only: Vec<String>,
    repeat: usize,
    warmup: usize,
    coreset_select: usize,
    wait_idle_s: f64,
    profile: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        json: None,
        only: Vec::new(),
        repeat: 5,
        warmup: 1,
        coreset_select: 10_000,
        wait_idle_s: 0.0,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    let usage = "inference bench: [--json FILE] [--only PREFIX]... [--repeat N] [--warmup N] \
                 [--coreset-select N] [--wait-idle SECONDS] [--profile]";
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| panic!("{name} needs a value\n{usage}"))
        };
        match arg.as_str() {
            "--json" => a.json = Some(PathBuf::from(val("--json"))),
            "--only" => a.only.push(val("--only")),
            "--repeat" => a.repeat = val("--repeat").parse().expect("--repeat N"),
            "--warmup" => a.warmup = val("--warmup").parse().expect("--warmup N"),
            "--coreset-select" => {
                a.coreset_select = val("--coreset-select").parse().expect("--coreset-select N")
            }
            "--wait-idle" => a.wait_idle_s = val("--wait-idle").parse().expect("--wait-idle S"),
            "--profile" => a.profile = true,
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                eprintln!("{usage}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}\n{usage}"),
        }
    }
    a
}

/// (machine busy jiffies, all jiffies, this process's jiffies): the same accounting as torch_bench.py.
fn cpu_snapshot() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0, 0, 0);
    }
    let total: u64 = v.iter().sum();
    let busy = total - v[3] - v[4];
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // After the command name: state, ppid, ..., utime (12th), stime (13th).
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (busy, total, own)
}

fn other_cpu_frac(a: (u64, u64, u64), b: (u64, u64, u64)) -> f64 {
    let (busy, total, own) = (b.0 - a.0, b.1 - a.1, b.2.saturating_sub(a.2));
    if total == 0 {
        0.0
    } else {
        (busy.saturating_sub(own) as f64 / total as f64).max(0.0)
    }
}

struct Bench {
    args: Args,
    results: BTreeMap<String, Value>,
}

impl Bench {
    fn wanted(&self, key: &str) -> bool {
        // A prefix, or an exact key when it ends in `$`.
        self.args.only.is_empty()
            || self.args.only.iter().any(|p| match p.strip_suffix('$') {
                Some(exact) => key == exact,
                None => key.starts_with(p.as_str()),
            })
    }

    fn wait_idle(&self) {
        if self.args.wait_idle_s <= 0.0 {
            return;
        }
        let t0 = Instant::now();
        loop {
            let a = cpu_snapshot();
            std::thread::sleep(std::time::Duration::from_secs(1));
            if other_cpu_frac(a, cpu_snapshot()) < 0.10
                || t0.elapsed().as_secs_f64() > self.args.wait_idle_s
            {
                return;
            }
        }
    }

    /// Time `f` (warm-up runs, then timed runs) and record the median under `key` with `info`.
    fn time<T>(
        &mut self,
        key: &str,
        repeat: usize,
        warmup: usize,
        mut f: impl FnMut() -> T,
        info: Value,
    ) -> Option<T> {
        if !self.wanted(key) {
            return None;
        }
        self.wait_idle();
        let mut out = None;
        for _ in 0..warmup {
            out = Some(f());
        }
        let snap = cpu_snapshot();
        let mut runs = Vec::with_capacity(repeat);
        for _ in 0..repeat.max(1) {
            let t = Instant::now();
            out = Some(f());
            runs.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let other = other_cpu_frac(snap, cpu_snapshot());
        let med = median(&runs);
        let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = runs.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "{key:34} median {med:10.2} ms  (min {min:.2}, max {max:.2}, n={}) other-cpu {:.0}%{}",
            runs.len(),
            other * 100.0,
            if other > 0.10 { "  CONTENDED" } else { "" }
        );
        let mut v = json!({
            "median_ms": round3(med),
            "min_ms": round3(min),
            "max_ms": round3(max),
            "repeat": runs.len(),
            "warmup": warmup,
            "runs_ms": runs.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "other_cpu_frac": round3(other),
        });
        if let (Value::Object(m), Value::Object(extra)) = (&mut v, info) {
            m.extend(extra);
        }
        self.results.insert(key.to_string(), v);
        out
    }

    fn note(&mut self, key: &str, field: &str, value: Value) {
        if let Some(Value::Object(m)) = self.results.get_mut(key) {
            m.insert(field.to_string(), value);
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn max_rel_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    let mut worst = 0f32;
    for (a, b) in a.iter().zip(b) {
        let d: f32 = (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
            .expect("diff");
        let m: f32 = b
            .abs()
            .and_then(|t| t.flatten_all()?.max(0)?.to_scalar())
            .expect("max");
        worst = worst.max(d / m.max(1e-6));
    }
    worst
}

fn folded_net(arch: Arch) -> ResNet {
    let cfg = arch.config();
    let dev = Device::Cpu;
    let w = backbone::random_weights(&cfg, 0, &dev).expect("random weights");
    backbone::resnet_from_weights(&cfg, arch.name(), w, Path::new("random"), &dev)
        .expect("build")
        .fold_batch_norm()
        .expect("fold")
}

fn bench_backbones(b: &mut Bench) {
    for (name, arch) in [("r18", Arch::Resnet18), ("wrn50", Arch::WideResnet50_2)] {
        let keys: Vec<String> = [1, 8]
            .iter()
            .flat_map(|n| {
                [
                    format!("{name}_l123_b{n}"),
                    format!("{name}_l123_b{n}_stock"),
                ]
            })
            .collect();
        if !keys.iter().any(|k| b.wanted(k)) {
            continue;
        }
        let fast = folded_net(arch);
        let stock = fast.clone().with_conv_impl(ConvImpl::Candle);
        for n in [1usize, 8] {
            let x = Tensor::randn(0f32, 1.0, (n, 3, 256, 256), &Device::Cpu).expect("input");
            let info = json!({"input": [n, 3, 256, 256], "outputs": "layer1, layer2, layer3", "bn": "folded"});
            let (rep, warm) = (b.args.repeat, b.args.warmup);
            let key = format!("{name}_l123_b{n}");
            let mut info_fast = info.clone();
            info_fast["conv"] = json!("kestrel fused (conv.rs)");
            let got = b.time(
                &key,
                rep,
                warm,
                || fast.stages(&x, 3, false).expect("forward"),
                info_fast,
            );
            let skey = format!("{key}_stock");
            let mut info_stock = info;
            info_stock["conv"] = json!("candle conv2d + elementwise ops");
            let want = b.time(
                &skey,
                rep,
                warm,
                || stock.stages(&x, 3, false).expect("forward"),
                info_stock,
            );
            if let (Some(g), Some(w)) = (got, want) {
                let d = max_rel_diff(&g, &w);
                b.note(&key, "max_rel_diff_vs_stock", json!(d));
            }
            if b.args.profile && b.wanted(&key) {
                profile_stages(name, &fast, &stock, &x);
            }
        }
        if b.args.profile && keys.iter().any(|k| b.wanted(k)) {
            profile_convs(name, &arch.config());
        }
    }
}

fn time_ms(repeat: usize, mut f: impl FnMut()) -> f64 {
    f();
    let runs: Vec<f64> = (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&runs)
}

/// CPU time of all this process's threads in ns (`/proc/self/task/*/schedstat`, ns resolution): unlike wall time it
/// barely moves when other processes share the cores, so it ranks kernel variants on a busy machine.
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| {
        let s = std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok()?;
        s.split_whitespace().next()?.parse::<u64>().ok()
    })
    .sum()
}

/// Median wall ms and mean CPU ms per call.
fn time_wall_cpu(repeat: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let c0 = cpu_ns();
    let wall = time_ms(repeat, &mut f);
    let cpu = (cpu_ns() - c0) as f64 / 1e6 / (repeat + 1) as f64;
    (wall, cpu)
}

/// Per-stage time: stages(x, s) minus stages(x, s − 1).
fn profile_stages(name: &str, fast: &ResNet, stock: &ResNet, x: &Tensor) {
    let n = x.dims()[0];
    eprintln!(
        "\n{name} b{n}: cumulative time to the end of each stage (ms) and the stage's own share"
    );
    eprintln!(
        "{:8} {:>10} {:>10} {:>10} {:>10}",
        "stage", "fused", "(own)", "candle", "(own)"
    );
    let (mut pf, mut ps) = (0.0, 0.0);
    for s in 1..=3 {
        let tf = time_ms(3, || {
            fast.stages(x, s, false).expect("forward");
        });
        let ts = time_ms(3, || {
            stock.stages(x, s, false).expect("forward");
        });
        eprintln!(
            "{:8} {tf:10.2} {:10.2} {ts:10.2} {:10.2}",
            format!("layer{s}"),
            tf - pf,
            ts - ps
        );
        (pf, ps) = (tf, ts);
    }
}

/// Every distinct convolution of `cfg` at 256×256 input, timed alone at batch 1 and 8 (fused vs candle).
fn profile_convs(name: &str, cfg: &ResNetConfig) {
    // (cin, cout, k, stride, pad, input hw, count in the network)
    let mut convs: Vec<(usize, usize, usize, usize, usize, usize, usize)> = Vec::new();
    let mut add = |c: (usize, usize, usize, usize, usize, usize)| match convs
        .iter_mut()
        .find(|e| (e.0, e.1, e.2, e.3, e.4, e.5) == c)
    {
        Some(e) => e.6 += 1,
        None => convs.push((c.0, c.1, c.2, c.3, c.4, c.5, 1)),
    };
    add((3, cfg.stem_width, 7, 2, 3, 256));
    let exp = match cfg.block {
        BlockKind::Basic => 1,
        BlockKind::Bottleneck => 4,
    };
    let (mut cin, mut hw) = (cfg.stem_width, 64);
    for s in 0..3 {
        let planes = cfg.planes[s];
        let cout = planes * exp;
        for blk in 0..cfg.layers[s] {
            let stride = if s > 0 && blk == 0 { 2 } else { 1 };
            match cfg.block {
                BlockKind::Basic => {
                    add((cin, planes, 3, stride, 1, hw));
                    add((planes, planes, 3, 1, 1, hw / stride));
                }
                BlockKind::Bottleneck => {
                    let width = planes * cfg.width_per_group / 64;
                    add((cin, width, 1, 1, 0, hw));
                    add((width, width, 3, stride, 1, hw));
                    add((width, cout, 1, 1, 0, hw / stride));
                }
            }
            if stride != 1 || cin != cout {
                add((cin, cout, 1, stride, 0, hw));
            }
            cin = cout;
            hw /= stride;
        }
    }
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), &Device::Cpu).expect("a");
    let (t, _) = time_wall_cpu(5, || {
        a.matmul(&a).expect("matmul");
    });
    eprintln!(
        "\nGEMM ceiling: candle matmul 1024³ {t:.2} ms = {:.1} GFLOP/s",
        2.0 * 1024f64.powi(3) / t / 1e6
    );
    eprintln!("\n{name}: each distinct convolution alone: median wall ms per call, mean CPU ms per call (all threads), GFLOP/s (wall)");
    eprintln!(
        "{:>5} {:>5} {:>2} {:>2} {:>4} {:>3} | {:>8} {:>8} {:>6} {:>8} {:>8} | {:>8} {:>8} {:>6} {:>8} {:>8}",
        "cin", "cout", "k", "s", "hw", "×", "b1 fused", "cpu", "GF/s", "candle", "cpu", "b8 fused", "cpu", "GF/s", "candle", "cpu"
    );
    let dev = Device::Cpu;
    let mut tot = [0f64; 8];
    for &(cin, cout, k, s, p, hw, count) in &convs {
        let w = Tensor::randn(0f32, 0.05, (cout, cin, k, k), &dev).expect("w");
        let bias = Tensor::randn(0f32, 0.05, cout, &dev).expect("b");
        let spec = ConvSpec {
            stride: s,
            padding: p,
        };
        let ho = (hw + 2 * p - k) / s + 1;
        let mut row = Vec::new();
        for n in [1usize, 8] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, hw, hw), &dev).expect("x");
            let (tf, cf) = time_wall_cpu(5, || {
                conv::conv2d_fused(&x, &w, Some(&bias), spec, Epilogue::Relu).expect("conv");
            });
            let (ts, cs) = time_wall_cpu(3, || {
                conv::conv2d_candle(&x, &w, Some(&bias), spec, Epilogue::Relu).expect("conv");
            });
            let flops = 2.0 * (n * cout * ho * ho * cin * k * k) as f64;
            row.extend([tf, cf, flops / tf / 1e6, ts, cs]);
        }
        for (t, i) in tot.iter_mut().zip([0, 1, 3, 4, 5, 6, 8, 9]) {
            *t += row[i] * count as f64;
        }
        eprintln!(
            "{cin:5} {cout:5} {k:2} {s:2} {hw:4} {count:3} | {:8.2} {:8.2} {:6.1} {:8.2} {:8.2} | {:8.2} {:8.2} {:6.1} {:8.2} {:8.2}",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]
        );
    }
    for n in [1usize, 8] {
        let x = Tensor::randn(0f32, 1.0, (n, 3, 256, 256), &dev).expect("x");
        let w = Tensor::randn(0f32, 0.05, (cfg.stem_width, 3, 7, 7), &dev).expect("w");
        let bias = Tensor::randn(0f32, 0.05, cfg.stem_width, &dev).expect("b");
        let spec = ConvSpec {
            stride: 2,
            padding: 3,
        };
        let (fused, fc) = time_wall_cpu(5, || {
            conv::conv2d_relu_max_pool(&x, &w, Some(&bias), spec, PoolSpec::RESNET_STEM)
                .expect("stem");
        });
        let (apart, ac) = time_wall_cpu(5, || {
            let y = conv::conv2d_fused(&x, &w, Some(&bias), spec, Epilogue::Relu).expect("conv");
            conv::max_pool2d(&y, PoolSpec::RESNET_STEM).expect("pool");
        });
        eprintln!(
            "stem conv+ReLU+pool b{n}: one fused op {fused:.2} ms (cpu {fc:.2}), fused conv then pool {apart:.2} ms (cpu {ac:.2})"
        );
    }
    eprintln!(
        "sum over the network (× count), wall/cpu ms: b1 fused {:.1}/{:.1}, candle {:.1}/{:.1}; b8 fused {:.1}/{:.1}, candle {:.1}/{:.1}",
        tot[0], tot[1], tot[2], tot[3], tot[4], tot[5], tot[6], tot[7]
    );
}

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rows * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect()
}

fn bench_knn(b: &mut Bench) {
    let key = "knn_patchcore_nearest";
    if !b.wanted(key) {
        return;
    }
    let (m, n, d) = (4096, 50_000, 384);
    let dev = Device::Cpu;
    let q = Tensor::from_vec(random_matrix(m, d, 4), (m, d), &dev).expect("q");
    let bank = Tensor::from_vec(random_matrix(n, d, 5), (n, d), &dev).expect("bank");
    let pc = PatchCore::new(PatchCoreConfig::default(), (64, 64), 1, bank).expect("patchcore");
    let (rep, warm) = (b.args.repeat, b.args.warmup);
    b.time(
        key,
        rep,
        warm,
        || pc.nearest(&q).expect("nearest"),
        json!({"queries": m, "bank": n, "dim": d, "torch_key": "knn_torch_addmm_chunk8192"}),
    );
}

/// Detector scoring after the backbone, as `torch_bench.py`'s `padim_score_*` / `patchcore_score_*`: random
/// post-ReLU stage features in, blurred 256×256 maps and image scores out (PaDiM: R18 sizes, d = 100, 64×64 grid;
/// PatchCore: a 20,480-entry bank, 32×32 grid, k = 9 re-weighting).
fn bench_detector_scoring(b: &mut Bench) {
    use kestrel_vision::detector::padim::{Padim, PadimConfig};
    use kestrel_vision::postprocess::{heatmap, Upsample, DEFAULT_SIGMA};
    let dev = Device::Cpu;
    let relu = |shape: (usize, usize, usize, usize), seed: u64| {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = random_matrix(1, n, seed)
            .into_iter()
            .map(|x| x.max(0.0))
            .collect();
        Tensor::from_vec(v, shape, &dev).expect("features")
    };
    let (rep, warm) = (b.args.repeat, b.args.warmup);
    let (d, p) = (100usize, 64 * 64);
    let mean = Tensor::from_vec(random_matrix(p, d, 11), (p, d), &dev).expect("mean");
    let whiten = Tensor::from_vec(random_matrix(p, d * d, 12), (p, d, d), &dev).expect("whiten");
    let idx: Vec<u32> = (0..d as u32).map(|i| (i * 4) % 448).collect();
    let padim = Padim::from_tensors(
        PadimConfig {
            n_features: d,
            ..PadimConfig::default_for(448)
        },
        (64, 64),
        1,
        &|n: &str| match n {
            "mean" => Ok(mean.clone()),
            "whiten" => Ok(whiten.clone()),
            _ => Tensor::new(idx.as_slice(), &Device::Cpu),
        },
    )
    .expect("padim");
    for batch in [1usize, 8] {
        let key = format!("padim_score_b{batch}");
        if !b.wanted(&key) {
            continue;
        }
        let stages = vec![
            relu((batch, 64, 64, 64), 13),
            relu((batch, 128, 32, 32), 14),
            relu((batch, 256, 16, 16), 15),
        ];
        b.time(
            &key,
            rep,
            warm,
            || {
                for m in padim.score(&stages).expect("score") {
                    std::hint::black_box(
                        heatmap(&m, Upsample::Bilinear, 256, DEFAULT_SIGMA).expect("heatmap"),
                    );
                }
            },
            json!({"d": d, "positions": p, "torch_key": key}),
        );
    }
    for (name, c2, c3) in [("wrn50", 512usize, 1024usize), ("r18", 128, 256)] {
        let key = format!("patchcore_score_{name}_b1");
        if !b.wanted(&key) {
            continue;
        }
        let dim = c2 + c3;
        let bank: Vec<f32> = random_matrix(20_480, dim, 16)
            .into_iter()
            .map(|x| x.max(0.0))
            .collect();
        let bank = Tensor::from_vec(bank, (20_480, dim), &dev).expect("bank");
        let pc = PatchCore::new(PatchCoreConfig::default(), (32, 32), 1, bank).expect("patchcore");
        let stages = vec![
            relu((1, 1, 64, 64), 17),
            relu((1, c2, 32, 32), 18),
            relu((1, c3, 16, 16), 19),
        ];
        b.time(
            &key,
            rep,
            warm,
            || {
                for (m, s) in pc.score(&stages).expect("score") {
                    std::hint::black_box((
                        heatmap(&m, Upsample::Nearest, 256, DEFAULT_SIGMA).expect("heatmap"),
                        s,
                    ));
                }
            },
            json!({"bank": 20_480, "dim": dim, "torch_key": key}),
        );
    }
}

fn bench_coreset(b: &mut Bench) {
    let key = "coreset_greedy";
    if !b.wanted(key) {
        return;
    }
    let (n, d) = (100_000, 384);
    let select = b.args.coreset_select.min(n);
    let x = random_matrix(n, d, 3);
    let full = n / 10;
    b.time(
        key,
        1,
        0,
        || greedy_k_center(&x, d, 12_345, select, &|_, _| {}),
        json!({"n": n, "dim": d, "select": select, "full_select": full, "torch_key": "coreset_torch"}),
    );
    let med = b.results[key]["median_ms"].as_f64().unwrap_or(0.0);
    let per_step = med / select as f64;
    b.note(
        key,
        "per_step_ms",
        json!(round3(per_step * 1000.0) / 1000.0),
    );
    b.note(
        key,
        "extrapolated_10pct_ms",
        json!(round3(per_step * full as f64)),
    );
    if select != full {
        eprintln!(
            "{:34} {:.1} ms for {select} steps → {:.0} ms extrapolated to the 10 % coreset ({full} steps)",
            "  (coreset extrapolation)",
            med,
            per_step * full as f64
        );
    }
}

fn main() {
    let args = parse_args();
    let threads = rayon::current_num_threads();
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("kestrel-vision inference bench: {threads} rayon threads, load {load0}");
    let mut b = Bench {
        args,
        results: BTreeMap::new(),
    };
    bench_backbones(&mut b);
    bench_knn(&mut b);
    bench_coreset(&mut b);
    bench_detector_scoring(&mut b);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let doc = json!({
        "meta": {
            "threads": threads,
            "machine": {"cpu": cpu, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
            "candle": "0.11",
            "dtype": "float32",
            "loadavg_start": load0.trim(),
            "loadavg_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "statistic": "median of repeat timed runs after warmup runs, wall ms",
        },
        "results": b.results,
    });
    let text = serde_json::to_string_pretty(&doc).expect("json");
    println!("{text}");
    if let Some(p) = &b.args.json {
        std::fs::write(p, format!("{text}\n")).expect("write --json");
        eprintln!("wrote {}", p.display());
    }
}
