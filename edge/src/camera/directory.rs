//! Replays recorded frames from a directory: the "emulator" mode of commercial smart cameras.
//!
//! Files are taken in byte-wise file-name order (zero-pad your numbers: `part-0001.png`), so a run is reproducible.
//! Accepted files:
//! - images the `image` crate decodes: `.png`, `.jpg`/`.jpeg`, `.bmp`, `.tif`/`.tiff` (converted to RGB8);
//! - raw frame dumps named `NAME.WxH.yuyv`, `NAME.WxH.grey` or `NAME.WxH.rgb` (tight rows, e.g.
//!   `f0001.640x480.yuyv` as written by `v4l2-ctl --stream-to`), converted exactly as a live V4L2 frame would be.
//!
//! Other files (READMEs, masks folders) are ignored. The list is read once at open; a file that fails to decode
//! later is an error for that frame (the runtime decides whether to skip it). With `looped = false` the source ends
//! with [`CameraError::EndOfStream`].

use std::path::{Path, PathBuf};

use super::{convert, monotonic_us, CameraError, Frame, FrameDecodeError, FrameSource, Pacer};

/// How one listed file is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Raw {
        format: RawFormat,
        width: u32,
        height: u32,
    },
}

/// Raw frame dump formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawFormat {
    Yuyv,
    Grey,
    Rgb,
}

/// Directory frame source; see the module docs.
pub struct DirectorySource {
    dir: PathBuf,
    files: Vec<(PathBuf, Kind)>,
    looped: bool,
    pacer: Pacer,
    next_index: usize,
    next_id: u64,
    fps: Option<f64>,
}

fn classify(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.')?.1;
    match ext {
        "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff" => Some(Kind::Image),
        "yuyv" | "grey" | "gray" | "rgb" => {
            let format = match ext {
                "yuyv" => RawFormat::Yuyv,
                "rgb" => RawFormat::Rgb,
                _ => RawFormat::Grey,
            };
            let stem = &lower[..lower.len() - ext.len() - 1];
            let dims = stem.rsplit_once('.')?.1;
            let (w, h) = dims.split_once('x')?;
            Some(Kind::Raw {
                format,
                width: w.parse().ok()?,
                height: h.parse().ok()?,
            })
        }
        _ => None,
    }
}

impl DirectorySource {
    /// Lists the frames in `dir`. Fails when the directory cannot be read or holds no usable frame.
    pub fn open(dir: &Path, fps: Option<f64>, looped: bool) -> Result<Self, CameraError> {
        let open_err = |reason: String| CameraError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        let io_err = |source| CameraError::OpenIo {
            path: dir.to_path_buf(),
            hint: "check camera.path in the profile",
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(io_err)?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err)?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            if let Some(kind) = classify(&path) {
                files.push((path, kind));
            }
        }
        if files.is_empty() {
            return Err(open_err(
                "no frames found (expected .png/.jpg/.bmp/.tif images or NAME.WxH.yuyv|grey|rgb raw dumps)".into(),
            ));
        }
        files.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
        Ok(DirectorySource {
            dir: dir.to_path_buf(),
            files,
            looped,
            pacer: Pacer::new(fps),
            next_index: 0,
            next_id: 0,
            fps,
        })
    }

    /// Number of frames in one pass over the directory.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Always false: opening fails for an empty directory.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn decode(path: &Path, kind: Kind) -> Result<(u32, u32, Vec<u8>), CameraError> {
        let decode_err = |source: FrameDecodeError| CameraError::Decode {
            path: path.to_path_buf(),
            source,
        };
        match kind {
            Kind::Image => {
                // The host's decoder, so a folder of images reaches the model as the same pixels `kestrel eval`
                // and `kestrel predict` see.
                let img = kestrel_vision::dataset::load_rgb(path)
                    .map_err(|e| decode_err(FrameDecodeError::Image(e)))?
                    .image;
                let (w, h) = (img.width(), img.height());
                Ok((w, h, img.into_raw()))
            }
            Kind::Raw {
                format,
                width,
                height,
            } => {
                let bytes =
                    std::fs::read(path).map_err(|e| decode_err(FrameDecodeError::Read(e)))?;
                let rgb = match format {
                    RawFormat::Yuyv => {
                        convert::yuyv_to_rgb(&bytes, width, height, width as usize * 2)
                    }
                    RawFormat::Grey => convert::grey_to_rgb(&bytes, width, height, width as usize),
                    RawFormat::Rgb => {
                        convert::rgb_to_rgb(&bytes, width, height, width as usize * 3)
                    }
                }
                .map_err(|e| decode_err(e.into()))?;
                Ok((width, height, rgb))
            }
        }
    }
}

impl FrameSource for DirectorySource {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        if self.next_index == self.files.len() {
            if !self.looped {
                return Err(CameraError::EndOfStream {
                    path: self.dir.clone(),
                    frames: self.next_id,
                });
            }
            self.next_index = 0;
        }
        let (path, kind) = &self.files[self.next_index];
        self.next_index += 1;
        let id = self.next_id;
        self.next_id += 1;
        // Decode before waiting so the pace is the delivery pace, not decode time plus period.
        let (width, height, rgb) = Self::decode(path, *kind)?;
        let due = self.pacer.wait();
        Ok(Frame {
            id,
            t_capture_us: monotonic_us(due),
            width,
            height,
            rgb,
        })
    }

    fn describe(&self) -> String {
        let rate = self
            .fps
            .map(|f| format!("{f} fps"))
            .unwrap_or_else(|| "unpaced".into());
        let looped = if self.looped { "looped" } else { "once" };
        format!(
            "directory {} ({} frames, {rate}, {looped})",
            self.dir.display(),
            self.files.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_accepts_images_and_named_raw_dumps() {
        assert_eq!(classify(Path::new("a/p1.PNG")), Some(Kind::Image));
        assert_eq!(classify(Path::new("f.jpeg")), Some(Kind::Image));
        assert_eq!(
            classify(Path::new("f0001.640x480.yuyv")),
            Some(Kind::Raw {
                format: RawFormat::Yuyv,
                width: 640,
                height: 480
            })
        );
        assert_eq!(
            classify(Path::new("x.8x2.grey")),
            Some(Kind::Raw {
                format: RawFormat::Grey,
                width: 8,
                height: 2
            })
        );
        assert_eq!(
            classify(Path::new("f.yuyv")),
            None,
            "raw dumps need their size in the name"
        );
        assert_eq!(classify(Path::new("f.axb.rgb")), None);
        assert_eq!(classify(Path::new("README.md")), None);
        assert_eq!(classify(Path::new("noext")), None);
    }
}
