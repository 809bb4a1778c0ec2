//! Pre-processing: RGB8 pixels → the normalised CHW `f32` tensor a backbone consumes, plus the colouring helpers
//! used to draw anomaly maps over images.
//!
//! This module runs on the host (`kestrel fit/eval`) *and* on the edge, and a bundle must give the same anomaly
//! map on both, so everything here is pure, single-threaded and deterministic, and works on plain buffers
//! (`Vec<f32>` in CHW order) rather than on a tensor library.
//!
//! # Resizing choices
//!
//! * **Bilinear with antialiasing on downscale**, matching torchvision's `Resize` on tensors with its default
//!   `antialias=True` (torchvision ≥ 0.17, and what anomalib's transforms use) and PIL's bilinear resize. When
//!   shrinking by a factor `s`, the triangle filter is stretched to cover `s` source pixels, so a 1024 px camera
//!   frame resized to 256 px averages every source pixel instead of sampling a quarter of them and aliasing
//!   fine textures (which is exactly what anomaly detectors must not be fooled by). torch's
//!   `F.interpolate(mode="bilinear")` default (`antialias=False`) would alias; when *upscaling* both agree.
//!   The image crate's `FilterType::Triangle` implements the same filter but rounds its output to `u8`; we
//!   resample in `f32` instead, as torchvision does after `ToTensor`, so no quantisation happens before
//!   normalisation. A test checks we stay within one grey level of the image crate.
//! * **Non-square images are resized, not cropped, to a square** `image_size × image_size` (aspect ratio is not
//!   preserved), as anomalib does. Cropping would silently drop the edges of the part, where defects occur too.
//!   An optional centre crop ([`PreprocessConfig::center_crop`]) is applied *after* the resize, like torchvision's
//!   `Resize(256)` + `CenterCrop(224)` recipe, with the same rounding of the crop offset.
//! * **Masks** are resized with nearest neighbour ([`resize_mask_nearest`], torch's legacy `mode="nearest"`),
//!   so they stay binary.
//! * **Anomaly maps** are resized by [`crate::resample::bilinear`] (torch `F.interpolate(mode="bilinear",
//!   align_corners=False)` without antialiasing); every filter lives in [`crate::resample`].

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::dataset::Mask;
use crate::resample::{self, resample_planes, Taps};

/// ImageNet channel means (RGB), the normalisation torchvision/timm backbones were trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Largest accepted side for [`PreprocessConfig::image_size`]; far beyond any backbone input, it only guards
/// against a typo allocating gigabytes.
pub const MAX_IMAGE_SIZE: u32 = 8192;

/// How images become backbone inputs. Stored in the bundle so the edge pre-processes exactly like the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Side of the square the image is resized to (default 256).
    pub image_size: u32,
    /// Per-channel mean (RGB) subtracted after scaling pixels to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB) divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Side of a centre crop taken after resizing; `None` keeps the whole resized image.
    pub center_crop: Option<u32>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            image_size: 256,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            center_crop: None,
        }
    }
}

impl PreprocessConfig {
    /// Check the configuration; [`preprocess`] does this too, but a command can fail early with it.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE {
            return Err(PreprocessError::InvalidConfig {
                field: "image_size",
                reason: format!(
                    "must be between 1 and {MAX_IMAGE_SIZE}, got {}",
                    self.image_size
                ),
            });
        }
        if let Some(c) = self.center_crop {
            if c == 0 || c > self.image_size {
                return Err(PreprocessError::InvalidConfig {
                    field: "center_crop",
                    reason: format!(
                        "must be between 1 and image_size ({}), got {c}",
                        self.image_size
                    ),
                });
            }
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(PreprocessError::InvalidConfig {
                field: "mean",
                reason: format!("must be finite, got {m}"),
            });
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(PreprocessError::InvalidConfig {
                field: "std",
                reason: format!("must be finite and positive, got {s}"),
            });
        }
        Ok(())
    }

    /// Side of the square tensor [`preprocess`] produces (the crop if any, else `image_size`).
    pub fn output_size(&self) -> u32 {
        self.center_crop.unwrap_or(self.image_size)
    }

    /// Number of `f32` values [`preprocess`] produces: `3 × output_size²`.
    pub fn output_len(&self) -> usize {
        let s = self.output_size() as usize;
        3 * s * s
    }
}

