//! The verdict journal: a bounded on-disk ring of every verdict the unit produced, with sequence numbers that keep
//! increasing across restarts. It is what `Replay { from_seq }` is served from, so a host that lost its link (or
//! whose outbox overflowed) can fetch exactly what it missed.
//!
//! # Layout
//!
//! `DIR/<first_seq, 20 digits>.kjs` segment files. Each starts with the 8-byte magic [`SEGMENT_MAGIC`], then
//! records `len: u32 LE ‖ crc: u32 LE ‖ body`, where `body` is `postcard(Verdict)` and `crc` is CRC-32/ISO-HDLC of
//! the body. Record `i` of a segment has sequence number `first_seq + i` (checked when reading). A segment holds
//! [`JournalConfig::segment_records`] records; when a new one starts and more than
//! [`JournalConfig::max_segments`] exist, the oldest file is deleted, so the disk use is bounded by
//! `segment_records × max_segments` records (a verdict without mask is ~30 bytes).
//!
//! Masks are not journaled: they would dominate the bound, and a replayed verdict carries everything a production
//! record needs (seq, frame, time, score, verdict). Replayed verdicts therefore have `mask: None`.
//!
//! # Crash tolerance
//!
//! Opening scans every segment. A record that is cut short, fails its CRC, does not decode or has the wrong
//! sequence number ends that segment: the file is truncated there (and the event logged), never a panic. Only the
//! tail of the newest segment can be torn by a power cut; damage elsewhere (bit rot) loses the rest of that segment
//! only. After a clean close (marker file `CLEAN` holding the next number) numbering continues exactly. After a
//! crash of the *machine* (power cut, kernel panic: the kernel's boot id in `BOOT` changed, or a torn record was
//! found), records that were appended but not yet synced may be gone although hosts already saw their numbers, so
//! numbering skips ahead by [`FsyncPolicy::every_records`] (the most that can be unsynced) in a fresh segment: a
//! sequence number is never given to two different verdicts, at the price of a visible gap. After a crash of the
//! *process* only (SIGKILL, panic, OOM kill) in the same boot with no torn record, every completed `write` is in the
//! page cache and reaches the file, and a verdict is published only after its append returned, so numbering
//! continues exactly: no gap, and no number a host could count as lost without a verdict behind it.
//!
//! # fsync policy (what a power cut can lose)
//!
//! Records are written with one `write` each (no user-space buffer, so a process crash loses nothing that was
//! appended). `fdatasync` runs after every [`FsyncPolicy::every_records`] records, when
//! [`FsyncPolicy::interval`] has passed since the last sync (checked at each append and by
//! [`Journal::sync_if_due`], which the inference thread calls when idle), at every segment switch (then also the
//! directory, so the new file's name is durable), and at shutdown ([`Journal::sync`]). A **power cut** therefore
//! loses at most the records of the last `interval` or `every_records` records, whichever is less (defaults: 100 ms
//! or 64 records); those verdicts still reached the line (reject pulses) and any connected host.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// The frame CRC of kestrel-wire: one CRC-32 definition for the wire and the disk.
use kestrel_wire::{crc32, Verdict};

/// First bytes of every segment file (format version in the last byte).
pub const SEGMENT_MAGIC: [u8; 8] = *b"KSTRLJ\x00\x01";
const RECORD_HEADER: usize = 8;
/// Largest record body accepted when reading; a larger length field means corruption, not a real record.
pub const MAX_RECORD_LEN: u32 = 64 * 1024;
const SEGMENT_EXT: &str = "kjs";
/// File written at a clean close holding the next sequence number (see the module docs on crash numbering).
const CLEAN_MARKER: &str = "CLEAN";
/// File holding the kernel boot id of the run that last opened the journal.
const BOOT_MARKER: &str = "BOOT";

/// The kernel's boot id (changes at every boot), when the platform has one.
fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// When the journal forces data to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsyncPolicy {
    /// Sync after this many unsynced records (at least 1).
    pub every_records: u32,
    /// Sync when this long has passed since the last sync and records are pending.
    pub interval: Duration,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        Self {
            every_records: 64,
            interval: Duration::from_millis(100),
        }
    }
}

