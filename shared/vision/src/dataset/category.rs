//! Finding the category folder in the folder-based layouts (MVTec AD and the plain folder layout), written once.
//!
//! Both layouts accept either a category folder itself or a root holding several, and tell a category folder by a
//! marker sub-folder (`train/good` for MVTec, `good` for the folder layout). The rules for choosing one, and the
//! errors when that fails, are the same; only the marker and the wording differ.

use std::path::{Path, PathBuf};

use super::scan::{self, is_dir, list_dir};
use super::{folder_category_name, DatasetError, Layout};

/// How one layout recognises its category folders.
pub(crate) struct CategoryFolders {
    /// The layout, for error messages.
    pub layout: Layout,
    /// The path, relative to a category folder, whose presence marks it (`["train", "good"]` or `["good"]`).
    pub marker: &'static [&'static str],
    /// Sub-folder names that are never categories even when they hold the marker.
    pub not_categories: &'static [&'static str],
    /// What the marker folder holds, for "expected … at …" errors ("a folder of good training images").
    pub what: &'static str,
    /// Added to [`Self::what`] when no category was named, to show the other place it may be.
    pub what_elsewhere: &'static str,
}

impl CategoryFolders {
    /// The marker folder inside `dir`.
    pub fn marker_in(&self, dir: &Path) -> PathBuf {
        self.marker.iter().fold(dir.to_path_buf(), |p, c| p.join(c))
    }

    /// Whether `root` is in this layout: a category folder, a root holding `category`, or a root holding any.
    pub fn looks_like(&self, root: &Path, category: Option<&str>) -> bool {
        if is_dir(&self.marker_in(root)) {
            return true;
        }
        // With a category that does not exist, still claim the root if it holds other categories, so the user
        // gets "category not found (available: …)" rather than "unrecognised layout".
        if let Some(c) = category {
            if is_dir(&self.marker_in(&root.join(c))) {
                return true;
            }
        }
        self.dirs(root).map(|v| !v.is_empty()).unwrap_or(false)
    }

    /// The category folders directly under `root`.
    fn dirs(&self, root: &Path) -> Result<Vec<PathBuf>, DatasetError> {
        Ok(list_dir(root)?
            .subdirs
            .into_iter()
            .filter(|d| {
                is_dir(&self.marker_in(d))
                    && !self.not_categories.contains(&scan::dir_name(d).as_str())
            })
            .collect())
    }

    /// The categories available: the root's own name if it is a category folder, else its category sub-folders.
    pub fn categories(&self, root: &Path) -> Result<Vec<String>, DatasetError> {
        if is_dir(&self.marker_in(root)) {
            return Ok(vec![folder_category_name(root)]);
        }
        Ok(self.dirs(root)?.iter().map(|d| scan::dir_name(d)).collect())
    }

    /// The folder and name of the category to read: `category` if given, else the root itself or its only
    /// category.
    pub fn resolve(
        &self,
        root: &Path,
        category: Option<&str>,
    ) -> Result<(PathBuf, String), DatasetError> {
        match category {
            Some(c) => self.resolve_named(root, c),
            None => self.resolve_only(root),
        }
    }

    fn resolve_named(&self, root: &Path, c: &str) -> Result<(PathBuf, String), DatasetError> {
        let dir = root.join(c);
        if is_dir(&self.marker_in(&dir)) {
            return Ok((dir, c.to_string()));
        }
        if is_dir(&self.marker_in(root)) && folder_category_name(root) == c {
            return Ok((root.to_path_buf(), c.to_string()));
        }
        let available = self.categories(root)?;
        if available.is_empty() {
            return Err(DatasetError::MissingFolder {
                expected: self.marker_in(&dir),
                what: format!("{} of category `{c}`", self.what),
                layout: self.layout,
            });
        }
        Err(DatasetError::CategoryNotFound {
            root: root.to_path_buf(),
            category: c.to_string(),
            available,
        })
    }

    fn resolve_only(&self, root: &Path) -> Result<(PathBuf, String), DatasetError> {
        if is_dir(&self.marker_in(root)) {
            return Ok((root.to_path_buf(), folder_category_name(root)));
        }
        let mut dirs = self.dirs(root)?;
        match dirs.len() {
            0 => Err(DatasetError::MissingFolder {
                expected: self.marker_in(root),
                what: format!("{}{}", self.what, self.what_elsewhere),
                layout: self.layout,
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
