//! V4L2 capture (feature `v4l`): USB/UVC and mono industrial cameras through the `v4l` crate's MMAP streaming.
//!
//! What this module guards against (traps found reading `v4l` 0.14, written up in `docs/edge.md`):
//! - **The driver may not give what was asked.** `VIDIOC_S_FMT` returns the format the driver chose; a different
//!   FourCC or size is an error naming both, never a silently mis-converted image. The row stride
//!   (`bytesperline`) the driver reports is used, not `2 * width`.
//! - **Buffers are bigger than frames.** The mapped slice is the whole buffer; only `bytesused` bytes are the frame
//!   (essential for MJPG, whose size varies per frame).
//! - **Stream drops must not panic.** `v4l`'s `Stream` panics in `Drop` when `STREAMOFF` fails with anything but
//!   `ENODEV`. We stop the stream ourselves first; if that fails, the stream is deliberately leaked (a few mmaps and
//!   an fd until the process exits) rather than risking a panic in the capture thread. Errors while streaming
//!   (unplug, `EIO`, poll timeout) become [`CameraError::Stream`].
//! - **Corrupt frames.** Buffers flagged `V4L2_BUF_FLAG_ERROR` are skipped (counted); too many in a row is an error.
//! - **Dropped frames.** The driver's `sequence` numbers carry through to [`Frame::id`], so gaps are visible.
//! - **Timestamps.** The buffer timestamp (CLOCK_MONOTONIC on UVC and most drivers) is mapped onto the frame clock
//!   (see [`super::clock_epoch`]); when it is missing or implausible, the dequeue time is used.
//!
//! The `v4l` crate is blocking (`poll(2)`) and single-planar; the runtime runs this source on its capture thread.

use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use v4l::buffer::{Flags, Type};
use v4l::io::mmap::Stream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{convert, monotonic_us, CameraError, Frame, FrameSource};
use crate::board::PixelFormat;

/// Corrupt buffers in a row after which the stream is declared failed.
const MAX_CONSECUTIVE_CORRUPT: u32 = 30;

/// What to open.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Request {
    /// Device node.
    pub device: PathBuf,
    /// Pixel format.
    pub format: PixelFormat,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frame rate.
    pub fps: u32,
    /// MMAP buffers.
    pub buffers: u32,
}

/// A streaming V4L2 camera.
pub struct V4l2Source {
    req: V4l2Request,
    // Declared before `_device` so it is dropped first; ManuallyDrop because its Drop may panic (module docs).
    stream: ManuallyDrop<Stream<'static>>,
    _device: Device,
    stride: usize,
    granted_fps: Option<f64>,
    last_sequence: Option<u32>,
    next_id: u64,
    corrupt: u64,
}

fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(19) => format!("{e} (device gone: cable unplugged or camera reset)"),
        _ if e.kind() == std::io::ErrorKind::TimedOut => {
            format!("{e} (no frame in time: is the camera streaming?)")
        }
        _ => e.to_string(),
    }
}

