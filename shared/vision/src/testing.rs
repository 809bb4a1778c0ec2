//! Numeric comparison helpers shared by the unit tests, integration tests and benchmarks (public so the `tests/` and
//! `benches/` targets can use them; not part of the supported API).

use candle_core::{DType, Tensor};

/// Largest element-wise `|a − b|`, computed in f64. Shapes must match.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    if a.dims() != b.dims() {
        candle_core::bail!("shape mismatch: {:?} vs {:?}", a.dims(), b.dims());
    }
    (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

/// `max |got − reference| / max(1, max |reference|)`: an error relative to the reference's scale.
pub fn max_rel_diff(got: &Tensor, reference: &Tensor) -> candle_core::Result<f64> {
    let scale = reference
        .to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    Ok(max_abs_diff(got, reference)? / scale.max(1.0))
}
