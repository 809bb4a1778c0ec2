//! Decoding images and ground-truth masks from disk into the two forms the rest of the crate uses: RGB8 images
//! and binary masks.
//!
//! Every detector in kestrel consumes three-channel 8-bit images, but production datasets are not that tidy:
//! MVTec's `grid`, `screw` and `zipper` are grayscale, some cameras write 16-bit PNGs and some tools save RGBA.
//! Rather than fail, we convert (channel replication, alpha dropped, high bit depth reduced) and *record* what
//! was converted so the CLI can tell the user ("converted 572 grayscale images to RGB by channel replication");
//! a silent conversion would hide a camera misconfiguration.
//!
//! Masks follow MVTec's convention: any non-zero pixel (in any colour channel) is anomalous. A mask must have
//! exactly the size of its image; we never resize ground truth silently, because a size mismatch almost always
//! means the mask belongs to another image.

use std::fmt;
use std::path::Path;

use image::{ColorType, DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use super::DatasetError;

/// The colour model an image had on disk, before [`load_rgb`] turned it into RGB8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceColour {
    /// Already red/green/blue.
    Rgb,
    /// Single-channel luminance; converted by replicating the channel three times.
    Gray,
    /// Luminance plus alpha; the alpha channel is dropped, then the channel replicated.
    GrayAlpha,
    /// RGB plus alpha; the alpha channel is dropped (not composited onto a background), as PIL's
    /// `convert("RGB")` does, so results match Python pipelines.
    Rgba,
}

impl SourceColour {
    fn from_color_type(c: ColorType) -> (Self, u8) {
        match c {
            ColorType::L8 => (Self::Gray, 8),
            ColorType::La8 => (Self::GrayAlpha, 8),
            ColorType::Rgb8 => (Self::Rgb, 8),
            ColorType::Rgba8 => (Self::Rgba, 8),
            ColorType::L16 => (Self::Gray, 16),
            ColorType::La16 => (Self::GrayAlpha, 16),
            ColorType::Rgb16 => (Self::Rgb, 16),
            ColorType::Rgba16 => (Self::Rgba, 16),
            ColorType::Rgb32F => (Self::Rgb, 32),
            ColorType::Rgba32F => (Self::Rgba, 32),
            // `ColorType` is non-exhaustive; a future variant is most likely some RGBA flavour.
            _ => (
                Self::Rgba,
                (c.bits_per_pixel() / u16::from(c.channel_count().max(1))).min(255) as u8,
            ),
        }
    }
}

/// An image decoded to RGB8, plus what had to be done to get there.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The pixels, 8 bits per channel, interleaved RGB.
    pub image: RgbImage,
    /// The colour model on disk.
    pub source: SourceColour,
    /// Bits per channel on disk (8, 16, or 32 for floating point TIFF).
    pub source_bit_depth: u8,
}

impl LoadedImage {
    /// Whether any conversion (colour model or bit depth) happened while loading.
    pub fn converted(&self) -> bool {
        self.source != SourceColour::Rgb || self.source_bit_depth != 8
    }
}

/// Counts of images that were converted on load, so a command can summarise them in one line each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionCounts {
    /// Images seen in total.
    pub images: usize,
    /// Grayscale images converted to RGB by channel replication.
    pub gray: usize,
    /// Grayscale+alpha images: alpha dropped, channel replicated.
    pub gray_alpha: usize,
    /// RGBA images whose alpha channel was dropped.
    pub rgba: usize,
    /// Images with more than 8 bits per channel, reduced to 8 bits.
    pub high_bit_depth: usize,
}

impl ConversionCounts {
    /// Count one image with the given source colour model and bit depth.
    pub fn record(&mut self, source: SourceColour, bit_depth: u8) {
        self.images += 1;
        match source {
            SourceColour::Rgb => {}
            SourceColour::Gray => self.gray += 1,
            SourceColour::GrayAlpha => self.gray_alpha += 1,
            SourceColour::Rgba => self.rgba += 1,
        }
        if bit_depth != 8 {
            self.high_bit_depth += 1;
        }
    }

