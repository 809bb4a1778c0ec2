//! Weight formats: reading safetensors and torchvision `.pth` checkpoints with their parameter names normalised,
//! building a [`ResNet`] from them, importing a checkpoint as safetensors, and reading the metadata that
//! `kestrel pretrain` writes into its safetensors files.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{random_weights, without_backtrace, BackboneError, ResNet, ResNetConfig};

/// Read every tensor of a weights file (safetensors or PyTorch pickle), with torchvision names normalised: a
/// `state_dict`/`model` wrapper is unwrapped by candle's reader, and `module.` / `backbone.` / `model.` prefixes
/// (DataParallel, timm/anomalib wrappers) are stripped.
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>, BackboneError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let read_err = |source| BackboneError::Read {
        path: path.to_path_buf(),
        source,
    };
    let raw: Vec<(String, Tensor)> = match ext.as_str() {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(read_err)?
            .into_iter()
            .collect(),
        "pth" | "pt" | "bin" | "ckpt" => {
            if !path.exists() {
                return Err(BackboneError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            // Try the bare state dict first, then the common wrappers.
            let mut found = Vec::new();
            for key in [
                None,
                Some("state_dict"),
                Some("model"),
                Some("model_state_dict"),
            ] {
                match candle_core::pickle::read_all_with_key(path, key) {
                    Ok(v) if !v.is_empty() => {
                        found = v;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if key.is_none() => {
                        // A wrapper dict fails to read as a flat dict; keep trying.
                        found.clear();
                        let _ = e;
                    }
                    Err(_) => {}
                }
            }
            if found.is_empty() {
                return Err(BackboneError::NoTensors {
                    path: path.to_path_buf(),
                });
            }
            found
        }
        _ => return Err(BackboneError::Format(path.to_path_buf())),
    };
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let mut k = k.as_str();
            for p in ["module.", "backbone.", "model.", "feature_extractor."] {
                while let Some(rest) = k.strip_prefix(p) {
                    k = rest;
                }
            }
            (k.to_string(), v)
        })
        .collect())
}

/// Build a network for `arch` from a weights map, with an error that names the missing tensor and hints at the
/// architecture when it does not fit.
pub fn resnet_from_weights(
    config: &ResNetConfig,
    arch_label: &str,
    weights: HashMap<String, Tensor>,
    origin: &Path,
    device: &Device,
) -> Result<ResNet, BackboneError> {
    build_checked(config, arch_label, weights, origin, device, ResNet::new)
}

/// [`resnet_from_weights`] for BatchNorm-folded weights ([`ResNet::folded_tensors`]), e.g. from a model bundle.
pub fn resnet_from_folded_weights(
    config: &ResNetConfig,
    arch_label: &str,
    weights: HashMap<String, Tensor>,
    origin: &Path,
    device: &Device,
) -> Result<ResNet, BackboneError> {
    build_checked(
        config,
        arch_label,
        weights,
        origin,
        device,
        ResNet::from_folded,
    )
}

