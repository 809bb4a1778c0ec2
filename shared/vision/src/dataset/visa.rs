//! The VisA layout: a split CSV (`split_csv/1cls.csv`) with columns `object,split,label,image,mask`, paths
//! relative to the dataset root, labels `normal`/`anomaly`.
//!
//! The CSV reader is a small RFC 4180 subset (comma separator, optional double quotes with `""` escapes, no
//! line breaks inside fields), which is all the published split files use; it saves a dependency.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::scan::{self, has_image_extension};
use super::{Dataset, DatasetError, Layout, Sample};

/// One data row of the split CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    line: usize,
    object: String,
    split: String,
    label: String,
    image: String,
    mask: String,
}

/// Split one CSV line into fields.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && at_field_start {
            in_quotes = true;
            at_field_start = false;
        } else if c == ',' {
            fields.push(std::mem::take(&mut field));
            at_field_start = true;
        } else {
            field.push(c);
            at_field_start = false;
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields.into_iter().map(|f| f.trim().to_string()).collect())
}

fn read_rows(csv: &Path) -> Result<Vec<Row>, DatasetError> {
    if !csv.is_file() {
        return Err(DatasetError::MissingFolder {
            expected: csv.to_path_buf(),
            what: "the VisA split CSV (columns object,split,label,image,mask)".into(),
            layout: Layout::Visa,
        });
    }
    let text = std::fs::read_to_string(csv).map_err(|source| DatasetError::Io {
        path: csv.to_path_buf(),
        source,
    })?;
    let err = |line: usize, message: String| DatasetError::Csv {
        path: csv.to_path_buf(),
        line,
        message,
    };
    let mut lines = text
        .trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Err(err(
            1,
            "the file is empty; expected a header object,split,label,image,mask".into(),
        ));
    };
    let header: Vec<String> = split_fields(header)
        .map_err(|m| err(header_line, m))?
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let required = ["object", "split", "label", "image"];
    let mut idx = [0usize; 4];
    for (slot, name) in idx.iter_mut().zip(required) {
        *slot = column(name).ok_or_else(|| {
            err(
                header_line,
                format!(
                    "the header has no `{name}` column (found: {}); expected object,split,label,image,mask",
                    header.join(",")
                ),
            )
        })?;
    }
    let mask_col = column("mask");
    let mut rows = Vec::new();
    for (line, text) in lines {
        let f = split_fields(text).map_err(|m| err(line, m))?;
        let get = |i: usize| f.get(i).cloned();
        let needed = idx.iter().copied().max().unwrap_or(0);
        if f.len() <= needed {
            return Err(err(
                line,
                format!("expected at least {} fields, found {}", needed + 1, f.len()),
            ));
        }
        rows.push(Row {
            line,
            object: get(idx[0]).unwrap_or_default(),
            split: get(idx[1]).unwrap_or_default().to_ascii_lowercase(),
            label: get(idx[2]).unwrap_or_default().to_ascii_lowercase(),
            image: get(idx[3]).unwrap_or_default(),
            mask: mask_col.and_then(get).unwrap_or_default(),
        });
    }
    Ok(rows)
}

pub(crate) fn categories(csv: &Path) -> Result<Vec<String>, DatasetError> {
    let objects: BTreeSet<String> = read_rows(csv)?.into_iter().map(|r| r.object).collect();
    Ok(objects.into_iter().collect())
}

enum Split {
    Train,
    Validation,
    Test,
}