    /// Count one loaded image.
    pub fn record_loaded(&mut self, img: &LoadedImage) {
        self.record(img.source, img.source_bit_depth);
    }

    /// Add another set of counts (e.g. from a parallel worker) to this one.
    pub fn merge(&mut self, other: &ConversionCounts) {
        self.images += other.images;
        self.gray += other.gray;
        self.gray_alpha += other.gray_alpha;
        self.rgba += other.rgba;
        self.high_bit_depth += other.high_bit_depth;
    }

    /// Number of images that needed any conversion (an image can count in two categories, e.g. 16-bit gray,
    /// but only once here).
    pub fn any_converted(&self) -> bool {
        self.gray + self.gray_alpha + self.rgba + self.high_bit_depth > 0
    }

    /// One human-readable line per kind of conversion that happened, e.g.
    /// `"converted 572 grayscale images to RGB by channel replication"`. Empty when nothing was converted.
    pub fn describe(&self) -> Vec<String> {
        let plural = |n: usize| if n == 1 { "image" } else { "images" };
        let mut out = Vec::new();
        if self.gray > 0 {
            out.push(format!(
                "converted {} grayscale {} to RGB by channel replication",
                self.gray,
                plural(self.gray)
            ));
        }
        if self.gray_alpha > 0 {
            out.push(format!(
                "converted {} grayscale+alpha {} to RGB (alpha dropped, channel replicated)",
                self.gray_alpha,
                plural(self.gray_alpha)
            ));
        }
        if self.rgba > 0 {
            out.push(format!(
                "dropped the alpha channel of {} RGBA {} (not composited onto a background)",
                self.rgba,
                plural(self.rgba)
            ));
        }
        if self.high_bit_depth > 0 {
            out.push(format!(
                "reduced {} {} with more than 8 bits per channel to 8 bits",
                self.high_bit_depth,
                plural(self.high_bit_depth)
            ));
        }
        out
    }
}

impl fmt::Display for ConversionCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.describe();
        if lines.is_empty() {
            write!(f, "all {} images were RGB, 8 bits per channel", self.images)
        } else {
            write!(f, "{}", lines.join("; "))
        }
    }
}

/// A binary ground-truth (or predicted) mask: row-major, one byte per pixel, `1` = anomalous, `0` = normal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` values, each 0 or 1.
    pub data: Vec<u8>,
}

impl Mask {
    /// An all-normal mask, e.g. the implicit ground truth of a good image.
    pub fn zeros(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Whether pixel `(x, y)` is anomalous; out-of-range coordinates are normal.
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width
            && y < self.height
            && self
                .data
                .get(y as usize * self.width as usize + x as usize)
                .is_some_and(|&v| v != 0)
    }

    /// Number of anomalous pixels.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }

    /// Whether any pixel is anomalous.
    pub fn any(&self) -> bool {
        self.data.iter().any(|&v| v != 0)
    }

    /// The mask as an 8-bit grayscale image with MVTec's encoding (0 normal, 255 anomalous), for writing to disk.
    pub fn to_image(&self) -> image::GrayImage {
        let data = self
            .data
            .iter()
            .map(|&v| if v != 0 { 255 } else { 0 })
            .collect();
        image::GrayImage::from_raw(self.width, self.height, data)
            .unwrap_or_else(|| image::GrayImage::new(self.width, self.height))
    }
}

/// What the header of an image file says, read without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageHeader {
    pub width: u32,
    pub height: u32,
    pub source: SourceColour,
    pub bit_depth: u8,
}

