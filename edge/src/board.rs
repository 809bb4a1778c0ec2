//! Board profiles: one strictly parsed TOML file (`boards/<name>.toml`) per supported board.
//!
//! A profile says everything that differs between a simulated unit on a laptop and a Jetson on a production line:
//! which camera and pixel format, which GPIO lines drive the reject solenoid and lamps, where the links listen,
//! where the journal and model store live, and which compute device scores frames.
//!
//! # Why strict
//! A typo in a board profile on a production line is a silent misconfiguration (a reject pulse that never fires, a
//! camera that runs at the wrong rate). So parsing refuses unknown keys (`deny_unknown_fields` everywhere) and
//! impossible values (fps 0, a non-standard baud rate, a zero-length reject pulse, an odd YUYV width, a file that
//! does not exist, ...). Every error names the profile file, the key (dotted path, e.g. `camera.fps`) and the
//! reason, so an operator can fix it without reading code.
//!
//! # Two layers
//! The TOML is first read into private `Raw*` structs that mirror the file one-to-one (serde does the type checks
//! and the unknown-key checks); `validate` then turns them into the public, typed [`BoardProfile`] whose values are
//! known to be sane. Code downstream never re-checks a profile.
//!
//! # Paths
//! Relative paths (`state_dir`, a directory camera's `path`, `unit.key_file`) resolve against the directory that
//! holds the profile file, so `boards/sim.toml` works from any working directory of a fresh clone. Device paths
//! (`/dev/video0`, `/dev/ttyTHS0`) are kept as written and are *not* required to exist at parse time: a profile is
//! often checked on a workstation before it is deployed. Missing devices are reported when they are opened.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Serial rates a profile may name. UARTs on Jetson (and USB-serial bridges) support these; anything else is almost
/// always a typo (e.g. `11520`).
pub const STANDARD_BAUD_RATES: &[u32] = &[
    9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 500_000, 576_000, 921_600, 1_000_000,
    1_152_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000,
];

/// The special serial device name that makes the unit create a pseudo-terminal (simulation and tests).
pub const PTY_DEVICE: &str = "pty";

/// Largest frame side a profile may ask for; bigger is a typo on any camera a Jetson can drive over V4L2.
pub const MAX_FRAME_SIDE: u32 = 8192;
/// Largest inspection queue; deeper queues only hide a unit that cannot keep up (and hold parts too long).
pub const MAX_QUEUE_DEPTH: usize = 4096;
/// Longest reject delay: one minute of conveyor travel is already far beyond any line we know.
pub const MAX_REJECT_DELAY_MS: u32 = 60_000;
/// Longest reject pulse; a solenoid held for more than 10 s is a misconfiguration (and may burn the coil).
pub const MAX_REJECT_PULSE_MS: u32 = 10_000;
/// Longest trigger debounce; more than a second would swallow real parts.
pub const MAX_DEBOUNCE_MS: u32 = 1_000;

/// Why a board profile was refused. Every variant names the file; parse and validation errors also name the key.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The profile file could not be read.
    #[error("cannot read board profile {}: {source} (check the path given to --board)", path.display())]
    Read {
        /// Profile file.
        path: PathBuf,
        /// Underlying IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value has the wrong type.
    #[error("board profile {}: {}{reason}{}", path.display(), key_prefix(key), location_suffix(*line))]
    Parse {
        /// Profile file.
        path: PathBuf,
        /// Dotted key path (empty when the error is not tied to a key, e.g. a TOML syntax error).
        key: String,
        /// What serde/TOML reported.
        reason: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
    },
    /// Well-formed TOML whose values are impossible or inconsistent.
    #[error("board profile {}: {key}: {reason}", path.display())]
    Invalid {
        /// Profile file.
        path: PathBuf,
        /// Dotted key path.
        key: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn location_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl BoardError {
    /// The dotted key the error is about (`""` for read errors and key-less syntax errors).
    pub fn key(&self) -> &str {
        match self {
            BoardError::Read { .. } => "",
            BoardError::Parse { key, .. } | BoardError::Invalid { key, .. } => key,
        }
    }

    /// The profile file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            BoardError::Read { path, .. }
            | BoardError::Parse { path, .. }
            | BoardError::Invalid { path, .. } => path,
        }
    }
}

