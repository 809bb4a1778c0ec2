//! The training loop shared by every pretraining task.
//!
//! ```text
//!  loader thread ──(bounded channel, `prefetch` batches)──► step loop: forward (BN in train mode) → loss
//!  (renders batch s+1.. on the rayon pool                    → backward → clip → SGD/AdamW at the scheduled lr
//!   while step s trains)                                    → CSV row / progress bar → checkpoint every N steps
//! ```
//!
//! A checkpoint is a directory `step-NNNNNNN/` under `<output>.ckpt/` holding `model.safetensors` (backbone, head
//! and BatchNorm running statistics), `optimizer.safetensors` (momentum / Adam moments) and `state.json` (step,
//! learning rate, updates, seed and the whole resolved configuration). It is written to a temporary directory and
//! renamed into place, so an interrupted save never leaves a half checkpoint that `--resume` would pick up.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kestrel_vision::backbone;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::{PretrainConfig, TaskKind};
use super::ds2::{self, Ds2Net, Ds2Settings};
use super::optim::{Optimizer, Schedule};
use super::task::{self, Batch, LossSettings, PretrainNet, Sampler, Target, HEAD_PREFIX};
use super::PretrainError;

/// What a checkpoint's `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Optimiser updates applied.
    pub updates: u64,
    /// Seed of initialisation and data.
    pub seed: u64,
    /// Mean loss over the last logging window.
    pub loss: f64,
    /// The run's configuration.
    pub config: PretrainConfig,
}

impl CheckpointState {
    fn now(cfg: &PretrainConfig, step: u64, lr: f64, updates: u64, loss: f64) -> Self {
        Self {
            step,
            lr,
            updates,
            seed: cfg.seed,
            loss,
            config: cfg.clone(),
        }
    }
}

/// How a run is driven (as opposed to what it trains, which is [`PretrainConfig`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output weights file (`.safetensors`); checkpoints go to `<output>.ckpt/`, the log to `<output>.csv`.
    pub output: PathBuf,
    /// Resume from this checkpoint directory.
    pub resume: Option<PathBuf>,
    /// Compute device.
    pub device: Device,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Weights written.
    pub output: PathBuf,
    /// CSV log.
    pub log: PathBuf,
    /// Steps completed (in total, across resumes).
    pub steps: u64,
    /// Step the run started from (0 unless resumed).
    pub start_step: u64,
    /// Mean loss over the first logging window of this run.
    pub first_loss: f64,
    /// Mean loss over the last logging window.
    pub last_loss: f64,
    /// Wall time of this run, seconds.
    pub seconds: f64,
    /// Training throughput, images per second.
    pub images_per_second: f64,
}

/// Checkpoint directory of an output file.
pub fn checkpoint_root(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// CSV log of an output file.
pub fn log_path(output: &Path) -> PathBuf {
    output.with_extension("csv")
}

/// The newest complete checkpoint under `root`.
pub fn latest_checkpoint(root: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").is_file()
        })
        .collect();
    found.sort();
    found.pop()
}

/// Read a checkpoint's state.
pub fn read_state(dir: &Path) -> Result<CheckpointState, PretrainError> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).map_err(|source| PretrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| PretrainError::Checkpoint {
        path,
        detail: e.to_string(),
    })
}

