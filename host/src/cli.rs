//! Command-line definition (clap derive). Parsing only: every command is validated and run in its own module.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// kestrel: visual inspection for production lines.
///
/// Fit an unsupervised anomaly detector on a product's good images, evaluate it against annotated defects, and
/// predict heatmaps for new images. Start with `kestrel demo`, which does all of it on a synthetic product.
#[derive(Debug, Parser)]
#[command(
    name = "kestrel",
    version,
    propagate_version = true,
    max_term_width = 110
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fit a detector (PaDiM, PatchCore or GDE) on the good training images of one product category.
    ///
    /// A tenth of the good training images (when there are at least 10) is held out to choose the reject threshold;
    /// the test split is never used for fitting or thresholds. Writes a model directory: model.toml (readable; edit
    /// `threshold.image` to move the threshold), backbone.safetensors and the detector state.
    Fit(FitArgs),
    /// Evaluate a fitted model on the test split: image AUROC, pixel AUROC, AUPRO, F1-max and its threshold.
    ///
    /// Maps are compared with masks at the model's input resolution (masks are resized with nearest neighbour), as
    /// anomalib does. `--heatmaps DIR` writes `maps/<name>.npy`, `masks/<name>.png`, `overlays/<name>.png` and
    /// `scores.csv`, which `kestrel metrics` reads back.
    Eval(EvalArgs),
    /// Score images with a fitted model and write heatmap overlays (PNG) and a scores CSV.
    Predict(PredictArgs),
    /// Compute metrics from anomaly maps made by any tool (`<name>.npy`) and masks (`<name>.png`).
    ///
    /// A map without a mask file is a good image. The image score is the map's maximum unless `--scores` gives a
    /// CSV of `name,score`. Pixel metrics are exact (ties included) and run in bounded memory.
    Metrics(MetricsArgs),
    /// Convert torchvision-named backbone weights (.pth/.pt PyTorch checkpoint or .safetensors) into a checked
    /// .safetensors file for `kestrel fit --weights`.
    Import(ImportArgs),
    /// Generate a synthetic product, fit PaDiM and PatchCore on its good images and evaluate both.
    Demo(DemoArgs),
    /// Write sample images of the synthetic pretraining tasks, with their parameters as JSON, to look at.
    ///
    /// Pretraining teaches a backbone on images drawn from formulas, so no image dataset is needed:
    /// `fractal` renders one fractal per image, class = which random IFS code drew it (A&F); `multi-fractal`
    /// pastes 1-5 fractals of random classes on one background (multi-label); `gmm` blends a small
    /// Gaussian-mixture "stain" into a normal image (your good images with `--normal-images`, generated
    /// textures otherwise) and records the mixture parameters the network would regress. Every image has a
    /// `<n>.json` of how it was made; `gmm` adds `<n>_normal.png` (before) and `<n>_alpha.png` (defect opacity).
    /// The same seed gives the same images on any machine and thread count.
    Synth(SynthArgs),
    /// Pretrain a backbone on synthetic images (no image dataset needed), for `kestrel fit --weights`.
    ///
    /// `fractal`: which of N random IFS codes drew the fractal (cross-entropy). `multi-fractal`: which codes drew the
    /// 1-5 fractals pasted into one image (multi-label BCE). `gmm`: regress the Gaussian-mixture stain blended into a
    /// normal image (your good images with `--normal-images`, generated textures otherwise), with a direct loss on
    /// matched components plus a loss that re-renders the prediction and compares images.
    ///
    /// Start from `--preset tiny` (narrow ResNet-18 at 64×64: minutes on a 2-core CPU) or `--preset paper`
    /// (Wide-ResNet-50-2 at 256×256: a GPU job). Any setting can be changed in a TOML file (`--config`; keys as in
    /// the `<output>.toml` every run writes) and the common ones by flags, which win. Writes `<output>` (backbone
    /// weights with the task, preset and step in the file's metadata), `<output>.csv` (loss, lr, throughput per
    /// logging window), `<output>.toml` (the resolved settings) and checkpoints under `<output>.ckpt/`; continue an
    /// interrupted run with `--resume`.
    ///
    /// Example: `kestrel pretrain fractal --preset tiny -o fractal-tiny.safetensors`, then
    /// `kestrel fit --arch resnet18_narrow --weights fractal-tiny.safetensors ...`.
    Pretrain(PretrainArgs),
    /// Watch an inspection unit: live verdicts and stats over TCP or a serial line.
    ///
    /// Connects (`Hello` with protocol/schema check, then HMAC-SHA256 authentication with the unit's pre-shared
    /// key), subscribes and shows each verdict: a live table on a terminal, plain lines otherwise, or JSON lines with
    /// `--json`. If the link drops it reconnects and replays the unit's journal from the first verdict not yet
    /// shown, so no verdict is lost or shown twice (journal sequence numbers).
    ///
    /// Exit codes (the numbers of `kestrel --help`): 0 done (`--count` reached or Ctrl-C), 2 bad address or key
    /// file, 5 unit unreachable or link lost for longer than `--reconnect-for`, 6 the unit speaks another protocol
    /// version or schema, 7 the unit refused the key (or could not prove it holds it), 8 the unit refused the
    /// subscription, 1 anything else.
    Monitor(MonitorArgs),
    /// Create an Ed25519 signing key for model bundles: `DIR/signing.key` (mode 0600, keep it on the host) and
    /// `DIR/signing.pub` (copy it to units' `<state>/trusted/` and pass it to `--trusted-key`). Never overwrites.
    Keygen(KeygenArgs),
    /// Export a fitted model as a signed, quantised `.kbundle` for inspection units.
    ///
    /// BatchNorm is folded into the convolutions; `--quant int8` stores convolution weights as int8 per output
    /// channel and the detector state as f16, `f16` stores both as f16, `f32` changes nothing (bit-identical
    /// scores). Prints the size of each part against f32 and the metric differences between the model and the
    /// bundle on the model's validation images and, with `--data`, on the test split. The bundle embeds a
    /// validation image and the score the quantised model gives it, as a self-test for units.
    Export(ExportArgs),
    /// Install a signed bundle on an inspection unit, or roll the unit back to its previous model.
    ///
    /// Over the unit's authenticated link (the same as `kestrel monitor`): the unit first checks the bundle's
    /// signature against its trusted keys, its firmware range, input size and model version (`--dry-run` stops
    /// there and writes nothing); then the bundle is uploaded in acknowledged chunks into the unit's inactive slot
    /// (a dropped link is reconnected and the upload resumes where it stopped), verified again, loaded,
    /// self-tested, and activated between two frames. The unit inspects with its old model throughout, keeps it for
    /// `--rollback`, and rolls back by itself if the new model fails its first frames.
    ///
    /// Example: kestrel flash model.kbundle --unit tcp://10.0.0.7:7700 --key-file unit.key
    ///
    /// Exit codes: 0 flashed (or the dry run passed), 2 bad arguments or key file, 4 the unit refused the bundle
    /// (signature, corrupt, other firmware or input size, self-test failed, too slow for the unit's reject delay),
    /// 5 unit unreachable or the link was lost
    /// for longer than `--reconnect-for`, 6 the unit speaks another protocol, 7 the unit refused the key, 8 refused
    /// otherwise (older model version without `--allow-downgrade`, no previous model to roll back to, busy).
    Flash(FlashArgs),
    /// Measure what sizes hardware: backbone forward, detector scoring and end-to-end images/s of a model (or of a
    /// random-weight backbone), optionally a training step and PatchCore's coreset selection.
    ///
    /// Timings are medians of `--repeat` runs after `--warmup` on this machine and `--device`; threads follow
    /// `RAYON_NUM_THREADS`. Example: `kestrel bench --model part.kbundle --trusted-key signing.pub --frame
    /// 1280x1024 --batch-size 1` gives the per-frame latency a unit will see with that camera. `--json` for scripts.
    Bench(BenchArgs),
}