/// Size of the ring and durability settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// Records per segment file (at least 1).
    pub segment_records: u64,
    /// Segment files kept (at least 2, so a full previous segment survives a switch).
    pub max_segments: usize,
    /// When to fsync.
    pub fsync: FsyncPolicy,
}

impl Default for JournalConfig {
    /// 64 × 16 384 ≈ one million verdicts (about 32 MB): days of production at 10 parts/s.
    fn default() -> Self {
        Self {
            segment_records: 16_384,
            max_segments: 64,
            fsync: FsyncPolicy::default(),
        }
    }
}

/// Journal failures. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system refused an operation.
    #[error("journal: cannot {op} {} (check that the state directory exists, is writable and has free space)", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A verdict could not be encoded (only possible for a mask-carrying verdict over the record limit).
    #[error("cannot encode verdict {seq} for the journal")]
    Encode {
        /// Sequence number it would have had.
        seq: u64,
        /// Why.
        #[source]
        source: postcard::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid journal setting: {0}")]
    Config(&'static str),
    /// Appending verdict `seq` failed. The number stays assigned to that verdict (publish it under it; it will
    /// never be given to another), but the record may not be on disk: a torn write was cut off again and the next
    /// record starts a new segment, so the journal reads as a gap at `seq`, never as a corrupt segment.
    #[error("journal: verdict {seq} was not stored")]
    Append {
        /// The sequence number assigned to the verdict.
        seq: u64,
        /// What failed.
        #[source]
        source: Box<JournalError>,
    },
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    count: u64,
    path: PathBuf,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadBatch {
    /// Oldest sequence number still held (records before it were dropped by the ring).
    pub first_available: u64,
    /// Records from `max(from_seq, first_available)` on, in order.
    pub records: Vec<Verdict>,
}

/// What opening found (for the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments whose tail was cut off because a record was torn or corrupt.
    pub truncated_segments: usize,
    /// Bytes removed that way.
    pub truncated_bytes: u64,
    /// Sequence numbers skipped because the journal was not closed cleanly.
    pub skipped_seqs: u64,
}

/// An open journal. One writer; wrap it in a mutex to share with readers.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    cfg: JournalConfig,
    segments: Vec<Segment>,
    file: File,
    next_seq: u64,
    unsynced: u32,
    last_sync: Instant,
    recovery: Recovery,
    /// The open segment's last record could not be written (and was cut off): the next record must start a new
    /// segment, because a segment's record `i` is sequence number `first_seq + i`.
    reopen: bool,
    /// The last fsync failed and no later one succeeded.
    sync_failed: bool,
    /// Tests: the error the next record write fails with (ENOSPC, EIO), injected at the file layer.
    #[cfg(test)]
    inject: Option<io::Error>,
}

