//! Filesystem helpers shared by the layouts: listing image files deterministically, pairing images with masks,
//! making sample names unique and filesystem-safe, and the seeded hold-out rule.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::{DatasetError, Sample};

/// File extensions (lower-case) that are treated as images; everything else in an image folder is skipped and
/// counted.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

pub(crate) fn is_dir(p: &Path) -> bool {
    p.is_dir()
}

pub(crate) fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

/// The content of one folder, each list sorted by path.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub images: Vec<PathBuf>,
    /// Regular files without an image extension.
    pub skipped: Vec<PathBuf>,
    pub subdirs: Vec<PathBuf>,
}

pub(crate) fn list_dir(dir: &Path) -> Result<Listing, DatasetError> {
    let io_err = |source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Listing::default();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        // `metadata` follows symlinks, so a dataset assembled from links works; a dangling link is skipped.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => out.subdirs.push(path),
            Ok(m) if m.is_file() => {
                if has_image_extension(&path) {
                    out.images.push(path)
                } else {
                    out.skipped.push(path)
                }
            }
            _ => out.skipped.push(path),
        }
    }
    out.images.sort();
    out.skipped.sort();
    out.subdirs.sort();
    Ok(out)
}

pub(crate) fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Mask files of one folder, keyed by the stem of the image they belong to: `<stem>_mask.<ext>` (MVTec) or
/// `<stem>.<ext>`. When both exist the `_mask` file wins, since that is the explicit convention.
#[derive(Debug, Default)]
pub(crate) struct MaskIndex {
    by_stem: BTreeMap<String, PathBuf>,
}

impl MaskIndex {
    /// Index `dir`; a missing folder gives an empty index.
    pub fn from_dir(dir: &Path) -> Result<Self, DatasetError> {
        let mut idx = Self::default();
        if !is_dir(dir) {
            return Ok(idx);
        }
        let listing = list_dir(dir)?;
        let (explicit, plain): (Vec<_>, Vec<_>) = listing
            .images
            .into_iter()
            .partition(|p| file_stem(p).ends_with("_mask"));
        for p in plain {
            idx.by_stem.insert(file_stem(&p), p);
        }
        for p in explicit {
            let stem = file_stem(&p);
            let key = stem.trim_end_matches("_mask").to_string();
            idx.by_stem.insert(key, p);
        }
        Ok(idx)
    }

    pub fn find(&self, image_stem: &str) -> Option<&PathBuf> {
        self.by_stem.get(image_stem)
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.by_stem.values()
    }
}

/// Mask files in `indexes` that no sample uses.
pub(crate) fn unused_masks<'a>(
    indexes: impl IntoIterator<Item = &'a MaskIndex>,
    samples: &[&[Sample]],
) -> Vec<PathBuf> {
    let used: HashSet<&PathBuf> = samples
        .iter()
        .flat_map(|s| s.iter())
        .filter_map(|s| s.mask.as_ref())
        .collect();
    let mut unused: Vec<PathBuf> = indexes
        .into_iter()
        .flat_map(|i| i.paths())
        .filter(|p| !used.contains(p))
        .cloned()
        .collect();
    unused.sort();
    unused.dedup();
    unused
}

/// A filesystem-safe version of `s`: ASCII letters, digits, `-` and `_` are kept, anything else becomes `_`.
pub(crate) fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "image".to_string()
    } else {
        out
    }
}

/// Make every sample name unique across all splits by appending `_2`, `_3`, … to later duplicates (duplicates
/// arise when sanitising maps two stems to the same name, or when one stem appears in two folders).
pub(crate) fn make_names_unique(splits: &mut [&mut Vec<Sample>]) {
    let mut seen = HashSet::new();
    for split in splits.iter_mut() {
        for s in split.iter_mut() {
            if seen.insert(s.name.clone()) {
                continue;
            }
            let mut k = 2usize;
            loop {
                let candidate = format!("{}_{k}", s.name);
                if seen.insert(candidate.clone()) {
                    s.name = candidate;
                    break;
                }
                k += 1;
            }
        }
    }
}

