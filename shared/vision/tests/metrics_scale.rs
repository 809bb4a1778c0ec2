//! Scale check of the exact pixel metrics: a procedurally generated test set that is never held in memory.
//!
//! Ignored by default (it takes tens of seconds); run with
//! `cargo test -p kestrel-vision --test metrics_scale -- --ignored --nocapture`.

use std::time::Instant;

use kestrel_vision::metrics::{
    pixel_metrics, MapView, MetricsError, PixelMetricsOptions, PixelSource,
};

/// `images` maps of `side x side` pixels, regenerated identically on every visit from a seed; every third image has a
/// rectangular defect whose pixels score higher on average.
struct Procedural {
    images: usize,
    side: usize,
}

impl PixelSource for Procedural {
    fn visit(
        &self,
        f: &mut dyn FnMut(&MapView<'_>) -> Result<(), MetricsError>,
    ) -> Result<(), MetricsError> {
        let n = self.side * self.side;
        let mut scores = vec![0f32; n];
        let mut mask = vec![0u8; n];
        for k in 0..self.images {
            let mut state =
                0x2545_F491_4F6C_DD1Du64 ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let defective = k % 3 == 0;
            mask.fill(0);
            if defective {
                let (x0, y0) = (k * 37 % (self.side / 2), k * 91 % (self.side / 2));
                for y in y0..y0 + self.side / 8 {
                    mask[y * self.side + x0..y * self.side + x0 + self.side / 6].fill(255);
                }
            }
            for (s, &m) in scores.iter_mut().zip(&mask) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                *s = u + if m != 0 { 0.35 } else { 0.0 };
            }
            let name = format!("img{k}");
            f(&MapView {
                name: &name,
                width: self.side,
                height: self.side,
                scores: &scores,
                mask: defective.then_some(&mask[..]),
            })?;
        }
        Ok(())
    }
}

#[test]
#[ignore = "slow: ~100 million pixels"]
fn hundred_million_pixels() {
    let source = Procedural {
        images: 96,
        side: 1024,
    };
    let mut results = Vec::new();
    for budget in [256 << 20, 16 << 20] {
        let options = PixelMetricsOptions {
            memory_budget: budget,
            ..PixelMetricsOptions::default()
        };
        let start = Instant::now();
        let r = pixel_metrics(&source, &options).unwrap();
        eprintln!(
            "{} pixels, budget {} MiB: {} passes, {:.1} s, pixel AUROC {:.9}, AUPRO {:.9}",
            r.pixels,
            budget >> 20,
            r.passes,
            start.elapsed().as_secs_f64(),
            r.auroc.unwrap(),
            r.aupro.unwrap()
        );
        results.push(r);
    }
    assert_eq!(results[0].auroc, results[1].auroc);
    assert!((results[0].aupro.unwrap() - results[1].aupro.unwrap()).abs() < 1e-12);
}
