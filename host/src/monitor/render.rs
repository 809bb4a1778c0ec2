//! Showing monitor updates: a refreshing terminal table for people, plain lines when stdout is not a terminal (logs,
//! `grep`), or one JSON object per line (`--json`) for other programs. Also writes reject masks as PNG.
//!
//! The table redraws at most [`TABLE_REFRESH`] apart, so a unit at hundreds of frames/s does not flood the
//! terminal; plain and JSON output write every update, because a consumer must not miss a verdict.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kestrel_wire::{Hello, Stats, Verdict};
use serde_json::json;

use super::client::Update;

/// Minimum time between two table redraws.
pub const TABLE_REFRESH: Duration = Duration::from_millis(100);
/// Verdict rows the table keeps.
const TABLE_ROWS: usize = 15;

/// Output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One JSON object per line.
    Json,
    /// One human-readable line per update.
    Plain,
    /// A live table redrawn in place (ANSI terminal).
    Table,
}

/// Running totals the table and the final summary show.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Verdicts shown.
    pub verdicts: u64,
    /// Of which rejects.
    pub rejects: u64,
    /// Of which replayed.
    pub replayed: u64,
    /// Reject masks written.
    pub masks_saved: u64,
    /// Latest unit stats.
    pub stats: Option<Stats>,
    /// Unit id, board and firmware of the current session.
    pub unit: String,
    /// Link state line.
    pub link: String,
}

/// Writes updates in one [`Style`].
pub struct Printer<W: Write> {
    style: Style,
    out: W,
    totals: Totals,
    rows: VecDeque<String>,
    last_draw: Option<Instant>,
    dirty: bool,
}

impl<W: Write> Printer<W> {
    /// A printer writing to `out`.
    pub fn new(style: Style, out: W) -> Self {
        Printer {
            style,
            out,
            totals: Totals::default(),
            rows: VecDeque::new(),
            last_draw: None,
            dirty: false,
        }
    }

    /// Totals so far.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The output (tests read what was written).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Show one update; `mask_png` is where the verdict's mask was saved, if it was.
    pub fn update(&mut self, u: &Update, mask_png: Option<&Path>) -> io::Result<()> {
        self.account(u, mask_png);
        match self.style {
            Style::Json => {
                let line = json_line(u, mask_png);
                writeln!(self.out, "{line}")?;
                self.out.flush()
            }
            Style::Plain => {
                writeln!(self.out, "{}", plain_line(u, mask_png))?;
                self.out.flush()
            }
            Style::Table => {
                if let Update::Verdict { verdict, replayed } = u {
                    self.rows
                        .push_front(table_row(verdict, *replayed, mask_png));
                    self.rows.truncate(TABLE_ROWS);
                }
                self.dirty = true;
                let due = self.last_draw.is_none_or(|t| t.elapsed() >= TABLE_REFRESH);
                if due {
                    self.draw()?;
                }
                Ok(())
            }
        }
    }

    /// Draw any pending table state (call before exiting).
    pub fn finish(&mut self) -> io::Result<()> {
        if self.style == Style::Table && self.dirty {
            self.draw()?;
        }
        self.out.flush()
    }

    fn account(&mut self, u: &Update, mask_png: Option<&Path>) {
        match u {
            Update::Verdict { verdict, replayed } => {
                self.totals.verdicts += 1;
                self.totals.rejects += u64::from(!verdict.pass);
                self.totals.replayed += u64::from(*replayed);
                self.totals.masks_saved += u64::from(mask_png.is_some());
            }
            Update::Stats(s) => self.totals.stats = Some(s.clone()),
            Update::Connected { peer, reconnect } => {
                self.totals.unit = describe_unit(peer);
                self.totals.link = connected_word(*reconnect).into();
            }
            Update::LinkDown { cause } => {
                self.totals.link = format!("DOWN ({cause}); reconnecting")
            }
            _ => {}
        }
    }

    fn draw(&mut self) -> io::Result<()> {
        let t = &self.totals;
        // Home + clear screen, then the whole table: simple, flicker is bounded by TABLE_REFRESH.
        let mut s = String::from("\x1b[H\x1b[2J");
        s += &format!("kestrel monitor  {}  [{}]\n", t.unit, t.link);
        s += &format!(
            "shown {}  rejects {}  replayed {}  masks saved {}\n",
            t.verdicts, t.rejects, t.replayed, t.masks_saved
        );
        match &t.stats {
            Some(st) => s += &format!("unit: {}\n", stats_text(st)),
            None => s += "unit: (waiting for stats)\n",
        }
        s += &format!(
            "\n{:>10} {:>10} {:>7} {:>10} {:>9}  {}\n",
            "seq", "frame", "verdict", "score", "latency", "note"
        );
        for row in &self.rows {
            s += row;
            s.push('\n');
        }
        self.out.write_all(s.as_bytes())?;
        self.out.flush()?;
        self.last_draw = Some(Instant::now());
        self.dirty = false;
        Ok(())
    }
}

