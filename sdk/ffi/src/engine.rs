//! The engine: an opened bundle, and its exports (open/free, cancel, next-item prediction, item
//! registration, creation instructions) with their parameter structs.

use std::ffi::{c_char, c_void};
use std::path::Path;

use navigen::engine::{Engine, EngineParams, InstructionOptions, PredictOptions};

use crate::boundary::{guard, guard_void, invalid, navigen_status, Fail};
use crate::convert::{list_arg, out_arg, out_ptr_arg, out_string, str_arg};
use crate::handle::{self, Handle};
use crate::history::navigen_history;

/// An opened bundle.
pub struct navigen_engine {
    _opaque: [u8; 0],
}

impl Handle for navigen_engine {
    type Value = Engine;
    const MAGIC: u64 = 0x4e41_5649_454e_4731; // "NAVIENG1"
    const ARG: &'static str = "engine";
    const C_TYPE: &'static str = "navigen_engine";
}

/// Streaming callback: a piece of generated text (whole UTF-8 characters, not NUL-terminated) and the
/// user pointer. `piece` is valid only during the call: copy the bytes to keep them. Return false to
/// stop generation.
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
    /// Verify every bundle file's sha256 at every open. Off (the default), a file is hashed at the
    /// first open and again only when its size, modification time or inode changed (a stamp file in
    /// the bundle folder; at every open when the folder is read-only).
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
    /// Greedy decoding never repeats an n-gram of this many tokens within the JSON answer (0: off;
    /// default 3).
    pub no_repeat_ngram: u32,
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

impl From<InstructionOptions> for navigen_instruction_params {
    fn from(d: InstructionOptions) -> Self {
        navigen_instruction_params {
            max_think_tokens: d.max_think_tokens,
            max_answer_tokens: d.max_answer_tokens,
            temperature: d.temperature,
            top_p: d.top_p,
            no_repeat_ngram: d.no_repeat_ngram,
        }
    }
}

/// The options a caller's params ask for; INVALID_ARGUMENT when they are out of range.
fn instruction_options(p: &navigen_instruction_params) -> Result<InstructionOptions, Fail> {
    if !(p.temperature.is_finite() && p.temperature >= 0.0 && p.top_p.is_finite())
        || p.max_answer_tokens == 0
        || p.max_answer_tokens > 4096
        || p.max_think_tokens > 4096
        || p.no_repeat_ngram > 64
    {
        return Err(invalid("instruction params out of range"));
    }
    Ok(InstructionOptions {
        max_think_tokens: p.max_think_tokens,
        max_answer_tokens: p.max_answer_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        no_repeat_ngram: p.no_repeat_ngram,
        // The C ABI samples with the engine's seed (navigen_engine_params.seed).
        seed: None,
    })
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
        let out = out_ptr_arg(out, "out")?;
        let dir = str_arg(bundle_dir, "bundle_dir")?;
        let p = params.as_ref().map(EngineParams::from).unwrap_or_default();
        let engine = Engine::open(Path::new(dir), p)?;
        *out = handle::into_raw(engine);
        Ok(())
    })
}

/// Releases an engine (NULL, freed or unknown pointers are ignored). A call in flight on another
/// thread keeps the engine alive until it returns; later calls with this pointer are refused.
#[no_mangle]
pub unsafe extern "C" fn navigen_engine_free(engine: *mut navigen_engine) {
    guard_void(|| handle::free(engine))
}

/// Stops every call in flight on `engine` at its next decode step. Callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn navigen_cancel(engine: *const navigen_engine) -> navigen_status {
    guard(|| {
        handle::arg(engine)?.cancel();
        Ok(())
    })
}

/// Parameters of navigen_predict() and navigen_predict_for_profile(); fill with
/// navigen_predict_default_params().
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct navigen_predict_params {
    /// Items returned (1..=4096; default 10).
    pub k: usize,
    /// Beam width at every CID level but the last (1..=256; default 20): wider finds more of the
    /// catalog's likely items at more decoding cost. `k` may exceed it.
    pub beams: u32,
    /// Leave out the items already in the history (default false: a re-watch predictor keeps them).
    pub exclude_history: bool,
}

impl From<PredictOptions> for navigen_predict_params {
    fn from(o: PredictOptions) -> Self {
        navigen_predict_params {
            k: o.k,
            beams: o.beams as u32,
            exclude_history: o.exclude_history,
        }
    }
}

/// The options a caller's params ask for (`Engine::predict` checks the ranges).
fn predict_options(p: Option<&navigen_predict_params>) -> PredictOptions {
    p.map_or_else(PredictOptions::default, |p| PredictOptions {
        k: p.k,
        beams: p.beams as usize,
        exclude_history: p.exclude_history,
    })
}

