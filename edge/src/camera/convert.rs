//! Pure pixel-format conversions from what V4L2 cameras deliver to packed RGB8.
//!
//! No I/O and no allocation besides the output, so they are property-tested on arbitrary input and golden-tested
//! against ffmpeg (`edge/tests/camera_convert_golden.rs`, fixture made by `edge/tests/fixtures/yuyv/make.sh`).
//!
//! # Colour
//! YUYV uses the BT.601 matrix with limited ("studio") range — Y in 16..=235, Cb/Cr in 16..=240 — which is what
//! V4L2 means by `V4L2_QUANTIZATION_DEFAULT` for YUV and what ffmpeg's swscale assumes for untagged input, so a frame
//! converted here matches `ffmpeg -f rawvideo -pix_fmt yuyv422 … -pix_fmt rgb24` within ±2 per channel. Both pixels
//! of a `Y0 U Y1 V` pair use the pair's chroma as-is (no horizontal chroma interpolation, like swscale's default
//! path). Arithmetic is 16.16 fixed point and *truncates* like swscale's table-driven converter: with round-to-
//! nearest we measured ffmpeg up to 3 levels darker (it is on average ~1.5 levels below the exact formula), with
//! truncation the measured difference is -2..=+1 on both golden frames. The luma gain is 76310/65536 (one unit
//! above 255/219 in 16.16) so that Y = 235 still gives exactly 255 after truncation. Values are clamped to 0..=255.
//!
//! MJPG frames are JFIF (full-range BT.601) and decoded by the `image` crate; GREY is full-range luma replicated into
//! the three channels.
//!
//! # Geometry
//! Every function takes the row `stride` in bytes (V4L2 `bytesperline`), because drivers may pad rows; passing the
//! tight stride (`2 * width` for YUYV, `width` for GREY) is the common case. A buffer shorter than the geometry needs
//! is an error, never a panic; bytes past the last row are ignored (V4L2 buffers are often larger than a frame).

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// Width or height is zero, or the frame is implausibly large.
    #[error("{format} frame geometry {width}x{height} is not usable (each side 1..=16384)")]
    Geometry {
        /// Pixel format.
        format: &'static str,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// YUYV needs an even width (two pixels share one chroma pair).
    #[error("YUYV width {width} is odd; YUYV frames are always an even number of pixels wide")]
    OddWidth {
        /// Width in pixels.
        width: u32,
    },
    /// The row stride is smaller than one row of pixels.
    #[error("{format} stride {stride} bytes is smaller than a {width}-pixel row ({row} bytes)")]
    Stride {
        /// Pixel format.
        format: &'static str,
        /// Given stride in bytes.
        stride: usize,
        /// Width in pixels.
        width: u32,
        /// Bytes one row needs.
        row: usize,
    },
    /// The buffer is shorter than the geometry needs (a truncated frame).
    #[error("{format} buffer holds {got} bytes but a {width}x{height} frame needs {need}")]
    Short {
        /// Pixel format.
        format: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The JPEG could not be decoded.
    #[error("MJPG frame is not a decodable JPEG: {reason}")]
    Jpeg {
        /// Decoder message.
        reason: String,
    },
    /// The JPEG decoded to a different size than the stream format announced.
    #[error("MJPG frame is {got_width}x{got_height} but the stream format is {width}x{height}")]
    JpegSize {
        /// Expected width.
        width: u32,
        /// Expected height.
        height: u32,
        /// Decoded width.
        got_width: u32,
        /// Decoded height.
        got_height: u32,
    },
}

/// Largest side accepted; guards the output allocation against garbage geometry.
const MAX_SIDE: u32 = 16_384;

fn check_geometry(format: &'static str, width: u32, height: u32) -> Result<(), ConvertError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(ConvertError::Geometry {
            format,
            width,
            height,
        });
    }
    Ok(())
}

/// Checks stride and length for a frame whose rows are `row` bytes long; returns nothing on success.
fn check_buffer(
    format: &'static str,
    len: usize,
    width: u32,
    height: u32,
    stride: usize,
    row: usize,
) -> Result<(), ConvertError> {
    if stride < row {
        return Err(ConvertError::Stride {
            format,
            stride,
            width,
            row,
        });
    }
    // The last row needs only `row` bytes, not a full stride: drivers may cut the padding of the final line.
    let need = stride * (height as usize - 1) + row;
    if len < need {
        return Err(ConvertError::Short {
            format,
            need,
            got: len,
            width,
            height,
        });
    }
    Ok(())
}

// BT.601 limited range, 16.16 fixed point: 255/219 for luma, and the chroma coefficients scaled by 255/224.
const K_Y: i32 = 76_310; // 255/219 * 65536 = 76309.04, rounded up so that white (Y = 235) truncates to 255
const K_RV: i32 = 104_597; // 1.596027 * 65536
const K_GU: i32 = 25_675; // 0.391762 * 65536
const K_GV: i32 = 53_279; // 0.812968 * 65536
const K_BU: i32 = 132_201; // 2.017232 * 65536

