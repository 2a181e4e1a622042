//! The history: an opened history folder, and its exports (open/free, append, items, forget, export)
//! with their parameter struct.

use std::ffi::c_char;
use std::path::Path;

use navigen::history::{Event, EventKind, History, HistoryParams, Sync};

use crate::boundary::{guard, guard_void, invalid, navigen_status, Fail};
use crate::convert::{out_arg, out_ptr_arg, out_string, str_arg};
use crate::engine::navigen_engine;
use crate::handle::{self, Handle};

/// An opened history folder.
pub struct navigen_history {
    _opaque: [u8; 0],
}

impl Handle for navigen_history {
    type Value = History;
    const MAGIC: u64 = 0x4e41_5649_4849_5331; // "NAVIHIS1"
    const ARG: &'static str = "history";
    const C_TYPE: &'static str = "navigen_history";
}

/// Parameters of navigen_history_open(); fill with navigen_history_default_params().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct navigen_history_params {
    /// fsync after every append (an acknowledged event survives power loss).
    pub sync_every_append: bool,
    /// Events kept per profile, 0 = unlimited.
    pub max_items: u32,
    /// Events older than this are dropped, 0 = never; "older" counts from the newest event or the
    /// device's clock, whichever is earlier (an event stamped in the future ages out nothing).
    pub max_age_ms: i64,
}

impl From<HistoryParams> for navigen_history_params {
    fn from(d: HistoryParams) -> Self {
        navigen_history_params {
            sync_every_append: d.sync == Sync::EveryAppend,
            max_items: d.max_items,
            max_age_ms: d.max_age_ms,
        }
    }
}

/// The parameters a caller's params ask for; INVALID_ARGUMENT when they are out of range.
fn history_params(p: &navigen_history_params) -> Result<HistoryParams, Fail> {
    if p.max_age_ms < 0 {
        return Err(invalid("max_age_ms is negative"));
    }
    Ok(HistoryParams {
        sync: if p.sync_every_append {
            Sync::EveryAppend
        } else {
            Sync::Os
        },
        max_items: p.max_items,
        max_age_ms: p.max_age_ms,
    })
}

/// Fills `out` with the defaults (fsync on every append, 10,000 events per profile, no age limit).
#[no_mangle]
pub unsafe extern "C" fn navigen_history_default_params(
    out: *mut navigen_history_params,
) -> navigen_status {
    guard(|| {
        *out_arg(out, "out")? = HistoryParams::default().into();
        Ok(())
    })
}

/// Opens (creating if needed) a history folder. `params` may be NULL for the defaults. One handle
/// at a time may hold a folder (a lock file, released by navigen_history_free or the process's end):
/// a second open, in this process or another, fails with NAVIGEN_ERR_IO.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_open(
    dir: *const c_char,
    params: *const navigen_history_params,
    out: *mut *mut navigen_history,
) -> navigen_status {
    guard(|| {
        let out = out_ptr_arg(out, "out")?;
        let dir = str_arg(dir, "dir")?;
        let p = match params.as_ref() {
            Some(p) => history_params(p)?,
            None => HistoryParams::default(),
        };
        let h = History::open(Path::new(dir), p)?;
        *out = handle::into_raw(h);
        Ok(())
    })
}

/// Releases a history and its folder lock (NULL, freed or unknown pointers are ignored). A call in
/// flight on another thread keeps it alive until it returns.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_free(history: *mut navigen_history) {
    guard_void(|| handle::free(history))
}

/// Appends an event: `kind` 0 view, 1 click, 2 purchase, 3 play, 4 rate, 5 like, 255 other.
/// `profile`: 1 to 100 bytes; `item_id`: 1 to 4096 bytes. Returns once the record is written (and
/// synced, by default); NAVIGEN_OK means the event is stored.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_append(
    history: *const navigen_history,
    profile: *const c_char,
    item_id: *const c_char,
    kind: u32,
    timestamp_ms: i64,
) -> navigen_status {
    guard(|| {
        let h = handle::arg(history)?;
        let profile = str_arg(profile, "profile")?;
        let item = str_arg(item_id, "item_id")?;
        let kind = u8::try_from(kind)
            .ok()
            .and_then(EventKind::from_code)
            .ok_or_else(|| invalid(format!("unknown event kind {kind}")))?;
        h.append(
            profile,
            &Event {
                item_id: item.to_string(),
                kind,
                timestamp_ms,
            },
        )?;
        Ok(())
    })
}

/// The profile's item ids, oldest first, as a JSON array of strings.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_items(
    history: *const navigen_history,
    profile: *const c_char,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_ptr_arg(out_json, "out_json")?;
        let h = handle::arg(history)?;
        let ids = h.item_ids(str_arg(profile, "profile")?)?;
        out_string(out, serde_json::to_string(&ids)?)
    })
}

/// Removes the profile from disk: its log and damaged copies are overwritten with zeros, synced and
/// removed (versions replaced earlier by compaction were zeroed then). On copy-on-write or flash
/// storage (APFS, F2FS, most phones) old blocks may persist until reused: rely on the platform's
/// encryption at rest there.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_forget(
    history: *const navigen_history,
    profile: *const c_char,
) -> navigen_status {
    guard(|| {
        handle::arg(history)?.forget(str_arg(profile, "profile")?)?;
        Ok(())
    })
}

/// The profile's events as JSON. With an engine (may be NULL), each event says whether its item is in
/// the engine's catalog (`in_catalog`).
#[no_mangle]
pub unsafe extern "C" fn navigen_history_export(
    history: *const navigen_history,
    profile: *const c_char,
    engine: *const navigen_engine,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_ptr_arg(out_json, "out_json")?;
        let h = handle::arg(history)?;
        let engine = if engine.is_null() {
            None
        } else {
            Some(handle::arg(engine)?)
        };
        let cat = engine.as_ref().map(|e| e.catalog());
        out_string(out, h.export_json(str_arg(profile, "profile")?, cat)?)
    })
}
