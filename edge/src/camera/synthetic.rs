//! A deterministic synthetic camera: textured "product" frames with occasional defects.
//!
//! Why: the unit must run end to end on any machine (CI, a laptop, `boards/sim.toml` from a fresh clone) and tests
//! need frames whose content is known. Every frame is a pure function of `(seed, frame id)`:
//! - the product is a woven-looking texture (two crossed sinusoids plus fixed fine grain) over a soft vignette,
//!   computed once per source;
//! - each frame adds small per-frame sensor noise (±3 levels);
//! - every `defect_every`-th frame (ids `defect_every-1`, `2*defect_every-1`, …) carries one defect — a dark
//!   scratch or a bright/dark spot — at a seeded position; [`SyntheticSource::defect_box`] gives its bounding box,
//!   which is the ground truth for tests.
//!
//! Frames are paced at the configured rate on the monotonic clock (see [`super::Pacer`]); with `fps = None` they are
//! produced as fast as they are asked for (tests, fitting a model on synthetic "good" frames).

use super::{monotonic_us, CameraError, Frame, FrameSource, Pacer};

/// Parameters of a synthetic source.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticParams {
    /// Frame width (>= 32).
    pub width: u32,
    /// Frame height (>= 32).
    pub height: u32,
    /// Pace (frames/s); None = as fast as asked.
    pub fps: Option<f64>,
    /// Every n-th frame carries a defect; 0 = never.
    pub defect_every: u32,
    /// Texture and defect seed.
    pub seed: u64,
}

/// The kind of defect painted into a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefectKind {
    /// A thin dark line.
    Scratch,
    /// A dark round spot.
    DarkSpot,
    /// A bright round spot.
    BrightSpot,
}

/// Where and what a frame's defect is (pixel bounding box, inclusive-exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefectBox {
    /// Defect kind.
    pub kind: DefectKind,
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

/// Synthetic frame source; see the module docs.
pub struct SyntheticSource {
    params: SyntheticParams,
    base: Vec<u8>,
    pacer: Pacer,
    next_id: u64,
}

