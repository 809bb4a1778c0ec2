//! The unit's model store: bundles kept by content hash, two slots (A and B), and the choice of the active one,
//! all under `<state>/models/` and changed only by atomic renames (see `docs/flashing.md`).
//!
//! ```text
//! <state>/models/
//!   slots.toml             which bundle each slot holds, which slot is active, whether it is confirmed
//!   <sha256>.kbundle       a complete, verified bundle (the file name is its content hash)
//!   incoming/<sha256>.part an upload in progress (resumable: its length is how much arrived)
//! ```
//!
//! The design follows RAUC's artifact repository and A/B boot selection: a new bundle goes into the slot that is not
//! active, so the running model is never touched by an upload; activation rewrites `slots.toml` through
//! write-temp → fsync → rename → fsync(dir), so after a crash at any instant the file names either the old or the new
//! choice, never half of one. A newly activated slot is *unconfirmed* until its first frames are inspected without
//! failure; a unit that restarts [`MAX_TRIAL_BOOTS`] times with an unconfirmed slot goes back to the other one, the
//! way a bootloader's boot counter does.
//!
//! This module only keeps files in order. Verifying bundles (hash, signature, compatibility, self-test) and deciding
//! when to switch is the runtime's (`runtime::models`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kestrel_wire::upload::UploadState;
use kestrel_wire::{BundleBegin, BundleChunk, NackCode, Slot};
use serde::{Deserialize, Serialize};

/// Restarts allowed with an unconfirmed active slot before the unit falls back to the other slot.
pub const MAX_TRIAL_BOOTS: u32 = 3;

/// Largest bundle the store accepts (a ResNet-18 int8 bundle is about 13 MiB, f32 about 45 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;

const SLOTS_FILE: &str = "slots.toml";
const INCOMING: &str = "incoming";

/// A store operation failed on the file system.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("model store: cannot {what} {} (check free space and that the state directory is writable)", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `slots.toml` is not what this firmware writes.
    #[error("model store: {} is unreadable ({detail}); the unit starts without a model until one is flashed", path.display())]
    Slots {
        /// The file.
        path: PathBuf,
        /// The parse error.
        detail: String,
    },
}

impl StoreError {
    fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What `slots.toml` records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// The slot the unit runs, if any.
    pub active: Option<Slot>,
    /// Hex SHA-256 of the bundle in slot A.
    pub a: Option<String>,
    /// Hex SHA-256 of the bundle in slot B.
    pub b: Option<String>,
    /// Whether the active slot has inspected its first frames without failure since it was activated.
    pub confirmed: bool,
    /// Starts since activation while unconfirmed (the boot counter).
    pub boot_attempts: u32,
}

impl Slots {
    /// The hex hash in `slot`.
    pub fn get(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::A => self.a.as_deref(),
            Slot::B => self.b.as_deref(),
        }
    }

    fn set(&mut self, slot: Slot, hex: Option<String>) {
        match slot {
            Slot::A => self.a = hex,
            Slot::B => self.b = hex,
        }
    }

    /// The slot holding bundle `hex`, if any.
    pub fn find(&self, hex: &str) -> Option<Slot> {
        [Slot::A, Slot::B]
            .into_iter()
            .find(|&s| self.get(s) == Some(hex))
    }
}

/// The other slot of the pair.
pub fn other(slot: Slot) -> Slot {
    match slot {
        Slot::A => Slot::B,
        Slot::B => Slot::A,
    }
}

/// The model store in `<state>/models`.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
    slots: Slots,
}

impl ModelStore {
    /// Open (creating the directories) and read `slots.toml`; a missing file is an empty store.
    pub fn open(state: &Path) -> Result<ModelStore, StoreError> {
        let dir = state.join("models");
        let incoming = dir.join(INCOMING);
        fs::create_dir_all(&incoming).map_err(StoreError::io("create", &incoming))?;
        let path = dir.join(SLOTS_FILE);
        let slots = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StoreError::Slots {
                path: path.clone(),
                detail: e.message().to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Slots::default(),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        // A temp file left by a crash mid-write is garbage: the rename never happened.
        let _ = fs::remove_file(dir.join(format!("{SLOTS_FILE}.tmp")));
        Ok(ModelStore { dir, slots })
    }

    /// The recorded slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Where bundle `hex` is (or would be) stored.
    pub fn bundle_path(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("{hex}.kbundle"))
    }