/// A stable 64-bit key of `(seed, name)`: FNV-1a over the bytes, finished with the SplitMix64 mixer.
///
/// Written out rather than using `std`'s hasher because that one is explicitly allowed to change between Rust
/// releases, and the split of a dataset must not.
pub(crate) fn split_key(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many of `n` items a hold-out `fraction` takes: `round(fraction·n)`, at least one when `fraction > 0`
/// and there are two or more items (so a small dataset still gets a non-empty hold-out).
pub(crate) fn holdout_count(n: usize, fraction: f64) -> usize {
    if n == 0 || fraction <= 0.0 {
        return 0;
    }
    let k = (fraction * n as f64).round() as usize;
    if k == 0 && n >= 2 {
        1
    } else {
        k.min(n)
    }
}

/// Split `samples` into `(kept, held_out)` with `k` held out. Which ones is decided by ranking on
/// [`split_key`] of the file name (not the full path, so moving the dataset keeps the split), which makes the
/// choice deterministic for a seed and stable when images are added: an image only changes side if a new one
/// outranks it. Both halves stay sorted by path.
pub(crate) fn hold_out(samples: Vec<Sample>, k: usize, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let mut ranked: Vec<(u64, usize)> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            (split_key(seed, &name), i)
        })
        .collect();
    // Ties (identical file names in different folders) are broken by the original, path-sorted position.
    ranked.sort_unstable();
    let mut out_flags = vec![false; samples.len()];
    for &(_, i) in ranked.iter().take(k) {
        out_flags[i] = true;
    }
    let mut kept = Vec::with_capacity(samples.len() - k.min(samples.len()));
    let mut held = Vec::with_capacity(k);
    for (s, out) in samples.into_iter().zip(out_flags) {
        if out {
            held.push(s)
        } else {
            kept.push(s)
        }
    }
    (kept, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str) -> Sample {
        Sample {
            path: PathBuf::from(path),
            name: file_stem(Path::new(path)),
            defect_type: None,
            mask: None,
        }
    }

    #[test]
    fn sanitize_keeps_safe_chars() {
        assert_eq!(sanitize("crack_000"), "crack_000");
        assert_eq!(sanitize("a b/c.d"), "a_b_c_d");
        assert_eq!(sanitize("é"), "_");
        assert_eq!(sanitize(""), "image");
    }

    #[test]
    fn names_made_unique_across_splits() {
        let mut a = vec![sample("x/a.png"), sample("y/a.png")];
        let mut b = vec![sample("z/a.png"), sample("z/a_2.png")];
        make_names_unique(&mut [&mut a, &mut b]);
        let names: Vec<_> = a.iter().chain(&b).map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "a_2", "a_3", "a_2_2"]);
    }

    #[test]
    fn split_key_is_pinned() {
        // Pinned so a refactor cannot silently change which images a given seed holds out.
        assert_eq!(split_key(0, ""), splitmix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(split_key(0, "000.png"), split_key(1, "000.png"));
        assert_ne!(split_key(0, "000.png"), split_key(0, "001.png"));
    }

    #[test]
    fn holdout_count_rounds_and_keeps_one() {
        assert_eq!(holdout_count(0, 0.5), 0);
        assert_eq!(holdout_count(10, 0.0), 0);
        assert_eq!(holdout_count(10, 0.2), 2);
        assert_eq!(holdout_count(10, 0.04), 1);
        assert_eq!(holdout_count(1, 0.2), 0);
        assert_eq!(holdout_count(3, 0.5), 2);
    }

    #[test]
    fn hold_out_is_deterministic_sorted_and_stable_when_adding() {
        let all: Vec<Sample> = (0..20).map(|i| sample(&format!("g/{i:03}.png"))).collect();
        let (kept, held) = hold_out(all.clone(), 4, 7);
        assert_eq!(held.len(), 4);
        assert_eq!(kept.len(), 16);
        assert!(held.windows(2).all(|w| w[0].path < w[1].path));
        let (_, held_again) = hold_out(all.clone(), 4, 7);
        assert_eq!(held, held_again);
        let (_, held_other_seed) = hold_out(all.clone(), 4, 8);
        assert_ne!(held, held_other_seed);
        // Adding an image that ranks last changes nothing.
        let mut more = all;
        let extra = (20..200)
            .map(|i| sample(&format!("g/{i:03}.png")))
            .max_by_key(|s| split_key(7, &s.path.file_name().unwrap().to_string_lossy()))
            .unwrap();
        more.push(extra);
        let (_, held_more) = hold_out(more, 4, 7);
        assert_eq!(held, held_more);
    }
}