impl Journal {
    /// Open (or create) the journal in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<Self, JournalError> {
        if cfg.segment_records == 0 {
            return Err(JournalError::Config("segment_records must be at least 1"));
        }
        if cfg.max_segments < 2 {
            return Err(JournalError::Config("max_segments must be at least 2"));
        }
        if cfg.fsync.every_records == 0 {
            return Err(JournalError::Config(
                "fsync.every_records must be at least 1",
            ));
        }
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let path = entry.map_err(io_err("list", dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            if let Some(first) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                firsts.push((first, path));
            }
        }
        firsts.sort();
        let mut recovery = Recovery::default();
        let mut segments = Vec::with_capacity(firsts.len());
        for (first_seq, path) in firsts {
            let (count, cut) = scan_segment(&path, first_seq)?;
            if let Some(cut) = cut {
                tracing::warn!(path = %path.display(), kept_records = count, cut_bytes = cut.removed,
                    "journal segment had a torn or corrupt record; truncated after the last good record");
                recovery.truncated_segments += 1;
                recovery.truncated_bytes += cut.removed;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                f.set_len(cut.keep).map_err(io_err("truncate", &path))?;
                f.sync_all().map_err(io_err("sync", &path))?;
            }
            segments.push(Segment {
                first_seq,
                count,
                path,
            });
        }
        let mut next_seq = segments.last().map(|s| s.first_seq + s.count).unwrap_or(0);
        // A clean close leaves a marker naming the next sequence number. Without it (power cut, kill -9) up to
        // `every_records` appended records may never have reached the disk, yet their numbers may already have been
        // sent to hosts; skip past them so no number is ever given to two different verdicts.
        let marker = dir.join(CLEAN_MARKER);
        let clean = fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            == Some(next_seq);
        let boot_path = dir.join(BOOT_MARKER);
        let now_boot = boot_id();
        let same_boot = now_boot.is_some()
            && fs::read_to_string(&boot_path)
                .ok()
                .map(|s| s.trim().to_string())
                == now_boot;
        // Only a machine crash (or a torn record, which a process crash does not leave) can have lost records whose
        // numbers hosts saw.
        let unclean_skip =
            !clean && !segments.is_empty() && (!same_boot || recovery.truncated_segments > 0);
        if !clean && !segments.is_empty() && !unclean_skip {
            tracing::warn!(
                next_seq,
                "journal was not closed cleanly but the machine kept running: every record written is on disk, \
                 numbering continues"
            );
        }
        if let Some(b) = &now_boot {
            let mut f = File::create(&boot_path).map_err(io_err("write", &boot_path))?;
            f.write_all(b.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err("write", &boot_path))?;
        }
        if unclean_skip {
            tracing::warn!(
                skipped = cfg.fsync.every_records,
                "journal was not closed cleanly; sequence numbers skip ahead past records that may have been lost"
            );
            next_seq += u64::from(cfg.fsync.every_records);
            recovery.skipped_seqs = u64::from(cfg.fsync.every_records);
        }
        match fs::remove_file(&marker) {
            Ok(()) => sync_dir(dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &marker)(e)),
        }
        let file = match segments.last() {
            Some(last) if !unclean_skip && last.count < cfg.segment_records => OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(io_err("open", &last.path))?,
            _ => {
                let seg = create_segment(dir, next_seq)?;
                let f = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err("open", &seg.path))?;
                segments.push(seg);
                f
            }
        };
        let mut j = Journal {
            dir: dir.to_path_buf(),
            cfg,
            segments,
            file,
            next_seq,
            unsynced: 0,
            last_sync: Instant::now(),
            recovery,
            reopen: false,
            sync_failed: false,
            #[cfg(test)]
            inject: None,
        };
        j.enforce_bound()?;
        Ok(j)
    }

    /// What opening repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Sequence number the next appended verdict gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Oldest sequence number still held (equals [`Journal::next_seq`] when empty).
    pub fn first_seq(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| s.count > 0)
            .map(|s| s.first_seq)
            .unwrap_or(self.next_seq)
    }

    /// Append a verdict, giving it the next sequence number (its `seq` is overwritten, its mask not stored).
    /// Returns the sequence number. On failure the number is still consumed and named by
    /// [`JournalError::Append`]: a number is never published twice, nor one the journal did not assign.
    pub fn append(&mut self, verdict: &Verdict) -> Result<u64, JournalError> {
        let seq = self.next_seq;
        match self.try_append(seq, verdict) {
            Ok(()) => Ok(seq),
            Err(e) => {
                if self.next_seq == seq {
                    // Not stored: the number is spent all the same, and the segment cannot hold it.
                    self.next_seq = seq + 1;
                    self.reopen = true;
                }
                Err(JournalError::Append {
                    seq,
                    source: Box::new(e),
                })
            }
        }
    }

    /// Whether every appended record has been fsynced without error since the last failure (a failed sync is a
    /// fault that stays until a sync succeeds).
    pub fn is_healthy(&self) -> bool {
        !self.sync_failed && !self.reopen
    }

    fn try_append(&mut self, seq: u64, verdict: &Verdict) -> Result<(), JournalError> {
        if self.reopen || self.segments.last().map(|s| s.count) >= Some(self.cfg.segment_records) {
            self.rotate()?;
            self.reopen = false;
        }
        let rec = Verdict {
            seq,
            mask: None,
            ..verdict.clone()
        };
        let body =
            postcard::to_allocvec(&rec).map_err(|source| JournalError::Encode { seq, source })?;
        let mut buf = Vec::with_capacity(RECORD_HEADER + body.len());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        let path = self
            .segments
            .last()
            .expect("a segment is always open")
            .path
            .clone();
        let before = self.file.metadata().map(|m| m.len());
        if let Err(e) = self.write_record(&buf) {
            // Cut a torn record off again so the segment stays readable; if even that fails, reading stops at the
            // torn record at the next open (it is truncated there), and the next append starts a new segment.
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
            return Err(io_err("append to", &path)(e));
        }
        self.segments.last_mut().expect("open segment").count += 1;
        self.next_seq += 1;
        self.unsynced += 1;
        if self.unsynced >= self.cfg.fsync.every_records {
            self.sync()?;
        } else {
            self.sync_if_due()?;
        }
        Ok(())
    }

    /// fsync pending records if the policy's interval has passed.
    pub fn sync_if_due(&mut self) -> Result<(), JournalError> {
        if self.unsynced > 0 && self.last_sync.elapsed() >= self.cfg.fsync.interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Force every appended record to stable storage now.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.unsynced > 0 || self.sync_failed {
            let path = &self.segments.last().expect("open segment").path;
            if let Err(e) = self.file.sync_data() {
                self.sync_failed = true;
                return Err(io_err("sync", path)(e));
            }
            self.sync_failed = false;
            self.unsynced = 0;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_record(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(e) = self.inject.take() {
            return Err(e);
        }
        self.file.write_all(buf)
    }

    /// Up to `max` records from `from_seq` on. Asking for records the ring already dropped starts at the oldest one
    /// held (the caller sees the gap in [`ReadBatch::first_available`]); asking past the end returns none.
    pub fn read_from(&self, from_seq: u64, max: usize) -> Result<ReadBatch, JournalError> {
        let first_available = self.first_seq();
        let mut want = from_seq.max(first_available);
        let mut records = Vec::new();
        for seg in &self.segments {
            if records.len() >= max {
                break;
            }
            let end = seg.first_seq + seg.count;
            if seg.count == 0 || want >= end {
                continue;
            }
            let skip = want.saturating_sub(seg.first_seq);
            let take = (max - records.len()) as u64;
            let got = read_records(&seg.path, seg.first_seq, skip, take.min(seg.count - skip))?;
            want += got.len() as u64;
            records.extend(got);
        }
        Ok(ReadBatch {
            first_available,
            records,
        })
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let seg = create_segment(&self.dir, self.next_seq)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&seg.path)
            .map_err(io_err("open", &seg.path))?;
        self.segments.push(seg);
        self.enforce_bound()
    }

    fn enforce_bound(&mut self) -> Result<(), JournalError> {
        while self.segments.len() > self.cfg.max_segments {
            let old = self.segments.remove(0);
            fs::remove_file(&old.path).map_err(io_err("delete old segment", &old.path))?;
            tracing::debug!(path = %old.path.display(), records = old.count, "journal ring dropped its oldest segment");
        }
        Ok(())
    }
}