/// `kestrel bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A model directory or `.kbundle` to time end to end (preprocess, backbone, detector). Without it only a
    /// random-weight `--arch` backbone is timed.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Bundle trust (for a `.kbundle` `--model`).
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Backbone for the model-less forward and for `--train`: resnet18, resnet18_narrow, resnet34, resnet50,
    /// wide_resnet50_2.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Input size of the model-less backbone forward.
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
    /// Camera frame size the end-to-end row decodes from, WIDTHxHEIGHT (default: the model's input size).
    #[arg(long, value_parser = crate::commands::bench::parse_frame)]
    pub frame: Option<(u32, u32)>,
    /// Images per forward pass (a unit scores frames one at a time: 1).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Compute device: `cpu`, or `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "KESTREL_DEVICE")]
    pub device: String,
    /// Timed runs per case (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub repeat: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Also time one training step of `--arch` (forward, cross-entropy, backward, SGD).
    #[arg(long)]
    pub train: bool,
    /// Training step batch.
    #[arg(long, default_value_t = 32)]
    pub train_batch: usize,
    /// Training step image size.
    #[arg(long, default_value_t = 64)]
    pub train_size: usize,
    /// Also time PatchCore's coreset selection on N random patches (515 images at 256² give 527 360).
    #[arg(long, value_name = "N")]
    pub coreset: Option<usize>,
    /// Patch dimension for `--coreset` (PatchCore selects on a random projection: 325 dimensions for 527 360 patches).
    #[arg(long, default_value_t = 325)]
    pub coreset_dim: usize,
    /// Coreset fraction for `--coreset`.
    #[arg(long, default_value_t = 0.1)]
    pub coreset_ratio: f64,
    /// With `--coreset`, also time the one-centre-per-pass greedy (slow: minutes at 500 k patches).
    #[arg(long)]
    pub coreset_greedy: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel flash`.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The `.kbundle` to install (from `kestrel export`); not with `--rollback`.
    #[arg(required_unless_present = "rollback", conflicts_with = "rollback")]
    pub bundle: Option<PathBuf>,
    /// The unit: `tcp://HOST:PORT` or `serial:///dev/ttyX[?baud=N]`.
    #[arg(long, env = "KESTREL_UNIT")]
    pub unit: String,
    /// File holding the unit's pre-shared key (64 hex digits).
    #[arg(long, env = "KESTREL_UNIT_KEY")]
    pub key_file: PathBuf,
    /// Refuse the unit unless its id is this (guards against a swapped cable or address).
    #[arg(long)]
    pub unit_id: Option<String>,
    /// Only ask the unit whether it would accept the bundle (signature, board, input size, firmware, version).
    #[arg(long)]
    pub dry_run: bool,
    /// Go back to the model the unit ran before the last flash.
    #[arg(long)]
    pub rollback: bool,
    /// Install even if the bundle's model version is below the unit's active one (anti-rollback override).
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Bytes per chunk (at most 61440).
    #[arg(long, default_value_t = kestrel_wire::frame::DEFAULT_BUNDLE_CHUNK)]
    pub chunk_size: usize,
    /// Chunks sent ahead of the unit's acknowledgements.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Seconds to keep reconnecting a dropped link before giving up (the upload then resumes on the next run).
    #[arg(long, default_value_t = 60.0)]
    pub reconnect_for: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the public keys that may sign a bundle come from (`eval`/`predict` with a `.kbundle`).