/// Build a network with `build` from `weights`, turning a missing or misshapen tensor into a
/// [`BackboneError::Mismatch`] that names the file, the architecture and a sample of what the file holds.
fn build_checked(
    config: &ResNetConfig,
    arch_label: &str,
    weights: HashMap<String, Tensor>,
    origin: &Path,
    device: &Device,
    build: fn(&ResNetConfig, VarBuilder) -> candle_core::Result<ResNet>,
) -> Result<ResNet, BackboneError> {
    let mut sample: Vec<&String> = weights.keys().collect();
    sample.sort();
    let sample_txt = if sample.is_empty() {
        String::new()
    } else {
        format!(
            ", e.g. {}",
            sample
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let count = weights.len();
    let weights: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
        .collect::<candle_core::Result<_>>()?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, device);
    build(config, vb).map_err(|e| BackboneError::Mismatch {
        path: origin.to_path_buf(),
        arch: arch_label.to_string(),
        count,
        sample: sample_txt,
        source: Box::new(without_backtrace(e)),
    })
}

/// Convert a checkpoint (safetensors or `.pth`) to a safetensors file holding exactly the tensors `config` needs
/// (classifier head and other extras dropped), after checking that they all fit. Returns the number of tensors
/// written.
pub fn import_weights(
    config: &ResNetConfig,
    arch_label: &str,
    input: &Path,
    output: &Path,
) -> Result<usize, BackboneError> {
    let weights = read_weights(input)?;
    // Validate by building the network.
    resnet_from_weights(config, arch_label, weights.clone(), input, &Device::Cpu)?;
    let needed = random_weights(config, 0, &Device::Cpu)?;
    let mut kept: HashMap<String, Tensor> = HashMap::with_capacity(needed.len());
    for name in needed.keys() {
        if let Some(t) = weights.get(name) {
            kept.insert(name.clone(), t.to_dtype(DType::F32)?);
        }
    }
    let n = kept.len();
    candle_core::safetensors::save(&kept, output).map_err(|source| BackboneError::Read {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(n)
}

/// Largest safetensors header [`read_metadata`] reads. A header lists each tensor's name, dtype, shape and offsets
/// (well under 200 bytes a tensor: a Wide-ResNet-50-2's whole header is about 30 KB), so a length field beyond this
/// means the file is not safetensors or is corrupt, and reading that much to find out is what a header-only read is
/// meant to avoid.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why the header of a safetensors file cannot be read ([`BackboneError::Header`] names the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Reading the file failed.
    #[error("reading the file failed")]
    Io(#[from] std::io::Error),
    /// The file ends inside the 8-byte length prefix or inside the header.
    #[error("the file ends after {available} of the {needed} bytes of its {part}; it is truncated, copy it again")]
    Truncated {
        /// "length prefix" or "header".
        part: &'static str,
        /// Bytes that part needs.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The length prefix claims more than [`MAX_HEADER_LEN`] bytes.
    #[error("the header length field claims {len} bytes, more than the {max} a safetensors header can need; the file is not safetensors or is corrupt")]
    TooLong {
        /// The claimed length.
        len: u64,
        /// The accepted maximum.
        max: u64,
    },
    /// The header is not the JSON object safetensors writes (or its `__metadata__` is not text to text).
    #[error("the header is not a safetensors JSON header")]
    Json(#[source] serde_json::Error),
}

/// The `__metadata__` of a safetensors file (empty when it has none): `kestrel pretrain` records there the
/// architecture (`kestrel.arch`), task, preset and step of the weights it writes.
///
/// Only the header is read (an 8-byte little-endian length, then that many bytes of JSON), never the tensor data,
/// so asking a large checkpoint which architecture it holds costs a few kilobytes of I/O.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, BackboneError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackboneError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            BackboneError::Header {
                path: path.to_path_buf(),
                source: HeaderError::Io(e),
            }
        }
    })?;
    metadata_from(std::io::BufReader::new(file)).map_err(|source| BackboneError::Header {
        path: path.to_path_buf(),
        source,
    })
}

/// [`read_metadata`] on a stream positioned at the start of a safetensors file; reads exactly the prefix and header.
fn metadata_from(mut r: impl Read) -> Result<HashMap<String, String>, HeaderError> {
    let prefix = read_exactly(&mut r, 8, "length prefix")?;
    let len = u64::from_le_bytes(prefix.try_into().expect("read_exactly returned 8 bytes"));
    if len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong {
            len,
            max: MAX_HEADER_LEN,
        });
    }
    let header = read_exactly(&mut r, len, "header")?;

    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: Option<HashMap<String, String>>,
    }
    let header: Header = serde_json::from_slice(&header).map_err(HeaderError::Json)?;
    Ok(header.metadata.unwrap_or_default())
}