/// Deterministic initial weights: torchvision's scheme for the backbone (the same generator `kestrel fit` uses for
/// random backbones), PyTorch's `nn.Linear` uniform bounds for head layers, 1 and 0 for head BatchNorms. (DS2's
/// momentum copies are then overwritten with the online networks by the trainer.)
fn initialise(vm: &VarMap, cfg: &PretrainConfig) -> candle_core::Result<()> {
    let weights = backbone::random_weights(&cfg.arch.config(), cfg.seed, &Device::Cpu)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4845_4144); // "HEAD"
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    for name in names {
        let var = &data[&name];
        let value = if let Some(w) = weights.get(&name) {
            w.to_device(var.device())?
        } else if name.starts_with(HEAD_PREFIX) {
            let dims = var.dims().to_vec();
            let fill = |v: f32| Tensor::full(v, dims.clone(), var.device());
            let batch_norm = name.contains(".bn.");
            if name.ends_with("running_var") || (batch_norm && name.ends_with("weight")) {
                fill(1.0)?
            } else if name.ends_with("running_mean") || batch_norm {
                fill(0.0)?
            } else {
                // PyTorch's nn.Linear / nn.Conv2d defaults: U(±1/√fan_in) for the weight and for its bias, with
                // fan_in from the weight (inputs × kernel area).
                let fan_in = |d: &[usize]| d[1..].iter().product::<usize>().max(1);
                let fan_in = if dims.len() >= 2 {
                    fan_in(&dims)
                } else {
                    let weight = format!("{}weight", name.trim_end_matches("bias"));
                    data.get(&weight)
                        .map(|w| fan_in(w.dims()))
                        .unwrap_or(dims[0])
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                let v: Vec<f32> = (0..var.elem_count())
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect();
                Tensor::from_vec(v, dims, var.device())?
            }
        } else {
            candle_core::bail!("no initialiser for {name}");
        };
        var.set(&value)?;
    }
    drop(data);
    Ok(())
}

