//! Where pixel-level metrics get their anomaly maps and masks from.
//!
//! The exact pixel metrics in [`super::pixel`] read the data several times with bounded memory, so they take a
//! *re-iterable* source rather than a slice: [`PixelSource::visit`] walks every image once per call. `kestrel eval`
//! holds its maps in memory ([`AnomalyMap`] slices implement the trait); `kestrel metrics` streams `.npy` files from
//! disk ([`super::MapDirs`]), and anything else (a database, a network store) can implement it too.

use super::error::MetricsError;

/// One image as the pixel metrics see it: a row-major score map and its ground truth.
#[derive(Clone, Copy, Debug)]
pub struct MapView<'a> {
    /// Image name, used in error messages and to match per-image scores.
    pub name: &'a str,
    /// Map width in pixels (columns).
    pub width: usize,
    /// Map height in pixels (rows).
    pub height: usize,
    /// `width * height` anomaly scores, row-major; higher means more anomalous. NaN is rejected.
    pub scores: &'a [f32],
    /// `width * height` ground-truth bytes, row-major, non-zero = anomalous; `None` for a good image (all pixels
    /// background).
    pub mask: Option<&'a [u8]>,
}

impl MapView<'_> {
    /// Checks that the scores and mask match the declared size.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let expected = self.width.saturating_mul(self.height);
        let shape_error = |what, actual| MetricsError::MapShape {
            name: self.name.to_owned(),
            width: self.width,
            height: self.height,
            expected,
            what,
            actual,
        };
        if self.scores.len() != expected {
            return Err(shape_error("the score map", self.scores.len()));
        }
        if let Some(mask) = self.mask {
            if mask.len() != expected {
                return Err(shape_error("the mask", mask.len()));
            }
        }
        Ok(())
    }
}

/// A collection of score maps with ground truth that can be walked any number of times.
///
/// Contract: every call to `visit` must present the same images with the same data (the order may differ). The
/// pixel metrics check the per-pass pixel counts and report [`MetricsError::SourceChanged`] if they disagree.
pub trait PixelSource {
    /// Calls `f` once for every image, stopping at and returning the first error (from `f` or from the source).
    fn visit(
        &self,
        f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
    ) -> Result<(), MetricsError>;
}

impl<T: PixelSource + ?Sized> PixelSource for &T {
    fn visit(
        &self,
        f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
    ) -> Result<(), MetricsError> {
        (**self).visit(f)
    }
}

/// An owned anomaly map with optional ground-truth mask: the in-memory [`PixelSource`] (as a slice or `Vec`).
#[derive(Clone, PartialEq)]
pub struct AnomalyMap {
    name: String,
    width: usize,
    height: usize,
    scores: Vec<f32>,
    mask: Option<Vec<u8>>,
}

impl AnomalyMap {
    /// Builds a map, checking that `scores` (and `mask`, non-zero = anomalous) hold `width * height` values.
    pub fn new(
        name: impl Into<String>,
        width: usize,
        height: usize,
        scores: Vec<f32>,
        mask: Option<Vec<u8>>,
    ) -> Result<Self, MetricsError> {
        let map = Self {
            name: name.into(),
            width,
            height,
            scores,
            mask,
        };
        map.view().validate()?;
        Ok(map)
    }

    /// A model's heatmap ([`crate::map::ScoreMap`], never empty, length already checked) with its ground truth.
    pub fn from_score_map(
        name: impl Into<String>,
        map: crate::map::ScoreMap,
        mask: Option<Vec<u8>>,
    ) -> Result<Self, MetricsError> {
        let (width, height) = (map.width(), map.height());
        Self::new(name, width, height, map.into_data(), mask)
    }

    /// Borrows the map as a [`MapView`].
    pub fn view(&self) -> MapView<'_> {
        MapView {
            name: &self.name,
            width: self.width,
            height: self.height,
            scores: &self.scores,
            mask: self.mask.as_deref(),
        }
    }

    /// The image name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for AnomalyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyMap")
            .field("name", &self.name)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("has_mask", &self.mask.is_some())
            .finish()
    }
}

impl PixelSource for [AnomalyMap] {
    fn visit(
        &self,
        f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
    ) -> Result<(), MetricsError> {
        self.iter().try_for_each(|m| f(&m.view()))
    }
}

impl PixelSource for Vec<AnomalyMap> {
    fn visit(
        &self,
        f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
    ) -> Result<(), MetricsError> {
        self.as_slice().visit(f)
    }
}
