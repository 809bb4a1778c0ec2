//! Procedural scratches planted into good images, with their masks: the defects `kestrel fit --pretrain synthetic`
//! scores candidate backbones on. They are a family none of the pretraining tasks draws (no pasted patches, no
//! Gaussian stains), so a backbone cannot win the comparison by recognising its own training defects.
//!
//! A scratch is a smooth random curve (a random walk of the heading) of 15–45 % of the image side, 1–4 px wide at
//! 256 px (scaled with the image), darker or brighter than the surface by 15–40 % of the full range, with soft
//! edges; the mask is every pixel the stroke's core covers.

use image::RgbImage;
use rand::Rng;

use super::uniform;

/// Plant one scratch into `img` (in place); returns its mask (`1` = scratch), row-major, the image's size.
pub fn plant_scratch(img: &mut RgbImage, rng: &mut impl Rng) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let side = w.min(h) as f64;
    let k = side / 256.0;
    let length = uniform(rng, 0.15, 0.45) * side;
    let half_width = (uniform(rng, 1.0, 4.0) * k / 2.0).max(0.6);
    let contrast = uniform(rng, 0.15, 0.40) * if rng.gen_bool(0.5) { -1.0 } else { 1.0 };
    // The path: start anywhere in the middle 80 %, heading anywhere, curvature drifting.
    let mut p = (
        uniform(rng, 0.1, 0.9) * w as f64,
        uniform(rng, 0.1, 0.9) * h as f64,
    );
    let mut heading = uniform(rng, 0.0, std::f64::consts::TAU);
    let mut turn = 0.0;
    let step = 0.5;
    let mut points = vec![p];
    let mut walked = 0.0;
    while walked < length {
        turn = (turn + uniform(rng, -0.02, 0.02)).clamp(-0.05, 0.05);
        heading += turn;
        p = (p.0 + step * heading.cos(), p.1 + step * heading.sin());
        if p.0 < 0.0 || p.1 < 0.0 || p.0 >= w as f64 || p.1 >= h as f64 {
            break;
        }
        points.push(p);
        walked += step;
    }
    // Distance of each pixel centre to the path (points every half pixel): coverage falls off over one pixel.
    let mut cover = vec![0f64; w * h];
    let reach = half_width + 1.0;
    for &(x, y) in &points {
        let (x0, x1) = (
            (x - reach).floor().max(0.0) as usize,
            ((x + reach).ceil() as usize).min(w),
        );
        let (y0, y1) = (
            (y - reach).floor().max(0.0) as usize,
            ((y + reach).ceil() as usize).min(h),
        );
        for yy in y0..y1 {
            for xx in x0..x1 {
                let d = ((xx as f64 + 0.5 - x).powi(2) + (yy as f64 + 0.5 - y).powi(2)).sqrt();
                let c = (half_width + 0.5 - d).clamp(0.0, 1.0);
                let cell = &mut cover[yy * w + xx];
                *cell = cell.max(c);
            }
        }
    }
    let mut mask = vec![0u8; w * h];
    for (i, &c) in cover.iter().enumerate() {
        if c <= 0.0 {
            continue;
        }
        let px = img.get_pixel_mut((i % w) as u32, (i / w) as u32);
        for v in px.0.iter_mut() {
            let f = f64::from(*v) / 255.0 + contrast * c;
            *v = (f.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        if c >= 0.5 {
            mask[i] = 1;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{role, stream};

    #[test]
    fn a_scratch_changes_only_pixels_near_its_mask_and_is_thin() {
        for i in 0..20 {
            let mut img = RgbImage::from_pixel(256, 256, image::Rgb([128, 128, 128]));
            let mask = plant_scratch(&mut img, &mut stream(3, role::SCRATCH, i));
            let marked = mask.iter().filter(|&&m| m == 1).count();
            assert!(marked > 0, "scratch {i} is empty");
            // A 1–4 px stroke of at most 45 % of the side: far below a tenth of the image.
            assert!(marked < 256 * 256 / 10, "scratch {i}: {marked} px");
            for (p, &m) in img.pixels().zip(&mask) {
                if m == 1 {
                    assert_ne!(p.0[0], 128, "scratch {i}: a masked pixel is unchanged");
                }
            }
            let changed = img.pixels().filter(|p| p.0[0] != 128).count();
            assert!(
                changed <= 3 * marked + 600,
                "scratch {i}: {changed} changed for {marked} masked"
            );
        }
    }

    #[test]
    fn scratches_are_reproducible() {
        let plant = || {
            let mut img = RgbImage::from_pixel(64, 64, image::Rgb([90, 100, 110]));
            let m = plant_scratch(&mut img, &mut stream(1, role::SCRATCH, 7));
            (img, m)
        };
        assert_eq!(plant(), plant());
    }
}
