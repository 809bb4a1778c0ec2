//! Scoring image files: decode → [`Model::score_rgb8`] in batches, one result per file in order.
//!
//! This is the file-side entry to the one scoring path (decode → pre-process → backbone → detector → heatmap →
//! score). `kestrel eval`, `kestrel predict` and the threshold choice in `kestrel fit` call it; the edge unit calls
//! [`Model::score_rgb8`] directly on camera frames. Files are decoded by [`crate::dataset::load_rgb`], the one
//! decoder every reader of images uses, in parallel within a batch.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dataset::{load_rgb, ConversionCounts, DatasetError, LoadedImage};
use crate::model::{Model, ModelError, Rgb8, Scored};

/// Why scoring files stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// A file could not be decoded.
    #[error(transparent)]
    Decode(#[from] DatasetError),
    /// The model could not score a batch.
    #[error("scoring {first} and the rest of its batch")]
    Model {
        /// The first file of the batch.
        first: PathBuf,
        /// Why.
        #[source]
        source: ModelError,
    },
}

/// Score `paths` with `model` in batches of `batch_size`, calling `each(index, image, scored)` for every file in
/// order; colour/bit-depth conversions are tallied into `counts`. `each` may stop the run by returning an error,
/// which is passed through (any error type a [`ScoringError`] converts into, e.g. `anyhow::Error`).
pub fn score_files<E: From<ScoringError>>(
    model: &Model,
    paths: &[&Path],
    batch_size: usize,
    counts: &mut ConversionCounts,
    each: &mut dyn FnMut(usize, LoadedImage, Scored) -> Result<(), E>,
) -> Result<(), E> {
    let mut index = 0;
    for chunk in paths.chunks(batch_size.max(1)) {
        let images: Vec<LoadedImage> = chunk
            .par_iter()
            .map(|p| load_rgb(p))
            .collect::<Result<_, DatasetError>>()
            .map_err(ScoringError::from)?;
        let views: Vec<Rgb8<'_>> = images.iter().map(|i| Rgb8::from(&i.image)).collect();
        let scored = model
            .score_rgb8(&views)
            .map_err(|source| ScoringError::Model {
                first: chunk[0].to_path_buf(),
                source,
            })?;
        for (image, s) in images.into_iter().zip(scored) {
            counts.record_loaded(&image);
            each(index, image, s)?;
            index += 1;
        }
    }
    Ok(())
}
