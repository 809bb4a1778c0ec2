//! The plain folder layout for a user's own product: `good/`, optional `defect/` (flat or one folder per defect
//! type), optional `masks/` and optional `validation/{good,defect,masks}`.

use std::path::{Path, PathBuf};

use super::category::CategoryFolders;
use super::scan::{self, is_dir, list_dir, MaskIndex};
use super::{Dataset, DatasetError, DatasetWarning, Layout, Sample};

/// Sub-folders of a folder-layout root that the layout reads.
const KNOWN: &[&str] = &["good", "defect", "masks", "validation"];
/// Names that are never folder-layout categories (they belong to a broken MVTec tree instead).
const NOT_CATEGORIES: &[&str] = &[
    "train",
    "test",
    "ground_truth",
    "validation",
    "defect",
    "masks",
];
/// Defect type of images directly in `defect/`.
const FLAT_DEFECT_TYPE: &str = "defect";

/// A folder-layout category folder is one holding `good/`.
const CATEGORY: CategoryFolders = CategoryFolders {
    layout: Layout::Folder,
    marker: &["good"],
    not_categories: NOT_CATEGORIES,
    what: "a folder of good images",
    what_elsewhere: "",
};

pub(crate) fn looks_like(root: &Path, category: Option<&str>) -> bool {
    CATEGORY.looks_like(root, category)
}

pub(crate) fn categories(root: &Path) -> Result<Vec<String>, DatasetError> {
    CATEGORY.categories(root)
}

/// What reading one `good/` or `defect/` tree collects.
#[derive(Default)]
struct Collected {
    skipped: Vec<PathBuf>,
    ignored: Vec<PathBuf>,
    without_mask: Vec<PathBuf>,
    mask_indexes: Vec<MaskIndex>,
}

fn good_samples(dir: &Path, prefix: &str, c: &mut Collected) -> Result<Vec<Sample>, DatasetError> {
    let listing = list_dir(dir)?;
    c.skipped.extend(listing.skipped);
    c.ignored.extend(listing.subdirs);
    Ok(listing
        .images
        .into_iter()
        .map(|path| Sample {
            name: format!("{prefix}{}", scan::sanitize(&scan::file_stem(&path))),
            path,
            defect_type: None,
            mask: None,
        })
        .collect())
}

