//! `kestrel import`: torchvision checkpoints → checked safetensors.

use kestrel_vision::backbone::{import_weights, Arch};

use crate::cli::ImportArgs;

/// `kestrel import`.
pub fn run(a: &ImportArgs) -> anyhow::Result<()> {
    let arch = Arch::parse(&a.arch)?;
    let n = import_weights(&arch.config(), arch.name(), &a.input, &a.output)?;
    crate::outln!(
        "imported {n} {} tensors from {} → {}",
        arch.name(),
        a.input.display(),
        a.output.display()
    )?;
    Ok(())
}
