//! Differentiable CPU kernels for training: the convolution and the BatchNorm (+ ReLU, + residual) of a ResNet,
//! forward and backward, as candle custom ops so every trainer (pretraining, trained detectors) gets them through
//! the backbone.
//!
//! Why: candle 0.11's own convolution backward (a transposed convolution for the input gradient, a convolution for
//! the weight gradient) and its op-by-op BatchNorm made a training step 3.6–5× PyTorch's CPU time. These run on
//! the same im2col/GEMM tiles as the fused inference convolution ([`crate::conv`]). Other devices and dtypes go to
//! candle's ops, so callers use these unconditionally. Algorithm notes: docs/training.md.

mod batch_norm;
mod conv;

pub use batch_norm::BatchNormTrain;
pub use conv::conv2d;
