//! Image files on the command line: expanding folders, and the one-line note about colour conversions. Decoding
//! and scoring are kestrel-vision's (`scoring::score_files`), shared with the edge unit.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kestrel_vision::dataset::ConversionCounts;

/// Expand files and folders into a sorted list of image files.
pub fn expand_image_paths(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let exts = kestrel_vision::dataset::IMAGE_EXTENSIONS;
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
            .unwrap_or(false)
    };
    let mut out = Vec::new();
    for i in inputs {
        if i.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(i)
                .with_context(|| format!("reading folder {}", i.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            v.sort();
            out.extend(v);
        } else if i.is_file() {
            out.push(i.clone());
        } else {
            anyhow::bail!("{}: no such file or folder", i.display());
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "no images found (looked for extensions {})",
            exts.join(", ")
        );
    }
    Ok(out)
}

/// Print the colour conversions that happened, once, to stderr.
pub fn report_conversions(counts: &ConversionCounts) {
    for line in counts.describe() {
        eprintln!("note: {line}");
    }
}
