//! Deterministic random initialisation of a ResNet (torchvision's scheme), for fitting without pretrained weights
//! and as the starting point of pretraining.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;

use super::{ResNet, ResNetConfig};
use rand_distr_free::normal_f32;

/// Deterministic torchvision-style random weights for `config`, keyed by torchvision names.
///
/// Generated here rather than by candle's initialisers because candle's CPU RNG cannot be seeded, and a fitted model
/// must be reproducible from its seed.
pub fn random_weights(
    config: &ResNetConfig,
    seed: u64,
    device: &Device,
) -> candle_core::Result<HashMap<String, Tensor>> {
    // Build once with a recording VarMap to learn every name and shape, then fill deterministically.
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    ResNet::new(config, vb)?;
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let shape = data[name].shape().clone();
        let dims = shape.dims().to_vec();
        let n = shape.elem_count();
        let values: Vec<f32> =
            if name.ends_with("running_var") || name.ends_with(".weight") && dims.len() == 1 {
                vec![1.0; n]
            } else if dims.len() == 4 {
                // Kaiming normal, mode fan_out, gain sqrt(2).
                let fan_out = (dims[0] * dims[2] * dims[3]) as f32;
                let std = (2.0 / fan_out).sqrt();
                (0..n).map(|_| normal_f32(&mut rng) * std).collect()
            } else {
                vec![0.0; n]
            };
        out.insert(
            name.clone(),
            Tensor::from_vec(values, dims.as_slice(), device)?,
        );
    }
    Ok(out)
}

/// A tiny Box–Muller normal sampler, so we need no extra distribution crate for one function.
mod rand_distr_free {
    use rand::Rng;

    pub fn normal_f32<R: Rng>(rng: &mut R) -> f32 {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::resnet::tests::tiny;

    #[test]
    fn random_weights_are_deterministic() {
        let cfg = tiny();
        let a = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        let b = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        let k = "layer1.0.conv2.weight";
        let va: Vec<f32> = a[k].flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b[k].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb);
    }
}
