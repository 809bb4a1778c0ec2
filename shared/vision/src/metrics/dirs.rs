//! `kestrel metrics`: evaluate a directory of `.npy` anomaly maps against a directory of PNG masks.
//!
//! Layout: `maps/<name>.npy` (2-D `float32` or `float64`, rounded to `f32`), `masks/<name>.png` (same size; any
//! non-zero colour channel marks an anomalous pixel, alpha is ignored), optionally a CSV of `name,score` image
//! scores. An image without a mask is a good image. Names are matched exactly (file stems, case-sensitive).
//!
//! The maps are never all in memory: [`MapDirs`] is a [`PixelSource`] that re-reads each file on every pass, so
//! memory stays at one map plus the metrics' budget however large the test set is.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat};

use super::error::MetricsError;
use super::pixel::PixelMetricsOptions;
use super::source::{MapView, PixelSource};
use super::{evaluate, MetricsReport};
use crate::npy;

/// One image of a [`MapDirs`]: its map file and optional mask file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// The file stem shared by map and mask.
    pub name: String,
    /// `<maps>/<name>.npy`.
    pub map: PathBuf,
    /// `<masks>/<name>.png`, if present.
    pub mask: Option<PathBuf>,
}

/// A [`PixelSource`] over `.npy` maps and PNG masks on disk, read lazily on every pass.
#[derive(Clone, Debug)]
pub struct MapDirs {
    entries: Vec<MapEntry>,
}

impl MapDirs {
    /// Lists `maps` (`*.npy`) and `masks` (`*.png`) and pairs them by name; other files are ignored.
    ///
    /// Errors: unreadable directories, non-UTF-8 file names, no maps, or a mask without a map. File contents are
    /// only read when visited.
    pub fn open(maps: &Path, masks: &Path) -> Result<Self, MetricsError> {
        let map_files = list_with_extension(maps, "npy")?;
        if map_files.is_empty() {
            return Err(MetricsError::NoMaps(maps.to_path_buf()));
        }
        let mut mask_files = list_with_extension(masks, "png")?;
        for (name, mask) in &mask_files {
            if !map_files.contains_key(name) {
                return Err(MetricsError::MaskWithoutMap {
                    mask: mask.clone(),
                    expected_map: maps.join(format!("{name}.npy")),
                });
            }
        }
        let entries = map_files
            .into_iter()
            .map(|(name, map)| {
                let mask = mask_files.remove(&name);
                MapEntry { name, map, mask }
            })
            .collect();
        Ok(Self { entries })
    }

    /// The images, sorted by name.
    pub fn entries(&self) -> &[MapEntry] {
        &self.entries
    }
}

impl PixelSource for MapDirs {
    fn visit(
        &self,
        f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
    ) -> Result<(), MetricsError> {
        for entry in &self.entries {
            let map = npy::read_npy_file(&entry.map).map_err(|source| MetricsError::Npy {
                path: entry.map.clone(),
                source,
            })?;
            let mask = match &entry.mask {
                Some(path) => Some(read_mask(path, &entry.map, map.cols(), map.rows())?),
                None => None,
            };
            f(&MapView {
                name: &entry.name,
                width: map.cols(),
                height: map.rows(),
                scores: map.data(),
                mask: mask.as_deref(),
            })?;
        }
        Ok(())
    }
}

/// Evaluates `maps` against `masks` with the default [`PixelMetricsOptions`]; see [`evaluate_dirs_with`].
pub fn evaluate_dirs(
    maps: &Path,
    masks: &Path,
    scores_csv: Option<&Path>,
) -> Result<MetricsReport, MetricsError> {
    evaluate_dirs_with(maps, masks, scores_csv, &PixelMetricsOptions::default())
}

/// Evaluates every `<maps>/<name>.npy` against `<masks>/<name>.png` (good image if absent).
///
/// The image score is the maximum of the map, unless `scores_csv` gives one per image (`name,score` lines, header
/// optional). All names are checked before any map is read: a CSV line without a map, a map without a CSV line, and
/// a mask without a map are errors naming the file.
pub fn evaluate_dirs_with(
    maps: &Path,
    masks: &Path,
    scores_csv: Option<&Path>,
    options: &PixelMetricsOptions,
) -> Result<MetricsReport, MetricsError> {
    let dirs = MapDirs::open(maps, masks)?;
    let scores = match scores_csv {
        None => None,
        Some(csv) => {
            let rows = read_scores_csv(csv)?;
            let known: HashMap<&str, &Path> = dirs
                .entries
                .iter()
                .map(|e| (e.name.as_str(), e.map.as_path()))
                .collect();
            for row in rows.values() {
                if !known.contains_key(row.name.as_str()) {
                    return Err(MetricsError::CsvNameWithoutMap {
                        path: csv.to_path_buf(),
                        line: row.line,
                        name: row.name.clone(),
                        expected_map: maps.join(format!("{}.npy", row.name)),
                    });
                }
            }
            for entry in &dirs.entries {
                if !rows.contains_key(&entry.name) {
                    return Err(MetricsError::MapMissingFromCsv {
                        path: csv.to_path_buf(),
                        map: entry.map.clone(),
                    });
                }
            }
            Some(
                rows.into_iter()
                    .map(|(name, row)| (name, row.score))
                    .collect(),
            )
        }
    };
    evaluate(&dirs, scores.as_ref(), options)
}