/// Errors from pre-processing; each says which argument was wrong and how.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// A [`PreprocessConfig`] field is out of range.
    #[error("invalid pre-processing setting `{field}`: {reason}")]
    InvalidConfig {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A zero-sized input or output.
    #[error("{what} has zero size ({width}×{height}); images and maps must be at least 1×1")]
    EmptySize {
        /// Which argument.
        what: &'static str,
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
    },
    /// A buffer whose length does not match the dimensions given with it.
    #[error("{what} has {got} values but {width}×{height} needs {expected}")]
    BufferSize {
        /// Which argument.
        what: &'static str,
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

fn check_nonempty(what: &'static str, width: u32, height: u32) -> Result<(), PreprocessError> {
    if width == 0 || height == 0 {
        Err(PreprocessError::EmptySize {
            what,
            width,
            height,
        })
    } else {
        Ok(())
    }
}

fn check_len(
    what: &'static str,
    got: usize,
    width: u32,
    height: u32,
    channels: usize,
) -> Result<(), PreprocessError> {
    let expected = width as usize * height as usize * channels;
    if got != expected {
        Err(PreprocessError::BufferSize {
            what,
            width,
            height,
            expected,
            got,
        })
    } else {
        Ok(())
    }
}

/// Round half to even, like Python's `round`, which torchvision's `CenterCrop` uses for the crop offset.
fn crop_offset(size: u32, crop: u32) -> usize {
    let diff = size - crop;
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        (half + 1) as usize
    } else {
        half as usize
    }
}

/// Resize, optionally centre-crop, and normalise an RGB image into a CHW `f32` buffer of length
/// [`PreprocessConfig::output_len`]: channel `c` holds `(x/255 − mean[c]) / std[c]`.
///
/// See the [module docs](self) for the resampling semantics.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<f32>, PreprocessError> {
    preprocess_rgb8(img.as_raw(), img.width(), img.height(), cfg)
}

/// [`preprocess`] on raw interleaved RGB8 pixels (`width × height × 3` bytes, row-major), e.g. a camera frame.
pub fn preprocess_rgb8(
    pixels: &[u8],
    width: u32,
    height: u32,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, PreprocessError> {
    cfg.validate()?;
    check_nonempty("image", width, height)?;
    check_len("RGB8 image buffer", pixels.len(), width, height, 3)?;
    let size = cfg.image_size as usize;
    let xw = Taps::antialiased(width as usize, size);
    let yw = Taps::antialiased(height as usize, size);
    // Values stay in 0..=255 through resampling (weights are non-negative and sum to one); the /255 is folded
    // into the normalisation below.
    let resized = resample_planes(3, width as usize, height as usize, &xw, &yw, |p, i| {
        f32::from(pixels[i + p])
    });
    let out_side = cfg.output_size() as usize;
    let off = crop_offset(cfg.image_size, cfg.output_size());
    let mut out = Vec::with_capacity(cfg.output_len());
    for c in 0..3 {
        let scale = 1.0 / (255.0 * cfg.std[c]);
        let shift = cfg.mean[c] / cfg.std[c];
        for y in 0..out_side {
            let row = &resized[(c * size + y + off) * size + off..][..out_side];
            out.extend(row.iter().map(|v| v * scale - shift));
        }
    }
    Ok(out)
}

/// Resize a binary mask to `width × height` with nearest-neighbour sampling.
///
/// Matches torch's `F.interpolate(mode="nearest")` (and torchvision's resize of masks): output pixel `i` takes
/// source `min(floor(i · in/out), in − 1)`, computed in `f32` as torch does so boundary cases agree.
pub fn resize_mask_nearest(mask: &Mask, width: u32, height: u32) -> Result<Mask, PreprocessError> {
    check_nonempty("mask", mask.width, mask.height)?;
    check_nonempty("target mask size", width, height)?;
    check_len("mask", mask.data.len(), mask.width, mask.height, 1)?;
    let data = resample::nearest_values(
        &mask.data,
        mask.width as usize,
        mask.height as usize,
        width as usize,
        height as usize,
    )
    .into_iter()
    .map(|v| u8::from(v != 0))
    .collect();
    Ok(Mask {
        width,
        height,
        data,
    })
}

/// The jet colour map (dark blue → blue → cyan → yellow → red → dark red) at `t ∈ [0, 1]`; `t` is clamped and
/// NaN maps to the low end.
pub fn jet(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let ch = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    [
        ch((4.0 * t - 1.5).min(-4.0 * t + 4.5)),
        ch((4.0 * t - 0.5).min(-4.0 * t + 3.5)),
        ch((4.0 * t + 0.5).min(-4.0 * t + 2.5)),
    ]
}

/// Map a value to `[0, 1]` between `lo` and `hi`. When the range is empty or not finite, values at or above
/// `hi` map to 1 and everything else to 0, so a heatmap of a constant score still renders.
fn normalise(v: f32, lo: f32, hi: f32) -> f32 {
    let range = hi - lo;
    if v.is_nan() {
        0.0
    } else if range > 0.0 && range.is_finite() {
        ((v - lo) / range).clamp(0.0, 1.0)
    } else if v >= hi {
        1.0
    } else {
        0.0
    }
}

/// Render a `width × height` map as a jet-coloured image, values normalised between `lo` (blue) and `hi` (red).
pub fn colorize(
    map: &[f32],
    width: u32,
    height: u32,
    lo: f32,
    hi: f32,
) -> Result<RgbImage, PreprocessError> {
    check_nonempty("map", width, height)?;
    check_len("map", map.len(), width, height, 1)?;
    let data: Vec<u8> = map
        .iter()
        .flat_map(|&v| jet(normalise(v, lo, hi)))
        .collect();
    Ok(RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height)))
}

