//! ResNet backbones, written once and loaded through one weight path (candle `VarBuilder`).
//!
//! Why our own ResNet rather than `candle_transformers::models::resnet`: detectors need the intermediate stages
//! (layer1..layer4, called c1..c4 here, strides 4/8/16/32), BatchNorm must be able to train (pretraining), there is no
//! wide or narrow variant there, and inference wants BatchNorm folded into the convolutions. Parameter names follow
//! torchvision exactly (`conv1`, `bn1`, `layer2.0.downsample.0`, ...), so torchvision checkpoints load unchanged,
//! whether as `.safetensors` or as a PyTorch `.pth` pickle (see [`import_weights`]).
//!
//! The same [`ResNet`] serves training (`VarBuilder::from_varmap`, `train = true`), evaluation and edge inference
//! (`VarBuilder` over safetensors, then [`ResNet::fold_batch_norm`]).
//!
//! A folded network on the CPU in f32 runs its convolutions through [`crate::conv`] (im2col + GEMM with bias, ReLU
//! and the residual add fused into the output pass), several times faster than candle's `conv2d` followed by
//! separate elementwise ops. Unfolded networks (training, pretraining: they need autograd) always use candle ops;
//! [`ResNet::with_conv_impl`] forces candle ops for a folded one too (benchmarks, A/B checks).
//!
//! The module is laid out as candle keeps its model files, one concern per file:
//!
//! * [`resnet`]: the architecture (blocks, stages, the forward pass, BatchNorm folding) and [`ResNetConfig`];
//! * [`weights`]: weight formats (safetensors and torchvision `.pth` reading, name normalisation, import, the
//!   safetensors metadata that `kestrel pretrain` writes);
//! * [`init`]: deterministic random initialisation;
//! * this file: the public API, the named architectures ([`Arch`]) and the error type.

pub mod init;
pub mod resnet;
pub mod weights;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use init::random_weights;
pub use resnet::{BlockKind, ConvImpl, ResNet, ResNetConfig};
pub use weights::{
    import_weights, read_metadata, read_weights, resnet_from_folded_weights, resnet_from_weights,
    HeaderError,
};

/// Errors of backbone construction and weight handling.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// The architecture name is not one we build.
    #[error("unknown backbone architecture `{0}`; known: {known}", known = Arch::NAMES.join(", "))]
    UnknownArch(String),
    /// The weights file cannot be read or written.
    #[error("cannot read weights {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: candle_core::Error,
    },
    /// The weights file does not exist.
    #[error("weights file {path} does not exist; check the path given to --weights")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// A PyTorch checkpoint holds no tensors under any key we know.
    #[error("no tensors found in {path} (expected a state_dict, possibly under `state_dict` or `model`)")]
    NoTensors {
        /// The checkpoint.
        path: PathBuf,
    },
    /// A tensor the architecture needs is missing or has the wrong shape.
    #[error(
        "weights {path} do not fit a {arch} (hint: check `--arch` matches the checkpoint; the file has {count} tensors{sample})"
    )]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Architecture tried.
        arch: String,
        /// Number of tensors found in the file.
        count: usize,
        /// A few tensor names from the file, to help tell which model it came from.
        sample: String,
        /// What did not fit (names the tensor). Boxed: candle's error is large, and this one travels in every
        /// `Result` of model loading.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// The file extension is neither `.safetensors` nor `.pth`/`.pt`/`.bin`.
    #[error("{0}: unsupported weights format; use .safetensors or a PyTorch .pth/.pt checkpoint")]
    Format(PathBuf),
    /// The safetensors header (and its metadata) cannot be read.
    #[error("cannot read the safetensors header of {path}")]
    Header {
        /// The weights file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: weights::HeaderError,
    },
    /// Any other tensor error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Named architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// torchvision resnet18.
    #[serde(rename = "resnet18")]
    Resnet18,
    /// torchvision resnet34.
    #[serde(rename = "resnet34")]
    Resnet34,
    /// torchvision resnet50.
    #[serde(rename = "resnet50")]
    Resnet50,
    /// torchvision wide_resnet50_2.
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    /// ResNet-18 topology at half width (32-64-128-256): about 4× cheaper, for CPU presets and pretraining.
    #[serde(rename = "resnet18_narrow")]
    Resnet18Narrow,
}

impl Arch {
    /// Accepted names, as used on the command line and in model.toml.
    pub const NAMES: [&'static str; 5] = [
        "resnet18",
        "resnet34",
        "resnet50",
        "wide_resnet50_2",
        "resnet18_narrow",
    ];

    /// Parse a name (also accepts `wrn50`/`wide_resnet50` and `narrow18`).
    pub fn parse(s: &str) -> Result<Self, BackboneError> {
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "resnet18" | "r18" => Arch::Resnet18,
            "resnet34" | "r34" => Arch::Resnet34,
            "resnet50" | "r50" => Arch::Resnet50,
            "wide_resnet50_2" | "wide_resnet50" | "wrn50" | "wrn50_2" => Arch::WideResnet50_2,
            "resnet18_narrow" | "narrow18" | "resnet18n" => Arch::Resnet18Narrow,
            _ => return Err(BackboneError::UnknownArch(s.to_string())),
        })
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::WideResnet50_2 => "wide_resnet50_2",
            Arch::Resnet18Narrow => "resnet18_narrow",
        }
    }

    /// The shape of this architecture.
    pub fn config(self) -> ResNetConfig {
        let std_planes = [64, 128, 256, 512];
        match self {
            Arch::Resnet18 => ResNetConfig {
                block: BlockKind::Basic,
                layers: [2, 2, 2, 2],
                stem_width: 64,
                planes: std_planes,
                width_per_group: 64,
            },
            Arch::Resnet34 => ResNetConfig {
                block: BlockKind::Basic,
                layers: [3, 4, 6, 3],
                stem_width: 64,
                planes: std_planes,
                width_per_group: 64,
            },
            Arch::Resnet50 => ResNetConfig {
                block: BlockKind::Bottleneck,
                layers: [3, 4, 6, 3],
                stem_width: 64,
                planes: std_planes,
                width_per_group: 64,
            },
            Arch::WideResnet50_2 => ResNetConfig {
                block: BlockKind::Bottleneck,
                layers: [3, 4, 6, 3],
                stem_width: 64,
                planes: std_planes,
                width_per_group: 128,
            },
            Arch::Resnet18Narrow => ResNetConfig {
                block: BlockKind::Basic,
                layers: [2, 2, 2, 2],
                stem_width: 32,
                planes: [32, 64, 128, 256],
                width_per_group: 64,
            },
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a backbone's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WeightSource {
    /// Deterministic random initialisation (torchvision's scheme: Kaiming-normal fan-out convs, BN γ=1, β=0).
    Random {
        /// Seed of the generator.
        seed: u64,
    },
    /// A weights file (safetensors or PyTorch checkpoint).
    File {
        /// Path as given by the user.
        path: PathBuf,
    },
}

/// candle attaches a backtrace to errors when `RUST_BACKTRACE` is set; users need the message, not the trace.
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip() {
        for n in Arch::NAMES {
            assert_eq!(Arch::parse(n).unwrap().name(), n);
        }
        assert!(Arch::parse("vgg16").is_err());
    }
}
