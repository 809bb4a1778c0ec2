//! Datasets: find the good and defective images of one product on disk and split them into train, validation
//! and test.
//!
//! kestrel's detectors are *unsupervised*: they are fitted on good images only and flag whatever looks
//! different. A dataset therefore has three parts with strict roles:
//!
//! * **train** — good images only; the detector is fitted on these.
//! * **validation** — images used to choose the decision threshold: good images held out of train with
//!   [`Dataset::hold_out_validation`], plus any defect images the user supplied for that purpose. Thresholds are
//!   *never* chosen on the test set, because a threshold tuned on test makes the reported test metrics
//!   optimistic.
//! * **test** — good and defective images (with ground-truth masks where available) for reporting metrics.
//!
//! # Layouts
//!
//! [`open`] recognises three layouts on disk; [`LayoutChoice::Auto`] tries them in this order:
//!
//! 1. **MVTec AD** — `<root>/<category>/train/good/*`, `<root>/<category>/test/<type>/*` (where `<type>` is
//!    `good` or a defect name) and `<root>/<category>/ground_truth/<type>/<stem>_mask.png`. `<root>` may also be
//!    the category folder itself. Every defect image must have a mask (the benchmark defines one for each);
//!    a missing mask is an error, [`DatasetError::MissingMask`]. `test/good` has no masks.
//! 2. **VisA** — a split CSV, `<root>/split_csv/1cls.csv` by default, with columns `object,split,label,image,mask`
//!    (label `normal`/`anomaly`, paths relative to `<root>`), as published with the VisA benchmark. Anomalous
//!    rows must name a mask.
//! 3. **Folder** — the layout for your own product: `<root>/good/*` and optionally `<root>/defect/*` (or
//!    `<root>/defect/<type>/*` to name defect types), optional masks in `<root>/masks/` named `<stem>.png` or
//!    `<stem>_mask.png` (or under `masks/<type>/`), and optionally `<root>/validation/{good,defect}` (with masks in
//!    `<root>/validation/masks/` or `<root>/masks/`). `<root>` may also contain `<category>/good`.
//!    A defect image without a mask is allowed here and is evaluated at image level only (its
//!    [`Sample::mask`] is `None`, and a [`DatasetWarning::DefectsWithoutMask`] is recorded) — collecting pixel
//!    masks is expensive and image-level AUROC is still useful.
//!    **Train/test split:** there is no separate test folder for good images, so a deterministic fraction of
//!    `good/` ([`OpenOptions::folder_test_fraction`], default 0.2 as in anomalib's `Folder` datamodule) is held
//!    out for test. Which images are held out depends only on the seed and the file *names* (a keyed hash
//!    ranking, see [`Dataset::hold_out_validation`]), so it is reproducible across machines and stable when
//!    images are added.
//!
//! # Determinism and validation
//!
//! Samples are sorted by path. Files without an image extension ([`IMAGE_EXTENSIONS`]) are skipped and listed in
//! [`Dataset::skipped`] so the CLI can say so. [`open`] only reads directories (and the VisA CSV): it is cheap
//! and decodes nothing. [`Dataset::inspect`] then reads every image and mask *header* in parallel to catch
//! unreadable files and mask/image size mismatches before a long fit, and counts the colour conversions that
//! loading will perform. Pixel data is decoded later by [`Sample::load`] / [`load_rgb`], whose errors name the
//! file.

mod category;
mod folder;
mod image_io;
mod mvtec;
mod scan;
mod visa;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use image_io::{load_mask, load_rgb, ConversionCounts, LoadedImage, Mask, SourceColour};
pub use scan::IMAGE_EXTENSIONS;

/// Default fraction of `good/` images held out for test in the folder layout.
pub const DEFAULT_FOLDER_TEST_FRACTION: f64 = 0.2;

/// Default seed for the folder layout's train/test split.
pub const DEFAULT_SPLIT_SEED: u64 = 0x006b_6573_7472_656c; // "kestrel" in ASCII

/// Relative path of the VisA split CSV used when none is given.
pub const VISA_DEFAULT_CSV: &str = "split_csv/1cls.csv";

