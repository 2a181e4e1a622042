//! Thin glue over llama.cpp (through `llama-cpp-2`): the process-wide backend, the loaded [`Model`]
//! (tokenisation with special tokens, and plain greedy decoding, used to verify exports and by tests).
//! The engine builds its decode loops on these. No `llama-cpp-2` type is public: the pinned version
//! of that crate is an internal detail of navigen.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::{Error, Result};

/// The llama.cpp backend. llama.cpp allows one initialisation per process, so it is shared.
pub(crate) fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("NAVIGEN_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(|e| Error::Llama(format!("backend initialisation failed: {e}")))
}

/// A GGUF model loaded on llama.cpp (memory-mapped). Tokens are plain `i32` ids.
pub struct Model {
    inner: LlamaModel,
}

impl Model {
    /// Loads a GGUF model (memory-mapped) with `gpu_layers` layers offloaded.
    pub fn load(path: &Path, gpu_layers: u32) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            ));
        }
        // llama.cpp's loader asserts on some malformed headers (an abort of the app): read the
        // header in safe Rust first.
        crate::format::gguf::validate_file(path)?;
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(gpu_layers)
            .with_use_mmap(true);
        LlamaModel::load_from_file(backend()?, path, &params)
            .map(|inner| Model { inner })
            .map_err(|e| Error::Llama(format!("loading {}: {e}", path.display())))
    }

    /// Token ids of `text`, with special and added tokens recognised, no BOS added.
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.inner
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    /// Size of the vocabulary.
    pub fn n_vocab(&self) -> i32 {
        self.inner.n_vocab()
    }

    /// The bytes of token `t` (special tokens rendered as their text). A piece may end inside a UTF-8
    /// character: see [`crate::engine::Utf8Stream`].
    pub fn token_to_piece(&self, t: i32) -> Vec<u8> {
        self.inner.vocab().token_to_piece(LlamaToken(t), true, None)
    }

    /// Whether `t` ends generation.
    pub fn is_eog(&self, t: i32) -> bool {
        self.inner.vocab().is_eog(LlamaToken(t))
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> i32 {
        self.inner.vocab().bos().0
    }

    /// Greedy decoding (argmax of the raw logits) of up to `max_new` tokens after `prompt`, stopping
    /// after an end-of-generation token.
    pub fn greedy(&self, prompt: &[i32], max_new: usize, threads: i32) -> Result<Vec<i32>> {
        let n_ctx = (prompt.len() + max_new + 8) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = self
            .inner
            .new_context(backend()?, params)
            .map_err(Error::llama)?;
        let mut batch = LlamaBatch::new(n_ctx as usize, 1);
        for (i, &t) in prompt.iter().enumerate() {
            batch
                .add(LlamaToken(t), i as i32, &[0], i + 1 == prompt.len())
                .map_err(Error::llama)?;
        }
        ctx.decode(&mut batch).map_err(Error::llama)?;
        let mut out = Vec::new();
        let mut last = batch.n_tokens() - 1;
        // `pos`: where the token chosen in this step goes.
        for pos in (prompt.len() as i32..).take(max_new) {
            let logits = ctx.get_logits_ith(last);
            let next = argmax(logits);
            out.push(next);
            if self.is_eog(next) {
                break;
            }
            batch.clear();
            batch
                .add(LlamaToken(next), pos, &[0], true)
                .map_err(Error::llama)?;
            ctx.decode(&mut batch).map_err(Error::llama)?;
            last = 0;
        }
        Ok(out)
    }

    /// The `llama-cpp-2` model, for the crate's own llama.cpp calls (contexts, samplers, metadata).
    pub(crate) fn llama(&self) -> &LlamaModel {
        &self.inner
    }
}

/// Number of cores to use by default: what the OS says is available.
pub fn default_threads() -> i32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i32)
        .unwrap_or(1)
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as i32
}

/// A compute device llama.cpp can use in this build (the CPU, and Vulkan or Metal devices when built
/// with those features).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// e.g. "CPU", "Vulkan0".
    pub name: String,
    pub description: String,
    /// e.g. "CPU", "Vulkan", "Metal".
    pub backend: String,
}

/// The devices llama.cpp sees. A CPU-type Vulkan device (Mesa's lavapipe) is listed only when
/// `GGML_VK_VISIBLE_DEVICES` names it.
pub fn devices() -> Result<Vec<Device>> {
    backend()?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| Device {
            name: d.name,
            description: d.description,
            backend: d.backend,
        })
        .collect())
}
