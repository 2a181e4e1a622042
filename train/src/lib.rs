//! navigen-train: builds what the navigen SDK runs. Data -> embeddings -> CIDs -> TIDs -> supervision
//! -> SFT -> GRPO -> export.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory in the process instead of purging it to the OS after 10 ms: training frees and
/// reallocates the same large activations every step. Option 15 is `mi_option_purge_delay` in the
/// mimalloc v2 that libmimalloc-sys 0.1.49 builds (a positive delay in ms by default; checked first).
pub fn tune_allocator() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain option getters/setters of the linked allocator.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) > 0 {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

pub mod assets;
pub mod bench;
pub mod data;
pub mod device;
pub mod embed;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod model;
pub mod prepare;
pub mod progress;
pub mod rq;
pub mod sft;
pub mod tasks;
pub mod tid;
pub mod tokenizer;
