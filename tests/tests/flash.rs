//! Flashing through the harness: a link cut mid-upload (the [`TcpProxy`] resets both ends) is reconnected and the
//! upload resumes from the unit's count, and the serial link carries a whole flash too.
//!
//! On a simulated unit the suite makes its own bundle (kestrel-vision's tiny test model) and trusts its key in the
//! sim's state directory. On a real unit set `KESTREL_BUNDLE` to a bundle signed by a key the unit trusts (and with
//! a model version it accepts); without it the suite skips.

use std::path::PathBuf;
use std::time::Duration;

use kestrel_bundle::{FirmwareRange, FirmwareVersion, SigningKey};
use kestrel_hil::{SimOptions, Target, TcpProxy};
use kestrel_host::monitor::flash::{self, FlashOptions, FlashProgress};
use kestrel_vision::bundle::{BundleInfo, Quant};
use kestrel_vision::detector::DetectorKind;

/// The bundle to flash: `KESTREL_BUNDLE` on a real unit; on the sim, a fresh tiny bundle whose key the sim trusts.
fn bundle_for(target: &Target, version: u64) -> Option<Vec<u8>> {
    let Some(sim) = target.sim() else {
        let path = PathBuf::from(std::env::var_os("KESTREL_BUNDLE")?);
        return Some(std::fs::read(path).expect("KESTREL_BUNDLE is readable"));
    };
    let key = SigningKey::from_seed([21; 32]);
    let trusted = sim.state_dir().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    let public = trusted.join("hil.pub");
    if !public.exists() {
        key.public_key().write_file(&public).unwrap();
    }
    let model = kestrel_vision::testing::tiny_model(DetectorKind::Padim, 1e9);
    let image = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
    Some(
        model
            .to_bundle(
                Quant::Int8,
                BundleInfo {
                    name: format!("hil-v{version}"),
                    model_version: version,
                    firmware: FirmwareRange {
                        min: FirmwareVersion::new(0, 0, 0),
                        max: FirmwareVersion::new(99, 0, 0),
                    },
                    self_test: Some(image),
                },
                &key,
            )
            .unwrap(),
    )
}

fn options(target: &Target, addr: kestrel_hil::UnitAddr) -> FlashOptions {
    let mut o = FlashOptions::new(addr, target.connect_options());
    o.connect.handshake_timeout = Duration::from_secs(20);
    o.reconnect_for = Duration::from_secs(20);
    o.allow_downgrade = true;
    o
}

#[tokio::test]
async fn a_link_cut_mid_upload_resumes_where_the_unit_stands() {
    // A conveyor long enough that the tiny model passes the unit's speed check on a loaded CI machine.
    let target = Target::acquire(SimOptions {
        reject_delay_ms: 500,
        ..SimOptions::default()
    })
    .unwrap();
    let Some(bundle) = bundle_for(&target, 1) else {
        eprintln!("skipped: set KESTREL_BUNDLE to flash a real unit");
        return;
    };
    let proxy = TcpProxy::start(&target.tcp()).await.unwrap();
    let mut opts = options(&target, proxy.addr());
    // Small chunks and one in flight: the cut lands in the middle of the upload, not after it.
    opts.chunk = 1024;
    opts.window = 1;
    let total = bundle.len() as u64;
    let (mut cut, mut resumed_at) = (false, None);
    let report = flash::flash(&bundle, &opts, &mut |p| match p {
        FlashProgress::Uploaded { acked, .. } if !cut && acked >= total / 2 => {
            proxy.cut();
            cut = true;
        }
        FlashProgress::Resumed(at) => resumed_at = Some(at),
        _ => {}
    })
    .await
    .unwrap();
    assert!(cut);
    assert_eq!(report.reconnects, 1, "{report:?}");
    let at = resumed_at.expect("the upload resumed instead of starting over");
    assert!(at >= total / 2 && at < total, "resumed at {at} of {total}");
    // Chunks sent but lost in the cut are sent again; everything before the unit's count is not.
    assert!(
        report.payload_sent < total + 8 * 1024,
        "sent {} for a {total}-byte bundle",
        report.payload_sent
    );
    let active = report.active.expect("a model is active");
    let (_, trailer) = kestrel_bundle::probe_parts(&bundle).unwrap();
    assert_eq!(&active.sha256[..], &trailer[..32]);
}

#[tokio::test]
async fn a_whole_flash_over_the_serial_link() {
    let target = Target::acquire(SimOptions {
        serial: true,
        reject_delay_ms: 500,
        ..SimOptions::default()
    })
    .unwrap();
    let Some(serial) = target.serial() else {
        eprintln!("skipped: no serial link (set KESTREL_UNIT_SERIAL for a real unit)");
        return;
    };
    let Some(bundle) = bundle_for(&target, 2) else {
        eprintln!("skipped: set KESTREL_BUNDLE to flash a real unit");
        return;
    };
    let report = flash::flash(&bundle, &options(&target, serial), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.payload_sent, bundle.len() as u64);
    assert!(
        report.wire_sent > report.payload_sent,
        "framing costs bytes"
    );
    assert!(report.active.is_some());
}