#[derive(Debug, Args, Clone, Default)]
pub struct TrustArgs {
    /// Public key (`signing.pub` from `kestrel keygen`) a `.kbundle` model must be signed with. Repeatable.
    #[arg(long, value_name = "FILE.pub", help_heading = "Bundles")]
    pub trusted_key: Vec<PathBuf>,
    /// Folder of trusted public keys (`*.pub`), as on a unit's `<state>/trusted/`.
    #[arg(long, value_name = "DIR", help_heading = "Bundles")]
    pub trusted_dir: Option<PathBuf>,
}

/// `kestrel keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Folder for `signing.key` and `signing.pub` (created if missing).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// Storage of bundle weights.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum QuantArg {
    /// Convolutions int8 per output channel, detector state f16.
    Int8,
    /// Convolutions and detector state f16.
    F16,
    /// Everything f32 (scores bit-identical to the model directory).
    F32,
}

/// `kestrel export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model directory from `kestrel fit`.
    #[arg(long)]
    pub model: PathBuf,
    /// Signing key from `kestrel keygen` (must not be readable by group or others).
    #[arg(long)]
    pub key: PathBuf,
    /// Weight storage.
    #[arg(long, value_enum, default_value_t = QuantArg::Int8)]
    pub quant: QuantArg,
    /// Model version for anti-rollback: units refuse a bundle older than their active model. Increase it with
    /// every export of a model line.
    #[arg(long, default_value_t = 1)]
    pub model_version: u64,
    /// Model name shown by units (default: the model's category).
    #[arg(long)]
    pub name: Option<String>,
    /// Oldest unit firmware the bundle runs on (default: this kestrel's version).
    #[arg(long)]
    pub firmware_min: Option<String>,
    /// Newest unit firmware the bundle runs on (default: the last patch release of this kestrel's minor version).
    #[arg(long)]
    pub firmware_max: Option<String>,
    /// Dataset root: also compare the model and the bundle on its test split (all metrics).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Category of `--data` (default: the model's).
    #[arg(long, requires = "data")]
    pub category: Option<String>,
    /// Output bundle file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `kestrel pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Task.
    #[arg(value_enum)]
    pub task: crate::synth::TaskKind,
    /// Starting configuration.
    #[arg(long, value_enum, default_value_t = crate::pretrain::Preset::Tiny)]
    pub preset: crate::pretrain::Preset,
    /// TOML file of settings layered over the preset (any subset of the keys of `<output>.toml`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Optimiser steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (after warm-up; cosine decay to the end).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Input side in pixels.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Seed of initial weights and of every generated sample.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Backbone architecture (resnet18, resnet34, resnet50, wide_resnet50_2, resnet18_narrow).
    #[arg(long)]
    pub arch: Option<String>,
    /// Optimiser.
    #[arg(long, value_enum)]
    pub optimizer: Option<crate::pretrain::optim::OptimizerKind>,
    /// Fractal tasks: number of classes (IFS codes).
    #[arg(long)]
    pub classes: Option<usize>,
    /// GMM: folder of good images to blend pseudo-defects into; CutPaste: the good images to cut from; DS2: the
    /// good images to take views of (several products' images in one folder are fine). Generated textures when
    /// absent.
    #[arg(long)]
    pub normal_images: Option<PathBuf>,
    /// GMM: matching of predicted to true components in the direct loss.
    #[arg(long, value_enum)]
    pub matching: Option<crate::pretrain::gmm_loss::Matching>,
    /// GMM: pseudo-defect distribution (`subtle`: small, faint, local; `medium`: larger and stronger;
    /// `reference`: the public sampler's large colour clouds).
    #[arg(long, value_enum)]
    pub defects: Option<crate::synth::gmm::GmmPreset>,
    /// multi-task: the tasks trained together on one backbone, each with its own head (comma-separated:
    /// fractal, multi-fractal, gmm, cutpaste, ds2). Default fractal,gmm,ds2.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub tasks: Option<Vec<crate::synth::TaskKind>>,
    /// multi-task: the weight of each task's loss, in `--tasks` order (default 1,1,0.5).
    #[arg(long, value_delimiter = ',')]
    pub task_weights: Option<Vec<f64>>,
    /// Start the backbone from these weights instead of random ones (the head starts fresh), e.g. a fractal
    /// run's output to continue with `gmm`. Same architecture required.
    #[arg(long)]
    pub init_weights: Option<PathBuf>,
    /// Pool the last stage to an N×N grid for the head instead of globally (1): keeps where things are, which
    /// the GMM task regresses. `image_size / 32` must be divisible by N.
    #[arg(long)]
    pub head_grid: Option<usize>,
    /// Save a checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Continue from a checkpoint directory; with no value (or `latest`), the newest checkpoint under
    /// `<output>.ckpt/`.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<PathBuf>,
    /// Output weights file (.safetensors).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Compute device: `cpu`, or `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "KESTREL_DEVICE")]
    pub device: String,
    /// Print a JSON summary instead of text (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// Dataset layouts.
