//! Compute device selection (`--device cpu|cuda:N`).
//!
//! The CUDA path sits behind the `cuda` cargo feature so the default build needs no CUDA toolkit; without it,
//! asking for a GPU is a clear error rather than a silent fallback to the CPU.

use candle_core::Device;

/// Errors when choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The string is not `cpu` or `cuda:N`.
    #[error("unknown device `{0}`: use `cpu` or `cuda:N` (e.g. cuda:0)")]
    Unknown(String),
    /// CUDA was asked for but this binary was built without it.
    #[error("`{0}` needs a build with CUDA support: rebuild with `--features cuda` (needs the CUDA toolkit)")]
    NotCompiledWithCuda(String),
    /// The CUDA runtime refused the device.
    #[error("cannot open {spec}; check that the GPU exists and that its driver and the CUDA runtime work")]
    Open {
        /// The device as given.
        spec: String,
        /// The runtime's error.
        #[source]
        source: candle_core::Error,
    },
}

/// Parse a device specification.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Unknown(spec.to_string()))?,
        None => return Err(DeviceError::Unknown(spec.to_string())),
    };
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NotCompiledWithCuda(spec.to_string()));
    }
    Device::new_cuda(ordinal).map_err(|source| DeviceError::Open {
        spec: spec.to_string(),
        source: crate::backbone::without_backtrace(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(matches!(parse_device("tpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(DeviceError::Unknown(_))
        ));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
