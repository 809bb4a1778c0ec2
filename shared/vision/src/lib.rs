//! kestrel-vision: everything that turns pixels into anomaly scores, shared by the host (`kestrel`) and the edge
//! firmware so both compute exactly the same thing.
//!
//! Data flow: [`dataset`] finds and decodes images → [`preprocess`] resizes and normalises them → [`backbone`] (a
//! ResNet written once in candle) yields stage features c1..c4 → a [`detector::Detector`] (PaDiM, PatchCore) turns
//! features into a patch-level [`map::ScoreMap`] → [`postprocess`] upsamples and blurs it into a full-resolution
//! heatmap and an image score → [`threshold`] turns the score into a verdict; [`metrics`] compares heatmaps and
//! scores with ground truth.
//!
//! [`model::Model::score_rgb8`] is that whole path in one call, used by the host (`kestrel eval/predict/fit`,
//! through [`scoring::score_files`]) and by the edge unit on camera frames, so both compute the same thing by
//! construction. Every resize is in [`resample`]. Algorithm notes: the repository's `docs/`.

pub mod autograd;
pub mod backbone;
pub mod bundle;
pub mod conv;
pub mod dataset;
pub mod detector;
pub mod device;
pub mod map;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod ops;
pub mod pool;
pub mod postprocess;
pub mod preprocess;
pub mod process;
pub mod resample;
pub mod scoring;
pub mod stats;
pub mod synthetic;
#[doc(hidden)]
pub mod testing;
pub mod threshold;
