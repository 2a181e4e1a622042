//! The C ABI of navigen. A thin layer over the `navigen` crate: argument checks, a panic boundary on
//! every export, status codes and a per-thread error message. The header `include/navigen.h` is
//! generated from this file by cbindgen.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use navigen::engine::{Engine, EngineParams, InstructionOptions};
use navigen::history::{Event, EventKind, History, HistoryParams, Sync};
use navigen::Error;

/// Version of this C ABI; bumped on any incompatible change. navigen_abi_version() returns it.
pub const NAVIGEN_ABI_VERSION: u32 = 2;

/// Result of every call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum navigen_status {
    NAVIGEN_OK = 0,
    /// A NULL pointer, a wrong handle, invalid UTF-8 or a value out of range.
    NAVIGEN_ERR_INVALID_ARGUMENT = 1,
    /// A file could not be read or written.
    NAVIGEN_ERR_IO = 2,
    /// A navigen file is damaged or of another version.
    NAVIGEN_ERR_FORMAT = 3,
    /// llama.cpp refused the model or a decode step.
    NAVIGEN_ERR_MODEL = 4,
    /// Stopped by navigen_cancel() or by the token callback.
    NAVIGEN_ERR_CANCELLED = 5,
    /// The bundle cannot do this (e.g. next-item prediction with a zero-shot model).
    NAVIGEN_ERR_NOT_SUPPORTED = 6,
    /// Files that do not belong together (catalog vs model, prompt format versions).
    NAVIGEN_ERR_MISMATCH = 7,
    /// A bug inside navigen (a caught panic).
    NAVIGEN_ERR_INTERNAL = 8,
}
use navigen_status::*;

/// Streaming callback: a piece of generated text (whole UTF-8 characters, not NUL-terminated) and the
/// user pointer. Return false to stop generation.
pub type navigen_token_callback =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user: *mut c_void) -> bool>;

/// Parameters of navigen_engine_open(); fill with navigen_engine_default_params().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct navigen_engine_params {
    /// CPU threads, 0 = the cores available.
    pub threads: u32,
    /// Layers offloaded to a GPU (Metal/Vulkan builds).
    pub gpu_layers: u32,
    /// Context size per call, 0 = automatic.
    pub context_size: u32,
    /// Sampling seed (used with a temperature).
    pub seed: u32,
    /// Time one chunk of a prompt should take, in ms (0 = 250): a cancel during a prompt is honoured
    /// within about this long. Larger values feed bigger batches (faster prompts on slow CPUs).
    pub prompt_chunk_ms: u32,
    /// Offload large batches to a GPU; keep false unless a real GPU is present.
    pub op_offload: bool,
    /// Verify every bundle file's sha256 at open.
    pub verify_checksums: bool,
}

/// Parameters of navigen_generate_instruction(); fill with navigen_instruction_default_params().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct navigen_instruction_params {
    pub max_think_tokens: u32,
    pub max_answer_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
}

/// Parameters of navigen_history_open(); fill with navigen_history_default_params().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct navigen_history_params {
    /// fsync after every append (an acknowledged event survives power loss).
    pub sync_every_append: bool,
    /// Events kept per profile, 0 = unlimited.
    pub max_items: u32,
    /// Events older than this (relative to the newest) are dropped, 0 = never.
    pub max_age_ms: i64,
}

// The C structs mirror the Rust parameter types field for field; these are the only conversions.
impl From<EngineParams> for navigen_engine_params {
    fn from(d: EngineParams) -> Self {
        navigen_engine_params {
            threads: d.threads,
            gpu_layers: d.gpu_layers,
            context_size: d.context_size,
            seed: d.seed,
            prompt_chunk_ms: d.prompt_chunk_ms,
            op_offload: d.op_offload,
            verify_checksums: d.verify_checksums,
        }
    }
}

impl From<&navigen_engine_params> for EngineParams {
    fn from(p: &navigen_engine_params) -> Self {
        EngineParams {
            threads: p.threads,
            gpu_layers: p.gpu_layers,
            context_size: p.context_size,
            seed: p.seed,
            prompt_chunk_ms: p.prompt_chunk_ms,
            op_offload: p.op_offload,
            verify_checksums: p.verify_checksums,
        }
    }
}

const ENGINE_MAGIC: u64 = 0x4e41_5649_454e_4731; // "NAVIENG1"
const HISTORY_MAGIC: u64 = 0x4e41_5649_4849_5331; // "NAVIHIS1"

/// An opened bundle.
pub struct navigen_engine {
    magic: u64,
    inner: Engine,
}