/// A validated board profile. Construct it with [`BoardProfile::load`] or [`BoardProfile::from_toml_str`].
#[derive(Debug, Clone, PartialEq)]
pub struct BoardProfile {
    /// Profile name, e.g. `"sim"` or `"jetson-orin-nano-devkit"`; reported in the `Hello` handshake.
    pub name: String,
    /// Frame source.
    pub camera: CameraConfig,
    /// Line I/O (trigger input, reject output, ready and fault lamps).
    pub pins: PinsConfig,
    /// Free-run or triggered inspection, queue depth, reject timing.
    pub inspection: InspectionConfig,
    /// TCP link, if the unit listens on the network.
    pub tcp: Option<TcpConfig>,
    /// Serial link, if the unit talks over a UART (or a pseudo-terminal in simulation).
    pub serial: Option<SerialConfig>,
    /// Journal and model store directory (absolute, or resolved against the profile's directory).
    pub state_dir: PathBuf,
    /// Compute device for inference.
    pub compute: ComputeConfig,
    /// Unit identity and link key.
    pub unit: UnitConfig,
}

/// Where frames come from. TOML: `[camera] kind = "v4l2" | "directory" | "synthetic"`.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraConfig {
    /// A V4L2 capture device (USB/UVC or mono industrial camera), MMAP streaming. Needs feature `v4l`.
    V4l2 {
        /// Device node, e.g. `/dev/video0` (prefer a stable udev symlink such as `/dev/kestrel-camera`).
        device: PathBuf,
        /// Pixel format requested from the driver.
        format: PixelFormat,
        /// Requested width in pixels (even for YUYV).
        width: u32,
        /// Requested height in pixels.
        height: u32,
        /// Requested frame rate.
        fps: u32,
        /// MMAP buffers queued in the driver (2..=32).
        buffers: u32,
    },
    /// PNG/JPEG files (and raw frame dumps) from a directory, in file-name order. For replaying recorded parts.
    Directory {
        /// Directory (absolute, or resolved against the profile's directory); must exist.
        path: PathBuf,
        /// Pace at which frames are delivered.
        fps: f64,
        /// Start again from the first file after the last one (otherwise the source ends with an error).
        looped: bool,
    },
    /// Deterministic textured "product" frames with occasional defects. Works anywhere; the default for `sim`.
    Synthetic {
        /// Frame width in pixels.
        width: u32,
        /// Frame height in pixels.
        height: u32,
        /// Pace at which frames are delivered.
        fps: f64,
        /// Every n-th frame carries a defect (0 = never).
        defect_every: u32,
        /// Seed of the texture and defect generator; the same seed gives the same frames.
        seed: u64,
    },
}

/// V4L2 pixel formats the unit can convert to RGB. TOML: the FourCC, `"YUYV"`, `"MJPG"` or `"GREY"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PixelFormat {
    /// Packed 4:2:2 `Y0 U Y1 V` (BT.601 limited range), the common UVC uncompressed format.
    #[serde(rename = "YUYV")]
    Yuyv,
    /// Motion-JPEG: one JFIF image per frame (full-range BT.601).
    #[serde(rename = "MJPG")]
    Mjpg,
    /// 8-bit luma only (mono industrial cameras).
    #[serde(rename = "GREY")]
    Grey,
}

impl PixelFormat {
    /// The V4L2 FourCC bytes.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpg => *b"MJPG",
            PixelFormat::Grey => *b"GREY",
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cc = self.fourcc();
        f.write_str(std::str::from_utf8(&cc).unwrap_or("????"))
    }
}