impl Drop for Journal {
    /// A clean close: sync, then leave the marker that lets the next open continue numbering without a skip.
    fn drop(&mut self) {
        let marker = self.dir.join(CLEAN_MARKER);
        let res = self.sync().and_then(|()| {
            fs::write(&marker, self.next_seq.to_string()).map_err(io_err("write", &marker))?;
            File::open(&marker)
                .and_then(|f| f.sync_all())
                .map_err(io_err("sync", &marker))?;
            sync_dir(&self.dir)
        });
        if let Err(e) = res {
            tracing::error!(error = %e, "journal close failed; the next start will treat it as a crash");
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, JournalError> {
    let path = dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err("create", &path))?;
    f.write_all(&SEGMENT_MAGIC)
        .map_err(io_err("write", &path))?;
    f.sync_all().map_err(io_err("sync", &path))?;
    // The new name must survive a power cut too, or the records in it would vanish with it.
    sync_dir(dir)?;
    Ok(Segment {
        first_seq,
        count: 0,
        path,
    })
}

struct Cut {
    keep: u64,
    removed: u64,
}

/// Parse one record at the reader's position: `Ok(None)` at a clean end of file, `Err(())` for a torn or corrupt
/// record.
fn next_record(r: &mut impl Read, expect_seq: u64) -> Result<Option<(Verdict, u64)>, ()> {
    let mut head = [0u8; RECORD_HEADER];
    let mut got = 0;
    while got < RECORD_HEADER {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD_LEN {
        return Err(());
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|_| ())?;
    if crc32(&body) != crc {
        return Err(());
    }
    let v: Verdict = postcard::from_bytes(&body).map_err(|_| ())?;
    if v.seq != expect_seq {
        return Err(());
    }
    Ok(Some((v, (RECORD_HEADER + body.len()) as u64)))
}

/// Count the valid records of a segment; `Some(cut)` when it ends in a torn or corrupt record.
fn scan_segment(path: &Path, first_seq: u64) -> Result<(u64, Option<Cut>), JournalError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let total = file.metadata().map_err(io_err("stat", path))?.len();
    let mut r = io::BufReader::new(file);
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || magic != SEGMENT_MAGIC {
        // A segment whose header never made it to disk: rewrite the header, keep nothing.
        let mut f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        f.set_len(0).map_err(io_err("truncate", path))?;
        f.write_all(&SEGMENT_MAGIC).map_err(io_err("write", path))?;
        return Ok((
            0,
            Some(Cut {
                keep: SEGMENT_MAGIC.len() as u64,
                removed: total,
            }),
        ));
    }
    let mut pos = SEGMENT_MAGIC.len() as u64;
    let mut count = 0;
    loop {
        match next_record(&mut r, first_seq + count) {
            Ok(Some((_, n))) => {
                pos += n;
                count += 1;
            }
            Ok(None) => return Ok((count, None)),
            Err(()) => {
                return Ok((
                    count,
                    Some(Cut {
                        keep: pos,
                        removed: total - pos,
                    }),
                ))
            }
        }
    }
}

fn read_records(
    path: &Path,
    first_seq: u64,
    skip: u64,
    take: u64,
) -> Result<Vec<Verdict>, JournalError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    file.seek(SeekFrom::Start(SEGMENT_MAGIC.len() as u64))
        .map_err(io_err("seek", path))?;
    let mut r = io::BufReader::new(file);
    let mut out = Vec::with_capacity(take.min(4096) as usize);
    let mut i = 0;
    while (out.len() as u64) < take {
        match next_record(&mut r, first_seq + i) {
            Ok(Some((v, _))) => {
                if i >= skip {
                    out.push(v);
                }
                i += 1;
            }
            // Opening validated every record; a failure now means the file changed under us. Serve what is good.
            Ok(None) | Err(()) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdict(frame_id: u64) -> Verdict {
        Verdict {
            seq: 0,
            frame_id,
            t_capture_us: 1_700_000_000_000_000 + frame_id,
            latency_us: 1234,
            score: frame_id as f32 * 0.5,
            pass: !frame_id.is_multiple_of(3),
            mask: None,
            outcome: kestrel_wire::Outcome::Inspected,
        }
    }

    fn cfg(segment_records: u64, max_segments: usize) -> JournalConfig {
        JournalConfig {
            segment_records,
            max_segments,
            fsync: FsyncPolicy::default(),
        }
    }

    fn seqs(b: &ReadBatch) -> Vec<u64> {
        b.records.iter().map(|v| v.seq).collect()
    }

    #[test]
    fn a_failed_append_spends_its_number_and_leaves_every_segment_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        for i in 0..3 {
            assert_eq!(j.append(&verdict(i)).unwrap(), i);
        }
        for errno in [libc_enospc(), io::ErrorKind::Other.into()] {
            j.inject = Some(errno);
            let e = j.append(&verdict(99)).unwrap_err();
            let JournalError::Append { seq, .. } = e else {
                panic!("{e}")
            };
            assert!(!j.is_healthy());
            // The number is spent: the next verdict gets the one after it.
            let next = j.append(&verdict(100)).unwrap();
            assert_eq!(next, seq + 1);
            assert!(j.is_healthy(), "a later append and sync recover");
        }
        // Seqs 0..3, then gap 3, then 4, gap 5, 6: a reader sees every stored record once, in order, no corruption.
        let got = seqs(&j.read_from(0, 100).unwrap());
        assert_eq!(got, vec![0, 1, 2, 4, 6]);
        drop(j);
        let j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        assert_eq!(j.recovery().truncated_segments, 0, "nothing torn on disk");
        assert_eq!(seqs(&j.read_from(0, 100).unwrap()), vec![0, 1, 2, 4, 6]);
        assert!(j.next_seq() >= 7);
    }

    #[test]
    fn a_process_crash_in_the_same_boot_continues_numbering_without_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
            for i in 0..5 {
                j.append(&verdict(i)).unwrap();
            }
            // Killed: no clean close, nothing torn.
            std::mem::forget(j);
        }
        let j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        if boot_id().is_some() {
            assert_eq!(j.recovery().skipped_seqs, 0);
            assert_eq!(j.next_seq(), 5);
        }
        drop(j);
        // After a reboot (another boot id) the same state skips ahead: unsynced records may be gone.
        fs::write(tmp.path().join(BOOT_MARKER), "another-boot").unwrap();
        let mut j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        drop(j.append(&verdict(9)));
        std::mem::forget(j);
        fs::write(tmp.path().join(BOOT_MARKER), "another-boot").unwrap();
        let j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        let skip = u64::from(FsyncPolicy::default().every_records);
        assert_eq!(j.recovery().skipped_seqs, skip);
    }