/// An opened history folder.
pub struct navigen_history {
    magic: u64,
    inner: History,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> navigen_status {
    match e {
        Error::Format { .. } | Error::FormatInMemory(_) => NAVIGEN_ERR_FORMAT,
        Error::Io { .. } => NAVIGEN_ERR_IO,
        Error::InvalidArgument(_) => NAVIGEN_ERR_INVALID_ARGUMENT,
        Error::Mismatch(_) => NAVIGEN_ERR_MISMATCH,
        Error::Llama(_) => NAVIGEN_ERR_MODEL,
        Error::Cancelled => NAVIGEN_ERR_CANCELLED,
        Error::NotSupported(_) => NAVIGEN_ERR_NOT_SUPPORTED,
    }
}

struct Fail(navigen_status, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(&e), e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> Fail {
    Fail(NAVIGEN_ERR_INVALID_ARGUMENT, msg.into())
}

/// Runs `f` behind the panic boundary and turns its outcome into a status.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> navigen_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            NAVIGEN_OK
        }
        Ok(Err(Fail(s, m))) => {
            set_error(&m);
            s
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(&format!("internal error (panic): {what}"));
            NAVIGEN_ERR_INTERNAL
        }
    }
}

unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

unsafe fn out_arg<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    p.as_mut().ok_or_else(|| invalid(format!("{what} is NULL")))
}

unsafe fn engine_arg<'a>(e: *const navigen_engine) -> Result<&'a Engine, Fail> {
    match e.as_ref() {
        None => Err(invalid("engine is NULL")),
        Some(h) if h.magic != ENGINE_MAGIC => Err(invalid(
            "engine is not a navigen_engine (freed, or another handle?)",
        )),
        Some(h) => Ok(&h.inner),
    }
}

unsafe fn history_arg<'a>(h: *const navigen_history) -> Result<&'a History, Fail> {
    match h.as_ref() {
        None => Err(invalid("history is NULL")),
        Some(x) if x.magic != HISTORY_MAGIC => Err(invalid(
            "history is not a navigen_history (freed, or another handle?)",
        )),
        Some(x) => Ok(&x.inner),
    }
}

unsafe fn list_arg<'a>(items: *const *const c_char, n: usize) -> Result<Vec<&'a str>, Fail> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if items.is_null() {
        return Err(invalid("the history array is NULL"));
    }
    if n > 100_000 {
        return Err(invalid(format!("history length {n} is not plausible")));
    }
    (0..n)
        .map(|i| str_arg(*items.add(i), &format!("history[{i}]")))
        .collect()
}

fn out_string(out: &mut *mut c_char, s: String) -> Result<(), Fail> {
    let c = CString::new(s)
        .map_err(|_| Fail(NAVIGEN_ERR_INTERNAL, "result holds a NUL byte".into()))?;
    *out = c.into_raw();
    Ok(())
}

/// The ABI version this library implements (NAVIGEN_ABI_VERSION of its header).
#[no_mangle]
pub extern "C" fn navigen_abi_version() -> u32 {
    NAVIGEN_ABI_VERSION
}

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn navigen_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr() as *const c_char
}

/// The message of the last failed call on this thread ("" after a success). Valid until the next call.
#[no_mangle]
pub extern "C" fn navigen_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A static name for a status value ("NAVIGEN_OK", ...; "NAVIGEN_UNKNOWN_STATUS" for other values).
/// Takes an int so that any value, even one outside the enum, is safe to pass.
#[no_mangle]
pub extern "C" fn navigen_status_string(status: i32) -> *const c_char {
    let s: &'static str = match status {
        0 => "NAVIGEN_OK\0",
        1 => "NAVIGEN_ERR_INVALID_ARGUMENT\0",
        2 => "NAVIGEN_ERR_IO\0",
        3 => "NAVIGEN_ERR_FORMAT\0",
        4 => "NAVIGEN_ERR_MODEL\0",
        5 => "NAVIGEN_ERR_CANCELLED\0",
        6 => "NAVIGEN_ERR_NOT_SUPPORTED\0",
        7 => "NAVIGEN_ERR_MISMATCH\0",
        8 => "NAVIGEN_ERR_INTERNAL\0",
        _ => "NAVIGEN_UNKNOWN_STATUS\0",
    };
    s.as_ptr() as *const c_char
}

/// Releases a string returned by navigen (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn navigen_string_free(s: *mut c_char) {
    if !s.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(CString::from_raw(s))));
    }
}

