//! Helpers shared by the `dataset_*` integration tests: build small datasets in temporary folders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};

/// A temporary dataset root that is deleted when dropped.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<root>/<rel>`, creating parent folders.
    pub fn file(&self, rel: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// An RGB PNG of `w × h` with a little structure.
    pub fn rgb(&self, rel: &str, w: u32, h: u32) -> PathBuf {
        let p = self.file(rel);
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 128]))
            .save(&p)
            .unwrap();
        p
    }

    pub fn gray(&self, rel: &str, w: u32, h: u32) -> PathBuf {
        let p = self.file(rel);
        GrayImage::from_fn(w, h, |x, _| Luma([(x * 9) as u8]))
            .save(&p)
            .unwrap();
        p
    }

    pub fn rgba(&self, rel: &str, w: u32, h: u32) -> PathBuf {
        let p = self.file(rel);
        RgbaImage::from_pixel(w, h, Rgba([10, 20, 30, 40]))
            .save(&p)
            .unwrap();
        p
    }

    pub fn gray16(&self, rel: &str, w: u32, h: u32) -> PathBuf {
        let p = self.file(rel);
        ImageBuffer::<Luma<u16>, Vec<u16>>::from_pixel(w, h, Luma([65535]))
            .save(&p)
            .unwrap();
        p
    }

    /// A binary mask PNG (0/255) with the pixels `(x, y)` for which `on` holds set.
    pub fn mask(&self, rel: &str, w: u32, h: u32, on: impl Fn(u32, u32) -> bool) -> PathBuf {
        let p = self.file(rel);
        GrayImage::from_fn(w, h, |x, y| Luma([if on(x, y) { 255 } else { 0 }]))
            .save(&p)
            .unwrap();
        p
    }

    pub fn text(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.file(rel);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// A minimal valid MVTec category `cat` with `n_train` good training images, `n_good` good test images and
    /// `n_defect` `crack` images with masks.
    pub fn mvtec(&self, cat: &str, n_train: usize, n_good: usize, n_defect: usize) {
        for i in 0..n_train {
            self.rgb(&format!("{cat}/train/good/{i:03}.png"), 16, 12);
        }
        for i in 0..n_good {
            self.rgb(&format!("{cat}/test/good/{i:03}.png"), 16, 12);
        }
        for i in 0..n_defect {
            self.rgb(&format!("{cat}/test/crack/{i:03}.png"), 16, 12);
            self.mask(
                &format!("{cat}/ground_truth/crack/{i:03}_mask.png"),
                16,
                12,
                |x, y| x < 4 && y < 4,
            );
        }
    }
}
