//! `kestrel flash`: install a bundle on a unit, check one (`--dry-run`), or roll back (`--rollback`). The protocol
//! is [`crate::monitor::flash`]'s; this module validates the arguments, draws the progress bar and prints the result.

use std::time::Duration;

use anyhow::Context;
use kestrel_bundle::inspect_untrusted;
use kestrel_wire::ModelRef;

use crate::cli::FlashArgs;
use crate::monitor::flash::{self, FlashOptions, FlashProgress, FlashReport};
use crate::monitor::{read_key_file, ConnectOptions, MonitorError, UnitAddr};
use crate::outln;

/// Largest file `flash` reads (refused from its size first).
const MAX_BUNDLE_BYTES: u64 = 1 << 30;

fn model_text(m: Option<&ModelRef>) -> String {
    match m {
        Some(m) => format!(
            "{} v{} ({})",
            m.name,
            m.version,
            &hex::encode(m.sha256)[..12]
        ),
        None => "no model".into(),
    }
}

fn model_json(m: Option<&ModelRef>) -> serde_json::Value {
    match m {
        Some(m) => serde_json::json!({
            "name": m.name,
            "version": m.version,
            "sha256": hex::encode(m.sha256),
        }),
        None => serde_json::Value::Null,
    }
}

/// Run `kestrel flash`.
pub fn run(a: &FlashArgs) -> anyhow::Result<()> {
    let addr: UnitAddr = a.unit.parse().map_err(MonitorError::from)?;
    let key = read_key_file(&a.key_file).map_err(MonitorError::from)?;
    if !(a.reconnect_for.is_finite() && a.reconnect_for >= 0.0) {
        anyhow::bail!("--reconnect-for must be a number of seconds >= 0");
    }
    if a.chunk_size == 0 || a.chunk_size > kestrel_wire::frame::MAX_BUNDLE_CHUNK {
        anyhow::bail!(
            "--chunk-size must be 1..={} bytes (one frame)",
            kestrel_wire::frame::MAX_BUNDLE_CHUNK
        );
    }
    let mut connect = ConnectOptions::new(key);
    connect.expect_unit = a.unit_id.clone();
    let mut opts = FlashOptions::new(addr, connect);
    opts.chunk = a.chunk_size;
    opts.window = a.window.max(1);
    opts.allow_downgrade = a.allow_downgrade;
    opts.reconnect_for = Duration::from_secs_f64(a.reconnect_for);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    if a.rollback {
        let (before, active) = rt.block_on(flash::rollback(&opts))?;
        if a.json {
            outln!(
                "{}",
                serde_json::json!({
                    "unit": before.unit_id,
                    "rolled_back_from": model_json(before.active_model.as_ref()),
                    "active": model_json(active.as_ref()),
                })
            )?;
        } else {
            outln!(
                "{}: rolled back from {} to {}",
                before.unit_id,
                model_text(before.active_model.as_ref()),
                model_text(active.as_ref())
            )?;
        }
        return Ok(());
    }

    let path = a
        .bundle
        .as_ref()
        .expect("clap requires a bundle without --rollback");
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_BUNDLE_BYTES {
        anyhow::bail!("{} is {len} bytes, larger than any bundle", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Check locally what needs no key: structure and hash. The unit checks the signature with its own keys.
    let local = inspect_untrusted(&bytes)
        .with_context(|| format!("{} is not a valid bundle", path.display()))?;
    let info = &local.manifest.model;

    let bar = indicatif::ProgressBar::new(len);
    if a.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("connecting");
    let quiet = a.json;
    let mut on_progress = |p: FlashProgress| match p {
        FlashProgress::Connected(h) => {
            bar.set_message("checking");
            if !quiet {
                bar.suspend(|| {
                    eprintln!(
                        "unit {} ({}, firmware {}) runs {}",
                        h.unit_id,
                        h.board,
                        h.fw_version,
                        model_text(h.active_model.as_ref())
                    )
                });
            }
        }
        FlashProgress::Probed => bar.set_message("uploading"),
        FlashProgress::Uploaded { acked, .. } => bar.set_position(acked),
        FlashProgress::Reconnecting(why) => {
            bar.set_message("reconnecting");
            if !quiet {
                bar.suspend(|| eprintln!("link dropped ({why}); reconnecting to resume"));
            }
        }
        FlashProgress::Resumed(at) => {
            bar.set_message("resuming");
            bar.set_position(at);
            if !quiet {
                bar.suspend(|| eprintln!("the unit holds {at} bytes already; resuming there"));
            }
        }
        FlashProgress::Committed => bar.set_message("activating"),
    };

    let report = if a.dry_run {
        rt.block_on(flash::dry_run(&bytes, &opts, &mut on_progress))?
    } else {
        rt.block_on(flash::flash(&bytes, &opts, &mut on_progress))?
    };
    bar.finish_and_clear();
    print_report(a, info, &local.sha256, &report)
}

fn print_report(
    a: &FlashArgs,
    info: &kestrel_bundle::ModelInfo,
    sha256: &[u8; 32],
    r: &FlashReport,
) -> anyhow::Result<()> {
    let secs = r.upload_time.as_secs_f64();
    let rate = if secs > 0.0 {
        r.payload_sent as f64 / secs
    } else {
        0.0
    };
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "unit": r.before.unit_id,
                "dry_run": a.dry_run,
                "bundle": {
                    "name": info.name,
                    "version": info.model_version,
                    "sha256": hex::encode(sha256),
                    "bytes": r.size,
                },
                "before": model_json(r.before.active_model.as_ref()),
                "active": model_json(r.active.as_ref()),
                "payload_sent": r.payload_sent,
                "wire_sent": r.wire_sent,
                "wire_received": r.wire_received,
                "reconnects": r.reconnects,
                "upload_s": secs,
                "activate_s": r.activate_time.as_secs_f64(),
                "bytes_per_s": rate,
            })
        )?;
        return Ok(());
    }
    if a.dry_run {
        outln!(
            "{}: would accept {} v{} ({} bytes, sha256 {}); nothing was written",
            r.before.unit_id,
            info.name,
            info.model_version,
            r.size,
            &hex::encode(sha256)[..12]
        )?;
        return Ok(());
    }
    outln!(
        "{}: now runs {} (was {})",
        r.before.unit_id,
        model_text(r.active.as_ref()),
        model_text(r.before.active_model.as_ref())
    )?;
    outln!(
        "upload {} of {} bytes in {:.2} s ({:.0} KiB/s, {} bytes on the wire, {} reconnect{}); verify, load, self-test and switch {:.2} s",
        r.payload_sent,
        r.size,
        secs,
        rate / 1024.0,
        r.wire_sent,
        r.reconnects,
        if r.reconnects == 1 { "" } else { "s" },
        r.activate_time.as_secs_f64()
    )?;
    Ok(())
}