/// Fills `out` with the defaults.
#[no_mangle]
pub unsafe extern "C" fn navigen_engine_default_params(
    out: *mut navigen_engine_params,
) -> navigen_status {
    guard(|| {
        *out_arg(out, "out")? = EngineParams::default().into();
        Ok(())
    })
}

/// Opens the bundle folder `bundle_dir` (model.gguf, catalog, codebooks, bundle.json). `params` may be
/// NULL for the defaults. On success `*out` holds the engine; release it with navigen_engine_free().
#[no_mangle]
pub unsafe extern "C" fn navigen_engine_open(
    bundle_dir: *const c_char,
    params: *const navigen_engine_params,
    out: *mut *mut navigen_engine,
) -> navigen_status {
    guard(|| {
        let out = out_arg(out, "out")?;
        *out = std::ptr::null_mut();
        let dir = str_arg(bundle_dir, "bundle_dir")?;
        let p = params.as_ref().map(EngineParams::from).unwrap_or_default();
        let engine = Engine::open(Path::new(dir), p)?;
        *out = Box::into_raw(Box::new(navigen_engine {
            magic: ENGINE_MAGIC,
            inner: engine,
        }));
        Ok(())
    })
}

/// Releases an engine (NULL is ignored). No call may be in flight on it.
#[no_mangle]
pub unsafe extern "C" fn navigen_engine_free(engine: *mut navigen_engine) {
    if engine.is_null() || (*engine).magic != ENGINE_MAGIC {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        (*engine).magic = 0;
        drop(Box::from_raw(engine));
    }));
}

/// Stops every call in flight on `engine` at its next decode step. Callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn navigen_cancel(engine: *const navigen_engine) -> navigen_status {
    guard(|| {
        engine_arg(engine)?.cancel();
        Ok(())
    })
}

/// Predicts the `k` items most likely next after `history` (`history_len` item ids, oldest first).
/// `*out_json` receives `[{"id","title","cid","score"}, ...]`, best first.
#[no_mangle]
pub unsafe extern "C" fn navigen_predict_next(
    engine: *const navigen_engine,
    history: *const *const c_char,
    history_len: usize,
    k: usize,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_arg(out_json, "out_json")?;
        *out = std::ptr::null_mut();
        let e = engine_arg(engine)?;
        let h = list_arg(history, history_len)?;
        let preds = e.predict_next(&h, k, 20)?;
        out_string(
            out,
            serde_json::to_string(&preds).map_err(|e| Fail(NAVIGEN_ERR_INTERNAL, e.to_string()))?,
        )
    })
}

/// Gives a new item (its text: title, description, genres) a CID with the bundle's embedder and
/// codebooks, as the trainer did for the catalog. `*out_json` receives
/// `{"cid":"<s_a_..>..","taken_by":{"id","title"}|null,"free_cid":"..."|null,"distance":float}`:
/// `taken_by` names the catalog item that already holds `cid`; `free_cid` is the nearest CID with the
/// same prefix that no item holds. NAVIGEN_ERR_NOT_SUPPORTED when the bundle has no embedder.
#[no_mangle]
pub unsafe extern "C" fn navigen_register_item(
    engine: *const navigen_engine,
    text: *const c_char,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_arg(out_json, "out_json")?;
        *out = std::ptr::null_mut();
        let e = engine_arg(engine)?;
        let text = str_arg(text, "text")?;
        let r = e.register_item(text)?;
        out_string(
            out,
            serde_json::to_string(&r).map_err(|e| Fail(NAVIGEN_ERR_INTERNAL, e.to_string()))?,
        )
    })
}

/// Fills `out` with the defaults.
#[no_mangle]
pub unsafe extern "C" fn navigen_instruction_default_params(
    out: *mut navigen_instruction_params,
) -> navigen_status {
    guard(|| {
        let d = InstructionOptions::default();
        *out_arg(out, "out")? = navigen_instruction_params {
            max_think_tokens: d.max_think_tokens,
            max_answer_tokens: d.max_answer_tokens,
            temperature: d.temperature,
            top_p: d.top_p,
        };
        Ok(())
    })
}

