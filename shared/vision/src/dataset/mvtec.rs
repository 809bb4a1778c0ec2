//! The MVTec AD layout: `train/good`, `test/<type>`, `ground_truth/<type>/<stem>_mask.png` per category.

use std::path::{Path, PathBuf};

use super::scan::{self, is_dir, list_dir, MaskIndex};
use super::{folder_category_name, Dataset, DatasetError, DatasetWarning, Layout, Sample};

fn train_good(dir: &Path) -> PathBuf {
    dir.join("train").join("good")
}

pub(crate) fn looks_like(root: &Path, category: Option<&str>) -> bool {
    if is_dir(&train_good(root)) {
        return true;
    }
    // With a category that does not exist, still claim the root if it holds other categories, so the user
    // gets "category not found (available: …)" rather than "unrecognised layout".
    if let Some(c) = category {
        if is_dir(&train_good(&root.join(c))) {
            return true;
        }
    }
    category_dirs(root).map(|v| !v.is_empty()).unwrap_or(false)
}

fn category_dirs(root: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    Ok(list_dir(root)?
        .subdirs
        .into_iter()
        .filter(|d| is_dir(&train_good(d)))
        .collect())
}

pub(crate) fn categories(root: &Path) -> Result<Vec<String>, DatasetError> {
    if is_dir(&train_good(root)) {
        return Ok(vec![folder_category_name(root)]);
    }
    Ok(category_dirs(root)?
        .iter()
        .map(|d| scan::dir_name(d))
        .collect())
}

/// Find the category folder and name.
fn resolve(root: &Path, category: Option<&str>) -> Result<(PathBuf, String), DatasetError> {
    let root_is_category = is_dir(&train_good(root));
    match category {
        Some(c) => {
            let dir = root.join(c);
            if is_dir(&train_good(&dir)) {
                return Ok((dir, c.to_string()));
            }
            if root_is_category && folder_category_name(root) == c {
                return Ok((root.to_path_buf(), c.to_string()));
            }
            let available = categories(root)?;
            if available.is_empty() {
                return Err(DatasetError::MissingFolder {
                    expected: train_good(&dir),
                    what: format!("a folder of good training images of category `{c}`"),
                    layout: Layout::Mvtec,
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
                    expected: train_good(root),
                    what: "a folder of good training images (or <category>/train/good)".into(),
                    layout: Layout::Mvtec,
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

pub(crate) fn open(root: &Path, category: Option<&str>) -> Result<Dataset, DatasetError> {
    let (dir, category) = resolve(root, category)?;
    let mut skipped = Vec::new();
    let mut warnings = Vec::new();
    let mut ignored = Vec::new();

    let train_dir = train_good(&dir);
    let listing = list_dir(&train_dir)?;
    if listing.images.is_empty() {
        return Err(DatasetError::EmptyTrainSet {
            folder: train_dir,
            skipped: listing.skipped.len(),
        });
    }
    skipped.extend(listing.skipped);
    ignored.extend(listing.subdirs);
    let train: Vec<Sample> = listing
        .images
        .into_iter()
        .map(|path| Sample {
            name: format!("train_{}", scan::sanitize(&scan::file_stem(&path))),
            path,
            defect_type: None,
            mask: None,
        })
        .collect();
    if let Ok(l) = list_dir(&dir.join("train")) {
        ignored.extend(
            l.subdirs
                .into_iter()
                .filter(|d| scan::dir_name(d) != "good"),
        );
        skipped.extend(l.images);
        skipped.extend(l.skipped);
    }

    // A category without `test/` can still be fitted; commands that need test images say so themselves.
    let mut test = Vec::new();
    let mut mask_indexes = Vec::new();
    let test_dir = dir.join("test");
    if is_dir(&test_dir) {
        let types = list_dir(&test_dir)?;
        // Loose files in `test/` have no type folder, so they cannot be labelled.
        skipped.extend(types.images);
        skipped.extend(types.skipped);
        for type_dir in types.subdirs {
            let defect = scan::dir_name(&type_dir);
            let listing = list_dir(&type_dir)?;
            skipped.extend(listing.skipped);
            ignored.extend(listing.subdirs);
            if defect == "good" {
                test.extend(listing.images.into_iter().map(|path| Sample {
                    name: format!("good_{}", scan::sanitize(&scan::file_stem(&path))),
                    path,
                    defect_type: None,
                    mask: None,
                }));
                continue;
            }
            if listing.images.is_empty() {
                continue;
            }
            let gt_dir = dir.join("ground_truth").join(&defect);
            if !is_dir(&gt_dir) {
                return Err(DatasetError::MissingFolder {
                    expected: gt_dir,
                    what: format!("a folder of ground-truth masks for defect type `{defect}`"),
                    layout: Layout::Mvtec,
                });
            }
            let masks = MaskIndex::from_dir(&gt_dir)?;
            for path in listing.images {
                let stem = scan::file_stem(&path);
                let Some(mask) = masks.find(&stem).cloned() else {
                    return Err(DatasetError::MissingMask {
                        expected: vec![gt_dir.join(format!("{stem}_mask.png"))],
                        image: path,
                        layout: Layout::Mvtec,
                    });
                };
                test.push(Sample {
                    name: format!("{}_{}", scan::sanitize(&defect), scan::sanitize(&stem)),
                    path,
                    defect_type: Some(defect.clone()),
                    mask: Some(mask),
                });
            }
            mask_indexes.push(masks);
        }
    }
    test.sort_by(|a, b| a.path.cmp(&b.path));

    let unused = scan::unused_masks(&mask_indexes, &[&test]);
    if !unused.is_empty() {
        warnings.push(DatasetWarning::UnusedMasks {
            count: unused.len(),
            examples: super::examples(&unused),
        });
    }
    if !ignored.is_empty() {
        warnings.push(DatasetWarning::IgnoredFolders { folders: ignored });
    }
    skipped.sort();
    Ok(Dataset {
        category,
        layout: Layout::Mvtec,
        root: dir,
        train,
        validation: Vec::new(),
        test,
        skipped,
        warnings,
    })
}