/// Line I/O backend. TOML: `[pins] kind = "fake" | "gpio-cdev"`.
#[derive(Debug, Clone, PartialEq)]
pub enum PinsConfig {
    /// In-memory pins (simulation and tests); see `pins::FakeBoard`.
    Fake,
    /// Linux GPIO character device (feature `gpio-cdev`).
    GpioCdev {
        /// `/dev/gpiochipN`, or a chip label such as `tegra234-gpio` (preferred: chip numbers can change between
        /// kernels, labels do not).
        chip: PathBuf,
        /// Part-present input (photo-eye / PLC); required in triggered mode.
        trigger: Option<LineRef>,
        /// Reject actuator output.
        reject: LineRef,
        /// "Ready" lamp output (unit inspecting, model loaded).
        ready: LineRef,
        /// Fault lamp output.
        fault: LineRef,
        /// Optional "alive" heartbeat output to the PLC (toggles while the unit runs).
        alive: Option<LineRef>,
    },
}

/// One GPIO line: by name (`"PQ.06"`) or by offset on the chip, with its polarity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    /// How to find the line.
    pub id: LineId,
    /// The electrical level is inverted (an opto-isolated input pulling low when a part is present).
    pub active_low: bool,
}

/// How a GPIO line is found on its chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineId {
    /// Line name from the device tree (Tegra port names on Jetson, e.g. `PAC.06`).
    Name(String),
    /// Line offset on the chip.
    Offset(u32),
}

impl fmt::Display for LineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            LineId::Name(n) => write!(f, "line \"{n}\"")?,
            LineId::Offset(o) => write!(f, "line offset {o}")?,
        }
        if self.active_low {
            f.write_str(" (active-low)")?;
        }
        Ok(())
    }
}

/// Inspection scheduling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectionConfig {
    /// Free-run or triggered.
    pub mode: Mode,
    /// Frames waiting for inference (free-run drops the oldest beyond it; triggered raises a fault).
    pub queue_depth: usize,
    /// Conveyor travel time from the camera to the reject actuator.
    pub reject_delay_ms: u32,
    /// How long the reject output is held.
    pub reject_pulse_ms: u32,
    /// The trigger input must be stable this long before an edge counts.
    pub trigger_debounce_ms: u32,
    /// What a part whose verdict is not ready by its deadline gets (default: reject).
    pub on_late: OnLate,
    /// The deadline is `reference instant + reject_delay − deadline_margin`: time the I/O thread needs to wake and
    /// drive the output (default 5 ms).
    pub deadline_margin_ms: u32,
    /// Triggered mode: only a frame captured at least this long after the trigger edge is judged for the part (the
    /// part must be in view and still; default 0). Older frames (buffered by the driver) are discarded.
    pub exposure_offset_ms: u32,
}

/// What a late part gets. TOML: `"reject"` (default) or `"pass"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnLate {
    /// Reject it (fail safe: never ship a part nobody judged in time).
    #[default]
    Reject,
    /// Let it pass (lines where a false reject costs more than an escape; the part is still journaled as late).
    Pass,
}

/// Inspection mode. TOML: `"free-run"` or `"triggered"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Inspect every frame the camera delivers; under load drop the oldest queued frame (and count it).
    FreeRun,
    /// Inspect one frame per trigger edge; never drop a triggered part (a full queue is a fault).
    Triggered,
}

/// TCP link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Address to listen on; port 0 asks the OS for a free port (simulation, tests).
    pub listen: SocketAddr,
    /// Host clients served at once; further connections are refused with a message.
    pub max_clients: usize,
}

/// Serial link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// UART device (`/dev/ttyTHS1`), or `"pty"` to create a pseudo-terminal whose path the unit prints.
    pub device: PathBuf,
    /// Line rate, one of [`STANDARD_BAUD_RATES`].
    pub baud: u32,
}

impl SerialConfig {
    /// Whether the unit should create a pseudo-terminal instead of opening a device.
    pub fn is_pty(&self) -> bool {
        self.device.as_os_str() == PTY_DEVICE
    }
}

/// Compute device for inference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeConfig {
    /// `"cpu"` or `"cuda:N"`.
    pub device: String,
    /// CPU threads for inference (None = let the runtime choose).
    pub threads: Option<usize>,
    /// Network input size (pixels, square) this unit is qualified for; a bundle for another size is refused at
    /// flash time. None = any (the sim and development units).
    pub input_size: Option<u32>,
}