    fn libc_enospc() -> io::Error {
        io::Error::from_raw_os_error(28)
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn append_read_and_restart_continue_numbering() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(tmp.path(), cfg(4, 8)).unwrap();
            for i in 0..10 {
                assert_eq!(j.append(&verdict(i)).unwrap(), i);
            }
            let b = j.read_from(3, 100).unwrap();
            assert_eq!(seqs(&b), (3..10).collect::<Vec<_>>());
            assert_eq!(b.records[0].frame_id, 3);
            assert_eq!(b.records[0].score, 1.5);
        }
        let mut j = Journal::open(tmp.path(), cfg(4, 8)).unwrap();
        assert_eq!(j.next_seq(), 10);
        assert_eq!(j.append(&verdict(99)).unwrap(), 10);
        assert_eq!(
            seqs(&j.read_from(0, 100).unwrap()),
            (0..11).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&j.read_from(5, 2).unwrap()), vec![5, 6]);
        assert!(j.read_from(11, 10).unwrap().records.is_empty());
    }

    #[test]
    fn ring_wraps_and_drops_oldest_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::open(tmp.path(), cfg(3, 2)).unwrap();
        for i in 0..10 {
            j.append(&verdict(i)).unwrap();
        }
        // Segments of 3: [6,7,8] and [9]; 0..6 are gone.
        let b = j.read_from(0, 100).unwrap();
        assert_eq!(b.first_available, 6);
        assert_eq!(seqs(&b), vec![6, 7, 8, 9]);
        let files = fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != BOOT_MARKER)
            .count();
        assert_eq!(files, 2, "two segments, no marker while open");
        drop(j);
        let j = Journal::open(tmp.path(), cfg(3, 2)).unwrap();
        assert_eq!((j.first_seq(), j.next_seq()), (6, 10));
    }

    #[test]
    fn torn_tail_is_truncated_and_numbering_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
            for i in 0..5 {
                j.append(&verdict(i)).unwrap();
            }
        }
        let seg = newest_segment(tmp.path());
        let len = fs::metadata(&seg).unwrap().len();
        // Power cut in the middle of the last record.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        // Without the clean-close marker: a crash.
        fs::remove_file(tmp.path().join(CLEAN_MARKER)).unwrap();
        let mut j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        assert_eq!(j.recovery().truncated_segments, 1);
        // Record 4 was lost, but a host may have seen it: numbering skips past every possibly-unsynced number.
        let skip = u64::from(FsyncPolicy::default().every_records);
        assert_eq!(j.recovery().skipped_seqs, skip);
        assert_eq!(j.next_seq(), 4 + skip);
        assert_eq!(j.append(&verdict(7)).unwrap(), 4 + skip);
        let b = j.read_from(0, 10).unwrap();
        assert_eq!(seqs(&b), vec![0, 1, 2, 3, 4 + skip]);
        assert_eq!(b.records[4].frame_id, 7);
        // Replay from inside the gap starts at the next record that exists.
        assert_eq!(seqs(&j.read_from(5, 10).unwrap()), vec![4 + skip]);
        drop(j);
        // A clean restart continues exactly.
        let j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        assert_eq!(j.next_seq(), 5 + skip);
        assert_eq!(j.recovery().skipped_seqs, 0);
    }

    #[test]
    fn corrupt_record_is_cut_by_crc_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
            for i in 0..3 {
                j.append(&verdict(i)).unwrap();
            }
        }
        let seg = newest_segment(tmp.path());
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xFF;
        // Garbage after the flipped byte too: an absurd length field must not allocate gigabytes.
        bytes.extend_from_slice(&[0xFF; 9]);
        fs::write(&seg, &bytes).unwrap();
        let j = Journal::open(tmp.path(), cfg(100, 4)).unwrap();
        assert_eq!(seqs(&j.read_from(0, 10).unwrap()), vec![0, 1]);
        // The clean marker names 3, the scan finds 2: treated as a crash.
        assert_eq!(
            j.next_seq(),
            2 + u64::from(FsyncPolicy::default().every_records)
        );
    }

    #[test]
    fn empty_or_headerless_newest_segment_keeps_its_number() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(tmp.path(), cfg(2, 4)).unwrap();
            for i in 0..4 {
                j.append(&verdict(i)).unwrap();
            }
            j.append(&verdict(4)).unwrap();
        }
        // The segment starting at 4 lost everything, even its header (the marker is sorted before the segments).
        fs::remove_file(tmp.path().join(CLEAN_MARKER)).unwrap();
        fs::write(newest_segment(tmp.path()), b"").unwrap();
        let mut j = Journal::open(tmp.path(), cfg(2, 4)).unwrap();
        let skip = u64::from(FsyncPolicy::default().every_records);
        assert_eq!(j.next_seq(), 4 + skip);
        assert_eq!(j.append(&verdict(9)).unwrap(), 4 + skip);
    }

    #[test]
    fn masks_are_not_journaled() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::open(tmp.path(), cfg(10, 2)).unwrap();
        let mut v = verdict(1);
        v.mask = Some(kestrel_wire::Mask::rle(2, 2, &[1, 2, 3, 4]).unwrap());
        j.append(&v).unwrap();
        assert_eq!(j.read_from(0, 1).unwrap().records[0].mask, None);
    }

    #[test]
    fn bad_config_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Journal::open(tmp.path(), cfg(0, 4)),
            Err(JournalError::Config(_))
        ));
        assert!(matches!(
            Journal::open(tmp.path(), cfg(4, 1)),
            Err(JournalError::Config(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        /// Any mix of appends, clean restarts and crashes with torn tails: the journal holds an increasing, bounded
        /// set of records, and a sequence number is never issued twice.
        #[test]
        fn never_reuses_a_sequence_number(
            seg in 1u64..5,
            max_segments in 2usize..4,
            ops in proptest::collection::vec((0u8..3, 1usize..7), 1..12),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let c = cfg(seg, max_segments);
            let mut j = Journal::open(tmp.path(), c).unwrap();
            let mut last_seq: Option<u64> = None;
            for (op, n) in ops {
                match op {
                    0 | 1 => for _ in 0..n {
                        let s = j.append(&verdict(n as u64)).unwrap();
                        prop_assert!(last_seq.is_none_or(|l| s > l));
                        last_seq = Some(s);
                    },
                    _ => {
                        drop(j);
                        fs::remove_file(tmp.path().join(CLEAN_MARKER)).unwrap();
                        let path = newest_segment(tmp.path());
                        let len = fs::metadata(&path).unwrap().len();
                        let cut = (n as u64).min(len);
                        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - cut).unwrap();
                        j = Journal::open(tmp.path(), c).unwrap();
                    }
                }
                let all = j.read_from(0, usize::MAX).unwrap();
                let s = seqs(&all);
                prop_assert!(s.windows(2).all(|w| w[1] > w[0]));
                prop_assert!(s.len() as u64 <= seg * max_segments as u64);
                prop_assert_eq!(s.first().copied().unwrap_or(j.next_seq()), all.first_available);
                if let Some(l) = last_seq {
                    prop_assert!(j.next_seq() > l);
                }
            }
        }
    }
}
