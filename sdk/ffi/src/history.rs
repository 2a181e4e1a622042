//! The history: an opened history folder, and its exports (open/free, append, items, forget, export)
//! with their parameter struct.

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Arc;

use navigen::history::{Event, EventKind, History, HistoryParams, KeyStore, Sync};

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
    guard(|| open(dir, params, None, out))
}

/// Both opens: the folder, the parameters (NULL for the defaults), the key store if any.
unsafe fn open(
    dir: *const c_char,
    params: *const navigen_history_params,
    keys: Option<Arc<dyn KeyStore>>,
    out: *mut *mut navigen_history,
) -> Result<(), Fail> {
    let out = out_ptr_arg(out, "out")?;
    let dir = str_arg(dir, "dir")?;
    let p = match params.as_ref() {
        Some(p) => history_params(p)?,
        None => HistoryParams::default(),
    };
    let h = History::open_with_keys(Path::new(dir), p, keys)?;
    *out = handle::into_raw(h);
    Ok(())
}

/// The app's key store for an encrypted history (navigen_history_open_encrypted()): keys live in the
/// app's secure storage (Keychain, Android Keystore), never beside the logs. navigen calls
/// `get_key` when it first opens a profile and `destroy_key` from navigen_history_forget(), on the
/// thread that made that call (one call at a time per history); `user` is passed back as given.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct navigen_key_store {
    /// Writes the profile's 32-byte key to `key_out` and returns true. With `create`, a profile
    /// without a key gets a new random one that the store keeps. Returns false when the profile has
    /// no key (and `create` is false) or on failure.
    pub get_key: Option<
        unsafe extern "C" fn(
            profile: *const c_char,
            create: bool,
            key_out: *mut u8,
            user: *mut c_void,
        ) -> bool,
    >,
    /// Destroys the profile's key (true when there was none); false on failure.
    pub destroy_key:
        Option<unsafe extern "C" fn(profile: *const c_char, user: *mut c_void) -> bool>,
    pub user: *mut c_void,
}

type GetKey = unsafe extern "C" fn(*const c_char, bool, *mut u8, *mut c_void) -> bool;
type DestroyKey = unsafe extern "C" fn(*const c_char, *mut c_void) -> bool;

/// A C key store as navigen's [`KeyStore`].
struct CKeyStore {
    get: GetKey,
    destroy: DestroyKey,
    /// The caller's pointer, kept as an address: the header makes the store's thread-safety the
    /// caller's contract.
    user: usize,
}

impl KeyStore for CKeyStore {
    fn key(&self, profile: &str, create: bool) -> navigen::Result<Option<[u8; 32]>> {
        let name = CString::new(profile)
            .map_err(|_| navigen::Error::InvalidArgument("profile holds a NUL".into()))?;
        let mut key = [0u8; 32];
        // SAFETY: a NUL-terminated name and a 32-byte buffer, both valid for the call.
        let ok = unsafe {
            (self.get)(
                name.as_ptr(),
                create,
                key.as_mut_ptr(),
                self.user as *mut c_void,
            )
        };
        match (ok, create) {
            (true, _) => Ok(Some(key)),
            (false, false) => Ok(None),
            (false, true) => Err(navigen::Error::InvalidArgument(format!(
                "the key store's get_key made no key for profile {profile:?}"
            ))),
        }
    }

    fn destroy(&self, profile: &str) -> navigen::Result<()> {
        let name = CString::new(profile)
            .map_err(|_| navigen::Error::InvalidArgument("profile holds a NUL".into()))?;
        // SAFETY: a NUL-terminated name valid for the call.
        if unsafe { (self.destroy)(name.as_ptr(), self.user as *mut c_void) } {
            Ok(())
        } else {
            Err(navigen::Error::InvalidArgument(format!(
                "the key store's destroy_key failed for profile {profile:?}: nothing was removed"
            )))
        }
    }
}

/// Opens (creating if needed) a history folder whose logs are encrypted, each profile with its own
/// key from `keys` (copied; its callbacks must stay callable until navigen_history_free). A plain
/// log is encrypted when its profile is first opened; navigen_history_forget() destroys the
/// profile's key before it removes the files, so any copy storage kept is unreadable. An encrypted
/// profile opened without its key fails with NAVIGEN_ERR_MISMATCH and is left as it is.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_open_encrypted(
    dir: *const c_char,
    params: *const navigen_history_params,
    keys: *const navigen_key_store,
    out: *mut *mut navigen_history,
) -> navigen_status {
    guard(|| {
        let k = keys.as_ref().ok_or_else(|| invalid("keys is NULL"))?;
        let (Some(get), Some(destroy)) = (k.get_key, k.destroy_key) else {
            return Err(invalid("keys: get_key and destroy_key are both required"));
        };
        let store = CKeyStore {
            get,
            destroy,
            user: k.user as usize,
        };
        open(dir, params, Some(Arc::new(store)), out)
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
/// storage (APFS, F2FS, most phones) old blocks may persist until reused: open the history with
/// navigen_history_open_encrypted(), whose forget destroys the profile's key first, or rely on the
/// platform's encryption at rest.
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
