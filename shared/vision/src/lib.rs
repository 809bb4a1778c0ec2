//! kestrel-vision: everything that turns pixels into anomaly scores, shared by the host (`kestrel`) and the edge
//! firmware so both compute exactly the same thing.
//!
//! Data flow: [`dataset`] finds images → [`preprocess`] resizes and normalises them → [`backbone`] (a ResNet written
//! once in candle) yields stage features c1..c4 → a [`detector`] (PaDiM, PatchCore) turns features into a patch-level
//! anomaly map → [`postprocess`] upsamples and blurs it into a full-resolution heatmap and an image score →
//! [`metrics`] compares heatmaps and scores with ground truth.

pub mod backbone;
pub mod conv;
pub mod dataset;
pub mod detector;
pub mod device;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod ops;
pub mod postprocess;
pub mod preprocess;
pub mod synthetic;
#[doc(hidden)]
pub mod testing;