/// One-line description of the recognised layouts, used in error messages.
pub const LAYOUTS_HELP: &str = "recognised layouts: MVTec AD (<root>/<category>/train/good, \
    <root>/<category>/test/<type>, <root>/<category>/ground_truth/<type>/<stem>_mask.png), \
    VisA (<root>/split_csv/1cls.csv with columns object,split,label,image,mask), \
    folder (<root>/good, optional <root>/defect, <root>/masks, <root>/validation/{good,defect})";

/// Which layout [`open`] should read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutChoice {
    /// Detect the layout (MVTec, then VisA, then folder).
    #[default]
    Auto,
    /// MVTec AD.
    Mvtec,
    /// VisA split CSV.
    Visa,
    /// Plain `good/` + `defect/` folders.
    Folder,
}

/// A layout that was actually read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// MVTec AD.
    Mvtec,
    /// VisA split CSV.
    Visa,
    /// Plain `good/` + `defect/` folders.
    Folder,
}

impl Layout {
    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Mvtec => "MVTec AD",
            Layout::Visa => "VisA",
            Layout::Folder => "folder",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// A name unique within the dataset and safe to use as a file name for outputs (heatmaps, reports), e.g.
    /// `crack_000` for `test/crack/000.png` or `train_000` for `train/good/000.png`.
    pub name: String,
    /// `None` for a good image, otherwise the defect type (the MVTec sub-folder, `defect` for the folder layout's
    /// flat `defect/` folder, `anomaly` for VisA).
    pub defect_type: Option<String>,
    /// Ground-truth mask file; `None` for good images and for defect images known at image level only.
    pub mask: Option<PathBuf>,
}

impl Sample {
    /// Whether this is a good (defect-free) image.
    pub fn is_good(&self) -> bool {
        self.defect_type.is_none()
    }

    /// Decode the image to RGB8 ([`load_rgb`]).
    pub fn load(&self) -> Result<LoadedImage, DatasetError> {
        load_rgb(&self.path)
    }

    /// Read the image's header and, if it has a mask, the mask's, checking that their sizes agree.
    fn read_headers(&self) -> Result<image_io::ImageHeader, DatasetError> {
        let h = image_io::read_header(&self.path)?;
        if let Some(m) = &self.mask {
            let mh = image_io::read_header(m)?;
            if (mh.width, mh.height) != (h.width, h.height) {
                return Err(DatasetError::MaskSizeMismatch {
                    mask: m.clone(),
                    mask_width: mh.width,
                    mask_height: mh.height,
                    image: Some(self.path.clone()),
                    image_width: h.width,
                    image_height: h.height,
                });
            }
        }
        Ok(h)
    }

    /// Load the ground-truth mask, checked against the image size `width` × `height`.
    ///
    /// Returns `Ok(None)` when the sample has no mask file: for good images use [`Mask::zeros`]; a defect image
    /// without a mask can only be scored at image level.
    pub fn load_mask(&self, width: u32, height: u32) -> Result<Option<Mask>, DatasetError> {
        match &self.mask {
            None => Ok(None),
            Some(m) => image_io::load_mask_for(m, Some(&self.path), width, height).map(Some),
        }
    }
}

/// Something worth telling the user about a dataset that is not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DatasetWarning {
    /// Defect images without a ground-truth mask (folder layout); they count for image-level metrics only.
    DefectsWithoutMask {
        /// How many.
        count: usize,
        /// The first few, for the message.
        examples: Vec<PathBuf>,
    },
    /// Mask files that belong to no image (a typo in a name, or a deleted image).
    UnusedMasks {
        /// How many.
        count: usize,
        /// The first few.
        examples: Vec<PathBuf>,
    },
    /// Sub-folders the layout does not know and ignored (e.g. `bad/` instead of `defect/`).
    IgnoredFolders {
        /// The folders.
        folders: Vec<PathBuf>,
    },
}

fn list_examples(paths: &[PathBuf]) -> String {
    let mut s: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > 3 {
        s.push("…".into());
    }
    s.join(", ")
}

