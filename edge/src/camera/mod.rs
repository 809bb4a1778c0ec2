//! Frame capture: every camera the unit can use, behind one small blocking trait.
//!
//! The inspection runtime pulls frames from a [`FrameSource`] on a dedicated capture thread and hands them to
//! inference over a bounded queue. Sources are deliberately *blocking* (V4L2 streaming is `poll(2)`-based, and a
//! paced synthetic source simply sleeps), so the trait stays trivial to implement and to fake.
//!
//! Sources:
//! - [`synthetic::SyntheticSource`]: deterministic textured "product" frames with occasional defects. Works
//!   anywhere; `boards/sim.toml` uses it.
//! - [`directory::DirectorySource`]: PNG/JPEG/BMP/TIFF files (and raw `NAME.WxH.yuyv|grey|rgb` frame dumps) from a
//!   folder in file-name order, paced and optionally looped — replay of recorded parts.
//! - `v4l2::V4l2Source` (feature `v4l`): MMAP streaming from a V4L2 device in YUYV, MJPG or GREY. Without the
//!   feature, opening a V4L2 camera fails with [`CameraError::NotCompiled`] instead of failing to build.
//!
//! All sources deliver packed RGB8 ([`Frame::rgb`]); the pure pixel-format conversions live in [`convert`].
//!
//! # Time base
//! [`Frame::t_capture_us`] is microseconds on one process-wide monotonic clock ([`clock_epoch`], Rust's
//! `Instant`, i.e. `CLOCK_MONOTONIC` on Linux). One time base for every source means the runtime can turn a capture
//! time back into an `Instant` ([`instant_from_us`]) and schedule the reject pulse relative to when the part was
//! *seen*, not when inference finished — that is what makes `reject_delay_ms` match conveyor travel.

pub mod convert;
pub mod directory;
pub mod synthetic;
#[cfg(feature = "v4l")]
pub mod v4l2;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::board::CameraConfig;

/// One captured frame, converted to packed RGB8.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame number from the source, increasing; a gap means the source (driver) lost frames.
    pub id: u64,
    /// Capture time in µs on the process-wide monotonic clock (see [`clock_epoch`]).
    pub t_capture_us: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Packed RGB8, row-major, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    // Pixel data is not useful in logs or assertion failures.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("id", &self.id)
            .field("t_capture_us", &self.t_capture_us)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("rgb_len", &self.rgb.len())
            .finish()
    }
}

impl Frame {
    /// The capture time as an `Instant` (for scheduling the reject pulse).
    pub fn captured_at(&self) -> Instant {
        instant_from_us(self.t_capture_us)
    }
}

/// A camera (or something that behaves like one).
pub trait FrameSource: Send {
    /// Blocks until the next frame; Err on failure (a dropped stream is an error, never a panic).
    fn next_frame(&mut self) -> Result<Frame, CameraError>;
    /// One line for logs and `Status`: what this source is (device, format, size, rate).
    fn describe(&self) -> String;
}

