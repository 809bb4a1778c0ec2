//! Numeric parity of our ResNet with PyTorch/torchvision on recorded fixtures.
//!
//! Fixtures in `tests/fixtures/backbone/` were written by `scripts/fixtures/make_backbone_fixtures.py` (command and
//! versions recorded in each `<name>.json`): small torchvision-structured ResNets (a BasicBlock and a wide
//! Bottleneck variant) with random weights and non-trivial BatchNorm statistics, their stage outputs c1..c4 for a fixed
//! input, computed in float64 and stored as f32. Weights come both as safetensors and as a PyTorch `.pth` pickle, so
//! both loading paths are checked.

use std::path::{Path, PathBuf};

use candle_core::Device;
use kestrel_vision::backbone::{self, BlockKind, ResNetConfig};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backbone")
}

fn config(name: &str) -> ResNetConfig {
    let txt = std::fs::read_to_string(fixture_dir().join(format!("{name}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&txt).unwrap();
    let arr4 = |k: &str| -> [usize; 4] {
        let a: Vec<usize> = v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        [a[0], a[1], a[2], a[3]]
    };
    ResNetConfig {
        block: match v["block"].as_str().unwrap() {
            "BasicBlock" => BlockKind::Basic,
            "Bottleneck" => BlockKind::Bottleneck,
            b => panic!("unknown block {b}"),
        },
        layers: arr4("layers"),
        stem_width: v["stem_width"].as_u64().unwrap() as usize,
        planes: arr4("planes"),
        width_per_group: v["width_per_group"].as_u64().unwrap_or(64) as usize,
    }
}

fn check(name: &str, weights_file: &str, fold: bool) {
    let dev = Device::Cpu;
    let cfg = config(name);
    let wpath = fixture_dir().join(weights_file);
    let weights = backbone::read_weights(&wpath).unwrap();
    let mut net = backbone::resnet_from_weights(&cfg, name, weights, &wpath, &dev).unwrap();
    if fold {
        net = net.fold_batch_norm().unwrap();
    }
    let io =
        candle_core::safetensors::load(fixture_dir().join(format!("{name}_io.safetensors")), &dev)
            .unwrap();
    let outs = net.stages(&io["input"], 4, false).unwrap();
    for (i, out) in outs.iter().enumerate() {
        let key = format!("c{}", i + 1);
        let reference = &io[&key];
        assert_eq!(out.dims(), reference.dims(), "{name} {key} shape");
        let d = kestrel_vision::testing::max_abs_diff(out, reference).unwrap() as f32;
        let scale = reference
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Reported with `cargo test -- --nocapture`; the bound is f32 accumulation error relative to the scale.
        println!("{name} ({weights_file}, fold={fold}) {key}: max |diff| = {d:.3e} (max |ref| = {scale:.3})");
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "{name} {key}: max abs diff {d} vs PyTorch"
        );
    }
}

#[test]
fn basic_block_resnet_matches_pytorch_from_safetensors() {
    check("narrow_basic", "narrow_basic.safetensors", false);
    check("narrow_basic", "narrow_basic.safetensors", true);
}

#[test]
fn bottleneck_resnet_matches_pytorch_from_safetensors() {
    check("narrow_bottleneck", "narrow_bottleneck.safetensors", false);
    check("narrow_bottleneck", "narrow_bottleneck.safetensors", true);
}

#[test]
fn pytorch_pickles_load_to_the_same_outputs() {
    check("narrow_basic", "narrow_basic.pth", true);
    check("narrow_bottleneck", "narrow_bottleneck.pth", true);
}

#[test]
fn import_writes_a_loadable_checked_safetensors() {
    let cfg = config("narrow_bottleneck");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w.safetensors");
    let n = backbone::import_weights(
        &cfg,
        "narrow_bottleneck",
        &fixture_dir().join("narrow_bottleneck.pth"),
        &out,
    )
    .unwrap();
    // Every backbone tensor, no classifier head.
    assert_eq!(n, 100, "fc.weight and fc.bias dropped");
    let w = backbone::read_weights(&out).unwrap();
    assert!(!w.contains_key("fc.weight"));
}
