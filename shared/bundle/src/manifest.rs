//! The manifest: what a bundle holds and what a unit must check before it runs it.
//!
//! The container interprets only what it needs to stay safe and to let a unit decide compatibility without loading a
//! model: the tensor table (to bound every view into the payload), firmware range, input size, model version
//! (anti-rollback), threshold and self-test. The model description itself travels as the opaque [`ModelInfo::spec`]
//! text; the vision crate owns its meaning.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{BundleError, TableProblem};
use crate::ALIGN;

/// Element type of a tensor. All multi-byte types are little-endian in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    F32,
    F16,
    I8,
    U32,
    U8,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::F16 => 2,
            Dtype::I8 | Dtype::U8 => 1,
        }
    }
}

/// How the bulk of the weights is stored, for reports (`kestrel export`, `Status`); the tensor table is the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quantisation {
    F32,
    F16,
    Int8,
}

/// A firmware version `major.minor.patch`, ordered field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FirmwareVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl FirmwareVersion {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        FirmwareVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The text was not `MAJOR.MINOR.PATCH` with each part a number up to 65535.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a firmware version MAJOR.MINOR.PATCH (each 0..=65535)")]
pub struct ParseFirmwareVersionError(pub String);

impl FromStr for FirmwareVersion {
    type Err = ParseFirmwareVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseFirmwareVersionError(s.to_owned());
        let mut parts = s.split('.').map(|p| p.parse::<u16>().map_err(|_| bad()));
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(FirmwareVersion::new(major?, minor?, patch?))
    }
}

/// The firmware versions a bundle runs on, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FirmwareRange {
    pub min: FirmwareVersion,
    pub max: FirmwareVersion,
}

impl FirmwareRange {
    pub fn contains(&self, v: FirmwareVersion) -> bool {
        self.min <= v && v <= self.max
    }
}

/// One tensor: where its bytes are in the payload and how to read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte offset from the payload start; a multiple of 64.
    pub offset: u64,
    /// Byte length; always `product(shape) * dtype.size()`.
    pub len: u64,
    /// For an `I8` tensor quantised per output channel: the name of an `F32` tensor of shape `[shape[0]]` holding
    /// one scale per output channel (`real = scale[c] * i8`).
    pub scales: Option<String>,
}

impl TensorEntry {
    /// `product(shape) * dtype.size()`, or `None` when that overflows u64.
    pub fn expected_len(dtype: Dtype, shape: &[u64]) -> Option<u64> {
        shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
    }
}

/// An image embedded in the bundle and the score the model must give it before a unit activates the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfTest {
    /// Name of a `U8` tensor of shape `[h, w, 3]` (RGB, row-major).
    pub image: String,
    pub expected_score: f32,
    /// Largest accepted `|score - expected_score|`.
    pub tolerance: f32,
}

impl SelfTest {
    /// Whether a score computed on the unit passes the self-test (a NaN score never does).
    pub fn accepts(&self, score: f32) -> bool {
        (score - self.expected_score).abs() <= self.tolerance
    }
}

/// Everything about the model except the tensor table, which [`BundleWriter`](crate::BundleWriter) builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name, e.g. the product line it inspects.
    pub name: String,
    /// Product category it was fitted on.
    pub category: String,
    /// When it was exported, seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// The program and version that wrote the bundle, e.g. `kestrel 0.1.0`.
    pub writer: String,
    /// Monotonically increasing per model line; a unit refuses a lower version than its active one (anti-rollback).
    pub model_version: u64,
    /// Firmware versions this bundle runs on.
    pub firmware: FirmwareRange,
    /// Side of the square network input in pixels.
    pub input_size: u32,
    /// Anomaly-score threshold for the verdict (also inside `spec`; typed here so the edge needs no parser for it).
    pub threshold: f32,
    pub quantisation: Quantisation,
    /// The model description (backbone, shapes, normalisation, taps, detector, threshold provenance) as written by
    /// the vision crate; opaque to the container.
    pub spec: String,
    pub self_test: Option<SelfTest>,
}

impl ModelInfo {
    /// Refuses a bundle that does not run on `firmware`.
    pub fn check_firmware(&self, firmware: FirmwareVersion) -> Result<(), BundleError> {
        if self.firmware.contains(firmware) {
            Ok(())
        } else {
            Err(BundleError::FirmwareIncompatible {
                firmware,
                min: self.firmware.min,
                max: self.firmware.max,
            })
        }
    }

    /// Refuses a bundle whose model takes another input size than the unit is configured for.
    pub fn check_input_size(&self, unit: u32) -> Result<(), BundleError> {
        if self.input_size == unit {
            Ok(())
        } else {
            Err(BundleError::InputSizeMismatch {
                bundle: self.input_size,
                unit,
            })
        }
    }