/// Writes a creation instruction for what `history` points to. `params` may be NULL for the defaults;
/// `callback` (may be NULL) receives the text as it is generated. `*out_json` receives
/// `{"target_tid":[...],"target_ins":"...","reasoning":...,"parsed":bool,"raw":"...","timings":{...}}`.
#[no_mangle]
pub unsafe extern "C" fn navigen_generate_instruction(
    engine: *const navigen_engine,
    history: *const *const c_char,
    history_len: usize,
    params: *const navigen_instruction_params,
    callback: navigen_token_callback,
    user: *mut c_void,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_arg(out_json, "out_json")?;
        *out = std::ptr::null_mut();
        let e = engine_arg(engine)?;
        let h = list_arg(history, history_len)?;
        let opts = match params.as_ref() {
            Some(p) => {
                if !(p.temperature.is_finite() && p.temperature >= 0.0 && p.top_p.is_finite())
                    || p.max_answer_tokens == 0
                    || p.max_answer_tokens > 4096
                    || p.max_think_tokens > 4096
                {
                    return Err(invalid("instruction params out of range"));
                }
                InstructionOptions {
                    max_think_tokens: p.max_think_tokens,
                    max_answer_tokens: p.max_answer_tokens,
                    temperature: p.temperature,
                    top_p: p.top_p,
                }
            }
            None => InstructionOptions::default(),
        };
        let mut on_piece = |s: &str| -> bool {
            match callback {
                // A panic cannot cross the callback either: C code does not unwind.
                Some(cb) => cb(s.as_ptr() as *const c_char, s.len(), user),
                None => true,
            }
        };
        let ins = e.generate_instruction(&h, &opts, &mut on_piece)?;
        out_string(
            out,
            serde_json::to_string(&ins).map_err(|e| Fail(NAVIGEN_ERR_INTERNAL, e.to_string()))?,
        )
    })
}

/// Fills `out` with the defaults (fsync on every append, 10,000 events per profile, no age limit).
#[no_mangle]
pub unsafe extern "C" fn navigen_history_default_params(
    out: *mut navigen_history_params,
) -> navigen_status {
    guard(|| {
        let d = HistoryParams::default();
        *out_arg(out, "out")? = navigen_history_params {
            sync_every_append: d.sync == Sync::EveryAppend,
            max_items: d.max_items,
            max_age_ms: d.max_age_ms,
        };
        Ok(())
    })
}

/// Opens (creating if needed) a history folder. `params` may be NULL for the defaults.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_open(
    dir: *const c_char,
    params: *const navigen_history_params,
    out: *mut *mut navigen_history,
) -> navigen_status {
    guard(|| {
        let out = out_arg(out, "out")?;
        *out = std::ptr::null_mut();
        let dir = str_arg(dir, "dir")?;
        let p = match params.as_ref() {
            Some(p) => {
                if p.max_age_ms < 0 {
                    return Err(invalid("max_age_ms is negative"));
                }
                HistoryParams {
                    sync: if p.sync_every_append {
                        Sync::EveryAppend
                    } else {
                        Sync::Os
                    },
                    max_items: p.max_items,
                    max_age_ms: p.max_age_ms,
                }
            }
            None => HistoryParams::default(),
        };
        let h = History::open(Path::new(dir), p)?;
        *out = Box::into_raw(Box::new(navigen_history {
            magic: HISTORY_MAGIC,
            inner: h,
        }));
        Ok(())
    })
}

/// Releases a history (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn navigen_history_free(history: *mut navigen_history) {
    if history.is_null() || (*history).magic != HISTORY_MAGIC {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        (*history).magic = 0;
        drop(Box::from_raw(history));
    }));
}

/// Appends an event: `kind` 0 view, 1 click, 2 purchase, 3 play, 4 rate, 5 like, 255 other.
/// Returns once the record is written (and synced, by default).
#[no_mangle]
pub unsafe extern "C" fn navigen_history_append(
    history: *const navigen_history,
    profile: *const c_char,
    item_id: *const c_char,
    kind: u32,
    timestamp_ms: i64,
) -> navigen_status {
    guard(|| {
        let h = history_arg(history)?;
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
        let out = out_arg(out_json, "out_json")?;
        *out = std::ptr::null_mut();
        let h = history_arg(history)?;
        let ids = h.item_ids(str_arg(profile, "profile")?)?;
        out_string(
            out,
            serde_json::to_string(&ids).map_err(|e| Fail(NAVIGEN_ERR_INTERNAL, e.to_string()))?,
        )
    })
}

/// Removes every byte of the profile from disk.
#[no_mangle]
pub unsafe extern "C" fn navigen_history_forget(
    history: *const navigen_history,
    profile: *const c_char,
) -> navigen_status {
    guard(|| {
        history_arg(history)?.forget(str_arg(profile, "profile")?)?;
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
        let out = out_arg(out_json, "out_json")?;
        *out = std::ptr::null_mut();
        let h = history_arg(history)?;
        let cat = if engine.is_null() {
            None
        } else {
            Some(engine_arg(engine)?.catalog())
        };
        out_string(out, h.export_json(str_arg(profile, "profile")?, cat)?)
    })
}
