//! [`ScoreMap`]: the one 2-D map type of kestrel — a row-major grid of `f32` scores.
//!
//! Every stage that produces or consumes an anomaly map speaks this type: a detector's patch-level map, the
//! full-resolution heatmap a model returns ([`crate::model::Scored`]), the map the edge turns into its wire mask,
//! the map `kestrel eval` writes as `.npy` and the metrics read back. One type means one place that checks
//! `data.len() == width × height`, so no consumer has to trust a loose `(Vec<f32>, usize)` pair.
//!
//! Resizing lives in [`crate::resample`].

/// Why a map could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A side is zero.
    #[error("{what} has zero size ({width}×{height}); maps must be at least 1×1")]
    Empty {
        /// Which map.
        what: &'static str,
        /// Width.
        width: usize,
        /// Height.
        height: usize,
    },
    /// The buffer does not hold `width × height` values.
    #[error("a {width}×{height} map needs {} values, got {len}", width * height)]
    Length {
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// Values given.
        len: usize,
    },
    /// A patch grid whose windows do not tile the target exactly.
    #[error(
        "a {grid_w}×{grid_h} grid of {kernel} px windows at stride {stride} covers {}×{} px, not the {width}×{height} asked for",
        (grid_w - 1) * stride + kernel,
        (grid_h - 1) * stride + kernel
    )]
    Tiling {
        /// Grid width.
        grid_w: usize,
        /// Grid height.
        grid_h: usize,
        /// Window side.
        kernel: usize,
        /// Window stride.
        stride: usize,
        /// Target width.
        width: usize,
        /// Target height.
        height: usize,
    },
}

/// A `width × height` grid of scores, row-major (`data[y * width + x]`). Never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMap {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl ScoreMap {
    /// Wrap `data` (row-major); refuses an empty side or a length other than `width × height`.
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Result<Self, MapError> {
        check_size("map", width, height)?;
        if data.len() != width * height {
            return Err(MapError::Length {
                width,
                height,
                len: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// A map filled with `value`.
    pub fn filled(width: usize, height: usize, value: f32) -> Result<Self, MapError> {
        check_size("map", width, height)?;
        Ok(Self {
            width,
            height,
            data: vec![value; width * height],
        })
    }

    /// Width (columns).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height (rows).
    pub fn height(&self) -> usize {
        self.height
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major, for in-place changes (the size cannot change).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Give up the buffer.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Row `y`.
    pub fn row(&self, y: usize) -> &[f32] {
        &self.data[y * self.width..(y + 1) * self.width]
    }

    /// The largest value; NaN if any value is NaN (a NaN map must not look normal).
    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(f32::NEG_INFINITY, |a, b| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        })
    }

    /// The smallest value, ignoring NaN (`+inf` if every value is NaN).
    pub fn min(&self) -> f32 {
        self.data.iter().copied().fold(f32::INFINITY, f32::min)
    }
}

/// Refuse a zero side, naming `what`.
pub(crate) fn check_size(what: &'static str, width: usize, height: usize) -> Result<(), MapError> {
    if width == 0 || height == 0 {
        return Err(MapError::Empty {
            what,
            width,
            height,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_mismatched_buffers() {
        assert!(matches!(
            ScoreMap::new(0, 3, vec![]),
            Err(MapError::Empty { .. })
        ));
        let e = ScoreMap::new(2, 3, vec![0.0; 5]).unwrap_err();
        assert_eq!(e.to_string(), "a 2×3 map needs 6 values, got 5");
        let m = ScoreMap::new(2, 3, (0..6).map(|v| v as f32).collect()).unwrap();
        assert_eq!((m.width(), m.height()), (2, 3));
        assert_eq!(m.row(1), &[2.0, 3.0]);
    }

    #[test]
    fn max_is_nan_when_any_value_is() {
        let m = ScoreMap::new(3, 1, vec![1.0, 5.0, 2.0]).unwrap();
        assert_eq!(m.max(), 5.0);
        assert_eq!(m.min(), 1.0);
        let n = ScoreMap::new(3, 1, vec![1.0, f32::NAN, 2.0]).unwrap();
        assert!(n.max().is_nan());
    }
}