impl fmt::Display for DatasetWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetWarning::DefectsWithoutMask { count, examples } => write!(
                f,
                "{count} defect image(s) have no mask and are evaluated at image level only (e.g. {}); \
                 add <root>/masks/<stem>.png for pixel-level metrics",
                list_examples(examples)
            ),
            DatasetWarning::UnusedMasks { count, examples } => write!(
                f,
                "{count} mask file(s) match no image and were ignored (e.g. {}); check their names",
                list_examples(examples)
            ),
            DatasetWarning::IgnoredFolders { folders } => write!(
                f,
                "ignored folder(s) the layout does not use: {}",
                list_examples(folders)
            ),
        }
    }
}

/// A product's images, split by role. See the [module docs](self) for what each split is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Product category (MVTec category, VisA object, or the folder name).
    pub category: String,
    /// The layout that was read.
    pub layout: Layout,
    /// The folder the dataset was opened from (the category folder for MVTec).
    pub root: PathBuf,
    /// Good images to fit on, sorted by path.
    pub train: Vec<Sample>,
    /// Images for choosing thresholds (held-out good images plus user-supplied validation images).
    pub validation: Vec<Sample>,
    /// Images for reporting metrics, sorted by path.
    pub test: Vec<Sample>,
    /// Files that were skipped: their extension is not in [`IMAGE_EXTENSIONS`], or they lie where the layout
    /// expects only folders (e.g. loose images directly in MVTec's `test/`).
    pub skipped: Vec<PathBuf>,
    /// Non-fatal findings to show the user.
    pub warnings: Vec<DatasetWarning>,
}

/// Per-split counts and what [`Dataset::inspect`] found in the file headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetReport {
    /// Training images.
    pub train: usize,
    /// Validation images (good and defect).
    pub validation: usize,
    /// Good test images.
    pub test_good: usize,
    /// Defect test images per defect type.
    pub test_defects: BTreeMap<String, usize>,
    /// Masks whose size was checked against their image.
    pub masks_checked: usize,
    /// Defect images (validation or test) without a mask.
    pub defects_without_mask: usize,
    /// Colour conversions that loading the images will perform.
    pub conversions: ConversionCounts,
    /// Number of images per `(width, height)`.
    pub image_sizes: BTreeMap<(u32, u32), usize>,
}

impl Dataset {
    /// All samples: train, then validation, then test.
    pub fn all_samples(&self) -> impl Iterator<Item = &Sample> {
        self.train.iter().chain(&self.validation).chain(&self.test)
    }