#[derive(Debug, Clone, Copy, ValueEnum, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutArg {
    /// Detect: MVTec AD, then VisA, then plain folders.
    #[default]
    Auto,
    /// MVTec AD: <root>/<category>/{train/good, test/<type>, ground_truth/<type>}.
    Mvtec,
    /// VisA split CSV.
    Visa,
    /// <root>/good, <root>/defect, optional <root>/masks.
    Folder,
}

/// Detectors.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorArg {
    /// PaDiM: a Gaussian per feature-map position; Mahalanobis distance. Fast to fit, small.
    Padim,
    /// PatchCore: a coreset memory bank of patch features; nearest-neighbour distance. Usually more accurate.
    Patchcore,
    /// GDE: Gaussians (Ledoit–Wolf) on pooled embeddings of the image and of windows cut from it, each window
    /// through the backbone on its own (CutPaste's and DS2's evaluation). Reads the last backbone stage, so it
    /// suits backbones pretrained with `kestrel pretrain cutpaste` or `ds2`. Slower to score: one backbone pass
    /// per window (225 at 256 px with the default windows).
    Gde,
}

/// GDE's image score (docs/detectors.md, "GDE").
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GdeImageScoreArg {
    /// Mahalanobis distance of the whole image's pooled embedding.
    Embedding,
    /// Maximum of the anomaly map.
    MapMax,
}