/// One line of the scores CSV.
#[derive(Debug)]
struct CsvRow {
    name: String,
    score: f64,
    line: usize,
}

/// Parses `name,score` lines. The first non-empty line is a header if its score column is not a number. The split
/// is at the *last* comma, so names may contain commas; surrounding whitespace and double quotes are removed.
fn read_scores_csv(path: &Path) -> Result<BTreeMap<String, CsvRow>, MetricsError> {
    let text = fs::read_to_string(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |line: usize, reason: String| MetricsError::CsvSyntax {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(s)
            .to_owned()
    };
    let mut rows: BTreeMap<String, CsvRow> = BTreeMap::new();
    let mut seen_content = false;
    for (index, raw) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let first_content = !seen_content;
        seen_content = true;
        let Some((name, score)) = raw.rsplit_once(',') else {
            return Err(syntax(line, "expected `name,score`".into()));
        };
        let (name, score_text) = (unquote(name), unquote(score));
        let score: f64 = match score_text.parse() {
            Ok(score) => score,
            Err(_) if first_content => continue, // a header such as `name,score`
            Err(_) => {
                return Err(syntax(
                    line,
                    format!("score {score_text:?} is not a number"),
                ))
            }
        };
        if score.is_nan() {
            return Err(syntax(line, "score is NaN".into()));
        }
        if name.is_empty() {
            return Err(syntax(line, "empty image name".into()));
        }
        if let Some(first) = rows.get(&name) {
            return Err(MetricsError::CsvDuplicate {
                path: path.to_path_buf(),
                line,
                first_line: first.line,
                name,
            });
        }
        rows.insert(name.clone(), CsvRow { name, score, line });
    }
    Ok(rows)
}

/// Files `dir/*.<extension>` (case-insensitive extension) keyed by stem.
fn list_with_extension(
    dir: &Path,
    extension: &str,
) -> Result<BTreeMap<String, PathBuf>, MetricsError> {
    let io_error = |path: &Path, source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let matches = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case(extension));
        if !matches || !path.is_file() {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            return Err(io_error(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "file name is not valid UTF-8",
                ),
            ));
        };
        files.insert(stem.to_owned(), path.clone());
    }
    Ok(files)
}

/// Reads a PNG mask as one byte per pixel (1 = anomalous), checking its size against the map's.
fn read_mask(
    path: &Path,
    map: &Path,
    width: usize,
    height: usize,
) -> Result<Vec<u8>, MetricsError> {
    let file = fs::File::open(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let image = image::ImageReader::with_format(BufReader::new(file), ImageFormat::Png)
        .decode()
        .map_err(|source| MetricsError::MaskDecode {
            path: path.to_path_buf(),
            source,
        })?;
    if image.width() as usize != width || image.height() as usize != height {
        return Err(MetricsError::MaskSizeMismatch {
            mask: path.to_path_buf(),
            map: map.to_path_buf(),
            mask_width: image.width(),
            mask_height: image.height(),
            map_width: width,
            map_height: height,
        });
    }
    Ok(match image {
        DynamicImage::ImageLuma8(gray) => gray
            .into_raw()
            .into_iter()
            .map(|v| u8::from(v != 0))
            .collect(),
        // 16-bit or colour masks: any non-zero colour channel; alpha is dropped by the conversion.
        other => other
            .to_rgb16()
            .pixels()
            .map(|p| u8::from(p.0.iter().any(|&c| c != 0)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_header_quotes_commas_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        fs::write(&path, "\u{feff}name,score\n\n\"a,b\", 0.5\nc,1e-3\r\n").unwrap();
        let rows = read_scores_csv(&path).unwrap();
        assert_eq!(rows["a,b"].score, 0.5);
        assert_eq!(rows["c"].score, 1e-3);
        assert_eq!(rows["c"].line, 4);

        for (text, line) in [
            ("a,1\nb,x\n", 2),
            ("a,1\nnocomma\n", 2),
            ("a,nan\n", 1),
            (",1\n", 1),
        ] {
            fs::write(&path, text).unwrap();
            match read_scores_csv(&path) {
                Err(MetricsError::CsvSyntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        fs::write(&path, "a,1\na,2\n").unwrap();
        assert!(matches!(
            read_scores_csv(&path),
            Err(MetricsError::CsvDuplicate {
                line: 2,
                first_line: 1,
                ..
            })
        ));
    }
}