pub(crate) fn open(
    root: &Path,
    category: Option<&str>,
    csv: &Path,
) -> Result<Dataset, DatasetError> {
    let rows = read_rows(csv)?;
    let category = choose_category(&rows, category, csv)?;
    let (mut train, mut validation, mut test, mut skipped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows.iter().filter(|r| r.object == category) {
        let Some((split, sample)) = row_sample(row, root, csv, &mut skipped)? else {
            continue;
        };
        match split {
            Split::Train => train.push(sample),
            Split::Validation => {
                let mut s = sample;
                s.name = format!("val_{}", s.name);
                validation.push(s)
            }
            Split::Test => test.push(sample),
        }
    }
    if train.is_empty() {
        return Err(DatasetError::EmptyTrainSet {
            folder: csv.to_path_buf(),
            skipped: skipped.len(),
        });
    }
    for v in [&mut train, &mut validation, &mut test] {
        v.sort_by(|a, b| a.path.cmp(&b.path));
    }
    skipped.sort();
    Ok(Dataset {
        category,
        layout: Layout::Visa,
        root: root.to_path_buf(),
        train,
        validation,
        test,
        skipped,
        warnings: Vec::new(),
    })
}

/// The object to read: `category` if the CSV has it, else the CSV's only object.
fn choose_category(
    rows: &[Row],
    category: Option<&str>,
    csv: &Path,
) -> Result<String, DatasetError> {
    let available: Vec<String> = rows
        .iter()
        .map(|r| r.object.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match category {
        Some(c) if available.iter().any(|a| a == c) => Ok(c.to_string()),
        Some(c) => Err(DatasetError::CategoryNotFound {
            root: csv.to_path_buf(),
            category: c.to_string(),
            available,
        }),
        None if available.len() == 1 => Ok(available[0].clone()),
        None if available.is_empty() => Err(DatasetError::EmptyTrainSet {
            folder: csv.to_path_buf(),
            skipped: 0,
        }),
        None => Err(DatasetError::CategoryRequired {
            root: csv.to_path_buf(),
            available,
        }),
    }
}

/// The sample one CSV row describes and its split; `None` (and the path recorded in `skipped`) for a file without
/// an image extension.
fn row_sample(
    row: &Row,
    root: &Path,
    csv: &Path,
    skipped: &mut Vec<PathBuf>,
) -> Result<Option<(Split, Sample)>, DatasetError> {
    let err = |message: String| DatasetError::Csv {
        path: csv.to_path_buf(),
        line: row.line,
        message,
    };
    let resolve = |rel: &str| -> Result<PathBuf, DatasetError> {
        let p = Path::new(rel);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        };
        if p.is_file() {
            Ok(p)
        } else {
            Err(DatasetError::MissingFile {
                path: p,
                csv: csv.to_path_buf(),
                line: row.line,
            })
        }
    };
    let split = match row.split.as_str() {
        "train" => Split::Train,
        "val" | "valid" | "validation" => Split::Validation,
        "test" => Split::Test,
        other => {
            return Err(err(format!(
                "unknown split `{other}`; expected train, val or test"
            )))
        }
    };
    let anomalous = match row.label.as_str() {
        "normal" | "good" => false,
        "anomaly" | "anomalous" => true,
        other => {
            return Err(err(format!(
                "unknown label `{other}`; expected normal or anomaly"
            )))
        }
    };
    if row.image.is_empty() {
        return Err(err("the image column is empty".into()));
    }
    let path = resolve(&row.image)?;
    if !has_image_extension(&path) {
        skipped.push(path);
        return Ok(None);
    }
    let stem = scan::sanitize(&scan::file_stem(&path));
    let sample = if anomalous {
        if matches!(split, Split::Train) {
            return Err(err(format!(
                "anomalous image {} is in the train split; detectors are fitted on normal images only",
                path.display()
            )));
        }
        if row.mask.is_empty() {
            return Err(err(format!(
                "anomalous image {} has an empty mask column; the VisA layout requires a mask for \
                 every anomalous image (use the folder layout for image-level labels only)",
                path.display()
            )));
        }
        Sample {
            name: format!("anomaly_{stem}"),
            mask: Some(resolve(&row.mask)?),
            path,
            defect_type: Some("anomaly".into()),
        }
    } else {
        let prefix = if matches!(split, Split::Train) {
            "train"
        } else {
            "good"
        };
        Sample {
            name: format!("{prefix}_{stem}"),
            path,
            defect_type: None,
            mask: None,
        }
    };
    Ok(Some((split, sample)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields() {
        assert_eq!(split_fields("a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(
            split_fields("\"a,b\",\"x\"\"y\", z ").unwrap(),
            ["a,b", "x\"y", "z"]
        );
        assert!(split_fields("\"open").is_err());
    }

    proptest::proptest! {
        #[test]
        fn csv_splitting_never_panics(line in ".{0,80}") {
            if let Ok(fields) = split_fields(&line) {
                proptest::prop_assert!(!fields.is_empty());
            }
        }
    }
}
