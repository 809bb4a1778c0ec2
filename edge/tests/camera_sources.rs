//! Frame sources through the public `camera::open` entry point: synthetic and directory sources as the runtime
//! uses them (issue 5, item 3).

mod common;

use std::path::Path;
use std::time::Instant;

use kestrel_edge::board::CameraConfig;
use kestrel_edge::camera::{self, CameraError};

fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

#[test]
fn synthetic_profile_source_delivers_paced_frames() {
    let cfg = CameraConfig::Synthetic {
        width: 64,
        height: 64,
        fps: 200.0,
        defect_every: 3,
        seed: 9,
    };
    let mut src = camera::open(&cfg).unwrap();
    assert!(
        src.describe().contains("synthetic 64x64"),
        "{}",
        src.describe()
    );
    let start = Instant::now();
    let frames: Vec<_> = (0..5).map(|_| src.next_frame().unwrap()).collect();
    assert!(
        start.elapsed().as_millis() >= 15,
        "5 frames at 200 fps take at least 4 periods"
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.id, i as u64);
        assert_eq!(f.rgb.len(), 64 * 64 * 3);
    }
    assert!(frames
        .windows(2)
        .all(|w| w[1].t_capture_us - w[0].t_capture_us == 5_000));
    // The capture instant maps back onto the monotonic clock, close to when the frame was delivered.
    let at = frames[4].captured_at();
    assert!(at <= Instant::now() && Instant::now() - at < std::time::Duration::from_secs(1));
}

#[test]
fn directory_source_reads_images_and_raw_dumps_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("b-0002.png"), 4, 2, [10, 20, 30]);
    image::RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50]))
        .save(dir.path().join("a-0001.jpg"))
        .unwrap();
    // A 2x1 YUYV dump: black then white.
    std::fs::write(dir.path().join("c-0003.2x1.yuyv"), [16, 128, 235, 128]).unwrap();
    std::fs::write(dir.path().join("d-0004.2x1.grey"), [7, 9]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    std::fs::create_dir(dir.path().join("masks")).unwrap();

    let cfg = CameraConfig::Directory {
        path: dir.path().to_path_buf(),
        fps: 1000.0,
        looped: false,
    };
    let mut src = camera::open(&cfg).unwrap();
    assert!(src.describe().contains("4 frames"), "{}", src.describe());
    let jpg = src.next_frame().unwrap();
    assert_eq!((jpg.width, jpg.height), (4, 2));
    assert!(
        jpg.rgb[0].abs_diff(200) < 8,
        "JPEG decoded to {:?}",
        &jpg.rgb[..3]
    );
    let png = src.next_frame().unwrap();
    assert_eq!(&png.rgb[..3], &[10, 20, 30]);
    let yuyv = src.next_frame().unwrap();
    assert_eq!(yuyv.rgb, vec![0, 0, 0, 255, 255, 255]);
    let grey = src.next_frame().unwrap();
    assert_eq!(grey.rgb, vec![7, 7, 7, 9, 9, 9]);
    assert_eq!(grey.id, 3);
    match src.next_frame() {
        Err(CameraError::EndOfStream { frames: 4, .. }) => {}
        other => panic!("expected the end of the recording, got {other:?}"),
    }
}

#[test]
fn looped_directory_source_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("1.png"), 2, 2, [1, 1, 1]);
    write_png(&dir.path().join("2.png"), 2, 2, [2, 2, 2]);
    let cfg = CameraConfig::Directory {
        path: dir.path().to_path_buf(),
        fps: 1000.0,
        looped: true,
    };
    let mut src = camera::open(&cfg).unwrap();
    let firsts: Vec<u8> = (0..5).map(|_| src.next_frame().unwrap().rgb[0]).collect();
    assert_eq!(firsts, [1, 2, 1, 2, 1]);
}

#[test]
fn directory_errors_name_the_file_and_reason() {
    let empty = tempfile::tempdir().unwrap();
    let cfg = CameraConfig::Directory {
        path: empty.path().to_path_buf(),
        fps: 10.0,
        looped: true,
    };
    let err = camera::open(&cfg).err().expect("empty directory");
    assert!(
        matches!(err, CameraError::Open { .. }) && err.to_string().contains("no frames found"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    std::fs::write(dir.path().join("short.4x4.yuyv"), [0u8; 5]).unwrap();
    let cfg = CameraConfig::Directory {
        path: dir.path().to_path_buf(),
        fps: 1000.0,
        looped: false,
    };
    let mut src = camera::open(&cfg).unwrap();
    let err = src.next_frame().unwrap_err();
    assert!(
        matches!(err, CameraError::Decode { .. }) && err.to_string().contains("broken.png"),
        "{err}"
    );
    // A bad frame does not end the source: the next file is still delivered (or fails on its own terms).
    // The file is named by the error, the size problem by its cause (printed after it).
    let err = src.next_frame().unwrap_err();
    let text = kestrel_edge::error_text(&err);
    assert!(
        text.contains("short.4x4.yuyv") && text.contains("needs 32"),
        "{text}"
    );
}

/// A camera that stops delivering is opened again without manual action: a directory source that is not looped
/// ends after its files (an error like a vanished device); the unit's capture thread reopens it and frames resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_stops_is_reopened_and_the_ready_lamp_follows() {
    use kestrel_edge::board::Mode;
    use kestrel_edge::pins::Signal;
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..2 {
        image::RgbImage::from_pixel(16, 16, image::Rgb([i * 50, 80, 120]))
            .save(frames.join(format!("{i}.png")))
            .unwrap();
    }
    let mut profile = common::sim_profile(&tmp.path().join("state"), Mode::FreeRun, 2, 30.0);
    profile.camera = CameraConfig::Directory {
        path: frames,
        fps: 20.0,
        looped: false,
    };
    let unit = kestrel_edge::Unit::start(
        profile,
        kestrel_edge::UnitOptions {
            inspector: Some(Box::new(common::ScriptedInspector {
                reject_every: 0,
                delay: std::time::Duration::from_millis(1),
            })),
            ..Default::default()
        },
    )
    .unwrap();
    let board = unit.fake_board().unwrap().clone();
    let secs = std::time::Duration::from_secs;
    // Two frames, then the "camera" is gone: fault lamp on, ready off.
    assert!(board.wait_for(Signal::Fault, true, secs(5)));
    assert!(board.wait_for(Signal::Ready, false, secs(5)));
    let before = unit.stats().frames;
    // Reopened after five failures (about a second): frames flow again and the lamps recover.
    assert!(board.wait_for(Signal::Ready, true, secs(10)), "reopened");
    let deadline = std::time::Instant::now() + secs(10);
    while unit.stats().frames <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        unit.stats().frames > before,
        "frames resumed after the reopen"
    );
    tokio::task::spawn_blocking(move || unit.shutdown())
        .await
        .unwrap()
        .unwrap();
}