/// SplitMix64: a tiny, well-mixed, deterministic generator (no dependency, identical on every platform).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SyntheticSource {
    /// Creates a source; fails for sides under 32 or over 8192 pixels.
    pub fn new(params: SyntheticParams) -> Result<Self, CameraError> {
        let ok = |s: u32| (32..=8192).contains(&s);
        if !ok(params.width) || !ok(params.height) {
            return Err(CameraError::Open {
                path: "synthetic".into(),
                reason: format!(
                    "{}x{} is out of range (each side 32..=8192)",
                    params.width, params.height
                ),
            });
        }
        let base = Self::texture(&params);
        let pacer = Pacer::new(params.fps);
        Ok(SyntheticSource {
            params,
            base,
            pacer,
            next_id: 0,
        })
    }

    fn texture(p: &SyntheticParams) -> Vec<u8> {
        let (w, h) = (p.width as usize, p.height as usize);
        let mut out = vec![0u8; w * h * 3];
        // Thread pitch scales with the frame so a 64x64 and a 1024x1024 product look alike.
        let pitch = (p.width.min(p.height) as f32 / 32.0).max(2.0);
        let freq = std::f32::consts::TAU / pitch;
        let phase = (splitmix(p.seed) % 1000) as f32 / 1000.0 * std::f32::consts::TAU;
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let rmax = (cx * cx + cy * cy).sqrt();
        for y in 0..h {
            for x in 0..w {
                let weave = (x as f32 * freq + phase).sin() * (y as f32 * freq).sin();
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let vignette = 1.0 - 0.25 * ((dx * dx + dy * dy).sqrt() / rmax);
                let grain = (splitmix(p.seed ^ ((y * w + x) as u64)) & 7) as f32 - 3.5;
                let l = (140.0 + 35.0 * weave + grain) * vignette;
                let o = (y * w + x) * 3;
                out[o] = l.clamp(0.0, 255.0) as u8;
                out[o + 1] = (l * 0.85).clamp(0.0, 255.0) as u8;
                out[o + 2] = (l * 0.65).clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    /// Whether frame `id` carries a defect.
    pub fn is_defective(&self, id: u64) -> bool {
        let n = u64::from(self.params.defect_every);
        n > 0 && (id + 1).is_multiple_of(n)
    }

    /// The defect painted into frame `id`, if any.
    pub fn defect_box(&self, id: u64) -> Option<DefectBox> {
        if !self.is_defective(id) {
            return None;
        }
        let r = splitmix(self.params.seed.rotate_left(17) ^ id);
        let (w, h) = (self.params.width, self.params.height);
        let kind = match r % 3 {
            0 => DefectKind::Scratch,
            1 => DefectKind::DarkSpot,
            _ => DefectKind::BrightSpot,
        };
        let s = w.min(h);
        // Defects sit in the central 60 % so they are never cropped by a centre crop in pre-processing.
        let (bw, bh) = match kind {
            DefectKind::Scratch => ((s / 4).max(8), 2),
            _ => ((s / 12).max(4), (s / 12).max(4)),
        };
        let x0 = w / 5 + ((r >> 8) % u64::from((w * 3 / 5).saturating_sub(bw).max(1))) as u32;
        let y0 = h / 5 + ((r >> 24) % u64::from((h * 3 / 5).saturating_sub(bh).max(1))) as u32;
        Some(DefectBox {
            kind,
            x: x0,
            y: y0,
            w: bw,
            h: bh,
        })
    }

    /// Renders frame `id` without pacing (pure: the same id gives the same pixels). `t_capture_us` is left 0.
    pub fn render(&self, id: u64) -> Frame {
        let (w, h) = (self.params.width as usize, self.params.height as usize);
        let mut rgb = self.base.clone();
        // Per-frame sensor noise, ±3 levels, from a cheap xorshift stream seeded by (seed, id).
        let mut s = splitmix(self.params.seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407)) | 1;
        for px in rgb.chunks_exact_mut(3) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let n = (s % 7) as i16 - 3;
            for c in px {
                *c = (i16::from(*c) + n).clamp(0, 255) as u8;
            }
        }
        if let Some(d) = self.defect_box(id) {
            for y in d.y as usize..(d.y + d.h).min(h as u32) as usize {
                for x in d.x as usize..(d.x + d.w).min(w as u32) as usize {
                    let inside = match d.kind {
                        DefectKind::Scratch => true,
                        _ => {
                            let (rx, ry) = (d.w as f32 / 2.0, d.h as f32 / 2.0);
                            let (dx, dy) = (
                                x as f32 + 0.5 - d.x as f32 - rx,
                                y as f32 + 0.5 - d.y as f32 - ry,
                            );
                            (dx / rx).powi(2) + (dy / ry).powi(2) <= 1.0
                        }
                    };
                    if inside {
                        let o = (y * w + x) * 3;
                        let v = if d.kind == DefectKind::BrightSpot {
                            [250, 245, 230]
                        } else {
                            [25, 20, 15]
                        };
                        rgb[o..o + 3].copy_from_slice(&v);
                    }
                }
            }
        }
        Frame {
            id,
            t_capture_us: 0,
            width: self.params.width,
            height: self.params.height,
            rgb,
        }
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self) -> Result<Frame, CameraError> {
        let due = self.pacer.wait();
        let mut frame = self.render(self.next_id);
        frame.t_capture_us = monotonic_us(due);
        self.next_id += 1;
        Ok(frame)
    }

    fn describe(&self) -> String {
        let p = &self.params;
        let rate = p
            .fps
            .map(|f| format!("{f} fps"))
            .unwrap_or_else(|| "unpaced".into());
        let defects = if p.defect_every == 0 {
            "no defects".to_string()
        } else {
            format!("defect every {} frames", p.defect_every)
        };
        format!(
            "synthetic {}x{} RGB, {rate}, {defects}, seed {}",
            p.width, p.height, p.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn params() -> SyntheticParams {
        SyntheticParams {
            width: 64,
            height: 48,
            fps: None,
            defect_every: 4,
            seed: 7,
        }
    }

    #[test]
    fn frames_are_deterministic_and_sized() {
        let a = SyntheticSource::new(params()).unwrap();
        let b = SyntheticSource::new(params()).unwrap();
        for id in 0..6 {
            let (fa, fb) = (a.render(id), b.render(id));
            assert_eq!(fa.rgb.len(), 64 * 48 * 3);
            assert_eq!(fa, fb, "frame {id} differs between identical sources");
        }
        assert_ne!(
            a.render(0).rgb,
            a.render(1).rgb,
            "noise must vary frame to frame"
        );
        let other = SyntheticSource::new(SyntheticParams {
            seed: 8,
            ..params()
        })
        .unwrap();
        assert_ne!(
            a.render(0).rgb,
            other.render(0).rgb,
            "the seed must change the product"
        );
    }

    #[test]
    fn defects_follow_the_schedule_and_change_their_box_only() {
        let s = SyntheticSource::new(params()).unwrap();
        let flags: Vec<bool> = (0..8).map(|i| s.is_defective(i)).collect();
        assert_eq!(
            flags,
            [false, false, false, true, false, false, false, true]
        );
        let d = s.defect_box(3).unwrap();
        assert!(
            d.x + d.w <= 64 && d.y + d.h <= 48 && d.w > 0 && d.h > 0,
            "{d:?}"
        );
        // Same noise stream with and without the defect: compare against a defect-free source.
        let clean = SyntheticSource::new(SyntheticParams {
            defect_every: 0,
            ..params()
        })
        .unwrap();
        let (f, g) = (s.render(3), clean.render(3));
        let mut changed_inside = 0;
        for y in 0..48u32 {
            for x in 0..64u32 {
                let o = ((y * 64 + x) * 3) as usize;
                let inside = x >= d.x && x < d.x + d.w && y >= d.y && y < d.y + d.h;
                if f.rgb[o..o + 3] != g.rgb[o..o + 3] {
                    assert!(
                        inside,
                        "pixel ({x},{y}) changed outside the defect box {d:?}"
                    );
                    changed_inside += 1;
                }
            }
        }
        assert!(
            changed_inside >= 4,
            "the defect must be visible ({changed_inside} pixels changed)"
        );
        assert_eq!(s.render(2), clean.render(2));
    }

    #[test]
    fn next_frame_counts_ids_and_stamps_time() {
        let mut s = SyntheticSource::new(params()).unwrap();
        let before = crate::camera::now_us();
        let a = s.next_frame().unwrap();
        let b = s.next_frame().unwrap();
        assert_eq!((a.id, b.id), (0, 1));
        assert!(a.t_capture_us >= before && b.t_capture_us >= a.t_capture_us);
    }

    #[test]
    fn paced_source_keeps_its_rate() {
        let mut s = SyntheticSource::new(SyntheticParams {
            fps: Some(100.0),
            ..params()
        })
        .unwrap();
        let start = Instant::now();
        let first = s.next_frame().unwrap().t_capture_us;
        let mut last = first;
        for _ in 0..5 {
            last = s.next_frame().unwrap().t_capture_us;
        }
        assert_eq!(last - first, 50_000, "5 periods of 10 ms");
        assert!(start.elapsed() >= Duration::from_millis(45));
    }

    #[test]
    fn rejects_tiny_frames() {
        assert!(SyntheticSource::new(SyntheticParams {
            width: 8,
            ..params()
        })
        .is_err());
    }
}