    /// The defect types present in the test set, sorted.
    pub fn defect_types(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .test
            .iter()
            .filter_map(|s| s.defect_type.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Move a deterministic `fraction` of the good training images into [`Dataset::validation`], for choosing
    /// the decision threshold.
    ///
    /// Thresholds are chosen on held-out good images (plus any user-supplied validation defects already in
    /// `validation`), never on the test set. The held-out images are those with the lowest keyed hash of
    /// `(seed, file name)`; `round(fraction·n)` of them, at least one when `fraction > 0` and `n ≥ 2`. The
    /// same seed and files always give the same split, on any machine. Calling this twice holds out more.
    ///
    /// Returns how many images were moved. Errors if `fraction` is not in `[0, 1)` or if holding out would leave
    /// no training image.
    pub fn hold_out_validation(&mut self, fraction: f64, seed: u64) -> Result<usize, DatasetError> {
        check_fraction("validation fraction", fraction)?;
        let n = self.train.len();
        let k = scan::holdout_count(n, fraction);
        if k >= n && k > 0 {
            return Err(DatasetError::HoldOutTooLarge {
                what: "validation",
                fraction,
                available: n,
            });
        }
        let train = std::mem::take(&mut self.train);
        let (kept, held) = scan::hold_out(train, k, seed);
        self.train = kept;
        self.validation.extend(held);
        self.validation.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(k)
    }

    /// Read the header of every image and mask (in parallel, no pixel decoding) to find unreadable files and
    /// mask/image size mismatches up front, and to count the colour conversions loading will do.
    ///
    /// The error returned is the first in dataset order (train, validation, test), so it is deterministic.
    /// Corrupt pixel data behind a valid header is only detected when the image is decoded.
    pub fn inspect(&self) -> Result<DatasetReport, DatasetError> {
        let samples: Vec<&Sample> = self.all_samples().collect();
        let headers: Vec<Result<image_io::ImageHeader, DatasetError>> =
            samples.par_iter().map(|s| s.read_headers()).collect();
        let mut report = DatasetReport {
            train: self.train.len(),
            validation: self.validation.len(),
            ..DatasetReport::default()
        };
        for s in &self.test {
            match &s.defect_type {
                None => report.test_good += 1,
                Some(t) => *report.test_defects.entry(t.clone()).or_default() += 1,
            }
        }
        for (s, h) in samples.iter().zip(headers) {
            let h = h?;
            report.conversions.record(h.source, h.bit_depth);
            *report.image_sizes.entry((h.width, h.height)).or_default() += 1;
            if s.mask.is_some() {
                report.masks_checked += 1;
            } else if !s.is_good() {
                report.defects_without_mask += 1;
            }
        }
        Ok(report)
    }
}

/// Errors from finding and reading datasets. Every variant names the path involved and says what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// The dataset root does not exist.
    #[error("dataset folder {} does not exist; pass the folder that contains the product images ({LAYOUTS_HELP})", root.display())]
    RootNotFound {
        /// The root given.
        root: PathBuf,
    },
    /// No layout matched the root.
    #[error("{} is not a dataset kestrel recognises (it contains: {}); {LAYOUTS_HELP}", root.display(), describe_entries(entries))]
    UnrecognisedLayout {
        /// The root given.
        root: PathBuf,
        /// Names of (some of) the entries found in it.
        entries: Vec<String>,
    },
    /// A folder the chosen layout requires is missing.
    #[error("expected {what} at {} for the {layout} layout, but it does not exist; {LAYOUTS_HELP}", expected.display())]
    MissingFolder {
        /// The folder (or, for VisA, the split CSV) that should exist.
        expected: PathBuf,
        /// What it is, e.g. "a folder of good training images".
        what: String,
        /// The layout being read.
        layout: Layout,
    },
    /// The requested category is not in the dataset.
    #[error("category `{category}` not found in {} (available: {})", root.display(), describe_entries(available))]
    CategoryNotFound {
        /// The dataset root.
        root: PathBuf,
        /// The category asked for.
        category: String,
        /// Categories that exist.
        available: Vec<String>,
    },
    /// The dataset holds several categories and none was chosen.
    #[error("{} holds several categories ({}); choose one with --category", root.display(), describe_entries(available))]
    CategoryRequired {
        /// The dataset root.
        root: PathBuf,
        /// Categories that exist.
        available: Vec<String>,
    },
    /// A file or folder could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An image or mask could not be decoded.
    #[error("cannot decode image {}; the file is corrupt, truncated or not a PNG/JPEG/BMP/TIFF image — re-export or remove it", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// An image with zero width or height.
    #[error("image {} has zero width or height; re-export or remove it", path.display())]
    EmptyImage {
        /// The file.
        path: PathBuf,
    },
    /// A mask's size differs from its image's.
    #[error("mask {} is {mask_width}×{mask_height} but {} is {image_width}×{image_height}; a mask must have exactly the size of its image (is it the mask of another image?)", mask.display(), describe_image(image))]
    MaskSizeMismatch {
        /// The mask file.
        mask: PathBuf,
        /// Mask width.
        mask_width: u32,
        /// Mask height.
        mask_height: u32,
        /// The image the mask belongs to, when known.
        image: Option<PathBuf>,
        /// Image (expected) width.
        image_width: u32,
        /// Image (expected) height.
        image_height: u32,
    },
    /// No good training images were found.
    #[error("no training images in {}{}; the detector is fitted on good images only, so at least one is needed (supported extensions: {})", folder.display(), describe_skipped(*skipped), IMAGE_EXTENSIONS.join(", "))]
    EmptyTrainSet {
        /// The folder that should hold them.
        folder: PathBuf,
        /// Files skipped there for their extension.
        skipped: usize,
    },
    /// A defect image whose layout requires a mask has none.
    #[error("defect image {} has no ground-truth mask (looked for {}); the {layout} layout requires a mask for every defect image — add it, or use the folder layout, where masks are optional", image.display(), describe_paths(expected))]
    MissingMask {
        /// The defect image.
        image: PathBuf,
        /// Where masks were looked for.
        expected: Vec<PathBuf>,
        /// The layout being read.
        layout: Layout,
    },
    /// A file named by a split CSV does not exist.
    #[error("{} line {line} names {}, which does not exist; fix the CSV or the dataset root", csv.display(), path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// The CSV that names it.
        csv: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A malformed split CSV.
    #[error("{} line {line}: {message}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A split fraction outside `[0, 1)`.
    #[error("{what} must be at least 0 and less than 1, got {fraction}")]
    InvalidFraction {
        /// Which fraction.
        what: &'static str,
        /// The value given.
        fraction: f64,
    },
    /// Holding out images would leave no training image.
    #[error("holding out a {what} fraction of {fraction} from {available} good training image(s) would leave none to fit on; lower the fraction or add good images")]
    HoldOutTooLarge {
        /// Which split the images were for.
        what: &'static str,
        /// The fraction asked for.
        fraction: f64,
        /// Good training images available.
        available: usize,
    },
}

fn describe_entries(v: &[String]) -> String {
    if v.is_empty() {
        return "nothing".into();
    }
    let mut s: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
    if v.len() > 12 {
        s.push("…");
    }
    s.join(", ")
}

fn describe_paths(v: &[PathBuf]) -> String {
    v.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn describe_image(image: &Option<PathBuf>) -> String {
    match image {
        Some(p) => format!("its image {}", p.display()),
        None => "the image".into(),
    }
}

fn describe_skipped(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} file(s) skipped for an unsupported extension)")
    }
}