/// Overwrite every backbone variable (weights and BatchNorm statistics) with the tensors of `path`; the head keeps
/// its fresh initialisation. The file must hold exactly this architecture: a missing tensor or a wrong shape is
/// refused rather than silently left random, and a kestrel file of another architecture is named as such.
fn load_init_weights(vm: &VarMap, cfg: &PretrainConfig, path: &Path) -> Result<(), PretrainError> {
    let fail = |detail: String| PretrainError::InitWeights {
        path: path.to_path_buf(),
        detail,
    };
    // One read serves both the metadata check and the tensors.
    let bytes = fs::read(path).map_err(io_err(path))?;
    if let Some(arch) = metadata_of(&bytes, path)?.get("kestrel.arch") {
        if arch != cfg.arch.name() {
            return Err(fail(format!(
                "it holds a {arch} backbone, this run trains {}; pass --arch {arch} or other weights",
                cfg.arch.name()
            )));
        }
    }
    let file = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| fail(e.to_string()))?;
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data
        .keys()
        .filter(|k| !k.starts_with(HEAD_PREFIX))
        .collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = file.get(name.as_str()).ok_or_else(|| {
            fail(format!(
                "no tensor `{name}`: not a {} backbone in torchvision naming",
                cfg.arch.name()
            ))
        })?;
        if t.dims() != var.dims() {
            return Err(fail(format!(
                "`{name}` has shape {:?}, {} needs {:?}",
                t.dims(),
                cfg.arch.name(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PretrainError + '_ {
    move |source| PretrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn var_tensors(vm: &VarMap, keep: impl Fn(&str) -> bool) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("VarMap lock poisoned")
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

fn save_checkpoint(
    root: &Path,
    vm: &VarMap,
    opt: &Optimizer,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf, PretrainError> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    let dir = root.join(format!("step-{:07}", state.step));
    let tmp = root.join(format!(".tmp-step-{:07}", state.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let ckpt_err = |path: PathBuf| {
        move |e: candle_core::Error| PretrainError::Checkpoint {
            path,
            detail: e.to_string(),
        }
    };
    let model = tmp.join("model.safetensors");
    candle_core::safetensors::save(&var_tensors(vm, |_| true), &model)
        .map_err(ckpt_err(model.clone()))?;
    let optim = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&opt.state(), &optim).map_err(ckpt_err(optim.clone()))?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    let sp = tmp.join("state.json");
    fs::write(&sp, json).map_err(io_err(&sp))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    // Retention: newest `keep` complete checkpoints.
    let mut all: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io_err(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    all.sort();
    while all.len() > keep {
        let old = all.remove(0);
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(dir)
}

/// Metadata written into the exported weights: enough to know what a file is without its log.
fn export_metadata(cfg: &PretrainConfig, step: u64, loss: f64) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("kestrel.kind".into(), "backbone".into());
    m.insert("kestrel.arch".into(), cfg.arch.name().into());
    m.insert("kestrel.task".into(), cfg.task.name().into());
    m.insert(
        "kestrel.preset".into(),
        format!("{:?}", cfg.preset).to_lowercase(),
    );
    m.insert("kestrel.step".into(), step.to_string());
    m.insert("kestrel.steps".into(), cfg.steps.to_string());
    m.insert("kestrel.image_size".into(), cfg.image_size.to_string());
    m.insert("kestrel.seed".into(), cfg.seed.to_string());
    m.insert("kestrel.final_loss".into(), format!("{loss:.6}"));
    m.insert("kestrel.normalisation".into(), "imagenet".into());
    m.insert("kestrel.version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert(
        "kestrel.config".into(),
        toml::to_string(cfg).unwrap_or_default(),
    );
    m
}

/// Write the backbone (torchvision names, head dropped) with metadata.
pub fn export_backbone(
    vm: &VarMap,
    cfg: &PretrainConfig,
    step: u64,
    loss: f64,
    path: &Path,
) -> Result<(), PretrainError> {
    let tensors = var_tensors(vm, |k| !k.starts_with(HEAD_PREFIX));
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    let mut bytes: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(names.len());
    for n in names {
        let t = tensors[n]
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?;
        let v = t.to_vec1::<f32>()?;
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.push((n.clone(), raw, tensors[n].dims().to_vec()));
    }
    for (n, raw, shape) in &bytes {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                .map_err(|e| PretrainError::Checkpoint {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
        views.push((n.clone(), view));
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, Some(export_metadata(cfg, step, loss)), &tmp).map_err(
        |e| PretrainError::Checkpoint {
            path: tmp.clone(),
            detail: e.to_string(),
        },
    )?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The stem convolution's filters as one RGB image (a grid of 7×7 kernels, each scaled to its own range and
/// enlarged 6×): the quickest look at whether pretraining learned edge and colour detectors or left noise.
pub fn first_layer_filters(vm: &VarMap) -> Result<image::RgbImage, PretrainError> {
    let w = var_tensors(vm, |k| k == "conv1.weight")
        .remove("conv1.weight")
        .ok_or_else(|| PretrainError::Invalid {
            key: "conv1.weight".into(),
            detail: "network has no stem convolution".into(),
        })?;
    let (n, c, kh, kw) = w.dims4()?;
    let v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (zoom, pad) = (6u32, 2u32);
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = (n as u32).div_ceil(cols);
    let cell = kw as u32 * zoom + pad;
    let mut img = image::RgbImage::from_pixel(
        cols * cell + pad,
        rows * (kh as u32 * zoom + pad) + pad,
        image::Rgb([40, 40, 40]),
    );
    for f in 0..n {
        let k = &v[f * c * kh * kw..(f + 1) * c * kh * kw];
        let (lo, hi) = k
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let span = (hi - lo).max(1e-12);
        let (x0, y0) = (
            (f as u32 % cols) * cell + pad,
            (f as u32 / cols) * (kh as u32 * zoom + pad) + pad,
        );
        for y in 0..kh * zoom as usize {
            for x in 0..kw * zoom as usize {
                let at = |ch: usize| {
                    let ch = ch.min(c - 1);
                    let val = (k[ch * kh * kw + (y / zoom as usize) * kw + x / zoom as usize] - lo)
                        / span;
                    (val * 255.0).round() as u8
                };
                img.put_pixel(
                    x0 + x as u32,
                    y0 + y as u32,
                    image::Rgb([at(0), at(1), at(2)]),
                );
            }
        }
    }
    Ok(img)
}

/// The metadata in the header of safetensors `bytes` read from `path`.
fn metadata_of(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>, PretrainError> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| PretrainError::Checkpoint {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Start the loader: a thread that renders batches `from..to` ahead of the trainer.
fn spawn_loader(
    sampler: Sampler,
    cfg: &PretrainConfig,
    from: u64,
    to: u64,
) -> Receiver<(u64, Batch)> {
    let (tx, rx) = sync_channel(cfg.prefetch);
    let (len, render) = (cfg.batch_size, cfg.gmm.render_size.min(cfg.image_size));
    let dataset_size = cfg.dataset_size;
    std::thread::Builder::new()
        .name("kestrel-loader".into())
        .spawn(move || {
            for step in from..to {
                if tx
                    .send((step, sampler.batch(step, len, dataset_size, render)))
                    .is_err()
                {
                    break; // trainer stopped
                }
            }
        })
        .expect("spawn loader thread");
    rx
}

/// Running sums of the steps since the last CSV row: what the next row averages.
struct LossWindow {
    /// Sum of the total loss.
    loss: f64,
    /// Steps summed.
    steps: u64,
    /// Sums of the task's figures, in [`task::part_names`] order.
    parts: Vec<f64>,
    /// When the window opened (images/s are measured over it).
    opened: Instant,
}

impl LossWindow {
    fn new(parts: usize) -> Self {
        Self {
            loss: 0.0,
            steps: 0,
            parts: vec![0.0; parts],
            opened: Instant::now(),
        }
    }

    fn add(&mut self, step: &StepOutcome) {
        self.loss += step.loss;
        self.steps += 1;
        for (acc, (_, v)) in self.parts.iter_mut().zip(&step.parts) {
            *acc += v;
        }
    }

    /// Mean loss over the window.
    fn mean(&self) -> f64 {
        self.loss / self.steps as f64
    }

    /// The CSV row closing the window at `step`.
    fn row(&self, step: u64, lr: f64, grad_norm: f64, batch_size: usize, elapsed_s: f64) -> String {
        let n = self.steps as f64;
        let ips = n * batch_size as f64 / self.opened.elapsed().as_secs_f64().max(1e-9);
        let parts: Vec<String> = self.parts.iter().map(|v| format!("{:.6}", v / n)).collect();
        format!(
            "{step},{:.6},{lr:.6e},{grad_norm:.4},{ips:.2},{elapsed_s:.1},{}",
            self.mean(),
            parts.join(",")
        )
    }
}

/// What one optimiser step produced.
struct StepOutcome {
    /// Total loss (finite).
    loss: f64,
    /// The task's figures of the batch.
    parts: Vec<(&'static str, f64)>,
    /// Global gradient norm before clipping.
    grad_norm: f64,
}

/// The network, its variables and optimiser, and what every step needs.
/// The networks a task trains.
#[allow(clippy::large_enum_variant)] // one per run
enum Net {
    /// Backbone + pooled head (fractal, multi-fractal, GMM, CutPaste).
    Head(PretrainNet),
    /// DS2's online and momentum networks.
    Ds2(Ds2Net),
    /// One network per task of a multi-task run (all on the same backbone variables), with its loss weight.
    Tasks(Vec<(TaskKind, f64, Net)>),
}

/// The network of `cfg`'s task on `vb`; `outputs` head outputs per task ([`Sampler::task_outputs`]).
fn build_net(
    cfg: &PretrainConfig,
    outputs: &[usize],
    vb: VarBuilder,
    head_name: &str,
) -> candle_core::Result<Net> {
    Ok(match cfg.task {
        TaskKind::MultiTask => Net::Tasks(
            cfg.multi
                .tasks
                .iter()
                .zip(&cfg.multi.weights)
                .zip(outputs)
                .map(|((&t, &w), &o)| {
                    let name = format!("head.{}", t.name().replace('-', "_"));
                    Ok((t, w, build_net(&cfg.subtask(t), &[o], vb.clone(), &name)?))
                })
                .collect::<candle_core::Result<_>>()?,
        ),
        TaskKind::Ds2 => Net::Ds2(Ds2Net::new(
            &cfg.arch.config(),
            Ds2Settings {
                inner_dim: cfg.ds2.inner_dim,
                out_dim: cfg.ds2.out_dim,
                gamma: cfg.ds2.gamma,
                radius: cfg.ds2.radius,
            },
            vb,
        )?),
        task => {
            let hidden: &[usize] = match task {
                TaskKind::Cutpaste => &cfg.cutpaste.head_hidden,
                _ => &[],
            };
            Net::Head(PretrainNet::with_head_name(
                &cfg.arch.config(),
                outputs[0],
                cfg.head_grid,
                hidden,
                vb,
                head_name,
            )?)
        }
    })
}

impl Net {
    /// Whether DS2's momentum networks are part of it.
    fn has_momentum(&self) -> bool {
        match self {
            Net::Ds2(_) => true,
            Net::Head(_) => false,
            Net::Tasks(nets) => nets.iter().any(|(_, _, n)| n.has_momentum()),
        }
    }
}

struct Trainer<'a> {
    cfg: &'a PretrainConfig,
    device: &'a Device,
    vm: VarMap,
    net: Net,
    opt: Optimizer,
    schedule: Schedule,
    settings: LossSettings,
}

impl<'a> Trainer<'a> {
    /// A freshly built network for `cfg`'s task, with `outputs` head outputs per task (variables not yet
    /// initialised).
    fn new(
        cfg: &'a PretrainConfig,
        outputs: &[usize],
        device: &'a Device,
    ) -> Result<Self, PretrainError> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let net = build_net(cfg, outputs, vb, "head")?;
        let opt = Optimizer::new(&vm, cfg.optimizer.clone());
        Ok(Self {
            cfg,
            device,
            vm,
            net,
            opt,
            schedule: Schedule {
                base_lr: cfg.lr,
                warmup_steps: cfg.warmup_steps.min(cfg.steps.saturating_sub(1)),
                total_steps: cfg.steps,
                final_fraction: cfg.final_lr_fraction,
            },
            settings: LossSettings {
                matching: cfg.gmm.matching,
                lambda_indirect: cfg.gmm.lambda_indirect,
                lambda_alpha: cfg.gmm.lambda_alpha,
            },
        })
    }

    /// Set the variables: from the checkpoint `resume` (weights, optimiser state), or freshly initialised and then,
    /// with `init_weights`, the backbone overwritten. Returns the step to start from and the checkpoint's loss
    /// (NaN for a fresh start).
    fn start(&mut self, resume: Option<&Path>) -> Result<(u64, f64), PretrainError> {
        match resume {
            Some(dir) => {
                let st = self.resume(dir)?;
                Ok((st.step, st.loss))
            }
            None => {
                initialise(&self.vm, self.cfg)?;
                if let Some(path) = &self.cfg.init_weights {
                    load_init_weights(&self.vm, self.cfg, path)?;
                }
                if self.net.has_momentum() {
                    // The momentum networks start as exact copies of the online ones.
                    Ds2Net::update_momentum(&self.vm, 0.0)?;
                }
                Ok((0, f64::NAN))
            }
        }
    }

    /// Load the checkpoint in `dir`, refusing one of another task, architecture or seed.
    fn resume(&mut self, dir: &Path) -> Result<CheckpointState, PretrainError> {
        let cfg = self.cfg;
        let st = read_state(dir)?;
        if st.config.task != cfg.task || st.config.arch != cfg.arch || st.config.seed != cfg.seed {
            return Err(PretrainError::ResumeMismatch {
                path: dir.to_path_buf(),
                detail: format!(
                    "checkpoint is {} / {} / seed {}, this run is {} / {} / seed {}",
                    st.config.task.name(),
                    st.config.arch,
                    st.config.seed,
                    cfg.task.name(),
                    cfg.arch,
                    cfg.seed
                ),
            });
        }
        let model = dir.join("model.safetensors");
        self.vm
            .load(&model)
            .map_err(|e| PretrainError::Checkpoint {
                path: model.clone(),
                detail: e.to_string(),
            })?;
        let optim = dir.join("optimizer.safetensors");
        let state = candle_core::safetensors::load(&optim, self.device).map_err(|e| {
            PretrainError::Checkpoint {
                path: optim.clone(),
                detail: e.to_string(),
            }
        })?;
        self.opt
            .load_state(state, st.updates)
            .map_err(|e| PretrainError::Checkpoint {
                path: optim,
                detail: e.to_string(),
            })?;
        Ok(st)
    }

    /// Forward, loss, backward and update on the batch of `step` at learning rate `lr`.
    fn step(&mut self, step: u64, batch: &Batch, lr: f64) -> Result<StepOutcome, PretrainError> {
        let l = self.loss(&self.net, step, batch, self.cfg.image_size)?;
        let value = l.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(PretrainError::Diverged { step, loss: value });
        }
        let grad_norm = self
            .opt
            .backward_step(&l.total, lr, self.cfg.clip_grad_norm)?;
        Ok(StepOutcome {
            loss: value,
            parts: l.parts,
            grad_norm,
        })
    }

    /// The loss of `net` on `batch` (images `size` px) at `step`.
    fn loss(
        &self,
        net: &Net,
        step: u64,
        batch: &Batch,
        size: usize,
    ) -> Result<task::StepLoss, PretrainError> {
        Ok(match (net, &batch.target) {
            (Net::Tasks(nets), Target::Tasks(batches)) => {
                let mut total: Option<Tensor> = None;
                let mut parts = Vec::with_capacity(nets.len());
                for ((task, weight, sub), (size, b)) in nets.iter().zip(batches) {
                    let l = self.loss(sub, step, b, *size)?;
                    parts.push((
                        task.name(),
                        l.total.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                    ));
                    let w = (l.total * *weight)?;
                    total = Some(match total {
                        Some(t) => (t + w)?,
                        None => w,
                    });
                }
                task::StepLoss {
                    total: total.expect("a multi-task run has at least one task"),
                    parts,
                }
            }
            (Net::Head(net), target) => {
                let x = task::images_tensor(batch, size, self.device)?;
                task::loss(&net.forward(&x, true)?, target, &self.settings)?
            }
            (Net::Ds2(net), Target::Views(boxes)) => {
                // The momentum networks move before this step's targets are computed (PixPro's order).
                let m = ds2::momentum_at(self.cfg.ds2.momentum, step, self.cfg.steps);
                Ds2Net::update_momentum(&self.vm, m)?;
                let x = task::images_tensor(batch, size, self.device)?;
                let (x1, x2) = ds2::split_views(&x)?;
                let l = net.loss(&x1, &x2, boxes)?;
                task::StepLoss {
                    total: l.total,
                    parts: vec![("c4", l.c4), ("c5", l.c5), ("positives", l.positives)],
                }
            }
            _ => return Err(PretrainError::Invalid {
                key: "task".into(),
                detail:
                    "the batch does not fit the network (internal: sampler and trainer disagree)"
                        .into(),
            }),
        })
    }

    /// Save a checkpoint after `step` steps.
    fn checkpoint(
        &self,
        root: &Path,
        step: u64,
        lr: f64,
        loss: f64,
    ) -> Result<PathBuf, PretrainError> {
        let st = CheckpointState::now(self.cfg, step, lr, self.opt.updates(), loss);
        save_checkpoint(root, &self.vm, &self.opt, &st, self.cfg.keep_checkpoints)
    }

    /// The final checkpoint, the exported backbone, its stem filters and the resolved configuration.
    fn finish(
        &self,
        root: &Path,
        output: &Path,
        step: u64,
        lr: f64,
        loss: f64,
    ) -> Result<(), PretrainError> {
        self.checkpoint(root, step, lr, loss)?;
        export_backbone(&self.vm, self.cfg, step, loss, output)?;
        let filters = output.with_extension("filters.png");
        first_layer_filters(&self.vm)?
            .save(&filters)
            .map_err(|e| PretrainError::Checkpoint {
                path: filters.clone(),
                detail: e.to_string(),
            })?;
        let cfg_path = output.with_extension("toml");
        fs::write(
            &cfg_path,
            toml::to_string(self.cfg).expect("config serialises"),
        )
        .map_err(io_err(&cfg_path))
    }
}

/// Open the CSV log: appended to when a resumed run continues it, otherwise created with its header.
fn open_log(log: &Path, append: bool, parts: &[&str]) -> Result<fs::File, PretrainError> {
    if append && log.exists() {
        return fs::OpenOptions::new()
            .append(true)
            .open(log)
            .map_err(io_err(log));
    }
    let mut f = fs::File::create(log).map_err(io_err(log))?;
    writeln!(
        f,
        "step,loss,lr,grad_norm,images_per_s,elapsed_s,{}",
        parts.join(",")
    )
    .map_err(io_err(log))?;
    Ok(f)
}

/// Train `cfg` and write the backbone to `opts.output`.
pub fn train(cfg: &PretrainConfig, opts: &RunOptions) -> Result<TrainReport, PretrainError> {
    cfg.validate()?;
    let sampler = Sampler::new(cfg)?;
    let mut trainer = Trainer::new(cfg, &sampler.task_outputs(), &opts.device)?;
    let (start, resumed_loss) = trainer.start(opts.resume.as_deref())?;
    if let Some(parent) = opts.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let root = checkpoint_root(&opts.output);
    let log = log_path(&opts.output);
    let names = task::part_names(cfg);
    let mut csv = open_log(&log, start > 0, &names)?;
    let pb = crate::progress::bar(
        cfg.steps,
        &format!("pretrain {}", cfg.task.name()),
        opts.quiet,
    );
    pb.set_position(start);
    let rx = spawn_loader(sampler, cfg, start, cfg.steps);
    let t0 = Instant::now();
    let mut window = LossWindow::new(names.len());
    // A resumed run that has nothing left to do keeps the checkpoint's loss in its metadata.
    let (mut first_loss, mut last_loss) = (f64::NAN, resumed_loss);
    let mut lr = trainer.schedule.lr(start);
    let mut step = start;
    while step < cfg.steps {
        let (s, batch) = rx.recv().map_err(|_| PretrainError::Loader)?;
        debug_assert_eq!(s, step);
        lr = trainer.schedule.lr(step);
        let outcome = trainer.step(step, &batch, lr)?;
        step += 1;
        window.add(&outcome);
        if window.steps == cfg.log_every || step == cfg.steps {
            let row = window.row(
                step,
                lr,
                outcome.grad_norm,
                cfg.images_per_step(),
                t0.elapsed().as_secs_f64(),
            );
            writeln!(csv, "{row}").map_err(io_err(&log))?;
            csv.flush().map_err(io_err(&log))?;
            let mean = window.mean();
            if first_loss.is_nan() {
                first_loss = mean;
            }
            last_loss = mean;
            pb.set_message(format!("loss {mean:.4}"));
            window = LossWindow::new(names.len());
        }
        pb.set_position(step);
        if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) && step < cfg.steps
        {
            trainer.checkpoint(&root, step, lr, last_loss)?;
        }
    }
    pb.finish_and_clear();
    trainer.finish(&root, &opts.output, step, lr, last_loss)?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(TrainReport {
        output: opts.output.clone(),
        log,
        steps: step,
        start_step: start,
        first_loss,
        last_loss,
        seconds,
        images_per_second: (step - start) as f64 * cfg.images_per_step() as f64 / seconds.max(1e-9),
    })
}