/// Reads `n` bytes, growing the buffer only as bytes arrive (a lying length cannot make us allocate it up front).
fn read_exactly(r: &mut impl Read, n: u64, part: &'static str) -> Result<Vec<u8>, HeaderError> {
    let mut buf = Vec::new();
    r.take(n).read_to_end(&mut buf)?;
    if (buf.len() as u64) < n {
        return Err(HeaderError::Truncated {
            part,
            needed: n,
            available: buf.len() as u64,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Arch;

    /// A safetensors file as the `safetensors` crate writes it (what `kestrel pretrain` uses), with `metadata`.
    fn safetensors_bytes(metadata: Option<HashMap<String, String>>) -> Vec<u8> {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data)
            .unwrap();
        safetensors::serialize([("conv1.weight", view)], metadata).unwrap()
    }

    /// Counts the bytes a reader hands out.
    struct Counting<R> {
        inner: R,
        read: usize,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn wrong_arch_names_missing_tensor() {
        let dev = Device::Cpu;
        let w = random_weights(&Arch::Resnet18Narrow.config(), 1, &dev).unwrap();
        let err = resnet_from_weights(
            &Arch::Resnet50.config(),
            "resnet50",
            w,
            Path::new("x.safetensors"),
            &dev,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("resnet50") && err.contains("hint"), "{err}");
    }

    #[test]
    fn metadata_round_trips_and_only_the_header_is_read() {
        let meta = HashMap::from([
            ("kestrel.arch".to_string(), "resnet18_narrow".to_string()),
            ("kestrel.step".to_string(), "12".to_string()),
        ]);
        let bytes = safetensors_bytes(Some(meta.clone()));
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut counting = Counting {
            inner: &bytes[..],
            read: 0,
        };
        assert_eq!(metadata_from(&mut counting).unwrap(), meta);
        assert_eq!(counting.read, 8 + header_len);
        assert!(counting.read < bytes.len(), "the tensor data was read too");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_metadata(&path).unwrap(), meta);
        // Without metadata (candle's writer): empty, not an error.
        std::fs::write(&path, safetensors_bytes(None)).unwrap();
        assert!(read_metadata(&path).unwrap().is_empty());
        assert!(matches!(
            read_metadata(&dir.path().join("missing.safetensors")),
            Err(BackboneError::NotFound { .. })
        ));
    }

    #[test]
    fn truncated_absurd_and_garbled_headers_are_typed_errors() {
        let bytes = safetensors_bytes(Some(HashMap::from([("k".into(), "v".into())])));
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        // Cut inside the header, and inside the length prefix.
        match metadata_from(&bytes[..20]) {
            Err(HeaderError::Truncated {
                part: "header",
                needed,
                available: 12,
            }) => assert_eq!(needed, header_len),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            metadata_from(&bytes[..5]),
            Err(HeaderError::Truncated {
                part: "length prefix",
                needed: 8,
                available: 5
            })
        ));
        // A length no header needs is refused before anything is read or allocated for it.
        let mut absurd = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        absurd.extend_from_slice(b"{}");
        assert!(matches!(
            metadata_from(&absurd[..]),
            Err(HeaderError::TooLong { len, .. }) if len == MAX_HEADER_LEN + 1
        ));
        assert!(matches!(
            metadata_from(&u64::MAX.to_le_bytes()[..]),
            Err(HeaderError::TooLong { .. })
        ));
        // Not JSON, and metadata values that are not text.
        for header in [&b"PK\x03\x04"[..], br#"{"__metadata__": {"k": 1}}"#] {
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(header);
            assert!(matches!(
                metadata_from(&file[..]),
                Err(HeaderError::Json(_))
            ));
        }
        // Through the file API the error names the file and keeps the cause.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = read_metadata(&path).unwrap_err();
        assert!(err.to_string().contains("cut.safetensors"), "{err}");
        let cause = std::error::Error::source(&err).expect("the cause is kept");
        assert!(cause.to_string().contains("truncated"), "{cause}");
    }
}