fn check_fraction(what: &'static str, fraction: f64) -> Result<(), DatasetError> {
    if fraction.is_finite() && (0.0..1.0).contains(&fraction) {
        Ok(())
    } else {
        Err(DatasetError::InvalidFraction { what, fraction })
    }
}

/// Everything [`open_with`] can be told; [`open`] uses the defaults for the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenOptions {
    /// Category (MVTec category, VisA object, folder sub-folder). Required when the root holds several.
    pub category: Option<String>,
    /// Layout to read.
    pub layout: LayoutChoice,
    /// Folder layout: fraction of `good/` held out for test, in `[0, 1)`.
    pub folder_test_fraction: f64,
    /// Folder layout: seed of the train/test split.
    pub split_seed: u64,
    /// VisA: the split CSV, if not `<root>/split_csv/1cls.csv` (relative paths are relative to the root).
    pub visa_csv: Option<PathBuf>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            category: None,
            layout: LayoutChoice::Auto,
            folder_test_fraction: DEFAULT_FOLDER_TEST_FRACTION,
            split_seed: DEFAULT_SPLIT_SEED,
            visa_csv: None,
        }
    }
}

/// Open the dataset at `root` (see the [module docs](self) for the layouts).
///
/// `category` picks a category when the root holds several (MVTec root, VisA CSV, folder root with
/// `<category>/good`). Only directories (and the VisA CSV) are read; use [`Dataset::inspect`] to check headers.
pub fn open(
    root: &Path,
    category: Option<&str>,
    layout: LayoutChoice,
) -> Result<Dataset, DatasetError> {
    open_with(
        root,
        &OpenOptions {
            category: category.map(str::to_string),
            layout,
            ..OpenOptions::default()
        },
    )
}

