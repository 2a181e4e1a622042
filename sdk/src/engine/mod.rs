//! The engine: a bundle opened on llama.cpp, with next-item prediction (beam search constrained to the
//! catalog's CIDs) and instruction generation (bounded reasoning, then a JSON grammar), streaming and
//! cancellation.
//!
//! Threading: an `Engine` is `Send + Sync`. Every call creates its own llama.cpp context, so calls from
//! several threads are safe; they share the cores, so for speed run one call at a time per engine.
//! [`Engine::cancel`] may be called from any thread: every call in flight stops at its next decode step
//! (prompts are decoded in chunks so that this is quick) and returns [`Error::Cancelled`].
//!
//! One file per concept, in the manner of llama.cpp's `src/llama-*.cpp`:
//! - `mod.rs`: the public types, [`Engine::open`], accessors, cancellation;
//! - `context.rs`: the llama.cpp context of one call;
//! - `feed.rs`: prompt decoding in chunks, with the cancel check between chunks;
//! - `generation.rs`: the state of one generation and its token loop (stream, feed, sample a phase);
//! - `sampling.rs`: how the next token is chosen, the JSON grammar check included;
//! - `predict.rs`: next-item prediction (beam search restricted by the CID trie);
//! - `instruct.rs`: instruction generation (bounded reasoning, then the answer grammar);
//! - `register.rs`: giving a new item's text its CID;
//! - `speed.rs`: speed measurement under llama-bench's protocol.

mod context;
mod feed;
mod generation;
mod instruct;
mod predict;
mod register;
mod sampling;
mod speed;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bundle::Manifest;
use crate::cid::{code_token, Cid, CID_BEGIN, CID_END};
use crate::embedding::TextEmbedder;
use crate::error::{Error, Result};
use crate::format::{Catalog, Codebooks};
use crate::llm::{self, Model};
use crate::trie::CidTrie;

pub use instruct::{answer_grammar, Utf8Stream};
pub use predict::{PredictOptions, MAX_BEAMS, MAX_K};

/// Parameters of [`Engine::open`] (see [`EngineParams::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineParams {
    /// CPU threads; 0 = the cores available to the process.
    pub threads: u32,
    /// Layers offloaded to a GPU backend (Metal/Vulkan builds); 0 on CPU.
    pub gpu_layers: u32,
    /// Context size for one call (prompt + generated tokens); 0 = 4096 or the model's maximum.
    pub context_size: u32,
    /// Seed of sampling (only used when a temperature is set).
    pub seed: u32,
    /// How long one chunk of a prompt should take, in ms (0 = 250). Prompts are decoded in chunks
    /// and a cancel is honoured between chunks, so this bounds the delay of a cancel during a prompt;
    /// larger chunks are more efficient (on a 2-core CPU with SmolLM2, 250 ms gave 0.91x llama-bench's
    /// prefill speed and unchunked prompts 1.03x).
    #[serde(default)]
    pub prompt_chunk_ms: u32,
    /// Let llama.cpp offload large batches to a GPU even for layers kept on the CPU. Off unless a real
    /// GPU is present (a CPU Vulkan device such as lavapipe makes it very slow).
    pub op_offload: bool,
    /// Check the sha256 of every bundle file against the manifest at every open (slower open). Off,
    /// a file is hashed only when its size, modification time or inode changed since it was last
    /// verified (`bundle::VERIFIED_STAMP` in the bundle folder; every open when that cannot be written).
    pub verify_checksums: bool,
}

impl Default for EngineParams {
    fn default() -> Self {
        EngineParams {
            threads: 0,
            gpu_layers: 0,
            context_size: 0,
            seed: 0,
            prompt_chunk_ms: 250,
            op_offload: false,
            verify_checksums: false,
        }
    }
}

impl EngineParams {
    /// Most CPU threads accepted (llama.cpp takes an i32).
    pub const MAX_THREADS: u32 = 1024;
    /// Largest context accepted (tokens).
    pub const MAX_CONTEXT: u32 = 1 << 20;

    /// Refuses values llama.cpp would misread (a thread count that wraps to a negative i32, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: u32, max: u32| {
            Err(Error::InvalidArgument(format!(
                "{what} = {v}: at most {max}"
            )))
        };
        if self.threads > Self::MAX_THREADS {
            return bad("threads", self.threads, Self::MAX_THREADS);
        }
        if self.context_size > Self::MAX_CONTEXT {
            return bad("context_size", self.context_size, Self::MAX_CONTEXT);
        }
        if self.gpu_layers > i32::MAX as u32 {
            return bad("gpu_layers", self.gpu_layers, i32::MAX as u32);
        }
        if self.prompt_chunk_ms > 60_000 {
            return bad("prompt_chunk_ms", self.prompt_chunk_ms, 60_000);
        }
        Ok(())
    }
}

