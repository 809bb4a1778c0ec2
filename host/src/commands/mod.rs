//! One module per subcommand. Each has a `run(&Args)` that validates, does the work and prints; the reusable parts
//! (`fit::fit_category`, `eval::evaluate`) are used by `demo` too.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod export;
pub mod fit;
pub mod flash;
pub mod import;
pub mod keygen;
pub mod metrics;
pub mod monitor;
pub mod predict;
pub mod pretrain;
pub mod recipe;
pub mod synth;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use kestrel_bundle::{TrustedKeys, VerifiedBundle, MAGIC};
use kestrel_vision::dataset::LayoutChoice;
use kestrel_vision::model::Model;

use crate::cli::{LayoutArg, TrustArgs};

/// Largest bundle `eval`/`predict` read (refused from the file size, before reading): far above any model we fit.
const MAX_BUNDLE_BYTES: u64 = 4 << 30;

/// A `.kbundle` was given without a public key to check its signature against.
#[derive(Debug, thiserror::Error)]
#[error("{} is a signed model bundle and nothing says whose signature to trust: pass `--trusted-key FILE.pub` \
(the exporter's `signing.pub` from `kestrel keygen`) or `--trusted-dir DIR` (a folder of *.pub files)", path.display())]
pub struct Untrusted {
    /// The bundle.
    pub path: PathBuf,
}

/// Whether `path` is a `.kbundle` file (by extension, or by its first bytes being the bundle magic).
pub(crate) fn is_bundle(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path.extension().is_some_and(|e| e == "kbundle") {
        return true;
    }
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|f| f.take(8).read_exact(&mut head))
        .is_ok_and(|_| head == MAGIC)
}

/// The public keys `--trusted-key`/`--trusted-dir` name (the union of both); an error naming the flags when none.
pub(crate) fn trusted_keys(t: &TrustArgs, bundle: &Path) -> anyhow::Result<TrustedKeys> {
    let mut keys = match &t.trusted_dir {
        Some(dir) => TrustedKeys::from_dir(dir)?,
        None => TrustedKeys::new(),
    };
    for path in &t.trusted_key {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        keys = keys.with(name, kestrel_bundle::PublicKey::read_file(path)?);
    }
    if keys.is_empty() {
        return Err(Untrusted {
            path: bundle.to_path_buf(),
        }
        .into());
    }
    Ok(keys)
}

/// Load `--model`: a model directory, or a `.kbundle` verified against the trusted keys (hash and signature)
/// before any of it is used. Returns the model and, for a bundle, the verified bundle (for reports).
pub(crate) fn load_model(
    path: &Path,
    trust: &TrustArgs,
    device: &Device,
) -> anyhow::Result<(Model, Option<VerifiedBundle>)> {
    if !is_bundle(path) {
        let model = Model::load(path, device)
            .with_context(|| format!("loading model {}", path.display()))?;
        return Ok((model, None));
    }
    let keys = trusted_keys(trust, path)?;
    let bundle = VerifiedBundle::parse_file(path, MAX_BUNDLE_BYTES, &keys)
        .with_context(|| format!("verifying bundle {}", path.display()))?;
    let model = Model::from_bundle(&bundle, device)
        .with_context(|| format!("loading bundle {}", path.display()))?;
    Ok((model, Some(bundle)))
}

impl From<LayoutArg> for LayoutChoice {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::Auto => LayoutChoice::Auto,
            LayoutArg::Mvtec => LayoutChoice::Mvtec,
            LayoutArg::Visa => LayoutChoice::Visa,
            LayoutArg::Folder => LayoutChoice::Folder,
        }
    }
}

/// Format an optional metric for tables.
pub(crate) fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
}