    /// Anti-rollback: refuses a model version lower than the active one. Equal versions pass (re-flashing the same
    /// model, or a re-export); overriding a refusal (`--allow-downgrade`) is the caller's decision.
    pub fn check_not_older(&self, active_model_version: u64) -> Result<(), BundleError> {
        if self.model_version >= active_model_version {
            Ok(())
        } else {
            Err(BundleError::Downgrade {
                bundle: self.model_version,
                active: active_model_version,
            })
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BundleError> {
        let field = |field, problem| Err(BundleError::ManifestField { field, problem });
        if self.name.is_empty() {
            return field("name", "empty");
        }
        if self.input_size == 0 {
            return field("input_size", "zero");
        }
        if !self.threshold.is_finite() {
            return field("threshold", "not a finite number");
        }
        if self.firmware.min > self.firmware.max {
            return field("firmware", "min is above max");
        }
        if let Some(t) = &self.self_test {
            if !t.expected_score.is_finite() {
                return field("self_test.expected_score", "not a finite number");
            }
            if !(t.tolerance.is_finite() && t.tolerance >= 0.0) {
                return field("self_test.tolerance", "not a finite number >= 0");
            }
        }
        Ok(())
    }
}

/// The signed description of a bundle: model information plus the tensor table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: ModelInfo,
    pub tensors: Vec<TensorEntry>,
}

impl Manifest {
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Checks the model fields and that the table describes `payload` exactly: unique names, 64-aligned and
    /// in-bounds offsets, lengths that match shape × dtype, no overlaps, zero gaps, nothing after the last tensor,
    /// scales and self-test tensors that exist with the right type and shape. All arithmetic is overflow-checked.
    pub(crate) fn validate(&self, payload: &[u8]) -> Result<(), BundleError> {
        self.model.validate()?;
        let payload_len = payload.len() as u64;
        let mut by_name = BTreeMap::new();
        for t in &self.tensors {
            let problem = |p| Err(BundleError::table(&t.name, p));
            if t.name.is_empty() {
                return problem(TableProblem::EmptyName);
            }
            if by_name.insert(t.name.as_str(), t).is_some() {
                return problem(TableProblem::Duplicate);
            }
            if t.offset % ALIGN as u64 != 0 {
                return problem(TableProblem::Misaligned { offset: t.offset });
            }
            if t.offset
                .checked_add(t.len)
                .is_none_or(|end| end > payload_len)
            {
                return problem(TableProblem::OutOfBounds {
                    offset: t.offset,
                    len: t.len,
                    payload_len,
                });
            }
            match TensorEntry::expected_len(t.dtype, &t.shape) {
                None => return problem(TableProblem::ShapeOverflow),
                Some(expected) if expected != t.len => {
                    return problem(TableProblem::LenMismatch {
                        declared: t.len,
                        expected,
                    })
                }
                Some(_) => {}
            }
        }
        // In bounds individually; now in offset order: no overlap, zero gaps, no trailing bytes.
        let mut ordered: Vec<&TensorEntry> = self.tensors.iter().collect();
        ordered.sort_by_key(|t| (t.offset, t.len));
        let mut end = 0u64;
        let mut previous: Option<&TensorEntry> = None;
        for t in ordered {
            if t.offset < end {
                let other = previous.map(|p| p.name.clone()).unwrap_or_default();
                return Err(BundleError::table(&t.name, TableProblem::Overlap { other }));
            }
            // Both bounds were checked against the payload length above, so the casts and the slice are in range.
            if let Some(i) = payload[end as usize..t.offset as usize]
                .iter()
                .position(|&b| b != 0)
            {
                return Err(BundleError::table(
                    &t.name,
                    TableProblem::NonZeroGap {
                        offset: end + i as u64,
                    },
                ));
            }
            end = t.offset + t.len;
            previous = Some(t);
        }
        if end != payload_len {
            let name = previous.map(|p| p.name.as_str()).unwrap_or("(none)");
            return Err(BundleError::table(
                name,
                TableProblem::TrailingPayload {
                    extra: payload_len - end,
                },
            ));
        }
        for t in &self.tensors {
            let Some(scales) = &t.scales else { continue };
            let problem = |p| Err(BundleError::table(&t.name, p));
            if t.dtype != Dtype::I8 {
                return problem(TableProblem::ScalesOnNonInt8);
            }
            let Some(&channels) = t.shape.first() else {
                return problem(TableProblem::ScalesWithoutChannels);
            };
            match by_name.get(scales.as_str()) {
                None => {
                    return problem(TableProblem::ScalesMissing {
                        scales: scales.clone(),
                    })
                }
                Some(s) if s.dtype != Dtype::F32 || s.shape != [channels] => {
                    return problem(TableProblem::ScalesShape {
                        scales: scales.clone(),
                        channels,
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(test) = &self.model.self_test {
            let problem = |p| Err(BundleError::table(&test.image, p));
            match by_name.get(test.image.as_str()) {
                None => return problem(TableProblem::SelfTestMissing),
                Some(t) if t.dtype != Dtype::U8 || t.shape.len() != 3 || t.shape[2] != 3 => {
                    return problem(TableProblem::SelfTestShape)
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
