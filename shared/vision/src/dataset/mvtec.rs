//! The MVTec AD layout: `train/good`, `test/<type>`, `ground_truth/<type>/<stem>_mask.png` per category.

use std::path::{Path, PathBuf};

use super::category::CategoryFolders;
use super::scan::{self, is_dir, list_dir, MaskIndex};
use super::{Dataset, DatasetError, DatasetWarning, Layout, Sample};

/// An MVTec category folder is one holding `train/good/`.
const CATEGORY: CategoryFolders = CategoryFolders {
    layout: Layout::Mvtec,
    marker: &["train", "good"],
    not_categories: &[],
    what: "a folder of good training images",
    what_elsewhere: " (or <category>/train/good)",
};

pub(crate) fn looks_like(root: &Path, category: Option<&str>) -> bool {
    CATEGORY.looks_like(root, category)
}

pub(crate) fn categories(root: &Path) -> Result<Vec<String>, DatasetError> {
    CATEGORY.categories(root)
}

/// Files and folders met while reading a category that the layout does not use.
#[derive(Default)]
struct Leftovers {
    skipped: Vec<PathBuf>,
    ignored: Vec<PathBuf>,
}

/// A good sample named `<prefix>_<stem>`.
fn good_sample(prefix: &str, path: PathBuf) -> Sample {
    Sample {
        name: format!("{prefix}_{}", scan::sanitize(&scan::file_stem(&path))),
        path,
        defect_type: None,
        mask: None,
    }
}

pub(crate) fn open(root: &Path, category: Option<&str>) -> Result<Dataset, DatasetError> {
    let (dir, category) = CATEGORY.resolve(root, category)?;
    let mut left = Leftovers::default();
    let train = train_samples(&dir, &mut left)?;
    // A category without `test/` can still be fitted; commands that need test images say so themselves.
    let (mut test, mask_indexes) = test_samples(&dir, &mut left)?;
    test.sort_by(|a, b| a.path.cmp(&b.path));

    let mut warnings = Vec::new();
    let unused = scan::unused_masks(&mask_indexes, &[&test]);
    if !unused.is_empty() {
        warnings.push(DatasetWarning::UnusedMasks {
            count: unused.len(),
            examples: super::examples(&unused),
        });
    }
    if !left.ignored.is_empty() {
        warnings.push(DatasetWarning::IgnoredFolders {
            folders: left.ignored,
        });
    }
    left.skipped.sort();
    Ok(Dataset {
        category,
        layout: Layout::Mvtec,
        root: dir,
        train,
        validation: Vec::new(),
        test,
        skipped: left.skipped,
        warnings,
    })
}

/// `train/good/*`; an error if it holds no image.
fn train_samples(dir: &Path, left: &mut Leftovers) -> Result<Vec<Sample>, DatasetError> {
    let train_dir = CATEGORY.marker_in(dir);
    let listing = list_dir(&train_dir)?;
    if listing.images.is_empty() {
        return Err(DatasetError::EmptyTrainSet {
            folder: train_dir,
            skipped: listing.skipped.len(),
        });
    }
    left.skipped.extend(listing.skipped);
    left.ignored.extend(listing.subdirs);
    let train = listing
        .images
        .into_iter()
        .map(|path| good_sample("train", path))
        .collect();
    if let Ok(l) = list_dir(&dir.join("train")) {
        left.ignored.extend(
            l.subdirs
                .into_iter()
                .filter(|d| scan::dir_name(d) != "good"),
        );
        left.skipped.extend(l.images);
        left.skipped.extend(l.skipped);
    }
    Ok(train)
}

/// `test/<type>/*` with the masks of `ground_truth/<type>/`, and the mask indexes read (for unused-mask warnings).
fn test_samples(
    dir: &Path,
    left: &mut Leftovers,
) -> Result<(Vec<Sample>, Vec<MaskIndex>), DatasetError> {
    let mut test = Vec::new();
    let mut mask_indexes = Vec::new();
    let test_dir = dir.join("test");
    if !is_dir(&test_dir) {
        return Ok((test, mask_indexes));
    }
    let types = list_dir(&test_dir)?;
    // Loose files in `test/` have no type folder, so they cannot be labelled.
    left.skipped.extend(types.images);
    left.skipped.extend(types.skipped);
    for type_dir in types.subdirs {
        let defect = scan::dir_name(&type_dir);
        let listing = list_dir(&type_dir)?;
        left.skipped.extend(listing.skipped);
        left.ignored.extend(listing.subdirs);
        if defect == "good" {
            test.extend(listing.images.into_iter().map(|p| good_sample("good", p)));
            continue;
        }
        if listing.images.is_empty() {
            continue;
        }
        let masks = defect_samples(dir, &defect, listing.images, &mut test)?;
        mask_indexes.push(masks);
    }
    Ok((test, mask_indexes))
}

/// The images of one defect type, each with its required mask from `ground_truth/<type>/`, appended to `out`;
/// returns that folder's mask index.
fn defect_samples(
    dir: &Path,
    defect: &str,
    images: Vec<PathBuf>,
    out: &mut Vec<Sample>,
) -> Result<MaskIndex, DatasetError> {
    let gt_dir = dir.join("ground_truth").join(defect);
    if !is_dir(&gt_dir) {
        return Err(DatasetError::MissingFolder {
            expected: gt_dir,
            what: format!("a folder of ground-truth masks for defect type `{defect}`"),
            layout: Layout::Mvtec,
        });
    }
    let masks = MaskIndex::from_dir(&gt_dir)?;
    for path in images {
        let stem = scan::file_stem(&path);
        let Some(mask) = masks.find(&stem).cloned() else {
            return Err(DatasetError::MissingMask {
                expected: vec![gt_dir.join(format!("{stem}_mask.png"))],
                image: path,
                layout: Layout::Mvtec,
            });
        };
        out.push(Sample {
            name: format!("{}_{}", scan::sanitize(defect), scan::sanitize(&stem)),
            path,
            defect_type: Some(defect.to_string()),
            mask: Some(mask),
        });
    }
    Ok(masks)
}