fn open_reader(
    path: &Path,
) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, DatasetError> {
    // Guess the format from the content, falling back to the extension: a JPEG saved as `.png` is common in
    // hand-assembled datasets and decodes fine this way.
    ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Read an image's size and colour model from its header only (cheap; used to validate a whole dataset).
pub(crate) fn read_header(path: &Path) -> Result<ImageHeader, DatasetError> {
    let decoder = open_reader(path)?
        .into_decoder()
        .map_err(|source| DatasetError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DatasetError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    let (source, bit_depth) = SourceColour::from_color_type(decoder.color_type());
    Ok(ImageHeader {
        width,
        height,
        source,
        bit_depth,
    })
}

fn decode(path: &Path) -> Result<DynamicImage, DatasetError> {
    let img = open_reader(path)?
        .decode()
        .map_err(|source| DatasetError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(DatasetError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    Ok(img)
}

/// Decode an image file (PNG, JPEG, BMP or TIFF) to RGB8.
///
/// Grayscale is replicated to three channels, alpha is dropped, 16-bit and float data are reduced to 8 bits;
/// [`LoadedImage`] records which of these happened. Errors name the file: [`DatasetError::Io`] when it cannot
/// be opened, [`DatasetError::Decode`] when it is corrupt, truncated or not an image, and
/// [`DatasetError::EmptyImage`] for a 0-pixel image.
pub fn load_rgb(path: &Path) -> Result<LoadedImage, DatasetError> {
    let img = decode(path)?;
    let (source, source_bit_depth) = SourceColour::from_color_type(img.color());
    let image = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    };
    Ok(LoadedImage {
        image,
        source,
        source_bit_depth,
    })
}

/// Decode a ground-truth mask and check that it is `expected_width` × `expected_height`.
///
/// Any non-zero value in any colour channel (alpha ignored) marks an anomalous pixel, whatever the bit depth.
/// A size mismatch is an error ([`DatasetError::MaskSizeMismatch`]) rather than a silent resize.
pub fn load_mask(
    path: &Path,
    expected_width: u32,
    expected_height: u32,
) -> Result<Mask, DatasetError> {
    load_mask_for(path, None, expected_width, expected_height)
}

/// [`load_mask`], naming the image the mask belongs to in a size-mismatch error.
pub(crate) fn load_mask_for(
    path: &Path,
    image: Option<&Path>,
    expected_width: u32,
    expected_height: u32,
) -> Result<Mask, DatasetError> {
    let img = decode(path)?;
    let (width, height) = (img.width(), img.height());
    if (width, height) != (expected_width, expected_height) {
        return Err(DatasetError::MaskSizeMismatch {
            mask: path.to_path_buf(),
            mask_width: width,
            mask_height: height,
            image: image.map(Path::to_path_buf),
            image_width: expected_width,
            image_height: expected_height,
        });
    }
    let data: Vec<u8> = match img {
        DynamicImage::ImageLuma8(l) => l.into_raw().into_iter().map(|v| u8::from(v != 0)).collect(),
        // Going through 16-bit keeps every non-zero 8-bit value non-zero (x·257), and drops alpha.
        other => other
            .into_rgb16()
            .pixels()
            .map(|p| u8::from(p.0.iter().any(|&c| c != 0)))
            .collect(),
    };
    Ok(Mask {
        width,
        height,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_counts_describe_each_kind() {
        let mut c = ConversionCounts::default();
        assert!(c.describe().is_empty());
        c.record(SourceColour::Rgb, 8);
        assert!(!c.any_converted());
        c.record(SourceColour::Gray, 8);
        c.record(SourceColour::Gray, 16);
        c.record(SourceColour::Rgba, 8);
        assert_eq!(c.images, 4);
        let lines = c.describe();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "converted 2 grayscale images to RGB by channel replication"
        );
        assert!(lines[1].contains("1 RGBA image "));
        assert!(lines[2].contains("reduced 1 image"));
    }

    #[test]
    fn mask_helpers() {
        let mut m = Mask::zeros(3, 2);
        assert!(!m.any());
        m.data[4] = 1;
        assert!(m.get(1, 1));
        assert!(!m.get(5, 5));
        assert_eq!(m.count(), 1);
        let img = m.to_image();
        assert_eq!(img.get_pixel(1, 1).0, [255]);
        assert_eq!(img.get_pixel(0, 0).0, [0]);
    }
}