/// Blend a jet-coloured `map` (same size as `img`, row-major) 50 % over `img`, values normalised between `lo`
/// and `hi`. Typical use: `lo`/`hi` = the detector's normal score range, or 0 and the threshold × 2.
pub fn overlay_heatmap(
    img: &RgbImage,
    map: &[f32],
    lo: f32,
    hi: f32,
) -> Result<RgbImage, PreprocessError> {
    let heat = colorize(map, img.width(), img.height(), lo, hi)?;
    let data: Vec<u8> = img
        .as_raw()
        .iter()
        .zip(heat.as_raw())
        .map(|(&a, &b)| (u16::from(a) + u16::from(b)).div_ceil(2) as u8)
        .collect();
    Ok(RgbImage::from_raw(img.width(), img.height(), data)
        .unwrap_or_else(|| RgbImage::new(img.width(), img.height())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn constant_image_normalises_exactly() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([255, 128, 0]));
        let cfg = PreprocessConfig {
            image_size: 16,
            ..Default::default()
        };
        let out = preprocess(&img, &cfg).unwrap();
        assert_eq!(out.len(), 3 * 16 * 16);
        let expect = [
            (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
            (128.0 / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
            (0.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
        ];
        for c in 0..3 {
            assert!(out[c * 256..(c + 1) * 256]
                .iter()
                .all(|v| (v - expect[c]).abs() < 1e-5));
        }
    }

    #[test]
    fn center_crop_shape_and_offset() {
        assert_eq!(crop_offset(256, 224), 16);
        // Python: round(15.5) == 16, round(14.5) == 14 (half to even).
        assert_eq!(crop_offset(256, 225), 16);
        assert_eq!(crop_offset(254, 225), 14);
        // A horizontal gradient: the crop must start at column 1 of the resized 4-wide image.
        let mut img = RgbImage::new(4, 4);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 50) as u8; 3]);
        }
        let cfg = PreprocessConfig {
            image_size: 4,
            center_crop: Some(2),
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = preprocess(&img, &cfg).unwrap();
        assert_eq!(out.len(), 12);
        assert!(close(
            &out[..4],
            &[50.0 / 255.0, 100.0 / 255.0, 50.0 / 255.0, 100.0 / 255.0],
            1e-6
        ));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let img = RgbImage::new(4, 4);
        let bad = [
            PreprocessConfig {
                image_size: 0,
                ..Default::default()
            },
            PreprocessConfig {
                center_crop: Some(300),
                ..Default::default()
            },
            PreprocessConfig {
                std: [0.0, 1.0, 1.0],
                ..Default::default()
            },
            PreprocessConfig {
                mean: [f32::NAN, 0.0, 0.0],
                ..Default::default()
            },
        ];
        for cfg in bad {
            assert!(matches!(
                preprocess(&img, &cfg),
                Err(PreprocessError::InvalidConfig { .. })
            ));
        }
        assert!(matches!(
            preprocess(&RgbImage::new(0, 3), &PreprocessConfig::default()),
            Err(PreprocessError::EmptySize { .. })
        ));
        assert!(matches!(
            preprocess_rgb8(&[0; 5], 2, 1, &PreprocessConfig::default()),
            Err(PreprocessError::BufferSize {
                expected: 6,
                got: 5,
                ..
            })
        ));
    }

    #[test]
    fn antialiased_downscale_by_two_averages_pairs() {
        // Scale 2 stretches the triangle to support 2. Output 0 has centre 1.0 and taps j = 0, 1, 2 at
        // distances |j − 1 + 0.5|/2 = 0.25, 0.25, 0.75, i.e. weights 0.75, 0.75, 0.25 (j = −1 lies outside the
        // image and is dropped), normalised by their sum 1.75. Output 1 mirrors it.
        let w = Taps::antialiased(4, 2);
        let (s, ws) = w.taps(0);
        assert_eq!(s, 0);
        assert!(close(ws, &[0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75], 1e-6));
        let (s, ws) = w.taps(1);
        assert_eq!(s, 1);
        assert!(close(ws, &[0.25 / 1.75, 0.75 / 1.75, 0.75 / 1.75], 1e-6));
    }

    #[test]
    fn matches_image_crate_triangle_within_one_level() {
        let mut img = RgbImage::new(61, 45);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([
                ((x * 37 + y * 11) % 256) as u8,
                ((x * x + 3 * y) % 256) as u8,
                ((y * 97) % 256) as u8,
            ]);
        }
        for size in [16u32, 32, 80] {
            let cfg = PreprocessConfig {
                image_size: size,
                mean: [0.0; 3],
                std: [1.0 / 255.0; 3],
                center_crop: None,
            };
            let ours = preprocess(&img, &cfg).unwrap();
            let theirs =
                image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
            let n = (size * size) as usize;
            for (i, p) in theirs.pixels().enumerate() {
                for c in 0..3 {
                    let d = (ours[c * n + i] - f32::from(p.0[c])).abs();
                    assert!(d <= 1.0 + 1e-3, "size {size} pixel {i} channel {c}: {d}");
                }
            }
        }
    }

    #[test]
    fn nearest_mask_resize() {
        let m = Mask {
            width: 2,
            height: 2,
            data: vec![1, 0, 0, 1],
        };
        let up = resize_mask_nearest(&m, 4, 4).unwrap();
        assert_eq!(up.data, [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
        // 3 → 2: scale 1.5, sources floor(0) = 0 and floor(1.5) = 1.
        let m = Mask {
            width: 3,
            height: 1,
            data: vec![0, 1, 0],
        };
        assert_eq!(resize_mask_nearest(&m, 2, 1).unwrap().data, [0, 1]);
        let bad = Mask {
            width: 3,
            height: 3,
            data: vec![0; 4],
        };
        assert!(resize_mask_nearest(&bad, 2, 2).is_err());
    }

    #[test]
    fn colormap_and_overlay() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(f32::NAN), jet(0.0));
        let c = colorize(&[0.0, 5.0, 10.0, 20.0], 2, 2, 0.0, 10.0).unwrap();
        assert_eq!(c.get_pixel(0, 0).0, jet(0.0));
        assert_eq!(c.get_pixel(1, 0).0, jet(0.5));
        assert_eq!(c.get_pixel(1, 1).0, jet(1.0));
        // Degenerate range: at or above hi is hot, the rest cold.
        let c = colorize(&[1.0, 2.0], 2, 1, 2.0, 2.0).unwrap();
        assert_eq!(c.get_pixel(0, 0).0, jet(0.0));
        assert_eq!(c.get_pixel(1, 0).0, jet(1.0));
        let img = RgbImage::from_pixel(2, 1, image::Rgb([100, 100, 100]));
        let o = overlay_heatmap(&img, &[0.0, 1.0], 0.0, 1.0).unwrap();
        assert_eq!(o.get_pixel(0, 0).0, [50, 50, 114]);
        assert_eq!(o.get_pixel(1, 0).0, [114, 50, 50]);
        assert!(overlay_heatmap(&img, &[0.0], 0.0, 1.0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn resampling_stays_within_input_range(
            w in 1u32..24, h in 1u32..24, nw in 1u32..48, nh in 1u32..48,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let map: Vec<f32> = (0..w * h)
                .map(|i| ((seed.wrapping_mul(u64::from(i) + 1) >> 40) % 1000) as f32 / 7.0)
                .collect();
            let (lo, hi) = map.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let sm = crate::map::ScoreMap::new(w as usize, h as usize, map.clone()).unwrap();
            let out = resample::bilinear(&sm, nw as usize, nh as usize).unwrap();
            proptest::prop_assert_eq!(out.data().len(), (nw * nh) as usize);
            proptest::prop_assert!(out.data().iter().all(|&v| v >= lo - 1e-3 && v <= hi + 1e-3));

            let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([map[(y * w + x) as usize] as u8; 3]));
            let cfg = PreprocessConfig { image_size: nw, mean: [0.0; 3], std: [1.0 / 255.0; 3], center_crop: None };
            let x = preprocess(&img, &cfg).unwrap();
            proptest::prop_assert_eq!(x.len(), cfg.output_len());
            let (ilo, ihi) = img.pixels().fold((255f32, 0f32), |(a, b), p| (a.min(f32::from(p.0[0])), b.max(f32::from(p.0[0]))));
            proptest::prop_assert!(x.iter().all(|&v| v >= ilo - 1e-2 && v <= ihi + 1e-2));

            let mask = Mask { width: w, height: h, data: map.iter().map(|&v| u8::from(v > 70.0)).collect() };
            let m = resize_mask_nearest(&mask, nw, nh).unwrap();
            proptest::prop_assert_eq!(m.data.len(), (nw * nh) as usize);
            proptest::prop_assert!(m.data.iter().all(|&v| v <= 1));
        }
    }
}