#[inline]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

#[inline]
fn yuv_pixel(y: u8, u: u8, v: u8, out: &mut [u8]) {
    let c = (i32::from(y) - 16) * K_Y;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    out[0] = clamp_u8((c + K_RV * e) >> 16);
    out[1] = clamp_u8((c - K_GU * d - K_GV * e) >> 16);
    out[2] = clamp_u8((c + K_BU * d) >> 16);
}

/// Converts packed YUYV 4:2:2 (`Y0 U Y1 V`, BT.601 limited range) to packed RGB8.
pub fn yuyv_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, ConvertError> {
    check_geometry("YUYV", width, height)?;
    if !width.is_multiple_of(2) {
        return Err(ConvertError::OddWidth { width });
    }
    let row = width as usize * 2;
    check_buffer("YUYV", src.len(), width, height, stride, row)?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    for (y, out_row) in rgb.chunks_exact_mut(width as usize * 3).enumerate() {
        let in_row = &src[y * stride..y * stride + row];
        for (quad, out) in in_row.chunks_exact(4).zip(out_row.chunks_exact_mut(6)) {
            let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
            yuv_pixel(y0, u, v, &mut out[..3]);
            yuv_pixel(y1, u, v, &mut out[3..]);
        }
    }
    Ok(rgb)
}

/// Converts 8-bit greyscale (V4L2 `GREY`) to packed RGB8 by replicating luma.
pub fn grey_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, ConvertError> {
    check_geometry("GREY", width, height)?;
    let row = width as usize;
    check_buffer("GREY", src.len(), width, height, stride, row)?;
    let mut rgb = Vec::with_capacity(row * height as usize * 3);
    for y in 0..height as usize {
        for &g in &src[y * stride..y * stride + row] {
            rgb.extend_from_slice(&[g, g, g]);
        }
    }
    Ok(rgb)
}

/// Copies packed RGB8 rows (`stride` bytes apart) into a tight RGB8 buffer: raw RGB dumps, checked like the other
/// raw formats.
pub fn rgb_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, ConvertError> {
    check_geometry("RGB", width, height)?;
    let row = width as usize * 3;
    check_buffer("RGB", src.len(), width, height, stride, row)?;
    let mut rgb = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        rgb.extend_from_slice(&src[y * stride..y * stride + row]);
    }
    Ok(rgb)
}

