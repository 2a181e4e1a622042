//! The on-device history: one append-only log per profile. Each record carries a sync word, its length
//! and a CRC-32, so that recovery can tell a torn tail (cut) from damage in the middle (the good records
//! are kept and the damaged file is set aside, never deleted). `forget` overwrites a profile's file with
//! zeros before removing it.
//!
//! File `<dir>/<hex of profile>.nvh`; its layout (header, records, CRC) is in `format/history.rs`.
//!
//! Threading: a `History` may be shared between threads (an internal lock serialises writers). One
//! process at a time may open a folder.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::history::{encode, header, read_header, scan, Header};
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
    /// Drop events older than this many milliseconds (0 = no limit), relative to the newest event.
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
    events: Vec<Event>,
}

pub struct History {
    dir: PathBuf,
    params: HistoryParams,
    profiles: Mutex<HashMap<String, ProfileState>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl History {
    pub fn open(dir: &Path, params: HistoryParams) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(History {
            dir: dir.to_path_buf(),
            params,
            profiles: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, profile: &str) -> Result<PathBuf> {
        if profile.is_empty() || profile.len() > 256 {
            return Err(Error::InvalidArgument(
                "profile name must be 1..=256 bytes".into(),
            ));
        }
        let hex: String = profile.bytes().map(|b| format!("{b:02x}")).collect();
        Ok(self.dir.join(format!("{hex}.nvh")))
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
            let events = match std::fs::read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(&path, e)),
                Ok(bytes) => match read_header(&bytes).map_err(|e| Error::format(&path, e))? {
                    Header::Torn => {
                        // A header torn at creation: nothing was ever acknowledged. Start clean.
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| Error::io(&path, e))?;
                        f.set_len(0).map_err(|e| Error::io(&path, e))?;
                        rec.torn_tail_bytes = bytes.len() as u64;
                        Vec::new()
                    }
                    Header::Valid => {
                        let (events, good_end, torn, damaged) = scan(&bytes);
                        rec = Recovery {
                            records: events.len(),
                            torn_tail_bytes: torn,
                            damaged_bytes: damaged,
                            damaged_copy: None,
                        };
                        if damaged > 0 {
                            let copy = path.with_extension(format!("damaged-{}", now_ms()));
                            std::fs::rename(&path, &copy).map_err(|e| Error::io(&path, e))?;
                            rec.damaged_copy = Some(copy);
                            self.rewrite(&path, &events)?;
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
            map.insert(profile.to_string(), ProfileState { events });
        }
        Ok((map.get_mut(profile).expect("inserted"), rec))
    }

    /// Writes a whole log atomically (temp file, fsync, rename).
    fn rewrite(&self, path: &Path, events: &[Event]) -> Result<()> {
        let mut bytes = header();
        for e in events {
            bytes.extend(encode(e)?);
        }
        crate::format::write_atomic(path, &bytes)
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
        let rec = encode(event)?;
        let path = self.path(profile)?;
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = self.load(&mut map, profile)?;
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
        let mut buf = if fresh { header() } else { Vec::new() };
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
        // Retention: compact when over the limits.
        let newest = state
            .events
            .iter()
            .map(|e| e.timestamp_ms)
            .max()
            .unwrap_or(0);
        let too_old = |e: &Event| {
            self.params.max_age_ms > 0 && e.timestamp_ms < newest - self.params.max_age_ms
        };
        let over = self.params.max_items > 0 && state.events.len() > self.params.max_items as usize;
        if over || state.events.iter().any(too_old) {
            state.events.retain(|e| !too_old(e));
            let n = state.events.len();
            if self.params.max_items > 0 && n > self.params.max_items as usize {
                state.events.drain(..n - self.params.max_items as usize);
            }
            let events = state.events.clone();
            self.rewrite(&path, &events)?;
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

    /// Removes every byte of a profile from disk: its log (overwritten with zeros, synced, removed) and
    /// any damaged copy.
    pub fn forget(&self, profile: &str) -> Result<()> {
        let path = self.path(profile)?;
        let mut map = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(profile);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
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
            let p = entry.path();
            if let Ok(meta) = std::fs::metadata(&p) {
                if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p) {
                    let zeros = vec![0u8; 64 * 1024];
                    let mut left = meta.len();
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        f.write_all(&zeros[..n]).map_err(|e| Error::io(&p, e))?;
                        left -= n as u64;
                    }
                    f.sync_all().map_err(|e| Error::io(&p, e))?;
                }
            }
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
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
        let again = History::open(d.path(), HistoryParams::default()).unwrap();
        assert_eq!(again.item_ids("alice").unwrap(), vec!["1", "2"]);
        again.forget("alice").unwrap();
        assert!(again.list("alice").unwrap().is_empty());
        assert_eq!(again.item_ids("bob").unwrap(), vec!["9"]);
        // No file of alice's remains.
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(h.append("alice", &ev("", 1)).is_err());
        assert!(h.append("", &ev("x", 1)).is_err());
    }

    #[test]
    fn every_truncation_keeps_every_complete_record() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        for i in 0..5 {
            h.append("p", &ev(&format!("item-{i}"), i)).unwrap();
        }
        let path = h.path("p").unwrap();
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
            let h2 = History::open(d.path(), HistoryParams::default()).unwrap();
            let got = h2.list("p").unwrap();
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(got.len(), complete, "cut at {cut}");
            // After recovery the file is clean and appending works.
            h2.append("p", &ev("next", 99)).unwrap();
            let h3 = History::open(d.path(), HistoryParams::default()).unwrap();
            assert_eq!(h3.list("p").unwrap().len(), complete + 1, "cut at {cut}");
        }
    }

    #[test]
    fn damage_in_the_middle_keeps_the_rest_and_a_copy() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path(), HistoryParams::default()).unwrap();
        for i in 0..4 {
            h.append("p", &ev(&format!("item-{i}"), i)).unwrap();
        }
        let path = h.path("p").unwrap();
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
        let again = History::open(d.path(), HistoryParams::default()).unwrap();
        assert_eq!(again.item_ids("p").unwrap(), vec!["late"]);
    }
}