impl CameraConfig {
    /// The frame size the camera is configured for, when the profile says (a directory of files does not).
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        match self {
            CameraConfig::V4l2 { width, height, .. }
            | CameraConfig::Synthetic { width, height, .. } => Some((*width, *height)),
            CameraConfig::Directory { .. } => None,
        }
    }
}

impl ComputeConfig {
    /// The CUDA ordinal when the device is `cuda:N`.
    pub fn cuda_ordinal(&self) -> Option<usize> {
        self.device
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
    }
}

/// Unit identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitConfig {
    /// Unit id reported in `Hello` and mixed into the link authentication.
    pub id: String,
    /// Pre-shared unit key (hex) file; None = links are unauthenticated (simulation only).
    pub key_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------------------------
// Raw TOML layer: mirrors the file, serde checks types and unknown keys.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    state_dir: PathBuf,
    camera: RawCamera,
    pins: RawPins,
    inspection: RawInspection,
    tcp: Option<RawTcp>,
    serial: Option<RawSerial>,
    compute: RawCompute,
    unit: RawUnit,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum RawCamera {
    V4l2 {
        device: PathBuf,
        format: PixelFormat,
        width: u32,
        height: u32,
        fps: u32,
        #[serde(default = "default_buffers")]
        buffers: u32,
    },
    Directory {
        path: PathBuf,
        fps: f64,
        #[serde(default = "default_true")]
        looped: bool,
    },
    Synthetic {
        #[serde(default = "default_side")]
        width: u32,
        #[serde(default = "default_side")]
        height: u32,
        fps: f64,
        #[serde(default = "default_defect_every")]
        defect_every: u32,
        #[serde(default)]
        seed: u64,
    },
}