/// Fills `out` with the defaults (k 10, 20 beams, history items kept).
#[no_mangle]
pub unsafe extern "C" fn navigen_predict_default_params(
    out: *mut navigen_predict_params,
) -> navigen_status {
    guard(|| {
        *out_arg(out, "out")? = PredictOptions::default().into();
        Ok(())
    })
}

/// The predictions for `history` under `params` (NULL: the defaults) into `out`, as JSON.
unsafe fn predict(
    e: &Engine,
    history: &[&str],
    params: *const navigen_predict_params,
    out: &mut *mut c_char,
) -> Result<(), Fail> {
    let (preds, _) = e.predict(history, &predict_options(params.as_ref()))?;
    out_string(out, serde_json::to_string(&preds)?)
}

/// The item ids of `profile` in `history` (oldest first); INVALID_ARGUMENT when it has none.
unsafe fn profile_items(
    history: *const navigen_history,
    profile: *const c_char,
) -> Result<Vec<String>, Fail> {
    let h = handle::arg(history)?;
    let profile = str_arg(profile, "profile")?;
    let items = h.item_ids(profile)?;
    if items.is_empty() {
        return Err(invalid(format!("profile {profile:?} has no events")));
    }
    Ok(items)
}

/// Like navigen_predict_next(), with the beam width and history exclusion of `params` (NULL for the
/// defaults).
#[no_mangle]
pub unsafe extern "C" fn navigen_predict(
    engine: *const navigen_engine,
    history: *const *const c_char,
    history_len: usize,
    params: *const navigen_predict_params,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_ptr_arg(out_json, "out_json")?;
        let e = handle::arg(engine)?;
        let h = list_arg(history, history_len)?;
        predict(&e, &h, params, out)
    })
}

/// navigen_predict() on the events of `profile` in an opened history (its item ids, oldest first;
/// the engine uses the last ones its prompt holds). INVALID_ARGUMENT when the profile has none.
#[no_mangle]
pub unsafe extern "C" fn navigen_predict_for_profile(
    engine: *const navigen_engine,
    history: *const navigen_history,
    profile: *const c_char,
    params: *const navigen_predict_params,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_ptr_arg(out_json, "out_json")?;
        let e = handle::arg(engine)?;
        let items = profile_items(history, profile)?;
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        predict(&e, &refs, params, out)
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
        let out = out_ptr_arg(out_json, "out_json")?;
        let e = handle::arg(engine)?;
        let h = list_arg(history, history_len)?;
        let preds = e.predict_next(&h, k, navigen::engine::DEFAULT_BEAMS)?;
        out_string(out, serde_json::to_string(&preds)?)
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
        let out = out_ptr_arg(out_json, "out_json")?;
        let e = handle::arg(engine)?;
        let text = str_arg(text, "text")?;
        let r = e.register_item(text)?;
        out_string(out, serde_json::to_string(&r)?)
    })
}

/// Fills `out` with the defaults.
#[no_mangle]
pub unsafe extern "C" fn navigen_instruction_default_params(
    out: *mut navigen_instruction_params,
) -> navigen_status {
    guard(|| {
        *out_arg(out, "out")? = InstructionOptions::default().into();
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
        let out = out_ptr_arg(out_json, "out_json")?;
        let e = handle::arg(engine)?;
        let h = list_arg(history, history_len)?;
        instruct(&e, &h, params, callback, user, out)
    })
}

/// The instruction for `history` into `out`, streaming to `callback`.
unsafe fn instruct(
    e: &Engine,
    history: &[&str],
    params: *const navigen_instruction_params,
    callback: navigen_token_callback,
    user: *mut c_void,
    out: &mut *mut c_char,
) -> Result<(), Fail> {
    let opts = match params.as_ref() {
        Some(p) => instruction_options(p)?,
        None => InstructionOptions::default(),
    };
    let mut on_piece = |s: &str| -> bool {
        match callback {
            // A panic cannot cross the callback either: C code does not unwind.
            Some(cb) => cb(s.as_ptr() as *const c_char, s.len(), user),
            None => true,
        }
    };
    let ins = e.generate_instruction(history, &opts, &mut on_piece)?;
    out_string(out, serde_json::to_string(&ins)?)
}

/// navigen_generate_instruction() on the events of `profile` in an opened history.
/// INVALID_ARGUMENT when the profile has none.
#[no_mangle]
pub unsafe extern "C" fn navigen_generate_instruction_for_profile(
    engine: *const navigen_engine,
    history: *const navigen_history,
    profile: *const c_char,
    params: *const navigen_instruction_params,
    callback: navigen_token_callback,
    user: *mut c_void,
    out_json: *mut *mut c_char,
) -> navigen_status {
    guard(|| {
        let out = out_ptr_arg(out_json, "out_json")?;
        let e = handle::arg(engine)?;
        let items = profile_items(history, profile)?;
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        instruct(&e, &refs, params, callback, user, out)
    })
}