/// Decodes one MJPG frame (a JFIF image; pass only the `bytesused` part of the buffer) to packed RGB8 and checks it
/// has the size the stream announced.
pub fn mjpg_to_rgb(jpeg: &[u8], width: u32, height: u32) -> Result<Vec<u8>, ConvertError> {
    check_geometry("MJPG", width, height)?;
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).map_err(|e| {
        ConvertError::Jpeg {
            reason: e.to_string(),
        }
    })?;
    if img.width() != width || img.height() != height {
        return Err(ConvertError::JpegSize {
            width,
            height,
            got_width: img.width(),
            got_height: img.height(),
        });
    }
    Ok(img.into_rgb8().into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn yuyv_reference_colours() {
        // Black, white, and the BT.601 limited-range primaries (Y, Cb, Cr from ITU-R BT.601 tables, rounded).
        let cases: &[([u8; 3], [u8; 3])] = &[
            ([16, 128, 128], [0, 0, 0]),
            ([235, 128, 128], [255, 255, 255]),
            ([81, 90, 240], [255, 0, 0]),
            ([145, 54, 34], [0, 255, 0]),
            ([41, 240, 110], [0, 0, 255]),
        ];
        for &([y, u, v], want) in cases {
            let rgb = yuyv_to_rgb(&[y, u, y, v], 2, 1, 4).unwrap();
            for c in 0..3 {
                assert!(
                    (i32::from(rgb[c]) - i32::from(want[c])).abs() <= 2 && rgb[c] == rgb[c + 3],
                    "YUV {y},{u},{v} -> {rgb:?}, want {want:?}"
                );
            }
        }
    }

    #[test]
    fn yuyv_respects_stride_and_ignores_padding() {
        // 2x2 frame, stride 8: each row has 4 bytes of padding filled with junk that must not leak into the image.
        let src = [16, 128, 235, 128, 9, 9, 9, 9, 235, 128, 16, 128, 7, 7];
        let rgb = yuyv_to_rgb(&src, 2, 2, 8).unwrap();
        assert_eq!(rgb, vec![0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0]);
    }

    #[test]
    fn yuyv_errors_are_specific() {
        assert_eq!(
            yuyv_to_rgb(&[0; 8], 3, 1, 6),
            Err(ConvertError::OddWidth { width: 3 })
        );
        assert!(matches!(
            yuyv_to_rgb(&[0; 8], 2, 1, 2),
            Err(ConvertError::Stride {
                stride: 2,
                row: 4,
                ..
            })
        ));
        assert!(matches!(
            yuyv_to_rgb(&[0; 7], 2, 2, 4),
            Err(ConvertError::Short {
                need: 8,
                got: 7,
                ..
            })
        ));
        assert!(matches!(
            yuyv_to_rgb(&[], 0, 2, 4),
            Err(ConvertError::Geometry { .. })
        ));
    }

    #[test]
    fn grey_replicates_luma_with_stride() {
        let rgb = grey_to_rgb(&[1, 2, 99, 3, 4], 2, 2, 3).unwrap();
        assert_eq!(rgb, vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
        assert!(matches!(
            grey_to_rgb(&[1, 2, 3], 2, 2, 2),
            Err(ConvertError::Short {
                need: 4,
                got: 3,
                ..
            })
        ));
    }

    #[test]
    fn rgb_copies_rows_without_padding_and_refuses_short_buffers() {
        let rgb = rgb_to_rgb(&[1, 2, 3, 9, 4, 5, 6], 1, 2, 4).unwrap();
        assert_eq!(rgb, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(
            rgb_to_rgb(&[1, 2, 3, 4, 5], 1, 2, 3),
            Err(ConvertError::Short {
                format: "RGB",
                need: 6,
                got: 5,
                width: 1,
                height: 2
            })
        );
        assert!(matches!(
            rgb_to_rgb(&[], 0, 2, 0),
            Err(ConvertError::Geometry { .. })
        ));
    }

    fn encode_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, 128])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn mjpg_decodes_and_checks_size() {
        let jpeg = encode_jpeg(16, 8);
        let rgb = mjpg_to_rgb(&jpeg, 16, 8).unwrap();
        assert_eq!(rgb.len(), 16 * 8 * 3);
        // Top-left is near (0, 0, 128) after a quality-95 round trip.
        assert!(
            rgb[0] < 12 && rgb[1] < 12 && (i32::from(rgb[2]) - 128).abs() < 12,
            "{:?}",
            &rgb[..3]
        );
        assert!(matches!(
            mjpg_to_rgb(&jpeg, 8, 8),
            Err(ConvertError::JpegSize { got_width: 16, .. })
        ));
        assert!(matches!(
            mjpg_to_rgb(&jpeg[..jpeg.len() / 2], 16, 8),
            Err(ConvertError::Jpeg { .. })
        ));
        assert!(matches!(
            mjpg_to_rgb(&[], 16, 8),
            Err(ConvertError::Jpeg { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn yuyv_never_panics_and_sizes_match(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            w in 0u32..20, h in 0u32..20, pad in 0usize..6,
        ) {
            let stride = (w as usize * 2).saturating_add(pad);
            match yuyv_to_rgb(&data, w, h, stride) {
                Ok(rgb) => {
                    prop_assert_eq!(rgb.len(), w as usize * h as usize * 3);
                    prop_assert!(w.is_multiple_of(2) && w > 0 && h > 0);
                    prop_assert!(data.len() >= stride * (h as usize - 1) + w as usize * 2);
                }
                Err(_) => prop_assert!(!w.is_multiple_of(2) || w == 0 || h == 0 || data.len() < stride * (h.max(1) as usize - 1) + w as usize * 2),
            }
        }

        #[test]
        fn grey_never_panics_and_sizes_match(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            w in 0u32..20, h in 0u32..20, stride in 0usize..30,
        ) {
            if let Ok(rgb) = grey_to_rgb(&data, w, h, stride) {
                prop_assert_eq!(rgb.len(), w as usize * h as usize * 3);
                prop_assert!(stride >= w as usize);
            }
        }

        #[test]
        fn mjpg_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..300), w in 0u32..64, h in 0u32..64) {
            if let Ok(rgb) = mjpg_to_rgb(&data, w, h) {
                prop_assert_eq!(rgb.len(), w as usize * h as usize * 3);
            }
        }

        #[test]
        fn mjpg_never_panics_on_corrupted_jpeg(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut jpeg = encode_jpeg(16, 16);
            for (i, b) in flips {
                let n = jpeg.len();
                jpeg[i % n] ^= b;
            }
            let _ = mjpg_to_rgb(&jpeg, 16, 16);
        }

        #[test]
        fn yuyv_grey_pixels_stay_grey(y in 16u8..=235) {
            // Neutral chroma gives R = G = B.
            let rgb = yuyv_to_rgb(&[y, 128, y, 128], 2, 1, 4).unwrap();
            prop_assert!(rgb.iter().all(|&c| c == rgb[0]));
        }
    }
}