fn describe_unit(peer: &Hello) -> String {
    let model = peer
        .active_model
        .as_ref()
        .map_or("none", |m| m.name.as_str());
    format!(
        "{} on {} ({}; model {model})",
        peer.unit_id, peer.board, peer.fw_version
    )
}

fn connected_word(reconnect: bool) -> &'static str {
    if reconnect {
        "reconnected"
    } else {
        "connected"
    }
}

fn verdict_word(v: &Verdict) -> &'static str {
    if v.pass {
        "PASS"
    } else {
        "REJECT"
    }
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn stats_text(s: &Stats) -> String {
    format!(
        "frames {} pass {} reject {} dropped {} latency p50 {:.1} ms p99 {:.1} ms uptime {} s missed {} link errors {}",
        s.frames,
        s.passes,
        s.rejects,
        s.dropped,
        ms(s.latency_p50_us),
        ms(s.latency_p99_us),
        s.uptime_s,
        s.missed_by_client,
        s.link_errors
    )
}

fn table_row(v: &Verdict, replayed: bool, mask_png: Option<&Path>) -> String {
    let mut note = String::new();
    if replayed {
        note += "replayed ";
    }
    if let Some(p) = mask_png {
        note += &format!("mask {}", p.display());
    }
    let row = format!(
        "{:>10} {:>10} {:>7} {:>10.4} {:>6.1} ms  {}",
        v.seq,
        v.frame_id,
        verdict_word(v),
        v.score,
        ms(v.latency_us),
        note
    );
    row.trim_end().to_string()
}

fn plain_line(u: &Update, mask_png: Option<&Path>) -> String {
    match u {
        Update::Verdict {
            verdict: v,
            replayed,
        } => {
            let mut s = format!(
                "verdict seq={} frame={} {} score={:.4} latency={:.1}ms",
                v.seq,
                v.frame_id,
                verdict_word(v),
                v.score,
                ms(v.latency_us)
            );
            if *replayed {
                s += " replayed";
            }
            if let Some(p) = mask_png {
                s += &format!(" mask={}", p.display());
            }
            s
        }
        Update::Stats(st) => format!("stats {}", stats_text(st)),
        Update::Event(e) => format!("event t={}us {:?}", e.t_us, e.kind),
        Update::Connected { peer, reconnect } => format!(
            "{} to unit {}",
            connected_word(*reconnect),
            describe_unit(peer)
        ),
        Update::LinkDown { cause } => format!("link down: {cause}; reconnecting"),
        Update::Lost { from_seq, count } => {
            format!("lost {count} verdicts from seq {from_seq}: no longer in the unit's journal")
        }
        Update::Refused { request, nack } => {
            format!("unit refused {request}: {:?} {}", nack.code, nack.detail)
        }
    }
}

/// The `--json` object for one update. Keys are stable; masks are described (size, encoding), their pixels are
/// written as PNG with `--save-rejects` instead of bloating the stream.
pub fn json_line(u: &Update, mask_png: Option<&Path>) -> serde_json::Value {
    match u {
        Update::Verdict {
            verdict: v,
            replayed,
        } => json!({
            "type": "verdict",
            "seq": v.seq,
            "frame_id": v.frame_id,
            "t_capture_us": v.t_capture_us,
            "latency_us": v.latency_us,
            "score": finite(v.score),
            "pass": v.pass,
            "replayed": replayed,
            "mask": v.mask.as_ref().map(|m| json!({
                "width": m.width, "height": m.height, "encoding": format!("{:?}", m.encoding),
            })),
            "mask_png": mask_png.map(|p| p.display().to_string()),
        }),
        Update::Stats(s) => json!({
            "type": "stats",
            "frames": s.frames,
            "passes": s.passes,
            "rejects": s.rejects,
            "dropped": s.dropped,
            "latency_p50_us": s.latency_p50_us,
            "latency_p99_us": s.latency_p99_us,
            "uptime_s": s.uptime_s,
            "missed_by_client": s.missed_by_client,
            "link_errors": s.link_errors,
            "late": s.late,
            "uninspected": s.uninspected,
            "model": s.model.as_ref().map(|m| json!({
                "name": m.name, "version": m.version, "sha256": hex::encode(m.sha256),
            })),
        }),
        Update::Event(e) => json!({
            "type": "event",
            "t_us": e.t_us,
            "event": format!("{:?}", e.kind),
        }),
        Update::Connected { peer, reconnect } => json!({
            "type": "connected",
            "reconnect": reconnect,
            "unit_id": peer.unit_id,
            "board": peer.board,
            "fw_version": peer.fw_version,
            "model": peer.active_model.as_ref().map(|m| m.name.clone()),
        }),
        Update::LinkDown { cause } => json!({ "type": "link_down", "cause": cause }),
        Update::Lost { from_seq, count } => {
            json!({ "type": "lost", "from_seq": from_seq, "count": count })
        }
        Update::Refused { request, nack } => json!({
            "type": "refused",
            "request": request,
            "code": format!("{:?}", nack.code),
            "detail": nack.detail,
        }),
    }
}

