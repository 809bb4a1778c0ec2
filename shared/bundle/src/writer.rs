//! Building a bundle: tensors are appended at 64-byte-aligned offsets, the table is checked with the same rules
//! the reader applies, and the result is hashed and signed.

use crate::container::seal;
use crate::error::{BundleError, TableProblem};
use crate::keys::SigningKey;
use crate::manifest::{Dtype, Manifest, ModelInfo, TensorEntry};
use crate::ALIGN;

/// Collects tensors for one bundle; [`finish`](Self::finish) signs it (example in the crate docs).
#[derive(Debug, Clone)]
pub struct BundleWriter {
    manifest: Manifest,
    payload: Vec<u8>,
}

impl BundleWriter {
    pub fn new(model: ModelInfo) -> Self {
        BundleWriter {
            manifest: Manifest {
                model,
                tensors: Vec::new(),
            },
            payload: Vec::new(),
        }
    }

    /// Appends a tensor given as little-endian element bytes; `bytes.len()` must be `product(shape) * dtype.size()`.
    pub fn add_tensor(
        mut self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        bytes: &[u8],
    ) -> Result<Self, BundleError> {
        let len = bytes.len() as u64;
        match TensorEntry::expected_len(dtype, shape) {
            None => return Err(BundleError::table(name, TableProblem::ShapeOverflow)),
            Some(expected) if expected != len => {
                return Err(BundleError::table(
                    name,
                    TableProblem::LenMismatch {
                        declared: len,
                        expected,
                    },
                ))
            }
            Some(_) => {}
        }
        if self.manifest.tensor(name).is_some() {
            return Err(BundleError::table(name, TableProblem::Duplicate));
        }
        self.payload
            .resize(self.payload.len().next_multiple_of(ALIGN), 0);
        let offset = self.payload.len() as u64;
        self.payload.extend_from_slice(bytes);
        self.manifest.tensors.push(TensorEntry {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            offset,
            len,
            scales: None,
        });
        Ok(self)
    }

    /// Appends an `F32` tensor.
    pub fn add_f32_tensor(
        self,
        name: &str,
        shape: &[u64],
        values: &[f32],
    ) -> Result<Self, BundleError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, Dtype::F32, shape, &bytes)
    }

    /// Appends an `I8` tensor quantised per output channel (`shape[0]`) and its `F32` scales as `<name>.scales`.
    pub fn add_int8_tensor(
        self,
        name: &str,
        shape: &[u64],
        values: &[i8],
        scales: &[f32],
    ) -> Result<Self, BundleError> {
        let scales_name = format!("{name}.scales");
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        let mut w = self
            .add_tensor(name, Dtype::I8, shape, &bytes)?
            .add_f32_tensor(&scales_name, &[scales.len() as u64], scales)?;
        let entry = w
            .manifest
            .tensors
            .iter_mut()
            .find(|t| t.name == name)
            .expect("just added");
        entry.scales = Some(scales_name);
        Ok(w)
    }

    /// Checks the manifest and table exactly as a reader will, then hashes and signs the bundle.
    pub fn finish(self, key: &SigningKey) -> Result<Vec<u8>, BundleError> {
        self.manifest.validate(&self.payload)?;
        let manifest = postcard::to_allocvec(&self.manifest).map_err(BundleError::Manifest)?;
        seal(&manifest, &self.payload, key)
    }
}
