//! navigen-train: builds what the navigen SDK runs. Data -> embeddings -> CIDs -> TIDs -> supervision
//! -> SFT -> GRPO -> export.
//!
//! Module order. Every import points to the left, or into the plumbing; nothing runs back up the
//! pipeline:
//!
//! - plumbing (uses no pipeline stage): `assets`, `progress`, `device`, `files`, `gguf` (the one GGUF
//!   writer), `tokenizer`, `model` (decoder, weights, packed batches, presets, GGUF import/export),
//!   `score` (pure metrics), `run` (run folder, checkpoints, metrics, optimiser: what every training
//!   stage shares);
//! - pipeline: `data` -> `embed` -> `rq` -> `tid` -> `prepare` (drives the four before it) -> `tasks`
//!   (task formats) -> `teach` (searched supervision) -> `sft` -> `rl` -> `export` -> `eval`; a training stage uses `run` and `model`,
//!   never another stage's internals;
//! - tools over all of it: `bench`, `inspect`, `cli` (the commands the binary dispatches to).
//!
//! The global allocator (mimalloc) is the binary's (`src/main.rs`), not the library's.

/// Keeps freed memory in the process instead of purging it to the OS after 10 ms: training frees and
/// reallocates the same large activations every step. Option 15 is `mi_option_purge_delay` in the
/// mimalloc v2 that libmimalloc-sys 0.1.49 builds (a positive delay in ms by default; checked first).
/// It tunes mimalloc, which the `navigen-train` binary installs as its global allocator.
pub fn tune_allocator() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option getters/setters of the linked allocator.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) > 0 {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// Sets `RAYON_NUM_THREADS` (when unset) to the CPUs this process may use. candle 0.11.1 asks for its
/// thread count on every matmul and, without that variable, counts physical cores by parsing
/// `/proc/cpuinfo` each time: a quarter of a tiny-preset training step went to the kernel formatting
/// that file (perf, docs/benchmarks.md). Call it first in `main`, before any thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// The CPU threads the trainer may use (`RAYON_NUM_THREADS`, which `pin_thread_count` sets; 0 = all),
/// for the llama.cpp engines, embedders and judges it opens as well as candle: an engine left at the
/// machine's core count spins its OpenMP threads against the trainer's and any job beside it (a GRPO
/// step with one thread asked for took minutes instead of seconds beside an eval).
pub fn thread_count() -> u32 {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Engine parameters for an engine the trainer opens: the device's defaults on `thread_count()` threads.
pub fn engine_params() -> navigen::engine::EngineParams {
    navigen::engine::EngineParams {
        threads: thread_count(),
        ..Default::default()
    }
}

// Plumbing.
pub mod assets;
pub mod device;
pub mod files;
pub mod gguf;
pub mod model;
pub mod progress;
pub mod run;
pub mod score;
pub mod tokenizer;

// The pipeline, in order (blank lines keep rustfmt from sorting it).
pub mod data;

pub mod embed;

pub mod rq;

pub mod tid;

pub mod prepare;

pub mod tasks;

pub mod teach;

/// GRPO, the third stage: rollouts, rewards, the objective and the watch.
pub mod rl;
pub mod sft;

pub mod export;

pub mod eval;

// Tools.
pub mod bench;
pub mod cli;
pub mod inspect;