    /// The active slot and its bundle path.
    pub fn active(&self) -> Option<(Slot, PathBuf)> {
        let slot = self.slots.active?;
        Some((slot, self.bundle_path(self.slots.get(slot)?)))
    }

    /// The bundle path in `slot`.
    pub fn path_in(&self, slot: Slot) -> Option<PathBuf> {
        self.slots.get(slot).map(|h| self.bundle_path(h))
    }

    /// The slot an upload goes into: the one that is not active (A on an empty store).
    pub fn inactive_slot(&self) -> Slot {
        self.slots.active.map_or(Slot::A, other)
    }

    /// Start (or resume) the upload `begin`: an `incoming/<sha256>.part` left by an earlier connection, or by a run
    /// of the unit that was killed, is hashed again and continued from its end.
    pub fn start_upload(&self, begin: &BundleBegin) -> Result<Upload, (NackCode, String)> {
        let mut state = UploadState::begin(begin, MAX_BUNDLE_BYTES).map_err(|c| {
            (
                c,
                format!(
                    "bundle of {} bytes is larger than the unit accepts ({MAX_BUNDLE_BYTES})",
                    begin.size
                ),
            )
        })?;
        let hex = hex::encode(begin.sha256);
        let path = self.dir.join(INCOMING).join(format!("{hex}.part"));
        let internal = |e: std::io::Error| {
            (
                NackCode::Internal,
                format!("model store: {}: {e}", path.display()),
            )
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(internal)?;
        let have = file.metadata().map_err(internal)?.len();
        if have > begin.size {
            file.set_len(0).map_err(internal)?;
        } else if have > 0 {
            // Re-hash what is there; chunk by chunk so UploadState applies its own rules.
            let mut buf = vec![0u8; kestrel_wire::frame::MAX_BUNDLE_CHUNK];
            let mut offset = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(internal)?;
                if n == 0 {
                    break;
                }
                state
                    .accept(&BundleChunk {
                        offset,
                        bytes: buf[..n].to_vec(),
                    })
                    .map_err(|c| (c, "resuming from the stored part".into()))?;
                offset += n as u64;
            }
        }
        // Anything else in incoming/ is an abandoned upload of another bundle.
        if let Ok(entries) = fs::read_dir(self.dir.join(INCOMING)) {
            for e in entries.flatten() {
                if e.path() != path {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(Upload {
            begin: begin.clone(),
            state,
            file,
            path,
        })
    }

    /// Move a finished upload into the store and record it in the inactive slot (unless a slot already holds it).
    /// Returns the slot that holds it. The active slot is never changed here.
    pub fn install(&mut self, part: &Path, sha256: &[u8; 32]) -> Result<Slot, StoreError> {
        let hex = hex::encode(sha256);
        let dest = self.bundle_path(&hex);
        fs::rename(part, &dest).map_err(StoreError::io("store", &dest))?;
        sync_dir(&self.dir)?;
        if let Some(slot) = self.slots.find(&hex) {
            return Ok(slot);
        }
        let slot = self.inactive_slot();
        let mut next = self.slots.clone();
        next.set(slot, Some(hex));
        self.write(next)?;
        self.collect_garbage();
        Ok(slot)
    }

    /// Make `slot` active and unconfirmed (boot counter reset).
    pub fn activate(&mut self, slot: Slot) -> Result<(), StoreError> {
        let mut next = self.slots.clone();
        next.active = Some(slot);
        next.confirmed = false;
        next.boot_attempts = 0;
        self.write(next)
    }

    /// Make `slot` active and already confirmed (a rollback to a model that ran before).
    pub fn activate_confirmed(&mut self, slot: Slot) -> Result<(), StoreError> {
        let mut next = self.slots.clone();
        next.active = Some(slot);
        next.confirmed = true;
        next.boot_attempts = 0;
        self.write(next)
    }

    /// The active slot inspected its first frames: keep booting it.
    pub fn confirm(&mut self) -> Result<(), StoreError> {
        if self.slots.confirmed {
            return Ok(());
        }
        let mut next = self.slots.clone();
        next.confirmed = true;
        next.boot_attempts = 0;
        self.write(next)
    }

    /// Count a start with an unconfirmed active slot; returns the count including this start.
    pub fn note_trial_boot(&mut self) -> Result<u32, StoreError> {
        let mut next = self.slots.clone();
        next.boot_attempts = next.boot_attempts.saturating_add(1);
        let n = next.boot_attempts;
        self.write(next)?;
        Ok(n)
    }

    /// Forget the bundle in `slot` (it is corrupt or failed); if it was active, nothing is active afterwards.
    pub fn clear(&mut self, slot: Slot) -> Result<(), StoreError> {
        let mut next = self.slots.clone();
        next.set(slot, None);
        if next.active == Some(slot) {
            next.active = None;
        }
        self.write(next)?;
        self.collect_garbage();
        Ok(())
    }

    /// Remove stored bundles that no slot names.
    fn collect_garbage(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".kbundle") {
                if self.slots.find(hex).is_none() {
                    tracing::info!(bundle = %name, "removing a bundle no slot uses");
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Replace `slots.toml` atomically: temp file, fsync, rename, fsync the directory.
    fn write(&mut self, next: Slots) -> Result<(), StoreError> {
        let path = self.dir.join(SLOTS_FILE);
        let tmp = self.dir.join(format!("{SLOTS_FILE}.tmp"));
        let text = format!(
            "# Written by kestrel-edge; do not edit while the unit runs (see docs/flashing.md).\n{}",
            toml::to_string(&next).expect("slots serialise")
        );
        let mut f = File::create(&tmp).map_err(StoreError::io("write", &tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(StoreError::io("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(StoreError::io("replace", &path))?;
        sync_dir(&self.dir)?;
        self.slots = next;
        Ok(())
    }
}

/// fsync a directory so a rename in it survives power loss.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync", dir))
}

/// An upload in progress, backed by `incoming/<sha256>.part`.
#[derive(Debug)]
pub struct Upload {
    begin: BundleBegin,
    state: UploadState,
    file: File,
    path: PathBuf,
}

impl Upload {
    /// The upload's declared size and hash.
    pub fn begin(&self) -> &BundleBegin {
        &self.begin
    }

    /// Bytes held so far (where the next chunk must start).
    pub fn received(&self) -> u64 {
        self.state.received()
    }

    /// Append the next chunk (checked by `UploadState`: contiguous, within the declared size).
    pub fn write(&mut self, chunk: &BundleChunk) -> Result<(), (NackCode, String)> {
        let before = self.state.clone();
        self.state.accept(chunk).map_err(|c| {
            (
                c,
                format!(
                    "chunk at offset {} but the upload stands at {} of {} bytes",
                    chunk.offset,
                    before.received(),
                    before.size()
                ),
            )
        })?;
        if let Err(e) = self.file.write_all(&chunk.bytes) {
            // Keep file and state in step: the chunk did not land.
            self.state = before;
            let _ = self.file.set_len(self.state.received());
            return Err((
                NackCode::Internal,
                format!("model store: writing {}: {e}", self.path.display()),
            ));
        }
        Ok(())
    }

    /// All bytes arrived and the SHA-256 matches: fsync and return the part file's path. On a mismatch the part
    /// file is deleted (the next attempt starts from zero).
    pub fn finish(self) -> Result<PathBuf, (NackCode, String)> {
        let (received, size) = (self.state.received(), self.state.size());
        match self.state.commit() {
            Ok(_) => {}
            Err(code) => {
                let _ = fs::remove_file(&self.path);
                return Err((
                    code,
                    format!(
                        "upload incomplete or corrupted ({received} of {size} bytes, SHA-256 differs); send it again"
                    ),
                ));
            }
        }
        self.file.sync_all().map_err(|e| {
            (
                NackCode::Internal,
                format!("model store: syncing {}: {e}", self.path.display()),
            )
        })?;
        Ok(self.path)
    }

    /// Drop the upload and its part file.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_wire::upload::{bundle_begin, bundle_chunks};

    fn upload_all(store: &ModelStore, bytes: &[u8]) -> PathBuf {
        let mut up = store.start_upload(&bundle_begin(bytes)).unwrap();
        for c in bundle_chunks(bytes, 1000) {
            up.write(&c).unwrap();
        }
        up.finish().unwrap()
    }

    #[test]
    fn uploads_go_to_the_inactive_slot_and_activation_is_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ModelStore::open(dir.path()).unwrap();
        assert_eq!(store.slots(), &Slots::default());
        let one = vec![1u8; 5000];
        let h1 = bundle_begin(&one).sha256;
        let part = upload_all(&store, &one);
        assert_eq!(store.install(&part, &h1).unwrap(), Slot::A);
        assert!(store.active().is_none(), "install never activates");
        store.activate(Slot::A).unwrap();
        store.confirm().unwrap();

        let two = vec![2u8; 7000];
        let h2 = bundle_begin(&two).sha256;
        let part = upload_all(&store, &two);
        assert_eq!(store.install(&part, &h2).unwrap(), Slot::B);
        assert_eq!(store.active().unwrap().0, Slot::A);
        store.activate(Slot::B).unwrap();

        let again = ModelStore::open(dir.path()).unwrap();
        let s = again.slots();
        assert_eq!(s.active, Some(Slot::B));
        assert!(!s.confirmed);
        assert_eq!(s.get(Slot::A), Some(hex::encode(h1).as_str()));
        assert_eq!(fs::read(again.active().unwrap().1).unwrap(), two);

        // A third bundle replaces the inactive slot (A) and the old file is collected.
        let three = vec![3u8; 100];
        let h3 = bundle_begin(&three).sha256;
        let mut store = again;
        let part = upload_all(&store, &three);
        assert_eq!(store.install(&part, &h3).unwrap(), Slot::A);
        assert!(!store.bundle_path(&hex::encode(h1)).exists());
        // Uploading a bundle a slot already holds changes nothing.
        let part = upload_all(&store, &two);
        assert_eq!(store.install(&part, &h2).unwrap(), Slot::B);
    }

    #[test]
    fn an_interrupted_upload_resumes_from_its_part_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let begin = bundle_begin(&bytes);
        let chunks: Vec<_> = bundle_chunks(&bytes, 4096).collect();
        let mut up = store.start_upload(&begin).unwrap();
        for c in &chunks[..5] {
            up.write(c).unwrap();
        }
        drop(up); // the connection (or the process) went away
        let store = ModelStore::open(dir.path()).unwrap();
        let mut up = store.start_upload(&begin).unwrap();
        assert_eq!(up.received(), 5 * 4096);
        assert!(up.write(&chunks[0]).is_err(), "an old chunk is refused");
        for c in &chunks[5..] {
            up.write(c).unwrap();
        }
        let part = up.finish().unwrap();
        assert_eq!(fs::read(part).unwrap(), bytes);
    }

    #[test]
    fn a_corrupted_part_is_refused_at_commit_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let bytes = vec![9u8; 10_000];
        let begin = bundle_begin(&bytes);
        let mut up = store.start_upload(&begin).unwrap();
        up.write(&BundleChunk {
            offset: 0,
            bytes: vec![9; 5000],
        })
        .unwrap();
        drop(up);
        // Damage the stored part behind the unit's back.
        let part = dir
            .path()
            .join("models/incoming")
            .join(format!("{}.part", hex::encode(begin.sha256)));
        let mut p = fs::read(&part).unwrap();
        p[10] = 0;
        fs::write(&part, p).unwrap();
        let mut up = store.start_upload(&begin).unwrap();
        up.write(&BundleChunk {
            offset: 5000,
            bytes: vec![9; 5000],
        })
        .unwrap();
        let (code, _) = up.finish().unwrap_err();
        assert_eq!(code, NackCode::BundleHashMismatch);
        assert!(!part.exists());
        assert_eq!(
            store.start_upload(&begin).unwrap().received(),
            0,
            "starts over"
        );
    }

    #[test]
    fn boot_counter_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ModelStore::open(dir.path()).unwrap();
        let b = vec![4u8; 10];
        let h = bundle_begin(&b).sha256;
        let part = upload_all(&store, &b);
        store.install(&part, &h).unwrap();
        store.activate(Slot::A).unwrap();
        assert_eq!(store.note_trial_boot().unwrap(), 1);
        assert_eq!(store.note_trial_boot().unwrap(), 2);
        let mut store = ModelStore::open(dir.path()).unwrap();
        assert_eq!(store.slots().boot_attempts, 2);
        store.confirm().unwrap();
        assert_eq!(store.slots().boot_attempts, 0);
        store.clear(Slot::A).unwrap();
        assert_eq!(store.slots().active, None);
        assert!(!store.bundle_path(&hex::encode(h)).exists());
    }

    #[test]
    fn a_damaged_slots_file_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("models")).unwrap();
        fs::write(dir.path().join("models/slots.toml"), "active = 7").unwrap();
        let e = ModelStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Slots { .. }), "{e}");
    }
}
