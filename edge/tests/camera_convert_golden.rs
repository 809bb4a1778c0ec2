//! YUYV → RGB against ffmpeg's conversion of the same frames (issue 5, item 3: tolerance ±2).
//! Fixture and how it was made: `edge/tests/fixtures/yuyv/README.md`.

use std::path::Path;

use kestrel_edge::camera::convert::yuyv_to_rgb;

const TOLERANCE: i32 = 2;

fn check(name: &str, width: u32, height: u32) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yuyv");
    let yuyv = std::fs::read(dir.join(format!("{name}.{width}x{height}.yuyv"))).unwrap();
    let want = std::fs::read(dir.join(format!("{name}.{width}x{height}.rgb"))).unwrap();
    assert_eq!(yuyv.len(), (width * height * 2) as usize, "fixture size");
    let got = yuyv_to_rgb(&yuyv, width, height, width as usize * 2).unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = (0, 0usize);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let d = (i32::from(g) - i32::from(w)).abs();
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let (d, i) = worst;
    let px = i / 3;
    assert!(
        d <= TOLERANCE,
        "{name}: pixel ({}, {}) channel {} differs by {d} (ours {}, ffmpeg {}); YUYV quad {:?}",
        px as u32 % width,
        px as u32 / width,
        i % 3,
        got[i],
        want[i],
        &yuyv[(px / 2) * 4..(px / 2) * 4 + 4]
    );
}

#[test]
fn yuyv_matches_ffmpeg_on_a_test_pattern() {
    check("testsrc2", 64, 48);
}

#[test]
fn yuyv_matches_ffmpeg_on_random_bytes() {
    check("random", 32, 16);
}
