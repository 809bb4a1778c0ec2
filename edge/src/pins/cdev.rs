//! Real GPIO lines through the Linux GPIO character device (feature `gpio-cdev`).
//!
//! Built on `gpiocdev` (a pure-Rust libgpiod equivalent, uAPI v2) and `gpiocdev-embedded-hal` (its embedded-hal 1.0
//! pin wrappers). Pure Rust matters here: nothing to install on the Jetson and nothing extra to cross-compile.
//!
//! - The chip is found by path (`/dev/gpiochip0`) or, preferably, by label (`tegra234-gpio`): chip numbers depend on
//!   probe order, labels do not.
//! - A line is found by name on *that* chip (Tegra port names such as `PQ.06`) or taken by offset.
//! - Active-low lines are requested active-low, so the kernel inverts them and `set_high` always means "asserted".
//! - Each line is requested with consumer `kestrel-edge`, so `gpioinfo` shows who holds it; outputs start
//!   de-asserted. The request (and so the line) is released when the pin is dropped.

use std::path::{Path, PathBuf};

use gpiocdev::line::Value;
use gpiocdev::Request;

use super::{DynInput, DynOutput, LineIo, PinError, Signal};
use crate::board::{LineId, LineRef};

const CONSUMER: &str = "kestrel-edge";

/// Resolves a chip given as a path or a label to its device path.
pub(super) fn resolve_chip(chip: &Path) -> Result<PathBuf, PinError> {
    let chip_err = |reason: String, source: Option<gpiocdev::Error>| PinError::Chip {
        chip: chip.display().to_string(),
        reason,
        source: source.map(Into::into),
    };
    if chip.is_absolute() {
        gpiocdev::chip::Chip::from_path(chip).map_err(|e| {
            chip_err(
                "cannot open it (is the path right, and may this user open it? see boards/99-kestrel.rules)"
                    .into(),
                Some(e),
            )
        })?;
        return Ok(chip.to_path_buf());
    }
    let label = chip.to_string_lossy();
    let paths = gpiocdev::chip::chips()
        .map_err(|e| chip_err("cannot list /dev/gpiochip*".into(), Some(e)))?;
    let mut seen = Vec::new();
    for p in paths {
        let Ok(c) = gpiocdev::chip::Chip::from_path(&p) else {
            continue;
        };
        let Ok(info) = c.info() else { continue };
        if info.label == label {
            return Ok(p);
        }
        seen.push(format!("{} [{}]", p.display(), info.label));
    }
    let found = if seen.is_empty() {
        "no accessible GPIO chip".to_string()
    } else {
        seen.join(", ")
    };
    Err(chip_err(
        format!("no GPIO chip with this label (found: {found}); run `gpiodetect` to list chips"),
        None,
    ))
}

fn find_offset(chip: &Path, line: &LineRef, signal: Signal) -> Result<u32, PinError> {
    let line_err = |reason: String, source: Option<gpiocdev::Error>| PinError::Line {
        signal,
        line: line.to_string(),
        reason,
        source: source.map(Into::into),
    };
    let driver_err = |e| line_err(format!("cannot look it up on {}", chip.display()), Some(e));
    let c = gpiocdev::chip::Chip::from_path(chip).map_err(driver_err)?;
    let info = c.info().map_err(driver_err)?;
    match &line.id {
        LineId::Offset(o) if *o < info.num_lines => Ok(*o),
        LineId::Offset(o) => Err(line_err(
            format!(
                "chip {} has {} lines, offset {o} does not exist",
                chip.display(),
                info.num_lines
            ),
            None,
        )),
        LineId::Name(name) => {
            for li in c.line_info_iter().map_err(driver_err)? {
                let li = li.map_err(driver_err)?;
                if &li.name == name {
                    return Ok(li.offset);
                }
            }
            Err(line_err(
                format!(
                    "no line with this name on {} [{}]; run `gpioinfo {}` to list names",
                    chip.display(),
                    info.label,
                    info.label
                ),
                None,
            ))
        }
    }
}

