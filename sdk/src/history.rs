//! The on-device history: one append-only log per profile. Each record carries a sync word, its length
//! and a CRC-32, so that recovery can tell a torn tail (cut) from damage in the middle (the good records
//! are kept and the damaged file is set aside, never deleted). `forget` overwrites a profile's file with
//! zeros before removing it.
//!
//! File `<dir>/<hex of profile>.nvh`; its layout (header, records, CRC) is in `format/history.rs`.
//!
//! Threading: a `History` may be shared between threads (an internal lock serialises writers). One
//! handle at a time may open a folder: `open` takes an exclusive lock on `<dir>/.lock` (released when
//! the handle is dropped or the process dies), so two handles or two processes never interleave
//! writes or compactions of one log.
//!
//! Encryption at rest: opened with a [`KeyStore`] (`open_with_keys`), every profile's log is sealed
//! with its own key (format version 2, `format/history.rs`), and `forget` destroys the key before it
//! removes the files, so copies that copy-on-write or flash storage kept are unreadable.
//!
//! Retention: the limits (the handle's) apply to what `list` returns at every moment; the file is
//! compacted when a profile is first loaded and when it holds an eighth more records than kept (at
//! least 16), so at the 10,000-event default an append rewrites the log once per 1,250 appends, not
//! every time, and a dropped event stays on disk at most until then.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, FormatError, Result};
use crate::format::history::{
    encode, encode_with, header_for, read_header, scan_with, Header, Sealer, HEADER,
};
use crate::format::Catalog;

pub use crate::format::history::{Event, EventKind, MAX_ID_BYTES};

/// When appended records reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sync {
    /// `fsync` after every append: an acknowledged record survives power loss.
    EveryAppend,
    /// Leave it to the OS: an acknowledged record survives a crash of the app, not of the device.
    Os,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryParams {
    pub sync: Sync,
    /// Keep at most this many events per profile (0 = no limit); the oldest go first.
    pub max_items: u32,
    /// Drop events older than this many milliseconds (0 = no limit), relative to the newest event or
    /// the device's clock, whichever is earlier: one event stamped in the future (or in the wrong unit)
    /// does not make every other event old.
    pub max_age_ms: i64,
}

impl Default for HistoryParams {
    fn default() -> Self {
        HistoryParams {
            sync: Sync::EveryAppend,
            max_items: 10_000,
            max_age_ms: 0,
        }
    }
}

/// Where the per-profile keys of an encrypted history live: in the app's secure storage (the
/// Keychain, the Android Keystore), never beside the logs. navigen asks for a profile's key when it
/// first opens that profile, and asks the store to destroy it on `forget`: with the key gone, any copy
/// of the log that storage kept (copy-on-write, flash wear levelling) is unreadable.
pub trait KeyStore: Send + std::marker::Sync {
    /// The profile's 32-byte key. With `create`, a profile that has none gets a new random one
    /// (kept by the store); without, `None` means there is none.
    fn key(&self, profile: &str, create: bool) -> Result<Option<[u8; 32]>>;
    /// Destroys the profile's key (nothing to do when there is none).
    fn destroy(&self, profile: &str) -> Result<()>;
}

/// What recovery found when a profile was first opened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub records: usize,
    /// Bytes of an incomplete last record that were cut.
    pub torn_tail_bytes: u64,
    /// Damaged bytes in the middle; the original file was kept as `damaged_copy`.
    pub damaged_bytes: u64,
    pub damaged_copy: Option<PathBuf>,
}

struct ProfileState {
    /// What the limits keep (what `list` returns).
    events: Vec<Event>,
    /// Records in the file (kept ones and those the next compaction drops).
    file_records: usize,
    /// The profile's key, in an encrypted history.
    sealer: Option<Arc<Sealer>>,
}

pub struct History {
    dir: PathBuf,
    params: HistoryParams,
    profiles: Mutex<HashMap<String, ProfileState>>,
    /// Set: every profile's log is encrypted with its key from this store.
    keys: Option<Arc<dyn KeyStore>>,
    /// Held for the handle's life: the folder's exclusive lock.
    _lock: std::fs::File,
}

/// Longest profile name (bytes): its hex file name plus the damaged copy's suffix stays within the
/// 255 bytes a file name may have.
pub const MAX_PROFILE_BYTES: usize = 100;

/// Name of the lock file in a history folder.
pub const LOCK_FILE: &str = ".lock";