/// PatchCore coreset selection (docs/detectors.md, "Coreset selection").
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoresetArg {
    /// Greedy k-center in rounds, distances updated by GEMM: the same picks as one-at-a-time greedy (the same
    /// memory bank), in a fraction of the time (under 2 minutes for 515 images at 256×256 on 2 cores). The default.
    Batched,
    /// anomalib's greedy: one pass over all patches per centre, on the Johnson–Lindenstrauss projection (the
    /// reference; about 18 minutes for 515 images at 256×256 on 2 cores).
    Greedy,
}

/// Options shared by commands that run a network.
#[derive(Debug, Args, Clone, Serialize, Deserialize)]
pub struct ComputeArgs {
    /// Compute device: `cpu`, or `cuda:N` in builds with the `cuda` feature.
    #[arg(
        long,
        default_value = "cpu",
        env = "KESTREL_DEVICE",
        help_heading = "Compute"
    )]
    pub device: String,
    /// Images per forward pass. Larger batches use more memory; on CPU they barely change throughput.
    #[arg(long, default_value_t = 8, help_heading = "Compute")]
    pub batch_size: usize,
}

/// `kestrel fit`.
#[derive(Debug, Args, Serialize, Deserialize)]
pub struct FitArgs {
    /// TOML file of fit settings: keys are the long option names (`image_size = 224`, `detector = "patchcore"`,
    /// `coreset_ratio = 0.01`, ...), at the top level or under `[fit]`. Options given on the command line win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Dataset root (MVTec AD root or category folder, VisA root, or a folder with good/ and defect/).
    #[arg(long)]
    pub data: PathBuf,
    /// Product category (required when the root holds several). `all` fits one model per category into
    /// `<output>/<category>/`.
    #[arg(long)]
    pub category: Option<String>,
    /// Dataset layout.
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    pub layout: LayoutArg,
    /// Backbone architecture: resnet18, resnet34, resnet50, wide_resnet50_2, resnet18_narrow. Default: the
    /// architecture `kestrel pretrain` recorded in the `--weights` file, else resnet18. Given with weights that
    /// record another architecture, it is refused with the one to use.
    #[arg(long)]
    pub arch: Option<String>,
    /// Backbone weights (.safetensors from `kestrel import`/`kestrel pretrain`, or a torchvision .pth). Without it
    /// the backbone is randomly initialised from `--seed` (works, but pretrained features are far better).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Seed for random initialisation, channel subsets, projections and splits.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Choose the backbone for this product instead of taking `--weights`: `synthetic` pretrains candidate
    /// backbones (random, fractal, fractal → GMM and CutPaste on these good images, at the tiny preset), fits the
    /// detector with each on most good images, scores the rest with procedural scratches planted in them, and
    /// fits with the best. Minutes per candidate on a CPU; model.toml records the candidates' scores and the choice.
    #[arg(long, value_enum, help_heading = "Backbone recipe")]
    #[serde(skip)]
    pub pretrain: Option<crate::commands::recipe::PretrainRecipe>,
    /// With --pretrain: the candidates, comma-separated (random, fractal, fractal-gmm, cutpaste, ds2, fractal-ds2).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        help_heading = "Backbone recipe"
    )]
    #[serde(skip)]
    pub pretrain_candidates: Option<Vec<crate::commands::recipe::Candidate>>,
    /// With --pretrain: pretraining steps of each candidate (default: the tiny preset's).
    #[arg(long, help_heading = "Backbone recipe")]
    #[serde(skip)]
    pub pretrain_steps: Option<u64>,
    /// Side of the square images are resized to.
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
    /// Detector.
    #[arg(long, value_enum, default_value_t = DetectorArg::Padim)]
    pub detector: DetectorArg,
    /// PatchCore: fraction of training patches kept in the memory bank.
    #[arg(long, default_value_t = 0.1, help_heading = "PatchCore")]
    pub coreset_ratio: f64,
    /// PatchCore: how the coreset is selected.
    #[arg(long, value_enum, default_value_t = CoresetArg::Batched, help_heading = "PatchCore")]
    pub coreset_method: CoresetArg,
    /// PatchCore: neighbours for the re-weighted image score (1 = plain maximum).
    #[arg(long, default_value_t = 9, help_heading = "PatchCore")]
    pub num_neighbors: usize,
    /// PatchCore: RAM budget (GiB) for training patch features before they spill to a temporary file.
    #[arg(long, default_value_t = 2.0, help_heading = "PatchCore")]
    pub ram_budget_gib: f64,
    /// PaDiM: number of random embedding channels (default 100 for resnet18, 550 for wide_resnet50_2).
    #[arg(long, help_heading = "PaDiM")]
    pub n_features: Option<usize>,
    /// PaDiM and PatchCore: the backbone stages embedded, comma-separated (defaults: PaDiM 1,2,3; PatchCore 2,3).
    /// The map has the first stage's grid (stage 1: a quarter of the image size, each later stage half of that):
    /// earlier stages localise more finely, later ones see more context.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// GDE: side in pixels of the windows scored for the map (DS2: 32). With `--window-stride` it must tile the
    /// image: (image_size − window) divisible by the stride.
    #[arg(long, default_value_t = 32, help_heading = "GDE")]
    pub window: usize,
    /// GDE: stride of the windows in pixels (DS2's paper protocol: 4, i.e. 3249 backbone passes per 256 px image,
    /// a GPU's job; 16 gives 225).
    #[arg(long, default_value_t = 16, help_heading = "GDE")]
    pub window_stride: usize,
    /// GDE: one Gaussian per window position, for aligned objects (default: one for all positions, for textures
    /// and products that move in the frame).
    #[arg(long, help_heading = "GDE")]
    pub per_position: bool,
    /// GDE: the image score: `embedding` (the whole image's embedding, CutPaste's rule; sees global changes) or
    /// `map-max` (the heatmap's maximum, like PaDiM; finds small defects the whole-image embedding dilutes).
    #[arg(long, value_enum, default_value_t = GdeImageScoreArg::Embedding, help_heading = "GDE")]
    pub gde_image_score: GdeImageScoreArg,
    /// σ in pixels of the Gaussian blur applied to the upsampled anomaly map (anomalib: 4; 0 turns it off).
    #[arg(long, default_value_t = kestrel_vision::postprocess::DEFAULT_SIGMA)]
    pub blur_sigma: f32,
    /// Fraction of good training images held out to choose the threshold (used when at least 10 images).
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f64,
    /// Output model directory.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub compute: ComputeArgs,
}

