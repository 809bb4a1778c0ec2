//! The ResNet architecture: residual blocks, the four stages, the forward pass and BatchNorm folding.
//!
//! Parameter names follow torchvision (`conv1`, `bn1`, `layer2.0.downsample.0`, ...) so that checkpoints load
//! unchanged through [`super::weights`].

use candle_core::{Module, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::autograd::{self, BatchNormTrain};
use crate::conv::{self, ConvSpec, Epilogue};
use crate::ops;

/// Residual block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 → 1×1 with expansion 4 (ResNet-50 and wide variants).
    Bottleneck,
}

/// Everything that determines a ResNet's shape. Stored in model directories so a model reloads without guessing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block kind.
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Output channels of the stem convolution.
    pub stem_width: usize,
    /// "planes" per stage (output channels are planes × expansion).
    pub planes: [usize; 4],
    /// Bottleneck inner width per group, torchvision's `width_per_group` (64 standard, 128 for wide-ResNet-x-2).
    pub width_per_group: usize,
}

impl ResNetConfig {
    fn expansion(&self) -> usize {
        match self.block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// Channels of the stage outputs c1..c4.
    pub fn stage_channels(&self) -> [usize; 4] {
        self.planes.map(|p| p * self.expansion())
    }
}

/// A convolution followed by BatchNorm. After [`ResNet::fold_batch_norm`] the BN is absorbed into the conv's bias.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: Option<BatchNorm>,
    /// The BatchNorm's running statistics as the `Var`s it updates (the same storage as `bn`'s, and a `VarMap`'s
    /// when training), for the fused training kernels.
    running: Option<(Var, Var)>,
}

