//! The plain folder layout for a user's own product: `good/`, optional `defect/` (flat or one folder per defect
//! type), optional `masks/` and optional `validation/{good,defect,masks}`.

use std::path::{Path, PathBuf};

use super::scan::{self, is_dir, list_dir, MaskIndex};
use super::{folder_category_name, Dataset, DatasetError, DatasetWarning, Layout, Sample};

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

pub(crate) fn looks_like(root: &Path, category: Option<&str>) -> bool {
    if is_dir(&root.join("good")) {
        return true;
    }
    // With a category that does not exist, still claim the root if it holds other categories, so the user
    // gets "category not found (available: …)" rather than "unrecognised layout".
    if let Some(c) = category {
        if is_dir(&root.join(c).join("good")) {
            return true;
        }
    }
    category_dirs(root).map(|v| !v.is_empty()).unwrap_or(false)
}

fn category_dirs(root: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    Ok(list_dir(root)?
        .subdirs
        .into_iter()
        .filter(|d| {
            is_dir(&d.join("good")) && !NOT_CATEGORIES.contains(&scan::dir_name(d).as_str())
        })
        .collect())
}

pub(crate) fn categories(root: &Path) -> Result<Vec<String>, DatasetError> {
    if is_dir(&root.join("good")) {
        return Ok(vec![folder_category_name(root)]);
    }
    Ok(category_dirs(root)?
        .iter()
        .map(|d| scan::dir_name(d))
        .collect())
}

fn resolve(root: &Path, category: Option<&str>) -> Result<(PathBuf, String), DatasetError> {
    let root_is_category = is_dir(&root.join("good"));
    match category {
        Some(c) => {
            let dir = root.join(c);
            if is_dir(&dir.join("good")) {
                return Ok((dir, c.to_string()));
            }
            if root_is_category && folder_category_name(root) == c {
                return Ok((root.to_path_buf(), c.to_string()));
            }
            let available = categories(root)?;
            if available.is_empty() {
                return Err(DatasetError::MissingFolder {
                    expected: dir.join("good"),
                    what: format!("a folder of good images of category `{c}`"),
                    layout: Layout::Folder,
                });
            }
            Err(DatasetError::CategoryNotFound {
                root: root.to_path_buf(),
                category: c.to_string(),
                available,
            })
        }
        None => {
            if root_is_category {
                return Ok((root.to_path_buf(), folder_category_name(root)));
            }
            let mut dirs = category_dirs(root)?;
            match dirs.len() {
                0 => Err(DatasetError::MissingFolder {
                    expected: root.join("good"),
                    what: "a folder of good images".into(),
                    layout: Layout::Folder,
                }),
                1 => {
                    let d = dirs.remove(0);
                    let name = scan::dir_name(&d);
                    Ok((d, name))
                }
                _ => Err(DatasetError::CategoryRequired {
                    root: root.to_path_buf(),
                    available: dirs.iter().map(|d| scan::dir_name(d)).collect(),
                }),
            }
        }
    }
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
    let (dir, category) = resolve(root, category)?;
    let mut c = Collected::default();

    let good_dir = dir.join("good");
    let good = good_samples(&good_dir, "", &mut c)?;
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

    let mut validation = Vec::new();
    let val_dir = dir.join("validation");
    if is_dir(&val_dir) {
        let l = list_dir(&val_dir)?;
        c.skipped.extend(l.images);
        c.skipped.extend(l.skipped);
        c.ignored.extend(
            l.subdirs
                .into_iter()
                .filter(|d| !["good", "defect", "masks"].contains(&scan::dir_name(d).as_str())),
        );
        if is_dir(&val_dir.join("good")) {
            validation.extend(good_samples(&val_dir.join("good"), "val_good_", &mut c)?);
        }
        if is_dir(&val_dir.join("defect")) {
            let roots = [val_dir.join("masks"), masks.clone()];
            validation.extend(defect_samples(
                &val_dir.join("defect"),
                &roots,
                "val_",
                &mut c,
            )?);
        }
        validation.sort_by(|a, b| a.path.cmp(&b.path));
    }

    let top = list_dir(&dir)?;
    c.ignored.extend(
        top.subdirs
            .into_iter()
            .filter(|d| !KNOWN.contains(&scan::dir_name(d).as_str())),
    );

    let mut warnings = Vec::new();
    if !c.without_mask.is_empty() {
        warnings.push(DatasetWarning::DefectsWithoutMask {
            count: c.without_mask.len(),
            examples: super::examples(&c.without_mask),
        });
    }
    let unused = scan::unused_masks(&c.mask_indexes, &[&test, &validation]);
    if !unused.is_empty() {
        warnings.push(DatasetWarning::UnusedMasks {
            count: unused.len(),
            examples: super::examples(&unused),
        });
    }
    if !c.ignored.is_empty() {
        c.ignored.sort();
        warnings.push(DatasetWarning::IgnoredFolders { folders: c.ignored });
    }
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