impl<T: FrameSource + ?Sized> FrameSource for Box<T> {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        (**self).next_frame()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Why a frame could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CameraError {
    /// The binary was built without the cargo feature this source needs.
    #[error("camera kind {kind:?} needs kestrel-edge built with feature `{feature}` (cargo build --features {feature})")]
    NotCompiled {
        /// Camera kind from the profile.
        kind: &'static str,
        /// Missing cargo feature.
        feature: &'static str,
    },
    /// The device or directory could not be opened or configured.
    #[error("cannot open camera {}: {reason}", path.display())]
    Open {
        /// Device or directory.
        path: PathBuf,
        /// What failed and what to check.
        reason: String,
    },
    /// The driver refused or changed the requested format.
    #[error("camera {} does not support the requested format: {reason}", path.display())]
    Format {
        /// Device.
        path: PathBuf,
        /// Requested vs offered.
        reason: String,
    },
    /// The stream stopped delivering frames (cable pulled, device reset, timeout).
    #[error("camera stream {} failed: {reason}", path.display())]
    Stream {
        /// Device.
        path: PathBuf,
        /// Underlying error.
        reason: String,
    },
    /// A directory of frames could not be listed.
    #[error("cannot open camera {} ({hint})", path.display())]
    OpenIo {
        /// Device or directory.
        path: PathBuf,
        /// What to check.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A frame's bytes could not be decoded into an image.
    #[error("cannot decode frame from {}", path.display())]
    Decode {
        /// Device or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FrameDecodeError,
    },
    /// A non-looping directory source ran out of frames.
    #[error("camera {}: end of recorded frames after {frames} frames (set looped = true to replay them)", path.display())]
    EndOfStream {
        /// Directory.
        path: PathBuf,
        /// Frames delivered.
        frames: u64,
    },
    /// A pixel-format conversion was given a buffer of the wrong size.
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
}

/// Why a frame's bytes are not an image ([`CameraError::Decode`]).
#[derive(Debug, thiserror::Error)]
pub enum FrameDecodeError {
    /// The frame file could not be read.
    #[error("cannot read the frame file")]
    Read(#[source] std::io::Error),
    /// The image decoder (kestrel-vision's, the one `kestrel eval` uses) refused it.
    #[error("not a decodable image")]
    Image(#[source] kestrel_vision::dataset::DatasetError),
    /// A raw pixel buffer of the wrong size or geometry.
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
}

/// Opens the frame source a board profile describes.
pub fn open(cfg: &CameraConfig) -> Result<Box<dyn FrameSource>, CameraError> {
    match cfg {
        CameraConfig::Synthetic {
            width,
            height,
            fps,
            defect_every,
            seed,
        } => {
            let params = synthetic::SyntheticParams {
                width: *width,
                height: *height,
                fps: Some(*fps),
                defect_every: *defect_every,
                seed: *seed,
            };
            Ok(Box::new(synthetic::SyntheticSource::new(params)?))
        }
        CameraConfig::Directory { path, fps, looped } => Ok(Box::new(
            directory::DirectorySource::open(path, Some(*fps), *looped)?,
        )),
        #[cfg(feature = "v4l")]
        CameraConfig::V4l2 {
            device,
            format,
            width,
            height,
            fps,
            buffers,
        } => {
            let req = v4l2::V4l2Request {
                device: device.clone(),
                format: *format,
                width: *width,
                height: *height,
                fps: *fps,
                buffers: *buffers,
            };
            Ok(Box::new(v4l2::V4l2Source::open(&req)?))
        }
        #[cfg(not(feature = "v4l"))]
        CameraConfig::V4l2 { .. } => Err(CameraError::NotCompiled {
            kind: "v4l2",
            feature: "v4l",
        }),
    }
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The zero of [`Frame::t_capture_us`]: fixed at the first call in the process.
pub fn clock_epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as µs on the frame clock (instants before the epoch map to 0).
pub fn monotonic_us(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(clock_epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// The current time on the frame clock.
pub fn now_us() -> u64 {
    monotonic_us(Instant::now())
}

/// Inverse of [`monotonic_us`].
pub fn instant_from_us(us: u64) -> Instant {
    clock_epoch() + Duration::from_micros(us)
}

/// Delivers frames at a fixed rate on the monotonic clock. When the consumer falls behind by more than one period the
/// schedule restarts from now instead of bursting to catch up (a real camera drops frames; it does not speed up).
#[derive(Debug)]
pub(crate) struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// `fps = None` (or non-positive) delivers as fast as the consumer asks.
    pub(crate) fn new(fps: Option<f64>) -> Self {
        let period = fps
            .filter(|f| f.is_finite() && *f > 0.0)
            .map(|f| Duration::from_secs_f64(1.0 / f));
        // Fix the frame clock's zero now: were it fixed by the first frame's timestamp, taken after that frame's due
        // instant, the first frame would be stamped 0 (before the epoch) and the second a period minus the gap.
        clock_epoch();
        Pacer { period, next: None }
    }

    /// Sleeps until the next frame is due and returns the instant it was due.
    pub(crate) fn wait(&mut self) -> Instant {
        let Some(period) = self.period else {
            return Instant::now();
        };
        let now = Instant::now();
        let due = match self.next {
            Some(next) if next + period >= now => next,
            _ => now,
        };
        if due > now {
            std::thread::sleep(due - now);
        }
        self.next = Some(due + period);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_round_trips_instants() {
        let t = Instant::now();
        let us = monotonic_us(t);
        let back = instant_from_us(us);
        let diff = if back > t { back - t } else { t - back };
        assert!(
            diff < Duration::from_micros(2),
            "round trip drifted by {diff:?}"
        );
    }

    #[test]
    fn pacer_without_rate_does_not_sleep() {
        let mut p = Pacer::new(None);
        let start = Instant::now();
        for _ in 0..1000 {
            p.wait();
        }
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn pacer_spaces_frames_by_the_period() {
        let mut p = Pacer::new(Some(200.0));
        let a = p.wait();
        let b = p.wait();
        let c = p.wait();
        assert_eq!(b - a, Duration::from_millis(5));
        assert_eq!(c - b, Duration::from_millis(5));
        assert!(Instant::now() >= c);
    }

    #[cfg(not(feature = "v4l"))]
    #[test]
    fn v4l2_without_feature_reports_the_feature() {
        let cfg = CameraConfig::V4l2 {
            device: "/dev/video0".into(),
            format: crate::board::PixelFormat::Yuyv,
            width: 640,
            height: 480,
            fps: 30,
            buffers: 4,
        };
        let err = open(&cfg).err().expect("must fail without the feature");
        assert!(
            matches!(err, CameraError::NotCompiled { feature: "v4l", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--features v4l"), "{err}");
    }
}
