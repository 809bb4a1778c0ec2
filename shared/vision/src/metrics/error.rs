//! The error type of the metrics module.

use std::path::PathBuf;

use crate::npy::NpyError;

/// Everything that can go wrong while computing metrics. Variants that concern files carry the offending path, so
/// the CLI can print them as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Scores and labels differ in length.
    #[error("{scores} scores but {labels} labels")]
    LengthMismatch {
        /// Number of scores.
        scores: usize,
        /// Number of labels.
        labels: usize,
    },
    /// No samples at all.
    #[error("no samples to evaluate")]
    Empty,
    /// A ranking metric needs both classes, and one is missing.
    #[error("{metric} is undefined with only one class present ({positives} anomalous, {negatives} normal)")]
    SingleClass {
        /// The metric that was asked for.
        metric: &'static str,
        /// Anomalous samples (images or pixels).
        positives: u64,
        /// Normal samples.
        negatives: u64,
    },
    /// A score is NaN, which has no place in a ranking.
    #[error("score {index} of {context} is NaN")]
    NanScore {
        /// Which scores: an image name, or "image scores".
        context: String,
        /// Position (flat, row-major for maps).
        index: usize,
    },
    /// A map's dimensions disagree with its data.
    #[error("map {name}: {width}x{height} needs {expected} values but {what} has {actual}")]
    MapShape {
        /// Image name.
        name: String,
        /// Declared width.
        width: usize,
        /// Declared height.
        height: usize,
        /// `width * height` (or `usize::MAX` on overflow).
        expected: usize,
        /// "the score map" or "the mask".
        what: &'static str,
        /// The actual length.
        actual: usize,
    },
    /// A per-name image score is NaN.
    #[error("the image score of {0:?} is NaN")]
    NanImageScore(String),
    /// A map with no pixels has no image score.
    #[error("map {name} has no pixels")]
    EmptyMap {
        /// Image name.
        name: String,
    },
    /// The FPR limit of AUPRO must lie in (0, 1].
    #[error("the AUPRO FPR limit must be in (0, 1], got {0}")]
    InvalidFprLimit(f64),
    /// A [`crate::metrics::PixelSource`] returned different data on a later pass than on the first one.
    #[error("the pixel source changed between passes: {0}")]
    SourceChanged(String),
    /// An error raised by a caller-provided [`crate::metrics::PixelSource`].
    #[error("the pixel source failed")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Two images share a name, so per-name image scores would be ambiguous.
    #[error("two images are both named {0:?}")]
    DuplicateImageName(String),
    /// Per-name image scores were given but one image has none.
    #[error("no image score for image {0:?}")]
    MissingImageScore(String),
    /// Per-name image scores name an image that the maps do not have.
    #[error("an image score is given for {0:?} but there is no such map")]
    UnknownImageScore(String),

    /// Reading a directory or file failed.
    #[error("cannot read {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A map file is not a usable `.npy` array.
    #[error("cannot read anomaly map {path}")]
    Npy {
        /// The map file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: NpyError,
    },
    /// A mask file could not be decoded as PNG.
    #[error("cannot decode mask {path}")]
    MaskDecode {
        /// The mask file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// A mask's size differs from its map's.
    #[error("mask {mask} is {mask_width}x{mask_height} but map {map} is {map_width}x{map_height} (width x height)")]
    MaskSizeMismatch {
        /// The mask file.
        mask: PathBuf,
        /// The map file.
        map: PathBuf,
        /// Mask width.
        mask_width: u32,
        /// Mask height.
        mask_height: u32,
        /// Map width (columns).
        map_width: usize,
        /// Map height (rows).
        map_height: usize,
    },
    /// A mask has no map of the same name.
    #[error("mask {mask} has no matching map {expected_map}")]
    MaskWithoutMap {
        /// The mask file.
        mask: PathBuf,
        /// Where the map was looked for.
        expected_map: PathBuf,
    },
    /// The maps directory holds no `.npy` file.
    #[error("no .npy maps in {0}")]
    NoMaps(PathBuf),
    /// A line of the scores CSV cannot be parsed.
    #[error("{path}:{line}: {reason}")]
    CsvSyntax {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// The scores CSV names an image twice.
    #[error("{path}:{line}: image {name:?} already has a score on line {first_line}")]
    CsvDuplicate {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number of the repeat.
        line: usize,
        /// 1-based line number of the first occurrence.
        first_line: usize,
        /// The image name.
        name: String,
    },
    /// The scores CSV names an image that has no map.
    #[error("{path}:{line}: image {name:?} has no map {expected_map}")]
    CsvNameWithoutMap {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The image name.
        name: String,
        /// Where the map was looked for.
        expected_map: PathBuf,
    },
    /// A map has no line in the scores CSV.
    #[error("map {map} has no score in {path}")]
    MapMissingFromCsv {
        /// The CSV file.
        path: PathBuf,
        /// The map file.
        map: PathBuf,
    },
}