/// Defect images under `dir` (flat files → type `defect`, sub-folders → their name), with masks looked up in
/// `mask_roots` in order: first `<mask_root>/<type>/`, then `<mask_root>/`.
fn defect_samples(
    dir: &Path,
    mask_roots: &[PathBuf],
    prefix: &str,
    c: &mut Collected,
) -> Result<Vec<Sample>, DatasetError> {
    let top = list_dir(dir)?;
    c.skipped.extend(top.skipped);
    let mut groups = vec![(FLAT_DEFECT_TYPE.to_string(), top.images)];
    for sub in top.subdirs {
        let l = list_dir(&sub)?;
        c.skipped.extend(l.skipped);
        c.ignored.extend(l.subdirs);
        groups.push((scan::dir_name(&sub), l.images));
    }
    let flat_indexes = mask_roots
        .iter()
        .map(|r| MaskIndex::from_dir(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (defect, images) in groups {
        if images.is_empty() {
            continue;
        }
        let typed = if defect == FLAT_DEFECT_TYPE {
            Vec::new()
        } else {
            mask_roots
                .iter()
                .map(|r| MaskIndex::from_dir(&r.join(&defect)))
                .collect::<Result<Vec<_>, _>>()?
        };
        // Priority: for each mask root in turn, its per-type folder, then the root itself.
        let order: Vec<&MaskIndex> = flat_indexes
            .iter()
            .enumerate()
            .flat_map(|(i, flat)| typed.get(i).into_iter().chain(std::iter::once(flat)))
            .collect();
        for path in images {
            let stem = scan::file_stem(&path);
            let mask = order.iter().find_map(|idx| idx.find(&stem)).cloned();
            if mask.is_none() {
                c.without_mask.push(path.clone());
            }
            out.push(Sample {
                name: format!(
                    "{prefix}{}_{}",
                    scan::sanitize(&defect),
                    scan::sanitize(&stem)
                ),
                path,
                defect_type: Some(defect.clone()),
                mask,
            });
        }
        c.mask_indexes.extend(typed);
    }
    c.mask_indexes.extend(flat_indexes);
    Ok(out)
}

pub(crate) fn open(
    root: &Path,
    category: Option<&str>,
    test_fraction: f64,
    seed: u64,
) -> Result<Dataset, DatasetError> {
    let (dir, category) = CATEGORY.resolve(root, category)?;
    let mut c = Collected::default();

    let (train, mut test) = split_good(&dir, test_fraction, seed, &mut c)?;
    let masks = dir.join("masks");
    let defect_dir = dir.join("defect");
    if is_dir(&defect_dir) {
        test.extend(defect_samples(
            &defect_dir,
            std::slice::from_ref(&masks),
            "",
            &mut c,
        )?);
    }
    test.sort_by(|a, b| a.path.cmp(&b.path));
    let validation = validation_samples(&dir.join("validation"), &masks, &mut c)?;

    let top = list_dir(&dir)?;
    c.ignored.extend(
        top.subdirs
            .into_iter()
            .filter(|d| !KNOWN.contains(&scan::dir_name(d).as_str())),
    );
    let warnings = warnings(&mut c, &test, &validation);
    c.skipped.sort();
    Ok(Dataset {
        category,
        layout: Layout::Folder,
        root: dir,
        train,
        validation,
        test,
        skipped: c.skipped,
        warnings,
    })
}

/// `good/*` split by name hash into train and the good part of test (there is no separate test folder).
fn split_good(
    dir: &Path,
    test_fraction: f64,
    seed: u64,
    c: &mut Collected,
) -> Result<(Vec<Sample>, Vec<Sample>), DatasetError> {
    let good_dir = dir.join("good");
    let good = good_samples(&good_dir, "", c)?;
    if good.is_empty() {
        return Err(DatasetError::EmptyTrainSet {
            folder: good_dir,
            skipped: c.skipped.len(),
        });
    }
    let n = good.len();
    let k = scan::holdout_count(n, test_fraction);
    if k >= n && k > 0 {
        return Err(DatasetError::HoldOutTooLarge {
            what: "test",
            fraction: test_fraction,
            available: n,
        });
    }
    let (mut train, mut test) = scan::hold_out(good, k, seed);
    for s in &mut train {
        s.name = format!("train_{}", s.name);
    }
    for s in &mut test {
        s.name = format!("good_{}", s.name);
    }
    Ok((train, test))
}

/// `validation/{good,defect}`, with defect masks from `validation/masks/`, then the category's `masks/`.
fn validation_samples(
    val_dir: &Path,
    masks: &Path,
    c: &mut Collected,
) -> Result<Vec<Sample>, DatasetError> {
    let mut validation = Vec::new();
    if !is_dir(val_dir) {
        return Ok(validation);
    }
    let l = list_dir(val_dir)?;
    c.skipped.extend(l.images);
    c.skipped.extend(l.skipped);
    c.ignored.extend(
        l.subdirs
            .into_iter()
            .filter(|d| !["good", "defect", "masks"].contains(&scan::dir_name(d).as_str())),
    );
    if is_dir(&val_dir.join("good")) {
        validation.extend(good_samples(&val_dir.join("good"), "val_good_", c)?);
    }
    if is_dir(&val_dir.join("defect")) {
        let roots = [val_dir.join("masks"), masks.to_path_buf()];
        validation.extend(defect_samples(&val_dir.join("defect"), &roots, "val_", c)?);
    }
    validation.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(validation)
}

/// What to tell the user about what was collected: defects without masks, unused masks, ignored folders.
fn warnings(c: &mut Collected, test: &[Sample], validation: &[Sample]) -> Vec<DatasetWarning> {
    let mut warnings = Vec::new();
    if !c.without_mask.is_empty() {
        warnings.push(DatasetWarning::DefectsWithoutMask {
            count: c.without_mask.len(),
            examples: super::examples(&c.without_mask),
        });
    }
    let unused = scan::unused_masks(&c.mask_indexes, &[test, validation]);
    if !unused.is_empty() {
        warnings.push(DatasetWarning::UnusedMasks {
            count: unused.len(),
            examples: super::examples(&unused),
        });
    }
    if !c.ignored.is_empty() {
        c.ignored.sort();
        warnings.push(DatasetWarning::IgnoredFolders {
            folders: std::mem::take(&mut c.ignored),
        });
    }
    warnings
}