/// `kestrel eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model directory from `kestrel fit` (or a directory of per-category model directories), or a `.kbundle`
    /// from `kestrel export` (then `--trusted-key` or `--trusted-dir` is required).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset root.
    #[arg(long)]
    pub data: PathBuf,
    /// Category to evaluate, or `all` for every category that has a model. Default: the model's category.
    #[arg(long)]
    pub category: Option<String>,
    /// Dataset layout.
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    pub layout: LayoutArg,
    /// Write maps (.npy), masks, overlays and scores.csv here (one sub-folder per category).
    #[arg(long)]
    pub heatmaps: Option<PathBuf>,
    /// Print one JSON object per category (the keys of `kestrel metrics --json` plus `category`, `images_per_s`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `kestrel predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model directory from `kestrel fit`, or a `.kbundle` from `kestrel export` (then `--trusted-key` or
    /// `--trusted-dir` is required).
    #[arg(long)]
    pub model: PathBuf,
    /// Images to score (files or folders).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder for `<name>_heatmap.png` overlays, `maps/<name>.npy` anomaly maps and `scores.csv`.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Print one JSON object per image (name, score, verdict) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `kestrel metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Folder of `<name>.npy` anomaly maps (2-D float32 or float64).
    #[arg(long)]
    pub maps: PathBuf,
    /// Folder of `<name>.png` masks (non-zero = anomalous); a map without a mask is a good image.
    #[arg(long)]
    pub masks: PathBuf,
    /// CSV of `name,score` image scores (default: each map's maximum).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Print one JSON object with image_auroc, pixel_auroc, aupro, f1_max, threshold, images, pixels.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Architecture the checkpoint is for.
    #[arg(long)]
    pub arch: String,
    /// Checkpoint (.pth/.pt/.bin PyTorch pickle or .safetensors), torchvision names; `module.`/`backbone.` prefixes
    /// are stripped.
    pub input: PathBuf,
    /// Output .safetensors.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// `kestrel demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working folder for the synthetic dataset, models and heatmaps.
    #[arg(long, default_value = "kestrel-demo")]
    pub out: PathBuf,
    /// Seed of the synthetic product and of the models.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print JSON results.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// `kestrel synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// What to generate.
    #[arg(value_enum)]
    pub kind: crate::synth::TaskKind,
    /// Number of images.
    #[arg(short = 'n', long = "count", default_value_t = 64)]
    pub count: usize,
    /// Output folder (created; must be empty or missing).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Side of the square images in pixels (32-2048).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seed: the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fractal classes (one random IFS code each). For `fractal`, image i shows class i mod classes.
    #[arg(long, default_value_t = 100, help_heading = "Fractals")]
    pub classes: usize,
    /// GMM: folder of good images to blend defects into (random crops and flips); CutPaste: the good images to
    /// cut from. Default: generated textures.
    #[arg(long, help_heading = "GMM")]
    pub normal_images: Option<PathBuf>,
    /// GMM: parameter distribution.
    #[arg(long, value_enum, default_value_t = crate::synth::gmm::GmmPreset::Subtle, help_heading = "GMM")]
    pub preset: crate::synth::gmm::GmmPreset,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The unit: `tcp://HOST:PORT` or `serial:///dev/ttyX[?baud=N]` (default baud 115200).
    #[arg(long, env = "KESTREL_UNIT")]
    pub unit: String,
    /// File holding the unit's pre-shared key (64 hex digits).
    #[arg(long, env = "KESTREL_UNIT_KEY")]
    pub key_file: PathBuf,
    /// Refuse the unit unless its id is this (guards against a swapped cable or address).
    #[arg(long)]
    pub unit_id: Option<String>,
    /// Print one JSON object per line (types: connected, verdict, stats, event, link_down, lost, refused).
    #[arg(long)]
    pub json: bool,
    /// Stop after this many verdicts.
    #[arg(long)]
    pub count: Option<u64>,
    /// Write reject verdicts' masks as PNG into this folder (`reject_<seq>_frame<id>.png`).
    #[arg(long)]
    pub save_rejects: Option<PathBuf>,
    /// Ask for a mask with every n-th verdict (0 = none). Default: 1 with `--save-rejects` over TCP, else 0.
    #[arg(long)]
    pub masks_every: Option<u16>,
    /// Start by replaying the unit's journal from this sequence number (history), then follow live.
    #[arg(long)]
    pub replay_from: Option<u64>,
    /// After a link drop, keep trying to reconnect for this many seconds before giving up (exit 5).
    #[arg(long, default_value_t = 30.0)]
    pub reconnect_for: f64,
}