/// Overwrites a file's whole length with zeros, in place, and syncs it.
fn zero_file(mut f: &std::fs::File) -> std::io::Result<()> {
    use std::io::Seek;
    let len = f.metadata()?.len();
    f.seek(std::io::SeekFrom::Start(0))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Files being forgotten: renamed to this prefix, then zeroed and removed.
const FORGET_PREFIX: &str = ".forget-";

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Zeroes and removes every tombstone a forget left (all of them after a crash mid-forget).
fn finish_forgets(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut any = false;
    for entry in rd.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(FORGET_PREFIX)
        {
            continue;
        }
        let p = entry.path();
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
            zero_file(&f).map_err(|e| Error::io(&p, e))?;
        }
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        any = true;
    }
    if any {
        sync_dir(dir);
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl History {
    /// Opens (creating) a history folder whose logs are plain (version 1).
    pub fn open(dir: &Path, params: HistoryParams) -> Result<Self> {
        Self::open_with_keys(dir, params, None)
    }

    /// Opens (creating) a history folder; with `keys`, every profile's log is encrypted with its own
    /// key from the store (a plain log is encrypted when its profile is first opened), and `forget`
    /// destroys the key.
    pub fn open_with_keys(
        dir: &Path,
        params: HistoryParams,
        keys: Option<Arc<dyn KeyStore>>,
    ) -> Result<Self> {
        if params.max_age_ms < 0 {
            return Err(Error::InvalidArgument(
                "max_age_ms must be 0 (no limit) or positive".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::io(
                    &lock_path,
                    std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        "another handle or process has this history folder open",
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        finish_forgets(dir)?;
        Ok(History {
            dir: dir.to_path_buf(),
            params,
            profiles: Mutex::new(HashMap::new()),
            keys,
            _lock: lock,
        })
    }

    fn path(&self, profile: &str) -> Result<PathBuf> {
        if profile.is_empty() || profile.len() > MAX_PROFILE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "profile name must be 1..={MAX_PROFILE_BYTES} bytes"
            )));
        }
        let hex: String = profile.bytes().map(|b| format!("{b:02x}")).collect();
        Ok(self.dir.join(format!("{hex}.nvh")))
    }

    /// The sealer of a profile whose log starts with `header` (`None`: no file yet): a plain log
    /// without a key store; with one, the profile's key (created for a profile not encrypted yet),
    /// checked against an encrypted log's header.
    fn sealer_for(
        &self,
        profile: &str,
        path: &Path,
        header: Option<&std::result::Result<Header, FormatError>>,
    ) -> Result<Option<Arc<Sealer>>> {
        let sealed = match header {
            Some(Ok(Header::Sealed { check })) => Some(*check),
            // A newer SDK's log: `load` refuses it; no key is asked for.
            Some(Err(FormatError::UnsupportedVersion { .. })) => return Ok(None),
            _ => None,
        };
        let Some(keys) = &self.keys else {
            return match sealed {
                Some(_) => Err(Error::Mismatch(format!(
                    "{}: this profile's history is encrypted: open the folder with its key store",
                    path.display()
                ))),
                None => Ok(None),
            };
        };
        let key = keys.key(profile, sealed.is_none())?.ok_or_else(|| {
            Error::Mismatch(format!(
                "{}: the key store has no key for this profile (destroyed, or another store?)",
                path.display()
            ))
        })?;
        let binding = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let s = Sealer::new(&key, &binding);
        if sealed.is_some_and(|c| c != s.check()) {
            return Err(Error::Mismatch(format!(
                "{}: the key store's key for this profile is not the one its history was written with",
                path.display()
            )));
        }
        Ok(Some(Arc::new(s)))
    }

    /// Loads (and recovers) a profile's log into the cache.
    fn load<'a>(
        &self,
        map: &'a mut HashMap<String, ProfileState>,
        profile: &str,
    ) -> Result<(&'a mut ProfileState, Recovery)> {
        let path = self.path(profile)?;
        let mut rec = Recovery::default();
        if !map.contains_key(profile) {
            let bytes = match std::fs::read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(&path, e)),
                Ok(bytes) => Some(bytes),
            };
            let head = bytes.as_deref().map(read_header);
            let sealer = self.sealer_for(profile, &path, head.as_ref())?;
            let s = sealer.as_deref();
            // A plain log opened with a key store is rewritten encrypted.
            let mut encrypt = false;
            let events = match (bytes, head) {
                (None, _) | (_, None) => Vec::new(),
                (Some(bytes), Some(head)) => match head {
                    // A newer SDK's log: not ours to touch.
                    Err(e @ FormatError::UnsupportedVersion { .. }) => {
                        return Err(Error::format(&path, e))
                    }
                    // A damaged header: the records after it still carry their own CRC.
                    Err(_) => {
                        let mut fixed = header_for(s);
                        fixed.extend_from_slice(&bytes[HEADER.min(bytes.len())..]);
                        let (events, _, torn, damaged) = scan_with(&fixed, s);
                        rec = Recovery {
                            records: events.len(),
                            torn_tail_bytes: torn,
                            damaged_bytes: damaged + HEADER.min(bytes.len()) as u64,
                            damaged_copy: Some(self.set_aside(&path, &bytes, &events, s)?),
                        };
                        events
                    }
                    Ok(Header::Torn) => {
                        // A header torn at creation: nothing was ever acknowledged. Start clean.
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| Error::io(&path, e))?;
                        f.set_len(0).map_err(|e| Error::io(&path, e))?;
                        rec.torn_tail_bytes = bytes.len() as u64;
                        Vec::new()
                    }
                    Ok(h @ (Header::Valid | Header::Sealed { .. })) => {
                        let plain = h == Header::Valid;
                        encrypt = plain && s.is_some();
                        let (events, good_end, torn, damaged) =
                            scan_with(&bytes, if plain { None } else { s });
                        rec = Recovery {
                            records: events.len(),
                            torn_tail_bytes: torn,
                            damaged_bytes: damaged,
                            damaged_copy: None,
                        };
                        if damaged > 0 {
                            rec.damaged_copy = Some(self.set_aside(&path, &bytes, &events, s)?);
                            encrypt = false;
                        } else if torn > 0 {
                            let f = std::fs::OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(|e| Error::io(&path, e))?;
                            f.set_len(good_end as u64)
                                .map_err(|e| Error::io(&path, e))?;
                            f.sync_all().map_err(|e| Error::io(&path, e))?;
                        }
                        events
                    }
                },
            };
            let mut file_records = events.len();
            let mut events = events;
            self.retain(&mut events);
            if encrypt {
                // Sealed records must never be appended to a plain log: no encryption, no load.
                self.rewrite(&path, &events, s)?;
                file_records = events.len();
            }
            // What the limits dropped leaves the file now (a failure leaves it for later).
            if events.len() < file_records && self.rewrite(&path, &events, s).is_ok() {
                file_records = events.len();
            }
            map.insert(
                profile.to_string(),
                ProfileState {
                    events,
                    file_records,
                    sealer,
                },
            );
        }
        Ok((map.get_mut(profile).expect("inserted"), rec))
    }

    /// Keeps a damaged log's bytes as `<name>.damaged-<ms>` (written and synced first), then replaces
    /// the log with its good records: a crash between the two leaves both, never neither.
    fn set_aside(
        &self,
        path: &Path,
        bytes: &[u8],
        good: &[Event],
        sealer: Option<&Sealer>,
    ) -> Result<PathBuf> {
        let copy = path.with_extension(format!("damaged-{}", now_ms()));
        crate::format::write_atomic(&copy, bytes)?;
        self.rewrite(path, good, sealer)?;
        Ok(copy)
    }

    /// Applies the limits to a profile's events (oldest first): the age limit against the newest
    /// event or the clock, whichever is earlier, then the count.
    fn retain(&self, events: &mut Vec<Event>) {
        if self.params.max_age_ms > 0 {
            let newest = events.iter().map(|e| e.timestamp_ms).max().unwrap_or(0);
            let cutoff = newest.min(now_ms()).saturating_sub(self.params.max_age_ms);
            events.retain(|e| e.timestamp_ms >= cutoff);
        }
        let max = self.params.max_items as usize;
        if max > 0 && events.len() > max {
            events.drain(..events.len() - max);
        }
    }

    /// Writes a whole log atomically (temp file, fsync, rename).
    fn rewrite(&self, path: &Path, events: &[Event], sealer: Option<&Sealer>) -> Result<()> {
        let mut bytes = header_for(sealer);
        for e in events {
            bytes.extend(encode_with(e, sealer)?);
        }
        // The version being replaced holds events the new one may have dropped (retention): keep a
        // handle on it, and once the new one is in place overwrite it with zeros, so its bytes do
        // not linger in unlinked blocks (on file systems that overwrite in place).
        let old = std::fs::OpenOptions::new().write(true).open(path).ok();
        crate::format::write_atomic(path, &bytes)?;
        if let Some(f) = old {
            let _ = zero_file(&f);
        }
        Ok(())
    }

    /// Opens a profile, recovering its log if needed, and says what recovery did.
    pub fn recover(&self, profile: &str) -> Result<Recovery> {
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(profile);
        Ok(self.load(&mut map, profile)?.1)
    }

    /// Appends an event. When this returns `Ok`, the record is in the file (and on disk with
    /// [`Sync::EveryAppend`]).
    pub fn append(&self, profile: &str, event: &Event) -> Result<()> {
        encode(event)?; // argument checks before any file is touched
        let path = self.path(profile)?;
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = self.load(&mut map, profile)?;
        let sealer = state.sealer.clone();
        let rec = encode_with(event, sealer.as_deref())?;
        // An empty (or absent) file gets the header with its first record.
        let fresh = std::fs::metadata(&path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // One write per record: header first for a new file.
        let mut buf = if fresh {
            header_for(sealer.as_deref())
        } else {
            Vec::new()
        };
        buf.extend(rec);
        f.write_all(&buf).map_err(|e| Error::io(&path, e))?;
        if self.params.sync == Sync::EveryAppend {
            f.sync_data().map_err(|e| Error::io(&path, e))?;
            if fresh {
                if let Ok(d) = std::fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
            }
        }
        state.events.push(event.clone());
        state.file_records += 1;
        // The record is written: what follows is housekeeping, and its failure must not report
        // this append as failed (the compaction is retried on a later append).
        self.retain(&mut state.events);
        let slack = (self.params.max_items as usize / 8).max(16);
        if state.file_records > state.events.len() + slack {
            let events = state.events.clone();
            if self.rewrite(&path, &events, sealer.as_deref()).is_ok() {
                state.file_records = events.len();
            }
        }
        Ok(())
    }

    /// Every event of a profile, oldest first.
    pub fn list(&self, profile: &str) -> Result<Vec<Event>> {
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.load(&mut map, profile)?.0.events.clone())
    }

    /// The item ids of a profile's history, oldest first (what prediction reads).
    pub fn item_ids(&self, profile: &str) -> Result<Vec<String>> {
        Ok(self.list(profile)?.into_iter().map(|e| e.item_id).collect())
    }

    /// Removes a profile from disk: its log and any damaged copy are overwritten with zeros, synced,
    /// and removed; earlier versions of the log that compaction or recovery replaced were zeroed
    /// when they were replaced. What holds: on file systems that overwrite in place (ext4, NTFS,
    /// FAT) the bytes are gone. On copy-on-write or flash-translated storage (APFS, btrfs, F2FS,
    /// most phone storage) an overwrite goes to new blocks and the old ones stay until the device
    /// reuses them; only encryption at rest (the platform's, or a key the app destroys) makes those
    /// unreadable.
    pub fn forget(&self, profile: &str) -> Result<()> {
        let path = self.path(profile)?;
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(profile);
        // The key first: once it is gone every copy of the log is unreadable, wherever storage
        // kept one; a crash after this leaves files that the next forget removes.
        if let Some(keys) = &self.keys {
            keys.destroy(profile)?;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut mine_files = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mine = name.strip_prefix(&stem).is_some_and(|rest| {
                rest.starts_with(".nvh")
                    || rest.starts_with(".damaged-")
                    || rest.starts_with(".nvh.tmp")
            }) || name.starts_with(&format!(".{stem}.nvh.tmp"));
            if !mine {
                continue;
            }
            mine_files.push(entry.path());
        }
        // Crash-atomic: each file is first renamed to a tombstone, the log itself last (the
        // commit point: until then the profile is whole, after it the profile is gone), then the
        // tombstones are zeroed and removed. A forget cut short by a crash is finished by the next
        // open (`finish_forgets`), so no half-zeroed log is ever read as damage.
        mine_files.sort_by_key(|p| p.extension().is_some_and(|x| x == "nvh"));
        for p in &mine_files {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tomb = self.dir.join(format!("{FORGET_PREFIX}{name}"));
            std::fs::rename(p, &tomb).map_err(|e| Error::io(p, e))?;
        }
        sync_dir(&self.dir);
        finish_forgets(&self.dir)
    }

    /// A profile's history as JSON: `[{"item_id", "kind", "timestamp_ms", "in_catalog"}]`. Items not in
    /// the catalog are kept and flagged (`in_catalog: false`); without a catalog the flag is absent.
    pub fn export_json(&self, profile: &str, catalog: Option<&Catalog>) -> Result<String> {
        let events = self.list(profile)?;
        let rows: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).expect("event serialises");
                if let Some(c) = catalog {
                    v["in_catalog"] = c.find_id(&e.item_id).is_some().into();
                }
                v
            })
            .collect();
        Ok(serde_json::to_string(&rows).expect("JSON serialises"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::history::{HEADER, REC_HEADER};

    fn ev(id: &str, ts: i64) -> Event {
        Event {
            item_id: id.into(),
            kind: EventKind::View,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn append_list_forget() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        h.append("alice", &ev("1", 10)).unwrap();
        h.append("alice", &ev("2", 20)).unwrap();
        h.append("bob", &ev("9", 5)).unwrap();
        drop(h);
        let again = History::open(d.path(), HistoryParams::default()).unwrap();
        assert_eq!(again.item_ids("alice").unwrap(), vec!["1", "2"]);
        again.forget("alice").unwrap();
        assert!(again.list("alice").unwrap().is_empty());
        assert_eq!(again.item_ids("bob").unwrap(), vec!["9"]);
        // No file of alice's remains.
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(again.append("alice", &ev("", 1)).is_err());
        assert!(again.append("", &ev("x", 1)).is_err());
    }

    #[test]
    fn every_truncation_keeps_every_complete_record() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        for i in 0..5 {
            h.append("p", &ev(&format!("item-{i}"), i)).unwrap();
        }
        let path = h.path("p").unwrap();
        drop(h);
        let full = std::fs::read(&path).unwrap();
        let ends: Vec<usize> = {
            let mut at = HEADER;
            let mut v = vec![];
            while at < full.len() {
                let len = u32::from_le_bytes(full[at + 4..at + 8].try_into().unwrap()) as usize;
                at += REC_HEADER + len;
                v.push(at);
            }
            v
        };
        for cut in 0..=full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            {
                let h2 = History::open(d.path(), HistoryParams::default()).unwrap();
                let got = h2.list("p").unwrap();
                assert_eq!(got.len(), complete, "cut at {cut}");
                // After recovery the file is clean and appending works.
                h2.append("p", &ev("next", 99)).unwrap();
            }
            let h3 = History::open(d.path(), HistoryParams::default()).unwrap();
            assert_eq!(h3.list("p").unwrap().len(), complete + 1, "cut at {cut}");
        }
    }

    /// A closed log of four events (item-0..3) in a new folder; returns the folder and the log.
    fn four_events() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        for i in 0..4 {
            h.append("p", &ev(&format!("item-{i}"), i)).unwrap();
        }
        let path = h.path("p").unwrap();
        (d, path)
    }

    #[test]
    fn damage_in_the_middle_keeps_the_rest_and_a_copy() {
        let (d, path) = four_events();
        let mut b = std::fs::read(&path).unwrap();
        b[HEADER + REC_HEADER + 3] ^= 0xff; // inside the first record's payload
        std::fs::write(&path, &b).unwrap();
        let h2 = History::open(d.path(), HistoryParams::default()).unwrap();
        let r = h2.recover("p").unwrap();
        assert_eq!(r.records, 3);
        assert!(r.damaged_bytes > 0);
        assert!(r.damaged_copy.as_ref().unwrap().exists());
        assert_eq!(
            h2.item_ids("p").unwrap(),
            vec!["item-1", "item-2", "item-3"]
        );
    }

    /// A recovery whose rewrite fails leaves the damaged log in place (the copy is extra), so a later
    /// open recovers the same records; renaming the log away first would have lost them all.
    #[test]
    fn a_failed_recovery_keeps_the_log() {
        let (d, path) = four_events();
        let mut b = std::fs::read(&path).unwrap();
        b[HEADER + REC_HEADER + 3] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        // The rewrite's temporary file cannot be created: a folder holds its name.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let blocker = d.path().join(format!(".{name}.tmp{}", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        assert!(h.recover("p").is_err(), "the rewrite cannot write");
        assert_eq!(std::fs::read(&path).unwrap(), b, "the log is as it was");
        drop(h);
        std::fs::remove_dir(&blocker).unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        assert_eq!(h.item_ids("p").unwrap(), vec!["item-1", "item-2", "item-3"]);
    }

    /// The oldest possible timestamp under an age limit: no overflow, and it ages out like any other.
    #[test]
    fn an_event_at_i64_min_under_an_age_limit() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), params(0, 3_600_000)).unwrap();
        h.append("p", &ev("oldest", i64::MIN)).unwrap();
        assert_eq!(h.item_ids("p").unwrap(), vec!["oldest"]);
        h.append("p", &ev("now", now_ms())).unwrap();
        assert_eq!(h.item_ids("p").unwrap(), vec!["now"]);
    }

    /// A key store in memory, as an app's Keychain wrapper would be.
    #[derive(Default)]
    struct MemKeys {
        keys: Mutex<HashMap<String, [u8; 32]>>,
        seed: u8,
    }

    impl KeyStore for MemKeys {
        fn key(&self, profile: &str, create: bool) -> Result<Option<[u8; 32]>> {
            let mut k = self.keys.lock().unwrap();
            if create && !k.contains_key(profile) {
                let mut key = [self.seed; 32];
                key[..profile.len().min(32)]
                    .copy_from_slice(&profile.as_bytes()[..profile.len().min(32)]);
                k.insert(profile.to_string(), key);
            }
            Ok(k.get(profile).copied())
        }
        fn destroy(&self, profile: &str) -> Result<()> {
            self.keys.lock().unwrap().remove(profile);
            Ok(())
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn an_encrypted_history_round_trips_and_hides_its_items() {
        let d = tempfile::tempdir().unwrap();
        let keys = Arc::new(MemKeys::default());
        let h = History::open_with_keys(d.path(), params(0, 0), Some(keys.clone())).unwrap();
        for i in 0..3 {
            h.append("alice", &ev(&format!("secret-item-{i}"), i))
                .unwrap();
        }
        let path = h.path("alice").unwrap();
        drop(h);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            read_header(&bytes).unwrap(),
            Header::Sealed {
                check: Sealer::new(&keys.key("alice", false).unwrap().unwrap(), "").check()
            }
        );
        assert!(
            !contains(&bytes, b"secret-item"),
            "an item id is on disk in the clear"
        );
        let h = History::open_with_keys(d.path(), params(0, 0), Some(keys.clone())).unwrap();
        assert_eq!(
            h.item_ids("alice").unwrap(),
            vec!["secret-item-0", "secret-item-1", "secret-item-2"]
        );
        // Compaction rewrites sealed records too.
        drop(h);
        let h = History::open_with_keys(d.path(), params(2, 0), Some(keys)).unwrap();
        assert_eq!(
            h.item_ids("alice").unwrap(),
            vec!["secret-item-1", "secret-item-2"]
        );
        assert!(!contains(&std::fs::read(&path).unwrap(), b"secret-item"));
    }

    #[test]
    fn a_wrong_or_missing_key_is_refused_and_the_log_kept() {
        let d = tempfile::tempdir().unwrap();
        let keys = Arc::new(MemKeys::default());
        let h = History::open_with_keys(d.path(), params(0, 0), Some(keys)).unwrap();
        h.append("alice", &ev("1", 1)).unwrap();
        let path = h.path("alice").unwrap();
        drop(h);
        let before = std::fs::read(&path).unwrap();
        let other = Arc::new(MemKeys {
            seed: 7,
            ..Default::default()
        });
        other.key("alice", true).unwrap();
        for keys in [
            Some(other as Arc<dyn KeyStore>),
            Some(Arc::new(MemKeys::default()) as Arc<dyn KeyStore>),
            None,
        ] {
            let h = History::open_with_keys(d.path(), params(0, 0), keys).unwrap();
            let e = h.list("alice").unwrap_err();
            assert!(matches!(e, Error::Mismatch(_)), "{e}");
            assert!(h.append("alice", &ev("2", 2)).is_err());
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the log is untouched"
        );
    }

    #[test]
    fn a_plain_history_is_encrypted_when_opened_with_keys() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), params(0, 0)).unwrap();
        h.append("bob", &ev("plain-item", 1)).unwrap();
        let path = h.path("bob").unwrap();
        drop(h);
        assert!(contains(&std::fs::read(&path).unwrap(), b"plain-item"));
        let keys = Arc::new(MemKeys::default());
        let h = History::open_with_keys(d.path(), params(0, 0), Some(keys)).unwrap();
        h.append("bob", &ev("next-item", 2)).unwrap();
        assert_eq!(h.item_ids("bob").unwrap(), vec!["plain-item", "next-item"]);
        let bytes = std::fs::read(&path).unwrap();
        assert!(matches!(
            read_header(&bytes).unwrap(),
            Header::Sealed { .. }
        ));
        assert!(!contains(&bytes, b"plain-item") && !contains(&bytes, b"next-item"));
    }

    #[test]
    fn forget_destroys_the_key() {
        let d = tempfile::tempdir().unwrap();
        let keys = Arc::new(MemKeys::default());
        let h = History::open_with_keys(d.path(), params(0, 0), Some(keys.clone())).unwrap();
        h.append("alice", &ev("1", 1)).unwrap();
        h.append("bob", &ev("2", 1)).unwrap();
        let path = h.path("alice").unwrap();
        let kept = std::fs::read(&path).unwrap();
        h.forget("alice").unwrap();
        assert!(keys.key("alice", false).unwrap().is_none());
        assert!(keys.key("bob", false).unwrap().is_some());
        assert!(!path.exists());
        // A copy of the log that storage kept is unreadable now: no key opens it.
        std::fs::write(&path, &kept).unwrap();
        assert!(matches!(h.list("alice").unwrap_err(), Error::Mismatch(_)));
        // Forgetting again clears it (and asks to destroy a key that is already gone).
        h.forget("alice").unwrap();
        assert!(h.list("alice").unwrap().is_empty());
        assert_eq!(h.item_ids("bob").unwrap(), vec!["2"]);
    }

    #[test]
    fn damage_in_an_encrypted_log_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let keys = Arc::new(MemKeys::default());
        let h = History::open_with_keys(d.path(), HistoryParams::default(), Some(keys.clone()))
            .unwrap();
        for i in 0..4 {
            h.append("p", &ev(&format!("item-{i}"), i)).unwrap();
        }
        let path = h.path("p").unwrap();
        drop(h);
        // A bit flipped inside the second record's sealed payload, its CRC made right again: the
        // tag refuses it, and it counts as damage.
        let mut b = std::fs::read(&path).unwrap();
        let len0 = u32::from_le_bytes(b[HEADER + 4..HEADER + 8].try_into().unwrap()) as usize;
        let r1 = HEADER + REC_HEADER + len0;
        let len1 = u32::from_le_bytes(b[r1 + 4..r1 + 8].try_into().unwrap()) as usize;
        b[r1 + REC_HEADER + 30] ^= 1;
        let crc = crc32fast::hash(&b[r1 + REC_HEADER..r1 + REC_HEADER + len1]);
        b[r1 + 8..r1 + 12].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let h = History::open_with_keys(d.path(), HistoryParams::default(), Some(keys.clone()))
            .unwrap();
        let r = h.recover("p").unwrap();
        assert_eq!(r.records, 3);
        assert!(r.damaged_bytes > 0 && r.damaged_copy.is_some());
        assert_eq!(h.item_ids("p").unwrap(), vec!["item-0", "item-2", "item-3"]);
        // A torn tail: the last record cut.
        let path_len = std::fs::metadata(&path).unwrap().len();
        drop(h);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(path_len - 5)
            .unwrap();
        let h = History::open_with_keys(d.path(), HistoryParams::default(), Some(keys)).unwrap();
        assert_eq!(h.item_ids("p").unwrap(), vec!["item-0", "item-2"]);
    }

    #[test]
    fn retention_limits() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(
            d.path(),
            HistoryParams {
                sync: Sync::Os,
                max_items: 3,
                max_age_ms: 100,
            },
        )
        .unwrap();
        for i in 0..5 {
            h.append("p", &ev(&format!("{i}"), i * 10)).unwrap();
        }
        assert_eq!(h.item_ids("p").unwrap(), vec!["2", "3", "4"]);
        h.append("p", &ev("late", 1000)).unwrap();
        assert_eq!(h.item_ids("p").unwrap(), vec!["late"]);
        drop(h);
        // The limits are the handle's: a handle with the same ones sees the same, and its open
        // compacts the file (the dropped events leave the disk).
        let again = History::open(d.path(), params(3, 100)).unwrap();
        assert_eq!(again.item_ids("p").unwrap(), vec!["late"]);
        drop(again);
        let all = History::open(d.path(), HistoryParams::default()).unwrap();
        assert_eq!(all.item_ids("p").unwrap(), vec!["late"]);
    }

    fn params(max_items: u32, max_age_ms: i64) -> HistoryParams {
        HistoryParams {
            sync: Sync::Os,
            max_items,
            max_age_ms,
        }
    }

    /// One event stamped far in the future (or in the wrong unit) under an age limit used to make
    /// every other event "old"; one at i64::MIN overflowed the cutoff.
    #[test]
    fn an_event_from_the_future_ages_out_nothing() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), params(0, 3_600_000)).unwrap();
        let now = now_ms();
        for i in 0..10 {
            h.append("p", &ev(&format!("{i}"), now - 60_000 + i))
                .unwrap();
        }
        h.append("p", &ev("future", i64::MAX)).unwrap();
        assert_eq!(h.list("p").unwrap().len(), 11);
        // Older than the limit by the clock: dropped, without overflow.
        h.append("p", &ev("ancient", i64::MIN)).unwrap();
        let ids = h.item_ids("p").unwrap();
        assert_eq!(ids.len(), 11, "{ids:?}");
        assert!(!ids.contains(&"ancient".to_string()));
        drop(h);
        let again = History::open(d.path(), params(0, 3_600_000)).unwrap();
        assert_eq!(again.item_ids("p").unwrap(), ids);
        assert!(History::open(tempfile::tempdir().unwrap().path(), params(0, -1)).is_err());
    }

    #[test]
    fn one_handle_per_folder() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        let e = History::open(d.path(), HistoryParams::default())
            .err()
            .expect("a second handle must be refused");
        assert!(e.to_string().contains("another handle"), "{e}");
        drop(h);
        History::open(d.path(), HistoryParams::default()).unwrap();
    }

    #[test]
    fn profile_names_fit_a_file_name() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        let longest = "p".repeat(MAX_PROFILE_BYTES);
        h.append(&longest, &ev("1", 1)).unwrap();
        h.append(&longest, &ev("2", 2)).unwrap();
        assert_eq!(h.item_ids(&longest).unwrap(), vec!["1", "2"]);
        let e = h
            .append(&"p".repeat(MAX_PROFILE_BYTES + 1), &ev("1", 1))
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        // Its damaged copy's name fits too: damage the first record and reopen.
        let path = h.path(&longest).unwrap();
        drop(h);
        let mut b = std::fs::read(&path).unwrap();
        b[HEADER + REC_HEADER + 2] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        let r = h.recover(&longest).unwrap();
        assert!(r.damaged_copy.unwrap().exists());
    }

    /// A damaged header no longer locks the profile for good: its records are recovered and the
    /// original bytes kept; a newer version's log is left alone.
    #[test]
    fn a_damaged_header_is_recovered() {
        let (d, path) = four_events();
        let mut b = std::fs::read(&path).unwrap();
        b[..4].copy_from_slice(b"JUNK");
        std::fs::write(&path, &b).unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        let r = h.recover("p").unwrap();
        assert_eq!(r.records, 4);
        assert_eq!(std::fs::read(r.damaged_copy.unwrap()).unwrap(), b);
        assert_eq!(h.list("p").unwrap().len(), 4);
        h.append("p", &ev("next", 9)).unwrap();
        drop(h);
        let mut b = std::fs::read(&path).unwrap();
        b[8..12].copy_from_slice(&3u32.to_le_bytes()); // newer than plain (1) and sealed (2)
        std::fs::write(&path, &b).unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        let e = h.list("p").unwrap_err();
        assert!(e.to_string().contains("version"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b,
            "a newer log is not touched"
        );
    }

    /// At the cap the log is compacted once per slack of appends, not at every append, and `list`
    /// keeps the cap at every moment.
    #[test]
    fn compaction_at_the_cap_is_amortised() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), params(100, 0)).unwrap();
        let path = h.path("p").unwrap();
        let mut rewrites = 0;
        let mut last_len = 0;
        for i in 0..400 {
            h.append("p", &ev(&format!("{i:04}"), i)).unwrap();
            let ids = h.item_ids("p").unwrap();
            assert_eq!(ids.len(), (i as usize + 1).min(100));
            assert_eq!(ids.last().unwrap(), &format!("{i:04}"));
            let len = std::fs::metadata(&path).unwrap().len();
            if len < last_len {
                rewrites += 1;
            }
            last_len = len;
        }
        // 300 appends over the cap, a compaction every 17: 17 of them, not 300.
        assert!((10..=20).contains(&rewrites), "{rewrites} rewrites");
        drop(h);
        let again = History::open(d.path(), params(100, 0)).unwrap();
        let ids = again.item_ids("p").unwrap();
        assert_eq!(ids.len(), 100);
        assert_eq!(ids[0], "0300");
    }

    /// An append whose record is written reports success even when the compaction after it fails.
    #[test]
    fn a_failed_compaction_does_not_fail_the_append() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), params(2, 0)).unwrap();
        let path = h.path("p").unwrap();
        // The atomic rewrite's temporary file cannot be created: a folder holds its name.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::create_dir(d.path().join(format!(".{name}.tmp{}", std::process::id()))).unwrap();
        for i in 0..40 {
            h.append("p", &ev(&format!("{i}"), i)).unwrap();
        }
        assert_eq!(h.item_ids("p").unwrap(), vec!["38", "39"]);
        drop(h);
        let again = History::open(d.path(), params(2, 0)).unwrap();
        assert_eq!(again.item_ids("p").unwrap(), vec!["38", "39"]);
        assert_eq!(
            again.recover("p").unwrap().records,
            40,
            "every record is in the file"
        );
    }

    /// A compaction's replaced version is zeroed: a second link to the old file (standing for its
    /// old blocks) reads zeros afterwards, not the dropped events.
    #[cfg(unix)]
    #[test]
    fn a_replaced_log_version_is_zeroed() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), params(2, 0)).unwrap();
        h.append("p", &ev("secret-0", 0)).unwrap();
        let path = h.path("p").unwrap();
        let old = d.path().join("old-version");
        std::fs::hard_link(&path, &old).unwrap();
        for i in 1..40 {
            h.append("p", &ev(&format!("secret-{i}"), i)).unwrap();
        }
        assert_eq!(h.item_ids("p").unwrap(), vec!["secret-38", "secret-39"]);
        let b = std::fs::read(&old).unwrap();
        assert!(
            !b.is_empty() && b.iter().all(|&x| x == 0),
            "the old version was not zeroed"
        );
        drop(h);
        let again = History::open(d.path(), params(2, 0)).unwrap();
        assert_eq!(again.item_ids("p").unwrap(), vec!["secret-38", "secret-39"]);
    }
}