const BN_EPS: f64 = 1e-5;

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        conv_vb: VarBuilder,
        bn_vb: Option<VarBuilder>,
    ) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        // No BatchNorm: the weights were folded already (a model bundle), so the conv carries its bias.
        let Some(bn_vb) = bn_vb else {
            let conv = candle_nn::conv2d(cin, cout, k, cfg, conv_vb)?;
            return Ok(Self {
                conv,
                bn: None,
                running: None,
            });
        };
        let conv = candle_nn::conv2d_no_bias(cin, cout, k, cfg, conv_vb)?;
        let bn = candle_nn::batch_norm(
            cout,
            BatchNormConfig {
                eps: BN_EPS,
                momentum: 0.1,
                ..Default::default()
            },
            bn_vb,
        )?;
        // `Var::from_tensor` shares a variable's storage: updating these updates the BatchNorm's (and the VarMap's).
        let running = Some((
            Var::from_tensor(bn.running_mean())?,
            Var::from_tensor(bn.running_var())?,
        ));
        Ok(Self {
            conv,
            bn: Some(bn),
            running,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.conv.forward(x)?;
        match &self.bn {
            Some(bn) => bn.forward_t(&y, train),
            None => Ok(y),
        }
    }

    /// The fused kernel's parameters when it applies: BN folded away, [`ConvImpl::Fused`], a plain convolution,
    /// and a CPU f32 input without autograd.
    fn fused_spec(&self, x: &Tensor, imp: ConvImpl) -> Option<ConvSpec> {
        let cfg = self.conv.config();
        (self.bn.is_none()
            && imp == ConvImpl::Fused
            && cfg.groups == 1
            && cfg.dilation == 1
            && conv::fast_path_applies(x, self.conv.weight()))
        .then_some(ConvSpec {
            stride: cfg.stride,
            padding: cfg.padding,
        })
    }

    /// `epilogue(conv + bn)`: through the fused kernel where it applies, else in candle ops (exactly the unfolded
    /// computation, so training keeps its autograd graph).
    fn forward_with(
        &self,
        x: &Tensor,
        train: bool,
        imp: ConvImpl,
        epilogue: Epilogue<'_>,
    ) -> candle_core::Result<Tensor> {
        if let Some(spec) = self.fused_spec(x, imp) {
            return conv::conv2d_fused(x, self.conv.weight(), self.conv.bias(), spec, epilogue);
        }
        if let Some(layer) = self.train_kernels(train, imp) {
            let cfg = self.conv.config();
            let spec = ConvSpec {
                stride: cfg.stride,
                padding: cfg.padding,
            };
            let y = autograd::conv2d(x, self.conv.weight(), spec)?;
            return layer.forward(&y, epilogue);
        }
        let y = self.forward_t(x, train)?;
        match epilogue {
            Epilogue::Linear => Ok(y),
            Epilogue::Relu => y.relu(),
            Epilogue::AddRelu(r) => (y + r)?.relu(),
        }
    }

    /// The training kernels' BatchNorm when they apply: training with [`ConvImpl::Fused`], an affine BatchNorm
    /// after a plain bias-free convolution. (They fall back to candle ops by themselves off the CPU.)
    fn train_kernels(&self, train: bool, imp: ConvImpl) -> Option<BatchNormTrain<'_>> {
        let cfg = self.conv.config();
        let (bn, (rm, rv)) = (self.bn.as_ref()?, self.running.as_ref()?);
        let (gamma, beta) = bn.weight_and_bias()?;
        (train
            && imp == ConvImpl::Fused
            && cfg.groups == 1
            && cfg.dilation == 1
            && self.conv.bias().is_none())
        .then_some(BatchNormTrain {
            gamma,
            beta,
            running_mean: rm,
            running_var: rv,
            eps: bn.eps(),
            momentum: bn.momentum(),
        })
    }

    fn folded(&self) -> candle_core::Result<Self> {
        match &self.bn {
            Some(bn) => {
                // BatchNorm keeps its running statistics as `Var`s, so the folded weights would otherwise carry an
                // autograd graph: every inference output would then keep all of its inputs alive (a leak that grew
                // to 23 GB fitting PaDiM on 572 images). Inference weights are constants: detach them.
                let c = self.conv.absorb_bn(bn)?;
                let conv = Conv2d::new(
                    c.weight().detach(),
                    c.bias().map(|b| b.detach()),
                    *c.config(),
                );
                Ok(Self {
                    conv,
                    bn: None,
                    running: None,
                })
            }
            None => Ok(self.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        cfg: &ResNetConfig,
        cin: usize,
        planes: usize,
        stride: usize,
        vb: VarBuilder,
        folded: bool,
    ) -> candle_core::Result<Self> {
        let cout = planes * cfg.expansion();
        let bn = |name: &str| (!folded).then(|| vb.pp(name));
        let convs = match cfg.block {
            BlockKind::Basic => vec![
                ConvBn::new(cin, planes, 3, stride, 1, vb.pp("conv1"), bn("bn1"))?,
                ConvBn::new(planes, planes, 3, 1, 1, vb.pp("conv2"), bn("bn2"))?,
            ],
            BlockKind::Bottleneck => {
                // torchvision: width = planes * (base_width / 64) * groups; stride sits on the 3×3 conv ("v1.5").
                let width = planes * cfg.width_per_group / 64;
                vec![
                    ConvBn::new(cin, width, 1, 1, 0, vb.pp("conv1"), bn("bn1"))?,
                    ConvBn::new(width, width, 3, stride, 1, vb.pp("conv2"), bn("bn2"))?,
                    ConvBn::new(width, cout, 1, 1, 0, vb.pp("conv3"), bn("bn3"))?,
                ]
            }
        };
        let downsample = if stride != 1 || cin != cout {
            Some(ConvBn::new(
                cin,
                cout,
                1,
                stride,
                0,
                vb.pp("downsample.0"),
                bn("downsample.1"),
            )?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool, imp: ConvImpl) -> candle_core::Result<Tensor> {
        // The shortcut comes first so the last convolution can add it (and apply the ReLU) in its output pass.
        let shortcut = match &self.downsample {
            Some(d) => d.forward_with(x, train, imp, Epilogue::Linear)?,
            None => x.clone(),
        };
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            let epilogue = if i == last {
                Epilogue::AddRelu(&shortcut)
            } else {
                Epilogue::Relu
            };
            y = c.forward_with(&y, train, imp, epilogue)?;
        }
        Ok(y)
    }

    fn folded(&self) -> candle_core::Result<Self> {
        Ok(Self {
            convs: self
                .convs
                .iter()
                .map(ConvBn::folded)
                .collect::<candle_core::Result<_>>()?,
            downsample: self.downsample.as_ref().map(ConvBn::folded).transpose()?,
        })
    }
}

/// Which convolution implementation a network uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvImpl {
    /// A folded network in inference: [`crate::conv`]'s fused kernel wherever it applies (CPU, f32, no autograd).
    /// An unfolded one in training: [`crate::autograd`]'s convolution and BatchNorm kernels, forward and backward.
    /// candle's ops elsewhere. The default.
    #[default]
    Fused,
    /// candle's `conv2d` and separate elementwise ops everywhere: the reference.
    Candle,
}

/// A ResNet feature extractor exposing its four stages.
#[derive(Debug, Clone)]
pub struct ResNet {
    config: ResNetConfig,
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    conv_impl: ConvImpl,
}

impl ResNet {
    /// Build from a `VarBuilder` with torchvision names (a `VarMap` for training, safetensors for inference).
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(config, vb, false)
    }

    /// Build an inference network from BatchNorm-folded weights ([`ResNet::folded_tensors`]'s names: every
    /// convolution's `weight` and `bias`, no BatchNorm tensors), as model bundles store it.
    pub fn from_folded(config: &ResNetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(config, vb, true)
    }

    fn build(config: &ResNetConfig, vb: VarBuilder, folded: bool) -> candle_core::Result<Self> {
        let bn = |name: &str| (!folded).then(|| vb.pp(name));
        let stem = ConvBn::new(3, config.stem_width, 7, 2, 3, vb.pp("conv1"), bn("bn1"))?;
        let mut cin = config.stem_width;
        let mut stages = Vec::with_capacity(4);
        for s in 0..4 {
            let vb_s = vb.pp(format!("layer{}", s + 1));
            let stride = if s == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(config.layers[s]);
            for b in 0..config.layers[s] {
                let block = Block::new(
                    config,
                    cin,
                    config.planes[s],
                    if b == 0 { stride } else { 1 },
                    vb_s.pp(b.to_string()),
                    folded,
                )?;
                cin = config.planes[s] * config.expansion();
                blocks.push(block);
            }
            stages.push(blocks);
        }
        Ok(Self {
            config: config.clone(),
            stem,
            stages,
            conv_impl: ConvImpl::default(),
        })
    }

    /// Choose the convolution implementation (an unfolded network in eval mode always uses candle ops).
    pub fn with_conv_impl(mut self, conv_impl: ConvImpl) -> Self {
        self.conv_impl = conv_impl;
        self
    }

    /// The convolution implementation in use (see [`ResNet::with_conv_impl`]).
    pub fn conv_impl(&self) -> ConvImpl {
        self.conv_impl
    }

    /// The configuration this network was built with.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// An inference copy with every BatchNorm folded into its convolution (one pass fewer per conv). Only valid in
    /// eval mode: folding uses the running statistics.
    pub fn fold_batch_norm(&self) -> candle_core::Result<Self> {
        Ok(Self {
            config: self.config.clone(),
            stem: self.stem.folded()?,
            stages: self
                .stages
                .iter()
                .map(|blocks| blocks.iter().map(Block::folded).collect())
                .collect::<candle_core::Result<_>>()?,
            conv_impl: self.conv_impl,
        })
    }

    /// The folded network's convolution weights and biases by name (`conv1.weight`, `layer1.0.conv1.bias`,
    /// `layer2.0.downsample.0.weight`, ...): what [`ResNet::from_folded`] reads back. Fails on a network that still
    /// has BatchNorm (call [`ResNet::fold_batch_norm`] first).
    pub fn folded_tensors(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let mut push = |name: String, c: &ConvBn| -> candle_core::Result<()> {
            let bias = match (&c.bn, c.conv.bias()) {
                (None, Some(b)) => b.clone(),
                _ => candle_core::bail!("`{name}` still has BatchNorm: fold the network first"),
            };
            out.push((format!("{name}.weight"), c.conv.weight().clone()));
            out.push((format!("{name}.bias"), bias));
            Ok(())
        };
        push("conv1".into(), &self.stem)?;
        for (s, blocks) in self.stages.iter().enumerate() {
            for (b, block) in blocks.iter().enumerate() {
                let prefix = format!("layer{}.{b}", s + 1);
                for (i, c) in block.convs.iter().enumerate() {
                    push(format!("{prefix}.conv{}", i + 1), c)?;
                }
                if let Some(d) = &block.downsample {
                    push(format!("{prefix}.downsample.0"), d)?;
                }
            }
        }
        Ok(out)
    }

    /// Run the network on `x` (N×3×H×W, normalised) up to stage `last` (1..=4) and return the stage outputs
    /// c1..c`last`. Stopping early saves the cost of deeper stages a detector does not use.
    pub fn stages(&self, x: &Tensor, last: usize, train: bool) -> candle_core::Result<Vec<Tensor>> {
        let last = last.clamp(1, 4);
        let imp = self.conv_impl;
        // torchvision's stem pool is 3×3, stride 2, padding 1 (with -inf padding).
        let y = match self.stem.fused_spec(x, imp) {
            // conv + ReLU + pool in one op: the full-resolution stem output is never stored.
            Some(spec) => conv::conv2d_relu_max_pool(
                x,
                self.stem.conv.weight(),
                self.stem.conv.bias(),
                spec,
                conv::PoolSpec::RESNET_STEM,
            )?,
            // Our own op: candle's max-pool has no backward when kernel ≠ stride, and pretraining must keep the
            // torchvision stem (3×3/s2/p1) so trained weights stay torchvision-compatible.
            None => ops::max_pool2d_padded(
                &self.stem.forward_with(x, train, imp, Epilogue::Relu)?,
                3,
                2,
                1,
            )?,
        };
        let mut outs = Vec::with_capacity(last);
        let mut y = y;
        for blocks in self.stages.iter().take(last) {
            for b in blocks {
                y = b.forward_t(&y, train, imp)?;
            }
            outs.push(y.clone());
        }
        Ok(outs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backbone::{random_weights, resnet_from_weights};
    use candle_core::{DType, Device};
    use std::path::Path;

    pub(crate) fn tiny() -> ResNetConfig {
        ResNetConfig {
            block: BlockKind::Bottleneck,
            layers: [1, 1, 1, 1],
            stem_width: 8,
            planes: [4, 8, 8, 8],
            width_per_group: 128,
        }
    }

    #[test]
    fn stage_shapes_and_strides() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let w = random_weights(&cfg, 1, &dev).unwrap();
        let net = resnet_from_weights(&cfg, "tiny", w, Path::new("mem"), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
        let outs = net.stages(&x, 4, false).unwrap();
        let ch = cfg.stage_channels();
        for (i, (o, s)) in outs.iter().zip([16, 8, 4, 2]).enumerate() {
            assert_eq!(o.dims(), &[2, ch[i], s, s]);
        }
        let three = net.stages(&x, 3, false).unwrap();
        assert_eq!(three.len(), 3);
    }

    /// Folded weights written out and read back build a network with bit-identical outputs; an unfolded network
    /// has no folded weights to give.
    #[test]
    fn folded_tensors_rebuild_the_same_network() {
        use crate::backbone::resnet_from_folded_weights;
        use std::collections::HashMap;
        let dev = Device::Cpu;
        let cfg = tiny();
        let w = random_weights(&cfg, 3, &dev).unwrap();
        let net = resnet_from_weights(&cfg, "tiny", w, Path::new("mem"), &dev).unwrap();
        assert!(net.folded_tensors().is_err());
        let folded = net.fold_batch_norm().unwrap();
        let tensors: HashMap<String, Tensor> =
            folded.folded_tensors().unwrap().into_iter().collect();
        assert!(tensors.contains_key("layer2.0.downsample.0.bias"));
        assert!(!tensors.keys().any(|k| k.contains("bn")));
        let back =
            resnet_from_folded_weights(&cfg, "tiny", tensors, Path::new("mem"), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &dev).unwrap();
        let a = folded.stages(&x, 4, false).unwrap();
        let b = back.stages(&x, 4, false).unwrap();
        for (a, b) in a.iter().zip(&b) {
            let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn folding_batch_norm_preserves_outputs() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let mut w = random_weights(&cfg, 2, &dev).unwrap();
        // Non-trivial BN statistics so folding is actually exercised.
        for (k, v) in w.iter_mut() {
            if k.ends_with("running_mean") || k.ends_with("bias") {
                *v = (v.rand_like(-0.5, 0.5).unwrap()).clone();
            } else if k.ends_with("running_var") {
                *v = v.rand_like(0.5, 2.0).unwrap();
            }
        }
        let net = resnet_from_weights(&cfg, "tiny", w, Path::new("mem"), &dev).unwrap();
        let folded = net.fold_batch_norm().unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &dev).unwrap();
        let a = net.stages(&x, 4, false).unwrap();
        let b = folded.stages(&x, 4, false).unwrap();
        for (a, b) in a.iter().zip(&b) {
            let r = crate::testing::max_rel_diff(b, a).unwrap();
            assert!(r <= 1e-4, "max relative diff {r}");
        }
    }

    /// The fused CPU kernel and candle's ops agree on a folded network, for both block kinds.
    #[test]
    fn fused_and_candle_conv_impls_agree() {
        let dev = Device::Cpu;
        let basic = ResNetConfig {
            block: BlockKind::Basic,
            layers: [2, 1, 1, 1],
            stem_width: 8,
            planes: [8, 12, 16, 8],
            width_per_group: 64,
        };
        for cfg in [tiny(), basic] {
            let mut w = random_weights(&cfg, 3, &dev).unwrap();
            for (k, v) in w.iter_mut() {
                if k.ends_with("running_mean") || k.ends_with("bias") {
                    *v = v.rand_like(-0.5, 0.5).unwrap();
                }
            }
            let net = resnet_from_weights(&cfg, "t", w, Path::new("mem"), &dev)
                .unwrap()
                .fold_batch_norm()
                .unwrap();
            assert_eq!(net.conv_impl(), ConvImpl::Fused);
            let reference = net.clone().with_conv_impl(ConvImpl::Candle);
            let x = Tensor::randn(0f32, 1.0, (2, 3, 45, 38), &dev).unwrap();
            let a = net.stages(&x, 4, false).unwrap();
            let b = reference.stages(&x, 4, false).unwrap();
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(a.dims(), b.dims());
                let d: f32 = (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                let m: f32 = b
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(d <= 1e-4 * m.max(1.0), "max diff {d} (scale {m})");
            }
        }
    }

    /// A training forward + backward through the fused training kernels gives candle's loss, every parameter
    /// gradient and the same running statistics, for both block kinds.
    #[test]
    fn training_kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let basic = ResNetConfig {
            block: BlockKind::Basic,
            layers: [2, 1, 1, 1],
            stem_width: 8,
            planes: [8, 12, 16, 8],
            width_per_group: 64,
        };
        for cfg in [tiny(), basic] {
            // Sizes that halve evenly: candle's own conv backward (the reference) fails on odd strided extents.
            let x = Tensor::randn(0f32, 1.0, (3, 3, 64, 64), &dev).unwrap();
            let mut results = Vec::new();
            for imp in [ConvImpl::Fused, ConvImpl::Candle] {
                // Same seed-free initial weights for both: copy from one VarMap into the other.
                let vm = candle_nn::VarMap::new();
                let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
                let net = ResNet::new(&cfg, vb).unwrap().with_conv_impl(imp);
                results.push((vm, net));
            }
            {
                let (a, b) = (
                    results[0].0.data().lock().unwrap(),
                    results[1].0.data().lock().unwrap(),
                );
                for (name, v) in a.iter() {
                    b[name].set(v.as_tensor()).unwrap();
                }
            }
            let mut grads = Vec::new();
            for (_, net) in &results {
                let outs = net.stages(&x, 4, true).unwrap();
                let loss = outs
                    .iter()
                    .map(|o| o.sqr().unwrap().mean_all().unwrap())
                    .reduce(|a, b| (a + b).unwrap())
                    .unwrap();
                grads.push((loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap()));
            }
            let rel = (grads[0].0 - grads[1].0).abs() / grads[1].0.abs();
            assert!(rel < 1e-5, "loss {} vs {}", grads[0].0, grads[1].0);
            let (a, b) = (
                results[0].0.data().lock().unwrap(),
                results[1].0.data().lock().unwrap(),
            );
            for (name, va) in a.iter() {
                let vb = &b[name];
                let pairs = if name.contains("running") {
                    // Running statistics: updated in place by both forwards.
                    vec![(va.as_tensor().clone(), vb.as_tensor().clone())]
                } else {
                    let ga = grads[0]
                        .1
                        .get(va.as_tensor())
                        .unwrap_or_else(|| panic!("{name}: no gradient"));
                    let gb = grads[1].1.get(vb.as_tensor()).unwrap();
                    vec![(ga.clone(), gb.clone())]
                };
                for (ta, tb) in pairs {
                    let d = crate::testing::max_abs_diff(&ta, &tb).unwrap();
                    let m = crate::testing::max_abs_diff(&tb, &tb.zeros_like().unwrap()).unwrap();
                    assert!(d <= 2e-4 * m.max(1e-3), "{name}: max diff {d} (scale {m})");
                }
            }
        }
    }

    /// The unfolded network trains end to end, stem pool included (candle's own 3×3/s2 pool has no backward).
    #[test]
    fn unfolded_network_trains_through_the_stem_pool() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let net = ResNet::new(&tiny(), vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let loss = net.stages(&x, 2, true).unwrap()[1]
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let stem = vm.data().lock().unwrap()["conv1.weight"].clone();
        let g = grads
            .get(stem.as_tensor())
            .expect("stem conv has a gradient");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0);
    }

    /// Regression: folded inference weights carried BatchNorm's `Var` graph, so outputs kept every input alive and
    /// fitting on hundreds of images ran out of memory.
    #[test]
    fn folded_inference_outputs_track_no_graph() {
        let dev = Device::Cpu;
        let cfg = tiny();
        let w = random_weights(&cfg, 4, &dev).unwrap();
        let net = resnet_from_weights(&cfg, "tiny", w, Path::new("mem"), &dev)
            .unwrap()
            .fold_batch_norm()
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &dev).unwrap();
        for o in net.stages(&x, 4, false).unwrap() {
            assert!(!o.track_op(), "inference output tracks an autograd graph");
        }
    }
}