fn request(chip: &Path, line: &LineRef, signal: Signal, output: bool) -> Result<Request, PinError> {
    let offset = find_offset(chip, line, signal)?;
    let mut b = Request::builder();
    b.on_chip(chip).with_consumer(CONSUMER).with_line(offset);
    if output {
        b.as_output(Value::Inactive);
    } else {
        b.as_input();
    }
    if line.active_low {
        b.as_active_low();
    }
    b.request().map_err(|e| PinError::Line {
        signal,
        line: line.to_string(),
        reason: "cannot request it (is another program holding it? `gpioinfo` shows the consumer)"
            .into(),
        source: Some(e.into()),
    })
}

struct CdevInput {
    pin: gpiocdev_embedded_hal::InputPin,
    signal: Signal,
}

impl embedded_hal::digital::ErrorType for CdevInput {
    type Error = PinError;
}

impl embedded_hal::digital::InputPin for CdevInput {
    fn is_high(&mut self) -> Result<bool, PinError> {
        self.pin.is_high().map_err(|e| PinError::Io {
            signal: self.signal,
            reason: "cannot read the line".into(),
            source: Some(e),
        })
    }
    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|h| !h)
    }
}

struct CdevOutput {
    pin: gpiocdev_embedded_hal::OutputPin,
    signal: Signal,
}

impl embedded_hal::digital::ErrorType for CdevOutput {
    type Error = PinError;
}

impl embedded_hal::digital::OutputPin for CdevOutput {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.pin.set_low().map_err(|e| PinError::Io {
            signal: self.signal,
            reason: "cannot drive the line low".into(),
            source: Some(e),
        })
    }
    fn set_high(&mut self) -> Result<(), PinError> {
        self.pin.set_high().map_err(|e| PinError::Io {
            signal: self.signal,
            reason: "cannot drive the line high".into(),
            source: Some(e),
        })
    }
}

fn output(chip: &Path, line: &LineRef, signal: Signal) -> Result<DynOutput, PinError> {
    let req = request(chip, line, signal, true)?;
    let pin = gpiocdev_embedded_hal::OutputPin::try_from(req).map_err(|e| PinError::Line {
        signal,
        line: line.to_string(),
        reason: "cannot use it as an output".into(),
        source: Some(e),
    })?;
    Ok(Box::new(CdevOutput { pin, signal }))
}

fn input(chip: &Path, line: &LineRef, signal: Signal) -> Result<DynInput, PinError> {
    let req = request(chip, line, signal, false)?;
    let pin = gpiocdev_embedded_hal::InputPin::try_from(req).map_err(|e| PinError::Line {
        signal,
        line: line.to_string(),
        reason: "cannot use it as an input".into(),
        source: Some(e),
    })?;
    Ok(Box::new(CdevInput { pin, signal }))
}

/// Opens every line of a `gpio-cdev` profile.
pub(super) fn open(
    chip: &Path,
    trigger: Option<&LineRef>,
    reject: &LineRef,
    ready: &LineRef,
    fault: &LineRef,
    alive: Option<&LineRef>,
) -> Result<LineIo, PinError> {
    let chip = resolve_chip(chip)?;
    Ok(LineIo {
        trigger: trigger
            .map(|t| input(&chip, t, Signal::Trigger))
            .transpose()?,
        reject: output(&chip, reject, Signal::Reject)?,
        ready: output(&chip, ready, Signal::Ready)?,
        fault: output(&chip, fault, Signal::Fault)?,
        alive: alive.map(|a| output(&chip, a, Signal::Alive)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_chip_label_is_a_clear_error() {
        let err = resolve_chip(Path::new("no-such-gpio-label")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PinError::Chip { .. }), "{msg}");
        assert!(
            msg.contains("no-such-gpio-label")
                && (msg.contains("gpiodetect") || msg.contains("cannot list")),
            "{msg}"
        );
    }

    #[test]
    fn missing_chip_path_is_a_clear_error() {
        let err = resolve_chip(Path::new("/dev/gpiochip-does-not-exist")).unwrap_err();
        assert!(matches!(err, PinError::Chip { .. }), "{err}");
    }
}