/// One predicted item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub title: String,
    pub cid: String,
    /// Log-probability of the CID under the model, each level's softmax taken over the codes the
    /// catalog allows after the levels before it.
    pub score: f32,
}

/// Options of [`Engine::generate_instruction`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstructionOptions {
    /// Most reasoning tokens before the answer is forced.
    pub max_think_tokens: u32,
    /// Most tokens of the JSON answer.
    pub max_answer_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// Greedy decoding never repeats an n-gram of this many tokens within the JSON answer (0 or 1:
    /// off). Supervised answers never repeat a term, so a repeat there is degeneration.
    pub no_repeat_ngram: u32,
    /// Seed of this call's sampling (`None`: the engine's [`EngineParams::seed`]); several samples of
    /// one history need different seeds (the trainer's GRPO rollouts).
    #[serde(default)]
    pub seed: Option<u32>,
}

/// Default of [`InstructionOptions::no_repeat_ngram`].
pub const DEFAULT_NO_REPEAT_NGRAM: u32 = 3;

impl Default for InstructionOptions {
    fn default() -> Self {
        InstructionOptions {
            max_think_tokens: 256,
            max_answer_tokens: 192,
            temperature: 0.0,
            top_p: 0.95,
            no_repeat_ngram: DEFAULT_NO_REPEAT_NGRAM,
            seed: None,
        }
    }
}

/// Timings of a call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub prompt_tokens: u32,
    pub prompt_ms: f64,
    pub generated_tokens: u32,
    pub generate_ms: f64,
    /// Of `generate_ms`: time in llama.cpp's decode.
    #[serde(default)]
    pub decode_ms: f64,
    /// Of `generate_ms`: time choosing tokens, the JSON grammar included.
    #[serde(default)]
    pub sample_ms: f64,
    /// Of `sample_ms`: the answer phase, under the grammar.
    #[serde(default)]
    pub grammar_sample_ms: f64,
    /// Tokens sampled in the answer phase.
    #[serde(default)]
    pub grammar_tokens: u32,
}

/// Where the time of a [`Engine::predict`] call went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictTimings {
    pub prompt_tokens: u32,
    pub prompt_ms: f64,
    /// Beam steps: time in llama.cpp's decode.
    pub decode_ms: f64,
    /// Normalising logits to log-probabilities (any beam search pays it).
    pub normalize_ms: f64,
    /// The trie constraint: allowed codes of each beam, candidate scores and ranking. This is what
    /// constrained decoding adds to the model's own cost.
    pub constrain_ms: f64,
    pub total_ms: f64,
}

/// A generated instruction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    pub target_tid: Vec<String>,
    pub target_ins: String,
    pub reasoning: Option<String>,
    /// Whether the answer parsed as the expected JSON object.
    pub parsed: bool,
    /// Everything the model wrote.
    pub raw: String,
    pub timings: Timings,
}

/// Token ids of the CID vocabulary.
struct CidTokens {
    /// [level][code] -> token
    codes: Vec<Vec<i32>>,
}

/// Where a new item's text lands in the catalog's CID space ([`Engine::register_item`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The CID the codebooks give the text (nearest code at every level).
    pub cid: String,
    /// The catalog item that already holds `cid`, if any.
    pub taken_by: Option<TakenBy>,
    /// The nearest CID with the same first levels that no catalog item holds: `cid` itself when it is
    /// free; `None` when every last-level code under that prefix is taken.
    pub free_cid: Option<String>,
    /// Squared distance between the text's embedding and the reconstruction from `cid`.
    pub distance: f32,
}

/// A catalog item holding a CID.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TakenBy {
    pub id: String,
    pub title: String,
}

pub use crate::bundle::Kind;

/// Beam width of next-item prediction when the caller does not choose one (the C ABI, the CLI):
/// the search keeps `max(k, beams)` candidates.
pub const DEFAULT_BEAMS: usize = 20;

pub struct Engine {
    model: Model,
    catalog: Catalog,
    codebooks: Option<Codebooks>,
    trie: CidTrie,
    cid_tokens: Option<CidTokens>,
    kind: Kind,
    params: EngineParams,
    dir: PathBuf,
    manifest: Manifest,
    /// llama.cpp context creation touches the model: serialise it.
    ctx_lock: Mutex<()>,
    cancel_epoch: AtomicU64,
    /// Opened on the first `register_item` (most calls never need it).
    embedder: Mutex<Option<Arc<TextEmbedder>>>,
}