fn default_buffers() -> u32 {
    4
}
fn default_true() -> bool {
    true
}
fn default_side() -> u32 {
    256
}
fn default_defect_every() -> u32 {
    10
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum RawPins {
    Fake,
    GpioCdev {
        chip: PathBuf,
        trigger: Option<RawLine>,
        reject: RawLine,
        ready: RawLine,
        fault: RawLine,
        #[serde(default)]
        alive: Option<Box<RawLine>>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    name: Option<String>,
    offset: Option<u32>,
    #[serde(default)]
    active_low: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInspection {
    mode: Mode,
    queue_depth: usize,
    reject_delay_ms: u32,
    reject_pulse_ms: u32,
    #[serde(default)]
    trigger_debounce_ms: u32,
    #[serde(default)]
    on_late: OnLate,
    #[serde(default = "default_deadline_margin")]
    deadline_margin_ms: u32,
    #[serde(default)]
    exposure_offset_ms: u32,
}

fn default_deadline_margin() -> u32 {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    listen: String,
    #[serde(default = "default_max_clients")]
    max_clients: usize,
}

fn default_max_clients() -> usize {
    4
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    device: PathBuf,
    baud: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompute {
    device: String,
    threads: Option<usize>,
    input_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    id: String,
    key_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------------------------

impl BoardProfile {
    /// Reads and validates a profile file. Relative paths inside resolve against the file's directory.
    pub fn load(path: &Path) -> Result<Self, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates profile text. `origin` is the file the text came from: it names the file in errors and
    /// its parent directory anchors relative paths (pass e.g. `Path::new("boards/sim.toml")`).
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, BoardError> {
        let de = toml::Deserializer::new(text);
        let raw: RawProfile = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start));
            BoardError::Parse {
                path: origin.to_path_buf(),
                key,
                reason: inner.message().to_string(),
                line,
            }
        })?;
        let base = origin.parent().map(Path::to_path_buf).unwrap_or_default();
        Validator {
            origin,
            base: &base,
        }
        .profile(raw)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    origin: &'a Path,
    base: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, reason: impl Into<String>) -> BoardError {
        BoardError::Invalid {
            path: self.origin.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn profile(&self, raw: RawProfile) -> Result<BoardProfile, BoardError> {
        if !is_identifier(&raw.name) {
            return Err(self.invalid(
                "name",
                format!(
                    "{:?} is not a valid profile name (use 1-64 of a-z, 0-9, '-', '_', '.')",
                    raw.name
                ),
            ));
        }
        if raw.state_dir.as_os_str().is_empty() {
            return Err(self.invalid(
                "state_dir",
                "must not be empty (the journal and model store live there)",
            ));
        }
        let camera = self.camera(raw.camera)?;
        let inspection = self.inspection(raw.inspection)?;
        let pins = self.pins(raw.pins, inspection.mode)?;
        let tcp = raw.tcp.map(|t| self.tcp(t)).transpose()?;
        let serial = raw.serial.map(|s| self.serial(s)).transpose()?;
        if tcp.is_none() && serial.is_none() {
            return Err(self.invalid(
                "tcp",
                "a unit needs at least one link: add a [tcp] or a [serial] table",
            ));
        }
        let compute = self.compute(raw.compute)?;
        let unit = self.unit(raw.unit)?;
        Ok(BoardProfile {
            name: raw.name,
            camera,
            pins,
            inspection,
            tcp,
            serial,
            state_dir: self.resolve(&raw.state_dir),
            compute,
            unit,
        })
    }

    /// Refuses `v` outside `range`; `what` follows the number in the message (unit, hint).
    fn check_range<T: PartialOrd + fmt::Display>(
        &self,
        key: &str,
        v: T,
        range: std::ops::RangeInclusive<T>,
        what: &str,
    ) -> Result<(), BoardError> {
        if !range.contains(&v) {
            let (lo, hi) = range.into_inner();
            return Err(self.invalid(key, format!("{v}{what} is out of range ({lo}..={hi})")));
        }
        Ok(())
    }

    fn check_side(&self, key: &str, v: u32) -> Result<(), BoardError> {
        self.check_range(key, v, 1..=MAX_FRAME_SIDE, " pixels")
    }

    fn check_fps(&self, fps: f64) -> Result<(), BoardError> {
        if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
            return Err(self.invalid(
                "camera.fps",
                format!("{fps} is not a usable frame rate (0 < fps <= 1000)"),
            ));
        }
        Ok(())
    }

    fn camera(&self, raw: RawCamera) -> Result<CameraConfig, BoardError> {
        match raw {
            RawCamera::V4l2 {
                device,
                format,
                width,
                height,
                fps,
                buffers,
            } => {
                if device.as_os_str().is_empty() {
                    return Err(self.invalid(
                        "camera.device",
                        "must name a V4L2 device such as /dev/video0",
                    ));
                }
                self.check_side("camera.width", width)?;
                self.check_side("camera.height", height)?;
                if format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
                    return Err(self.invalid(
                        "camera.width",
                        format!("{width} is odd; YUYV packs two pixels per 4 bytes, so the width must be even"),
                    ));
                }
                if fps == 0 || fps > 1000 {
                    return Err(self.invalid(
                        "camera.fps",
                        format!("{fps} is not a usable frame rate (1..=1000)"),
                    ));
                }
                self.check_range(
                    "camera.buffers",
                    buffers,
                    2..=32,
                    " MMAP buffers (4 is typical)",
                )?;
                Ok(CameraConfig::V4l2 {
                    device,
                    format,
                    width,
                    height,
                    fps,
                    buffers,
                })
            }
            RawCamera::Directory { path, fps, looped } => {
                self.check_fps(fps)?;
                let resolved = self.resolve(&path);
                if !resolved.is_dir() {
                    return Err(self.invalid(
                        "camera.path",
                        format!(
                            "{} does not exist or is not a directory",
                            resolved.display()
                        ),
                    ));
                }
                Ok(CameraConfig::Directory {
                    path: resolved,
                    fps,
                    looped,
                })
            }
            RawCamera::Synthetic {
                width,
                height,
                fps,
                defect_every,
                seed,
            } => {
                // The synthetic product generator's own range, checked here so a profile fails at load, not at open.
                let sides =
                    kestrel_vision::synthetic::MIN_SIZE..=kestrel_vision::synthetic::MAX_SIZE;
                self.check_range("camera.width", width, sides.clone(), " pixels")?;
                self.check_range("camera.height", height, sides, " pixels")?;
                self.check_fps(fps)?;
                Ok(CameraConfig::Synthetic {
                    width,
                    height,
                    fps,
                    defect_every,
                    seed,
                })
            }
        }
    }

    fn line(&self, key: &str, raw: RawLine) -> Result<LineRef, BoardError> {
        let id = match (raw.name, raw.offset) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(key, "give either `name` or `offset`, not both"));
            }
            (None, None) => {
                return Err(self.invalid(
                    key,
                    "missing line: give `name = \"PQ.06\"` or `offset = 106`",
                ));
            }
            (Some(n), None) if n.trim().is_empty() => {
                return Err(self.invalid(&format!("{key}.name"), "must not be empty"))
            }
            (Some(n), None) => LineId::Name(n),
            (None, Some(o)) => LineId::Offset(o),
        };
        Ok(LineRef {
            id,
            active_low: raw.active_low,
        })
    }

    fn pins(&self, raw: RawPins, mode: Mode) -> Result<PinsConfig, BoardError> {
        match raw {
            RawPins::Fake => Ok(PinsConfig::Fake),
            RawPins::GpioCdev {
                chip,
                trigger,
                reject,
                ready,
                fault,
                alive,
            } => {
                if chip.as_os_str().is_empty() {
                    return Err(self.invalid(
                        "pins.chip",
                        "must name a chip: /dev/gpiochipN or a label such as tegra234-gpio",
                    ));
                }
                let trigger = trigger.map(|t| self.line("pins.trigger", t)).transpose()?;
                if mode == Mode::Triggered && trigger.is_none() {
                    return Err(self.invalid(
                        "pins.trigger",
                        "inspection.mode = \"triggered\" needs a trigger input line",
                    ));
                }
                let reject = self.line("pins.reject", reject)?;
                let ready = self.line("pins.ready", ready)?;
                let fault = self.line("pins.fault", fault)?;
                let alive = alive.map(|a| self.line("pins.alive", *a)).transpose()?;
                let mut seen: Vec<(&str, &LineId)> = Vec::new();
                for (key, l) in [
                    ("pins.trigger", trigger.as_ref()),
                    ("pins.reject", Some(&reject)),
                    ("pins.ready", Some(&ready)),
                    ("pins.fault", Some(&fault)),
                    ("pins.alive", alive.as_ref()),
                ] {
                    let Some(l) = l else { continue };
                    if let Some((other, _)) = seen.iter().find(|(_, id)| **id == l.id) {
                        return Err(self.invalid(
                            key,
                            format!(
                                "{l} is already used by {other}; each signal needs its own line"
                            ),
                        ));
                    }
                    seen.push((key, &l.id));
                }
                Ok(PinsConfig::GpioCdev {
                    chip,
                    trigger,
                    reject,
                    ready,
                    fault,
                    alive,
                })
            }
        }
    }

    fn inspection(&self, raw: RawInspection) -> Result<InspectionConfig, BoardError> {
        self.check_range(
            "inspection.queue_depth",
            raw.queue_depth,
            1..=MAX_QUEUE_DEPTH,
            "",
        )?;
        self.check_range(
            "inspection.reject_pulse_ms",
            raw.reject_pulse_ms,
            1..=MAX_REJECT_PULSE_MS,
            " ms (a zero pulse never rejects)",
        )?;
        self.check_range(
            "inspection.reject_delay_ms",
            raw.reject_delay_ms,
            0..=MAX_REJECT_DELAY_MS,
            " ms",
        )?;
        self.check_range(
            "inspection.trigger_debounce_ms",
            raw.trigger_debounce_ms,
            0..=MAX_DEBOUNCE_MS,
            " ms",
        )?;
        self.check_range(
            "inspection.exposure_offset_ms",
            raw.exposure_offset_ms,
            0..=MAX_REJECT_DELAY_MS,
            " ms",
        )?;
        self.check_range(
            "inspection.deadline_margin_ms",
            raw.deadline_margin_ms,
            0..=1000,
            " ms (clamped to reject_delay_ms)",
        )?;
        Ok(InspectionConfig {
            mode: raw.mode,
            queue_depth: raw.queue_depth,
            reject_delay_ms: raw.reject_delay_ms,
            reject_pulse_ms: raw.reject_pulse_ms,
            trigger_debounce_ms: raw.trigger_debounce_ms,
            on_late: raw.on_late,
            deadline_margin_ms: raw.deadline_margin_ms,
            exposure_offset_ms: raw.exposure_offset_ms,
        })
    }

    fn tcp(&self, raw: RawTcp) -> Result<TcpConfig, BoardError> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            self.invalid(
                "tcp.listen",
                format!(
                    "{:?} is not an IP:port address (e.g. \"0.0.0.0:7878\" or \"127.0.0.1:0\")",
                    raw.listen
                ),
            )
        })?;
        self.check_range("tcp.max_clients", raw.max_clients, 1..=64, " clients")?;
        Ok(TcpConfig {
            listen,
            max_clients: raw.max_clients,
        })
    }

    fn serial(&self, raw: RawSerial) -> Result<SerialConfig, BoardError> {
        if raw.device.as_os_str().is_empty() {
            return Err(self.invalid(
                "serial.device",
                "must name a UART such as /dev/ttyTHS1, or \"pty\"",
            ));
        }
        if raw.device.as_os_str() != PTY_DEVICE && !raw.device.is_absolute() {
            return Err(self.invalid(
                "serial.device",
                format!(
                    "{} must be an absolute device path (or \"pty\")",
                    raw.device.display()
                ),
            ));
        }
        if !STANDARD_BAUD_RATES.contains(&raw.baud) {
            return Err(self.invalid(
                "serial.baud",
                format!(
                    "{} is not a standard rate (one of {:?})",
                    raw.baud, STANDARD_BAUD_RATES
                ),
            ));
        }
        Ok(SerialConfig {
            device: raw.device,
            baud: raw.baud,
        })
    }

    fn compute(&self, raw: RawCompute) -> Result<ComputeConfig, BoardError> {
        let ok = raw.device == "cpu"
            || raw.device.strip_prefix("cuda:").is_some_and(|n| {
                !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit())
            });
        if !ok {
            return Err(self.invalid(
                "compute.device",
                format!("{:?} is not a device (\"cpu\" or \"cuda:N\")", raw.device),
            ));
        }
        if let Some(t) = raw.threads {
            self.check_range(
                "compute.threads",
                t,
                1..=256,
                " threads (omit for automatic)",
            )?;
        }
        if let Some(s) = raw.input_size {
            self.check_range(
                "compute.input_size",
                s as usize,
                16..=4096,
                " pixels (omit to accept any model input size)",
            )?;
        }
        Ok(ComputeConfig {
            device: raw.device,
            threads: raw.threads,
            input_size: raw.input_size,
        })
    }

    fn unit(&self, raw: RawUnit) -> Result<UnitConfig, BoardError> {
        if !is_identifier(&raw.id) {
            return Err(self.invalid(
                "unit.id",
                format!(
                    "{:?} is not a valid unit id (use 1-64 of a-z, A-Z, 0-9, '-', '_', '.')",
                    raw.id
                ),
            ));
        }
        let key_file = match raw.key_file {
            None => None,
            Some(p) => {
                let resolved = self.resolve(&p);
                if !resolved.is_file() {
                    return Err(self.invalid(
                        "unit.key_file",
                        format!(
                            "{} does not exist (create it with the unit's hex key, mode 0600)",
                            resolved.display()
                        ),
                    ));
                }
                Some(resolved)
            }
        };
        Ok(UnitConfig {
            id: raw.id,
            key_file,
        })
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