impl V4l2Source {
    /// Opens the device, negotiates format and rate, and maps the buffers. Streaming starts at the first frame.
    pub fn open(req: &V4l2Request) -> Result<Self, CameraError> {
        let path = req.device.clone();
        let open_err = |reason: String| CameraError::Open {
            path: path.clone(),
            reason,
        };
        let device = Device::with_path(&req.device).map_err(|e| {
            open_err(format!(
                "{e} (does it exist, and is this user in the `video` group?)"
            ))
        })?;
        let wanted = v4l::Format::new(req.width, req.height, FourCC::new(&req.format.fourcc()));
        let got = device
            .set_format(&wanted)
            .map_err(|e| open_err(format!("VIDIOC_S_FMT failed: {e}")))?;
        if got.fourcc != wanted.fourcc || got.width != req.width || got.height != req.height {
            let offered = device
                .enum_formats()
                .map(|fs| {
                    fs.iter()
                        .map(|f| f.fourcc.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|_| "unknown".into());
            return Err(CameraError::Format {
                path,
                reason: format!(
                    "asked for {} {}x{}, the driver chose {} {}x{} (formats offered: {offered}; `v4l2-ctl --list-formats-ext` lists sizes)",
                    req.format, req.width, req.height, got.fourcc, got.width, got.height
                ),
            });
        }
        let row = match req.format {
            PixelFormat::Yuyv => req.width as usize * 2,
            PixelFormat::Grey => req.width as usize,
            PixelFormat::Mjpg => 0,
        };
        let stride = (got.stride as usize).max(row);
        let granted_fps = device
            .set_params(&v4l::video::capture::Parameters::with_fps(req.fps))
            .ok()
            .and_then(|p| {
                let f = p.interval;
                (f.numerator > 0).then(|| f64::from(f.denominator) / f64::from(f.numerator))
            });
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, req.buffers)
            .map_err(|e| open_err(format!("cannot map {} capture buffers: {e}", req.buffers)))?;
        // A few frame periods, at least two seconds: a camera that stops delivering is a failure, not a wait.
        let period = Duration::from_secs_f64(1.0 / f64::from(req.fps.max(1)));
        stream.set_timeout((period * 5).max(Duration::from_secs(2)));
        Ok(V4l2Source {
            req: req.clone(),
            stream: ManuallyDrop::new(stream),
            _device: device,
            stride,
            granted_fps,
            last_sequence: None,
            next_id: 0,
            corrupt: 0,
        })
    }

    /// Corrupt buffers skipped so far.
    pub fn corrupt_frames(&self) -> u64 {
        self.corrupt
    }

    fn capture_time(ts: v4l::Timestamp, dequeued: Instant) -> u64 {
        let ts_us = i128::from(ts.sec) * 1_000_000 + i128::from(ts.usec);
        let now_mono = {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
            (rc == 0).then(|| i128::from(t.tv_sec) * 1_000_000 + i128::from(t.tv_nsec) / 1000)
        };
        let dequeued_us = monotonic_us(dequeued);
        match now_mono {
            // Plausible: in the past, by less than 10 s.
            Some(now) if ts_us > 0 && ts_us <= now && now - ts_us < 10_000_000 => {
                let age = (now - ts_us) as u64;
                monotonic_us(Instant::now()).saturating_sub(age)
            }
            _ => dequeued_us,
        }
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        let mut consecutive_corrupt = 0u32;
        loop {
            let (buf, meta) = self.stream.next().map_err(|e| CameraError::Stream {
                path: self.req.device.clone(),
                reason: io_reason(&e),
            })?;
            let dequeued = Instant::now();
            if meta.flags.contains(Flags::ERROR) {
                self.corrupt += 1;
                consecutive_corrupt += 1;
                if consecutive_corrupt >= MAX_CONSECUTIVE_CORRUPT {
                    return Err(CameraError::Stream {
                        path: self.req.device.clone(),
                        reason: format!("{consecutive_corrupt} corrupt buffers in a row (check cabling and USB bandwidth)"),
                    });
                }
                continue;
            }
            let used = (meta.bytesused as usize).min(buf.len());
            let data = &buf[..used];
            let (w, h) = (self.req.width, self.req.height);
            let rgb = match self.req.format {
                PixelFormat::Yuyv => convert::yuyv_to_rgb(data, w, h, self.stride),
                PixelFormat::Grey => convert::grey_to_rgb(data, w, h, self.stride),
                PixelFormat::Mjpg => convert::mjpg_to_rgb(data, w, h),
            }
            .map_err(|e| CameraError::Decode {
                path: self.req.device.clone(),
                source: e.into(),
            })?;
            let sequence = meta.sequence;
            let t_capture_us = Self::capture_time(meta.timestamp, dequeued);
            // Carry the driver's sequence gaps into the frame ids (u32 wrap-safe).
            let id = match self.last_sequence {
                Some(last) => {
                    self.next_id + u64::from(sequence.wrapping_sub(last).saturating_sub(1))
                }
                None => self.next_id,
            };
            self.last_sequence = Some(sequence);
            self.next_id = id + 1;
            return Ok(Frame {
                id,
                t_capture_us,
                width: w,
                height: h,
                rgb,
            });
        }
    }

    fn describe(&self) -> String {
        let fps = self
            .granted_fps
            .map(|f| format!("{f:.1} fps granted"))
            .unwrap_or_else(|| "rate not reported".into());
        format!(
            "v4l2 {} {} {}x{} (asked {} fps, {fps}), {} mmap buffers",
            self.req.device.display(),
            self.req.format,
            self.req.width,
            self.req.height,
            self.req.fps,
            self.req.buffers
        )
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        match self.stream.stop() {
            // Stopped (or the device is already gone, which v4l's Drop tolerates): its own Drop is safe to run.
            Ok(()) => unsafe { ManuallyDrop::drop(&mut self.stream) },
            Err(e) if e.raw_os_error() == Some(19) => unsafe {
                ManuallyDrop::drop(&mut self.stream)
            },
            // v4l's Drop would panic on this error: leak the stream instead (see the module docs).
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_an_open_error_not_a_panic() {
        let req = V4l2Request {
            device: "/dev/video-kestrel-does-not-exist".into(),
            format: PixelFormat::Yuyv,
            width: 640,
            height: 480,
            fps: 30,
            buffers: 4,
        };
        let err = V4l2Source::open(&req).err().expect("no such device");
        assert!(matches!(err, CameraError::Open { .. }), "{err}");
        assert!(
            err.to_string().contains("video-kestrel-does-not-exist"),
            "{err}"
        );
    }

    /// Streams 30 frames from a real camera: `KESTREL_V4L_DEVICE=/dev/video0 cargo test -p kestrel-edge --features v4l
    /// -- --ignored v4l2_streams_from_a_real_device`. Optional `KESTREL_V4L_FORMAT` (YUYV|MJPG|GREY), `KESTREL_V4L_SIZE`
    /// (WxH).
    #[test]
    #[ignore = "needs a V4L2 camera (KESTREL_V4L_DEVICE)"]
    fn v4l2_streams_from_a_real_device() {
        let device = std::env::var("KESTREL_V4L_DEVICE").expect("set KESTREL_V4L_DEVICE");
        let format = match std::env::var("KESTREL_V4L_FORMAT").as_deref() {
            Ok("MJPG") => PixelFormat::Mjpg,
            Ok("GREY") => PixelFormat::Grey,
            _ => PixelFormat::Yuyv,
        };
        let size = std::env::var("KESTREL_V4L_SIZE").unwrap_or_else(|_| "640x480".into());
        let (w, h) = size.split_once('x').expect("WxH");
        let req = V4l2Request {
            device: device.into(),
            format,
            width: w.parse().unwrap(),
            height: h.parse().unwrap(),
            fps: 30,
            buffers: 4,
        };
        let mut src = V4l2Source::open(&req).unwrap();
        let mut last = None;
        for _ in 0..30 {
            let f = src.next_frame().unwrap();
            assert_eq!(f.rgb.len(), (f.width * f.height * 3) as usize);
            if let Some((id, t)) = last {
                assert!(f.id > id && f.t_capture_us >= t);
            }
            last = Some((f.id, f.t_capture_us));
        }
    }
}
