//! `kestrel monitor`: watch a unit's verdicts and stats live (see [`crate::monitor`] for the client).
//!
//! Validates everything local first (address, key file, output folder) so those mistakes are usage errors, then
//! runs a single-threaded tokio runtime: one link, a few messages per frame, no need for more.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;

use crate::cli::MonitorArgs;
use crate::monitor::render::{Printer, RejectSaver, Style};
use crate::monitor::{
    read_key_file, ConnectOptions, Monitor, MonitorError, MonitorOptions, UnitAddr, Update,
};

/// Run `kestrel monitor`.
pub fn run(args: &MonitorArgs) -> anyhow::Result<()> {
    let addr: UnitAddr = args.unit.parse().map_err(MonitorError::from)?;
    let key = read_key_file(&args.key_file).map_err(MonitorError::from)?;
    let mut connect = ConnectOptions::new(key);
    connect.expect_unit = args.unit_id.clone();
    let mut opts = MonitorOptions::new(addr.clone(), connect);
    opts.masks_every = match args.masks_every {
        Some(n) => n,
        // Masks cost link time: on by default over TCP only when they are being saved.
        None if args.save_rejects.is_some() && !addr.is_serial() => 1,
        None => 0,
    };
    opts.reconnect_for = Duration::from_secs_f64(args.reconnect_for);
    opts.replay_from = args.replay_from;
    let saver = match &args.save_rejects {
        Some(dir) => Some(RejectSaver::new(dir).map_err(|source| MonitorError::Local {
            what: format!("cannot create {}", dir.display()),
            source,
        })?),
        None => None,
    };
    let style = if args.json {
        Style::Json
    } else if std::io::stdout().is_terminal() {
        Style::Table
    } else {
        Style::Plain
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(watch(opts, style, saver, args.count))
}

async fn watch(
    opts: MonitorOptions,
    style: Style,
    mut saver: Option<RejectSaver>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let addr = opts.addr.to_string();
    let mut printer = Printer::new(style, std::io::stdout().lock());
    let mut monitor = Monitor::connect(opts).await?;
    let mut shown = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if count.is_some_and(|n| shown >= n) {
            break;
        }
        let update = tokio::select! {
            u = monitor.next() => u?,
            _ = &mut ctrl_c => break,
        };
        let mut saved = None;
        if let (Update::Verdict { verdict, .. }, Some(s)) = (&update, saver.as_mut()) {
            saved = s.save(verdict).map_err(|source| MonitorError::Local {
                what: "writing a reject mask".into(),
                source,
            })?;
        }
        if matches!(update, Update::Verdict { .. }) {
            shown += 1;
        }
        match printer.update(&update, saved.as_deref()) {
            Ok(()) => {}
            // `kestrel monitor | head`: the reader is gone, which is a normal way to stop.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(source) => {
                return Err(MonitorError::Local {
                    what: "writing to stdout".into(),
                    source,
                }
                .into())
            }
        }
    }
    let _ = printer.finish();
    // On stderr in every style, so `--json` consumers keep a clean stdout.
    let c = monitor.counters();
    eprintln!(
        "{addr}: {} verdicts shown ({} rejects, {} replayed), {} duplicates dropped, {} reconnects, {} lost, \
         {} bytes received{}",
        c.verdicts,
        printer.totals().rejects,
        c.replayed,
        c.duplicates,
        c.reconnects,
        c.lost,
        c.bytes_received,
        saver
            .as_ref()
            .filter(|s| s.without_mask > 0)
            .map(|s| format!(
                ", {} rejects arrived without a mask (see --masks-every)",
                s.without_mask
            ))
            .unwrap_or_default()
    );
    Ok(())
}