/// JSON has no NaN/∞: a broken score is `null` rather than an unparseable line.
fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// Writes reject verdicts' masks as 8-bit greyscale PNGs.
#[derive(Debug, Clone)]
pub struct RejectSaver {
    dir: PathBuf,
    /// Rejects that arrived without a mask (the subscription's `masks_every` skipped them).
    pub without_mask: u64,
}

impl RejectSaver {
    /// Save into `dir` (created if missing).
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(RejectSaver {
            dir: dir.to_path_buf(),
            without_mask: 0,
        })
    }

    /// Save `v`'s mask if it is a reject with a mask; returns the file written. Named by journal seq, so a replayed
    /// copy overwrites rather than duplicates.
    pub fn save(&mut self, v: &Verdict) -> io::Result<Option<PathBuf>> {
        if v.pass {
            return Ok(None);
        }
        let Some(mask) = &v.mask else {
            self.without_mask += 1;
            return Ok(None);
        };
        let pixels = mask.pixels().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("mask of seq {}: {e}", v.seq),
            )
        })?;
        let img = image::GrayImage::from_raw(u32::from(mask.width), u32::from(mask.height), pixels)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "mask size mismatch"))?;
        let path = self
            .dir
            .join(format!("reject_{:010}_frame{}.png", v.seq, v.frame_id));
        img.save(&path).map_err(io::Error::other)?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_wire::Mask;

    fn verdict(seq: u64, pass: bool, mask: Option<Mask>) -> Verdict {
        Verdict {
            seq,
            frame_id: seq * 2,
            t_capture_us: 1,
            latency_us: 12_345,
            score: 0.5,
            pass,
            mask,
            outcome: kestrel_wire::Outcome::Inspected,
        }
    }

    #[test]
    fn json_lines_are_one_object_with_stable_keys() {
        let u = Update::Verdict {
            verdict: verdict(3, false, Some(Mask::raw(2, 1, vec![0, 255]).unwrap())),
            replayed: true,
        };
        let mut p = Printer::new(Style::Json, Vec::new());
        p.update(&u, Some(Path::new("/x/r.png"))).unwrap();
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "verdict");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["pass"], false);
        assert_eq!(v["replayed"], true);
        assert_eq!(v["mask"]["width"], 2);
        assert_eq!(v["mask_png"], "/x/r.png");
    }

    #[test]
    fn nan_score_stays_valid_json() {
        let mut v = verdict(1, true, None);
        v.score = f32::NAN;
        let line = json_line(
            &Update::Verdict {
                verdict: v,
                replayed: false,
            },
            None,
        );
        assert!(line["score"].is_null());
        assert!(serde_json::from_str::<serde_json::Value>(&line.to_string()).is_ok());
    }

    #[test]
    fn table_redraws_are_rate_limited_but_finish_draws_the_last_state() {
        let mut p = Printer::new(Style::Table, Vec::new());
        for seq in 0..50 {
            p.update(
                &Update::Verdict {
                    verdict: verdict(seq, seq % 7 != 0, None),
                    replayed: false,
                },
                None,
            )
            .unwrap();
        }
        p.finish().unwrap();
        assert_eq!(p.totals().verdicts, 50);
        assert_eq!(p.totals().rejects, 8);
        let text = String::from_utf8(p.into_inner()).unwrap();
        let draws = text.matches("\x1b[2J").count();
        assert!((2..50).contains(&draws), "{draws} redraws for 50 updates");
        // The last draw shows the newest verdict first.
        let last = text.rsplit("\x1b[2J").next().unwrap();
        let first_row = last
            .lines()
            .find(|l| l.trim_start().starts_with("49"))
            .unwrap();
        assert!(
            first_row.contains("REJECT"),
            "49 is a multiple of 7: {first_row}"
        );
    }

    #[test]
    fn saves_reject_masks_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RejectSaver::new(&dir.path().join("rejects")).unwrap();
        let mask = Mask::rle(4, 2, &[0, 0, 9, 9, 200, 200, 200, 1]).unwrap();
        assert!(s
            .save(&verdict(1, true, Some(mask.clone())))
            .unwrap()
            .is_none());
        assert!(s.save(&verdict(2, false, None)).unwrap().is_none());
        assert_eq!(s.without_mask, 1);
        let path = s.save(&verdict(3, false, Some(mask))).unwrap().unwrap();
        let img = image::open(&path).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (4, 2));
        assert_eq!(img.into_raw(), vec![0, 0, 9, 9, 200, 200, 200, 1]);
    }
}