impl Engine {
    /// Opens a bundle folder (see `bundle.json`).
    pub fn open(dir: &Path, params: EngineParams) -> Result<Self> {
        params.validate()?;
        let manifest = Manifest::read(dir)?;
        let kind = manifest.kind;
        for e in std::iter::once(&manifest.model)
            .chain(manifest.catalog.iter())
            .chain(manifest.codebooks.iter())
            .chain(manifest.embedder.iter())
        {
            let p = Manifest::path(dir, e);
            let len = std::fs::metadata(&p)
                .map_err(|err| Error::io(&p, err))?
                .len();
            if len != e.bytes {
                return Err(Error::Mismatch(format!(
                    "{}: {len} bytes, the manifest says {} (incomplete copy?)",
                    p.display(),
                    e.bytes
                )));
            }
        }
        let cat_entry = manifest
            .catalog
            .as_ref()
            .ok_or_else(|| Error::Mismatch("the bundle has no catalog".into()))?;
        let catalog = Catalog::open(&Manifest::path(dir, cat_entry))?;
        let codebooks = manifest
            .codebooks
            .as_ref()
            .map(|e| Codebooks::open(&Manifest::path(dir, e)))
            .transpose()?;
        if let Some(cb) = &codebooks {
            if cb.centroid_crc() != catalog.codebooks_crc()
                || cb.sizes() != catalog.sizes().as_slice()
            {
                return Err(Error::Mismatch(
                    "the catalog was not made with these codebooks".into(),
                ));
            }
        }
        // The catalog and codebooks checked their own CRCs above (a precise Format error); the
        // GGUFs have none, and llama.cpp's loader must not see a damaged one.
        let files: Vec<&crate::bundle::FileEntry> = std::iter::once(&manifest.model)
            .chain(manifest.catalog.iter())
            .chain(manifest.codebooks.iter())
            .chain(manifest.embedder.iter())
            .collect();
        crate::bundle::verify_files(dir, &files, params.verify_checksums)?;
        llm::backend()?;
        let model = Model::load(&Manifest::path(dir, &manifest.model), params.gpu_layers)?;
        let cid_tokens = match kind {
            Kind::Finetuned => Some(Self::map_cid_tokens(&model, &catalog)?),
            Kind::ZeroShot => None,
        };
        let trie = CidTrie::from_catalog(&catalog);
        Ok(Engine {
            model,
            catalog,
            codebooks,
            trie,
            cid_tokens,
            kind,
            params,
            dir: dir.to_path_buf(),
            manifest,
            ctx_lock: Mutex::new(()),
            cancel_epoch: AtomicU64::new(0),
            embedder: Mutex::new(None),
        })
    }

    /// Every CID token of the catalog must be one token of the model's vocabulary.
    fn map_cid_tokens(model: &Model, cat: &Catalog) -> Result<CidTokens> {
        let one = |text: &str| -> Result<i32> {
            match model.tokenize(text).as_slice() {
                [t] => Ok(*t),
                other => Err(Error::Mismatch(format!(
                    "the model's vocabulary lacks the CID token {text} (it splits into {} tokens): was it trained with this catalog?",
                    other.len()
                ))),
            }
        };
        let codes = cat
            .sizes()
            .iter()
            .enumerate()
            .map(|(l, &k)| {
                (0..k)
                    .map(|c| one(&code_token(l, c as u16)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        // The markers are in every prompt that names an item (cid2ins, cid2tid).
        one(CID_BEGIN)?;
        one(CID_END)?;
        Ok(CidTokens { codes })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    pub fn codebooks(&self) -> Option<&Codebooks> {
        self.codebooks.as_ref()
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Stops every call in flight at its next decode step.
    pub fn cancel(&self) {
        self.cancel_epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn check(&self, epoch: u64) -> Result<()> {
        if self.cancel_epoch.load(Ordering::SeqCst) != epoch {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// History ids -> CIDs of the items in the catalog (unknown ids are skipped, most recent kept).
    fn history_cids(&self, history: &[&str]) -> Vec<Cid> {
        let known: Vec<Cid> = history
            .iter()
            .filter_map(|id| self.catalog.find_id(id))
            .filter_map(|i| self.catalog.item(i))
            .map(|it| it.cid)
            .collect();
        let n = known.len();
        known[n.saturating_sub(self.manifest.max_history)..].to_vec()
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values llama.cpp would misread are refused before a bundle is touched.
    #[test]
    fn engine_params_out_of_range_are_refused() {
        assert!(EngineParams::default().validate().is_ok());
        let with = |f: fn(&mut EngineParams)| {
            let mut p = EngineParams::default();
            f(&mut p);
            p
        };
        for p in [
            with(|p| p.threads = u32::MAX), // wrapped to -1 as an i32 before
            with(|p| p.threads = EngineParams::MAX_THREADS + 1),
            with(|p| p.context_size = u32::MAX),
            with(|p| p.gpu_layers = u32::MAX),
            with(|p| p.prompt_chunk_ms = 3_600_000),
        ] {
            let e = Engine::open(Path::new("/nonexistent-bundle"), p.clone())
                .err()
                .expect("refused");
            assert!(matches!(e, Error::InvalidArgument(_)), "{p:?}: {e}");
        }
        assert!(with(|p| p.threads = 64).validate().is_ok());
    }
}