/// Parse the process arguments, layering `kestrel fit --config FILE` under the command line.
pub fn parse() -> anyhow::Result<Cli> {
    let matches = command().get_matches();
    from_matches(&matches)
}

/// The clap command with the generated exit-code paragraph (from kestrel-wire's table) after the help.
pub fn command() -> clap::Command {
    Cli::command().after_help(crate::exit_codes_help())
}

/// [`parse`] on given matches (separate for tests).
pub fn from_matches(matches: &ArgMatches) -> anyhow::Result<Cli> {
    let mut cli = Cli::from_arg_matches(matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (Command::Fit(fit), Some(("fit", sub))) = (&mut cli.command, matches.subcommand()) {
        if let Some(path) = fit.config.clone() {
            *fit = layer_fit_config(fit, sub, &path)?;
        }
    }
    Ok(cli)
}

/// Settings precedence: command line > config file > built-in defaults.
fn layer_fit_config(
    fit: &FitArgs,
    sub: &ArgMatches,
    path: &std::path::Path,
) -> anyhow::Result<FitArgs> {
    use anyhow::Context;
    let txt = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let mut file: toml::Table =
        toml::from_str(&txt).with_context(|| format!("parsing config {}", path.display()))?;
    if let Some(toml::Value::Table(t)) = file.remove("fit") {
        file.extend(t);
    }
    let mut merged = toml::Table::try_from(fit)
        .context("internal: fit settings are not representable in TOML")?;
    let known: Vec<String> = merged
        .keys()
        .cloned()
        .chain(["weights", "category", "n_features", "arch", "layers"].map(String::from))
        .collect();
    for (key, value) in file {
        let key = key.replace('-', "_");
        if key == "config" || !known.contains(&key) {
            anyhow::bail!(
                "{}: unknown setting `{key}`; valid keys are the long options of `kestrel fit`: {}",
                path.display(),
                known.join(", ")
            );
        }
        if sub.value_source(&key) != Some(ValueSource::CommandLine) {
            merged.insert(key, value);
        }
    }
    let mut out: FitArgs = merged
        .try_into()
        .with_context(|| format!("{}: a setting has the wrong type", path.display()))?;
    out.config = Some(path.to_path_buf());
    Ok(out)
}
