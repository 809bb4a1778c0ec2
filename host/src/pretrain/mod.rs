//! Synthetic pretraining: teach a backbone on images drawn from formulas, so no natural-image dataset is needed.
//!
//! * [`config`]: tasks, presets (`tiny` for a 2-core CPU, `paper` for a GPU) and TOML/flag layering;
//! * [`task`]: per-task batch generation (from [`crate::synth`]), the classification/regression head and losses;
//! * [`ds2`]: DS2 dense contrastive pretraining (online and momentum networks, projectors, propagation, loss);
//! * [`gmm_loss`]: the GMM head activations, a differentiable renderer, component matching, direct/indirect losses;
//! * [`optim`]: SGD with momentum and AdamW with parameter groups, the warm-up + cosine schedule;
//! * [`engine`]: the loop (background loader, BN in train mode, clipping, CSV log, progress bar, checkpoints and
//!   `--resume`) and the export of the backbone as torchvision-named safetensors that `kestrel fit --weights`
//!   reads, with the preset, task and step in the file's metadata.

pub mod config;
pub mod ds2;
pub mod engine;
pub mod gmm_loss;
pub mod optim;
pub mod task;

use std::path::PathBuf;

pub use config::{Preset, PretrainConfig, TaskKind};
pub use engine::{train, RunOptions, TrainReport};

/// Why pretraining failed.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// A configuration file could not be used.
    #[error("{path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A setting is out of range.
    #[error("invalid setting `{key}`: {detail}")]
    Invalid {
        /// The key.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The sample generator refused its settings or inputs.
    #[error(transparent)]
    Synth(#[from] crate::synth::SynthError),
    /// A checkpoint or weights file could not be read or written.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The checkpoint belongs to a different run.
    #[error("cannot resume from {path}: {detail}; resume with the same task, architecture and seed, or start a new run")]
    ResumeMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The difference.
        detail: String,
    },
    /// `init_weights` cannot start this run's backbone.
    #[error("cannot start the backbone from {path}: {detail}")]
    InitWeights {
        /// The weights file.
        path: PathBuf,
        /// What was wrong, and what to use instead.
        detail: String,
    },
    /// File-system error.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The loss became NaN or infinite.
    #[error("training diverged at step {step} (loss {loss}); lower --lr or enable gradient clipping (clip_grad_norm)")]
    Diverged {
        /// Step.
        step: u64,
        /// Loss value.
        loss: f64,
    },
    /// The loader thread stopped unexpectedly.
    #[error("the data loader thread stopped unexpectedly")]
    Loader,
    /// Tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