/// [`open`] with all options.
pub fn open_with(root: &Path, opts: &OpenOptions) -> Result<Dataset, DatasetError> {
    if !scan::is_dir(root) {
        return Err(DatasetError::RootNotFound {
            root: root.to_path_buf(),
        });
    }
    check_fraction("folder test fraction", opts.folder_test_fraction)?;
    let category = opts.category.as_deref();
    let layout = match opts.layout {
        LayoutChoice::Mvtec => Layout::Mvtec,
        LayoutChoice::Visa => Layout::Visa,
        LayoutChoice::Folder => Layout::Folder,
        LayoutChoice::Auto => detect(root, category, opts.visa_csv.as_deref())?,
    };
    let mut ds = match layout {
        Layout::Mvtec => mvtec::open(root, category)?,
        Layout::Visa => visa::open(
            root,
            category,
            &visa_csv_path(root, opts.visa_csv.as_deref()),
        )?,
        Layout::Folder => folder::open(root, category, opts.folder_test_fraction, opts.split_seed)?,
    };
    scan::make_names_unique(&mut [&mut ds.train, &mut ds.validation, &mut ds.test]);
    Ok(ds)
}

fn visa_csv_path(root: &Path, given: Option<&Path>) -> PathBuf {
    match given {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => root.join(p),
        None => root.join(VISA_DEFAULT_CSV),
    }
}

/// Which layout `root` is in, without reading it fully.
pub fn detect_layout(root: &Path, category: Option<&str>) -> Result<Layout, DatasetError> {
    if !scan::is_dir(root) {
        return Err(DatasetError::RootNotFound {
            root: root.to_path_buf(),
        });
    }
    detect(root, category, None)
}

fn detect(
    root: &Path,
    category: Option<&str>,
    visa_csv: Option<&Path>,
) -> Result<Layout, DatasetError> {
    if visa_csv.is_some() {
        return Ok(Layout::Visa);
    }
    if mvtec::looks_like(root, category) {
        return Ok(Layout::Mvtec);
    }
    if visa_csv_path(root, None).is_file() {
        return Ok(Layout::Visa);
    }
    if folder::looks_like(root, category) {
        return Ok(Layout::Folder);
    }
    Err(DatasetError::UnrecognisedLayout {
        root: root.to_path_buf(),
        entries: entry_names(root),
    })
}

fn entry_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        format!("{n}/")
                    } else {
                        n
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The categories available under `root`: MVTec sub-folders that have `train/good` (or the root itself if it is
/// a category folder), VisA objects in the split CSV, or folder-layout sub-folders with `good/` (or the root
/// itself).
pub fn categories(root: &Path) -> Result<Vec<String>, DatasetError> {
    match detect_layout(root, None)? {
        Layout::Mvtec => mvtec::categories(root),
        Layout::Visa => visa::categories(&visa_csv_path(root, None)),
        Layout::Folder => folder::categories(root),
    }
}

/// The name of a folder used as a category: its last component, resolving `.`/`..` when possible.
pub(crate) fn folder_category_name(root: &Path) -> String {
    let name = scan::dir_name(root);
    if !name.is_empty() && name != "." && name != ".." {
        return name;
    }
    root.canonicalize()
        .ok()
        .map(|p| scan::dir_name(&p))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "product".to_string())
}

pub(crate) fn examples(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths.iter().take(5).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_can_cross_threads_and_into_anyhow() {
        send_sync_static::<DatasetError>();
        send_sync_static::<crate::preprocess::PreprocessError>();
        send_sync_static::<crate::synthetic::SyntheticError>();
    }

    #[test]
    fn layout_choice_serde_names() {
        let v: Vec<LayoutChoice> =
            serde_json::from_str(r#"["auto","mvtec","visa","folder"]"#).unwrap();
        assert_eq!(
            v,
            [
                LayoutChoice::Auto,
                LayoutChoice::Mvtec,
                LayoutChoice::Visa,
                LayoutChoice::Folder
            ]
        );
        let o: OpenOptions = serde_json::from_str(r#"{"category":"bottle"}"#).unwrap();
        assert_eq!(o.folder_test_fraction, DEFAULT_FOLDER_TEST_FRACTION);
        assert_eq!(o.layout, LayoutChoice::Auto);
    }
}
