//! Item-text embeddings on llama.cpp: the sentence-embedding model (all-MiniLM-L6-v2, exported by
//! `navigen-train export-embedder` as a `bert` GGUF) with mean pooling and L2 normalisation, as
//! sentence-transformers computes it.
//!
//! The trainer embeds the catalog through this same code and file, so an item registered on the device
//! lands on the CID the trainer would have given it (on the same CPU kind; other SIMD paths can differ
//! in the last bits, which matters only for near-ties between codes).
//!
//! Texts are embedded one per llama.cpp call: the arithmetic of a text then never depends on what else
//! is in the batch, which is what makes the trainer's and the device's vectors bit-identical.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;

use crate::error::{Error, Result};
use crate::llm::{self, Model};

/// The sentence-embedding model whose space the codebooks live in.
pub const EMBEDDER_NAME: &str = "all-MiniLM-L6-v2";
/// Texts are cut to this many tokens (including [CLS]/[SEP]) before embedding, as sentence-transformers does.
pub const MAX_TOKENS: usize = 256;
/// File name of the embedder inside a prepared data folder and a bundle.
pub const FILE_NAME: &str = "embedder.gguf";
/// GGUF key naming the embedder (so a wrong file is refused with a clear message).
pub const GGUF_NAME_KEY: &str = "navigen.embedder";

/// A text embedder on llama.cpp.
pub struct TextEmbedder {
    model: Model,
    threads: i32,
    dim: usize,
    /// llama.cpp context creation touches the model: serialise it.
    ctx_lock: Mutex<()>,
}

impl TextEmbedder {
    /// Opens an embedder GGUF; `threads` 0 = the cores available.
    pub fn open(path: &Path, threads: u32) -> Result<Self> {
        let model = Model::load(path, 0)?;
        let arch = model
            .llama()
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let name = model
            .llama()
            .meta_val_str(GGUF_NAME_KEY)
            .unwrap_or_default();
        if arch != "bert" || name != EMBEDDER_NAME {
            return Err(Error::Mismatch(format!(
                "{} is not a navigen embedder (architecture {arch:?}, {GGUF_NAME_KEY} {name:?}; expected bert / {EMBEDDER_NAME})",
                path.display()
            )));
        }
        let dim = model.llama().n_embd_out().max(0) as usize;
        let threads = if threads == 0 {
            llm::default_threads()
        } else {
            threads as i32
        };
        Ok(TextEmbedder {
            model,
            threads,
            dim,
            ctx_lock: Mutex::new(()),
        })
    }

    /// Length of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Token ids of `text` as the model sees it: [CLS] … [SEP], cut to [`MAX_TOKENS`] keeping [SEP].
    pub fn tokens(&self, text: &str) -> Vec<i32> {
        let mut t: Vec<i32> = self
            .model
            .llama()
            .vocab()
            .tokenize(text.as_bytes(), true, false)
            .into_iter()
            .map(|t| t.0)
            .collect();
        if t.len() > MAX_TOKENS {
            let last = *t.last().expect("non-empty");
            t.truncate(MAX_TOKENS - 1);
            t.push(last);
        }
        t
    }

    fn context(&self) -> Result<LlamaContext<'_>> {
        let n = MAX_TOKENS as u32;
        let p = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n))
            .with_n_batch(n)
            .with_n_ubatch(n)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_op_offload(false);
        let _g = self.ctx_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.model
            .llama()
            .new_context(llm::backend()?, p)
            .map_err(Error::llama)
    }

    fn embed_in(
        &self,
        ctx: &mut LlamaContext<'_>,
        batch: &mut LlamaBatch,
        text: &str,
    ) -> Result<Vec<f32>> {
        let tokens = self.tokens(text);
        batch.clear();
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(llama_cpp_2::token::LlamaToken(t), i as i32, &[0], true)
                .map_err(Error::llama)?;
        }
        ctx.encode(batch).map_err(Error::llama)?;
        let v = ctx.embeddings_seq_ith(0).map_err(Error::llama)?;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let out: Vec<f32> = v.iter().map(|x| x / norm).collect();
        if out.len() != self.dim || out.iter().any(|x| !x.is_finite()) {
            return Err(Error::Llama(format!(
                "the embedder returned {} values (expected {} finite ones)",
                out.len(),
                self.dim
            )));
        }
        Ok(out)
    }

    /// The unit-length embedding of one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut ctx = self.context()?;
        let mut batch = LlamaBatch::new(MAX_TOKENS, 1);
        self.embed_in(&mut ctx, &mut batch, text)
    }

    /// Embeddings of many texts (one context reused); `progress(done)` after each text.
    pub fn embed_many(
        &self,
        texts: &[&str],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let mut ctx = self.context()?;
        let mut batch = LlamaBatch::new(MAX_TOKENS, 1);
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            out.push(self.embed_in(&mut ctx, &mut batch, t)?);
            progress(i + 1);
        }
        Ok(out)
    }
}
