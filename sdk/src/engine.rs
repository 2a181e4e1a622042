//! The engine: a bundle opened on llama.cpp, with next-item prediction (beam search constrained to the
//! catalog's CIDs) and instruction generation (bounded reasoning, then a JSON grammar), streaming and
//! cancellation.
//!
//! Threading: an `Engine` is `Send + Sync`. Every call creates its own llama.cpp context, so calls from
//! several threads are safe; they share the cores, so for speed run one call at a time per engine.
//! [`Engine::cancel`] may be called from any thread: every call in flight stops at its next decode step
//! (prompts are decoded in chunks so that this is quick) and returns [`Error::Cancelled`].

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use crate::bundle::Manifest;
use crate::cid::{code_token, Cid, CID_BEGIN, CID_END};
use crate::embedding::TextEmbedder;
use crate::error::{Error, Result};
use crate::format::{Catalog, Codebooks};
use crate::llm;
use crate::prompt::{self, Mode};
use crate::trie::CidTrie;

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
    /// Check the sha256 of every bundle file against the manifest at open (slower open).
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

/// One predicted item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub title: String,
    pub cid: String,
    /// Log-probability of the CID under the model.
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
}

impl Default for InstructionOptions {
    fn default() -> Self {
        InstructionOptions {
            max_think_tokens: 256,
            max_answer_tokens: 192,
            temperature: 0.0,
            top_p: 0.95,
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

/// Where the time of a [`Engine::predict_next_timed`] call went.
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
    begin: i32,
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

/// What kind of model the bundle holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Fine-tuned: CID tokens in the vocabulary; prediction and instruction.
    Finetuned,
    /// An instruct model without CID tokens: instructions from titles and terms only.
    ZeroShot,
}

pub struct Engine {
    model: LlamaModel,
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

/// Prompt chunks: first and smallest size, largest size (llama.cpp's default micro-batch), and the
/// time one chunk should take (the worst-case delay of a cancel during a prompt).
const CHUNK_MIN: usize = 64;
const CHUNK_MAX: usize = 512;
const CHUNK_TARGET_S: f64 = 0.25;

fn llama_err(e: impl std::fmt::Display) -> Error {
    Error::Llama(e.to_string())
}

impl Engine {
    /// Opens a bundle folder (see `bundle.json`).
    pub fn open(dir: &Path, params: EngineParams) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let kind = match manifest.kind.as_str() {
            "finetuned" => Kind::Finetuned,
            "zero-shot" => Kind::ZeroShot,
            k => return Err(Error::Mismatch(format!("unknown bundle kind {k:?}"))),
        };
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
            if params.verify_checksums {
                let got = crate::bundle::sha256_file(&p)?;
                if got != e.sha256 {
                    return Err(Error::Mismatch(format!(
                        "{}: sha256 {got} differs from the manifest's {}",
                        p.display(),
                        e.sha256
                    )));
                }
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
        llm::backend()?;
        let model = llm::load_model(&Manifest::path(dir, &manifest.model), params.gpu_layers)?;
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
    fn map_cid_tokens(model: &LlamaModel, cat: &Catalog) -> Result<CidTokens> {
        let one = |text: &str| -> Result<i32> {
            match llm::tokenize(model, text).as_slice() {
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
        one(CID_END)?;
        Ok(CidTokens {
            begin: one(CID_BEGIN)?,
            codes,
        })
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
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// Gives a text that is not in the catalog its CID: the bundle's embedder embeds it on llama.cpp
    /// and the memory-mapped codebooks quantise it, exactly as the trainer did for the catalog. Reports
    /// whether a catalog item already holds that CID and the nearest free one.
    pub fn register_item(&self, text: &str) -> Result<Registration> {
        let cb = self.codebooks.as_ref().ok_or_else(|| {
            Error::NotSupported("registering items needs a bundle with codebooks".into())
        })?;
        let embedder = self.embedder()?;
        let v = embedder.embed(text)?;
        let k_last = *cb.sizes().last().expect("codebooks have a level");
        let ranked = cb.quantize_ranked(&v, k_last)?;
        let prefix = &ranked[..cb.levels() - 1];
        let cid_of = |last: u16| -> Cid {
            let mut c = prefix.to_vec();
            c.push(last);
            Cid::new(&c).expect("levels checked at open")
        };
        let cid = cid_of(ranked[cb.levels() - 1]);
        let taken_by = self
            .catalog
            .find_cid(&cid)
            .and_then(|i| self.catalog.item(i))
            .map(|it| TakenBy {
                id: it.id.to_string(),
                title: it.title.to_string(),
            });
        let free_cid = ranked[cb.levels() - 1..]
            .iter()
            .map(|&c| cid_of(c))
            .find(|c| self.catalog.find_cid(c).is_none())
            .map(|c| c.to_text());
        let (_, distance) = cb.quantize(&v)?;
        Ok(Registration {
            cid: cid.to_text(),
            taken_by,
            free_cid,
            distance,
        })
    }

    /// The bundle's embedder, opened once; it must be the file the codebooks were built with.
    fn embedder(&self) -> Result<Arc<TextEmbedder>> {
        let mut slot = self.embedder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let entry = self.manifest.embedder.as_ref().ok_or_else(|| Error::NotSupported("this bundle has no embedder.gguf: re-export it with a current trainer to register items".into()))?;
        let built_with = self
            .codebooks
            .as_ref()
            .and_then(|cb| cb.info().get("embedder_sha256"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if built_with != entry.sha256 {
            return Err(Error::Mismatch(format!(
                "{} (sha256 {}) is not the embedder the codebooks were built with ({built_with:?})",
                entry.name, entry.sha256
            )));
        }
        let e = Arc::new(TextEmbedder::open(
            &Manifest::path(&self.dir, entry),
            self.params.threads,
        )?);
        *slot = Some(e.clone());
        Ok(e)
    }

    /// Stops every call in flight at its next decode step.
    pub fn cancel(&self) {
        self.cancel_epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn threads(&self) -> i32 {
        if self.params.threads == 0 {
            llm::default_threads()
        } else {
            self.params.threads as i32
        }
    }

    fn context(&self, n_ctx: u32, n_seq: u32) -> Result<LlamaContext<'_>> {
        let max = if self.params.context_size == 0 {
            4096.max(n_ctx)
        } else {
            self.params.context_size
        };
        if n_ctx > max {
            return Err(Error::InvalidArgument(format!(
                "the call needs {n_ctx} tokens of context, the engine allows {max}"
            )));
        }
        let p = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx.max(64))
            .with_n_ubatch(512.min(n_ctx.max(64)))
            .with_n_seq_max(n_seq)
            .with_kv_unified(true)
            .with_n_threads(self.threads())
            .with_n_threads_batch(self.threads())
            .with_op_offload(self.params.op_offload);
        let _g = self.ctx_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.model
            .new_context(llm::backend()?, p)
            .map_err(llama_err)
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
        known[n.saturating_sub(crate::prompt::MAX_HISTORY)..].to_vec()
    }

    /// Decodes `tokens` at positions from `start` on sequence 0 in chunks, checking for cancellation
    /// between chunks; logits only for the last token, whose batch index is returned. Chunks start
    /// at 64 tokens and are then sized from the measured speed to take about
    /// [`EngineParams::prompt_chunk_ms`]: a cancel is honoured that fast on a slow device, while a
    /// fast one feeds big, efficient batches.
    fn feed(&self, ctx: &mut LlamaContext<'_>, tokens: &[i32], start: i32, epoch: u64) -> Result<i32> {
        let target_s = match self.params.prompt_chunk_ms {
            0 => CHUNK_TARGET_S,
            ms => ms as f64 / 1e3,
        };
        let mut chunk = CHUNK_MIN;
        let mut batch = LlamaBatch::new(CHUNK_MAX, 1);
        let mut done = 0;
        let mut last = 0;
        while done < tokens.len() {
            self.check(epoch)?;
            let n = chunk.min(tokens.len() - done);
            batch.clear();
            for (i, &t) in tokens[done..done + n].iter().enumerate() {
                let is_last = done + i + 1 == tokens.len();
                batch.add(LlamaToken(t), start + (done + i) as i32, &[0], is_last).map_err(llama_err)?;
            }
            let t = Instant::now();
            ctx.decode(&mut batch).map_err(llama_err)?;
            ctx.synchronize();
            let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-6);
            chunk = ((rate * target_s) as usize).clamp(CHUNK_MIN, CHUNK_MAX);
            last = n as i32 - 1;
            done += n;
        }
        Ok(last)
    }

    fn check(&self, epoch: u64) -> Result<()> {
        if self.cancel_epoch.load(Ordering::SeqCst) != epoch {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Predicts the next `k` distinct items after `history` (item ids, oldest first) with beam search of
    /// width `max(k, beams)`, every step restricted to codes that continue an existing CID.
    pub fn predict_next(
        &self,
        history: &[&str],
        k: usize,
        beams: usize,
    ) -> Result<Vec<Prediction>> {
        Ok(self.predict_next_timed(history, k, beams)?.0)
    }

    /// [`Self::predict_next`] with the time split between the model and the constraint.
    pub fn predict_next_timed(
        &self,
        history: &[&str],
        k: usize,
        beams: usize,
    ) -> Result<(Vec<Prediction>, PredictTimings)> {
        let t_all = Instant::now();
        let toks = self.cid_tokens.as_ref().ok_or_else(|| {
            Error::NotSupported(
                "next-item prediction needs a fine-tuned bundle (CID tokens)".into(),
            )
        })?;
        if k == 0 || k > 256 {
            return Err(Error::InvalidArgument(format!("k = {k} (1..=256)")));
        }
        let width = beams.max(k).min(256);
        let epoch = self.cancel_epoch.load(Ordering::SeqCst);
        let h = self.history_cids(history);
        if h.is_empty() {
            return Err(Error::InvalidArgument(
                "no item of the history is in the catalog".into(),
            ));
        }
        // Prompt and answer prefix tokenised apart, exactly as in training.
        let mut tokens = llm::tokenize(&self.model, &prompt::prompt_cid2cid(&h, Mode::Direct));
        tokens.extend(llm::tokenize(&self.model, prompt::CID_ANSWER_PREFIX));
        tokens.push(toks.begin);
        let levels = self.trie.levels();
        let n_ctx = (tokens.len() + width * levels + 16) as u32;
        let mut ctx = self.context(n_ctx, width as u32 + 1)?;
        let t0 = Instant::now();
        let last = self.feed(&mut ctx, &tokens, 0, epoch)?;
        let mut tm = PredictTimings { prompt_tokens: tokens.len() as u32, prompt_ms: ms(t0), ..Default::default() };
        let base = tokens.len() as i32;
        // Level 0 from the prompt's logits.
        let t_norm = Instant::now();
        let first = ctx.get_logits_ith(last);
        let lse = log_sum_exp(first);
        tm.normalize_ms += ms(t_norm);
        let t_host = Instant::now();
        let mut beams_now: Vec<(Vec<u16>, f32)> = self
            .trie
            .allowed(&[])
            .iter()
            .map(|&c| (vec![c], first[toks.codes[0][c as usize] as usize] - lse))
            .collect();
        top(&mut beams_now, width);
        tm.constrain_ms += ms(t_host);
        let mut batch = LlamaBatch::new(width * levels, width as i32 + 1);
        for level in 1..levels {
            self.check(epoch)?;
            let t_dec = Instant::now();
            batch.clear();
            let mut last_index = Vec::with_capacity(beams_now.len());
            for (j, (codes, _)) in beams_now.iter().enumerate() {
                let seq = j as i32 + 1;
                ctx.clear_kv_cache_seq(Some(seq as u32), None, None)
                    .map_err(llama_err)?;
                ctx.copy_kv_cache_seq(0, seq, None, None)
                    .map_err(llama_err)?;
                for (l, &c) in codes.iter().enumerate() {
                    let last = l + 1 == codes.len();
                    batch
                        .add(
                            LlamaToken(toks.codes[l][c as usize]),
                            base + l as i32,
                            &[seq],
                            last,
                        )
                        .map_err(llama_err)?;
                    if last {
                        last_index.push(batch.n_tokens() - 1);
                    }
                }
            }
            ctx.decode(&mut batch).map_err(llama_err)?;
            // Logits are read lazily: synchronise so the decode's time is not billed to the constraint.
            ctx.synchronize();
            tm.decode_ms += ms(t_dec);
            let mut next: Vec<(Vec<u16>, f32)> = Vec::new();
            for (j, (codes, score)) in beams_now.iter().enumerate() {
                let t_norm = Instant::now();
                let logits = ctx.get_logits_ith(last_index[j]);
                let lse = log_sum_exp(logits);
                tm.normalize_ms += ms(t_norm);
                let t_host = Instant::now();
                for &c in self.trie.allowed(codes) {
                    let mut n = codes.clone();
                    n.push(c);
                    next.push((n, score + logits[toks.codes[level][c as usize] as usize] - lse));
                }
                tm.constrain_ms += ms(t_host);
            }
            let t_host = Instant::now();
            top(&mut next, width);
            beams_now = next;
            tm.constrain_ms += ms(t_host);
        }
        let preds = beams_now
            .into_iter()
            .take(k)
            .filter_map(|(codes, score)| {
                let item = self.catalog.item(self.trie.item(&codes)?)?;
                Some(Prediction {
                    id: item.id.to_string(),
                    title: item.title.to_string(),
                    cid: item.cid.to_text(),
                    score,
                })
            })
            .collect();
        tm.total_ms = ms(t_all);
        Ok((preds, tm))
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// log(sum(exp(logits))): a token's log-probability is its logit minus this.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

/// Keeps the `n` best (highest score; ties by codes for determinism).
fn top(v: &mut Vec<(Vec<u16>, f32)>, n: usize) {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
}

/// Reassembles UTF-8 across token pieces: emits the longest valid prefix, keeps an incomplete tail.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid bytes (not merely incomplete): replace them rather than stall forever.
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
            Err(e) => e.valid_up_to(),
        };
        let out = String::from_utf8(self.pending[..valid].to_vec()).unwrap_or_default();
        self.pending.drain(..valid);
        out
    }
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Grammar of the cid2ins answer, from the shared JSON schema; `prefix` is literal text before it.
pub fn answer_grammar(prefix: &str) -> Result<String> {
    let g = llama_cpp_2::json_schema_to_grammar(prompt::INS_ANSWER_SCHEMA).map_err(llama_err)?;
    let renamed = g
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("root ::=") {
                format!("answer ::={rest}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let lit = serde_json::to_string(prefix).expect("string");
    Ok(format!("root ::= {lit} answer\n{renamed}\n"))
}

impl Engine {
    fn sampler(&self, opts: &InstructionOptions, grammar: Option<&str>) -> Result<Chooser> {
        let grammar = grammar.map(|g| LlamaSampler::grammar(&self.model, g, "root").map_err(llama_err)).transpose()?;
        if opts.temperature <= 0.0 {
            return Ok(Chooser::Greedy(grammar));
        }
        let mut chain: Vec<LlamaSampler> = grammar.into_iter().collect();
        chain.push(LlamaSampler::top_p(opts.top_p.clamp(0.0, 1.0), 1));
        chain.push(LlamaSampler::temp(opts.temperature));
        chain.push(LlamaSampler::dist(self.params.seed));
        Ok(Chooser::Chain(LlamaSampler::chain_simple(chain)))
    }

    fn piece(&self, t: i32) -> Vec<u8> {
        self.model.vocab().token_to_piece(LlamaToken(t), true, None)
    }

    /// Writes a creation instruction for what `history` (item ids, oldest first) points to. Fine-tuned
    /// bundles think first (at most `max_think_tokens`), then answer under the JSON grammar; zero-shot
    /// bundles answer from the history's titles and terms. `on_piece` receives the text as it is made
    /// (whole UTF-8 characters) and stops generation by returning `false`.
    pub fn generate_instruction(
        &self,
        history: &[&str],
        opts: &InstructionOptions,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Instruction> {
        let epoch = self.cancel_epoch.load(Ordering::SeqCst);
        let (prompt_text, think) = match self.kind {
            Kind::Finetuned => {
                let h = self.history_cids(history);
                if h.is_empty() {
                    return Err(Error::InvalidArgument(
                        "no item of the history is in the catalog".into(),
                    ));
                }
                (prompt::prompt_cid2ins(&h, Mode::Think), true)
            }
            Kind::ZeroShot => {
                let items: Vec<(String, Vec<String>)> = history
                    .iter()
                    .filter_map(|id| self.catalog.find_id(id).and_then(|i| self.catalog.item(i)))
                    .map(|it| (it.title.to_string(), it.tid_vec()))
                    .collect();
                if items.is_empty() {
                    return Err(Error::InvalidArgument(
                        "no item of the history is in the catalog".into(),
                    ));
                }
                let n = items.len();
                (
                    prompt::zero_shot_prompt(&items[n.saturating_sub(prompt::MAX_HISTORY)..]),
                    false,
                )
            }
        };
        let mut tokens = llm::tokenize(&self.model, &prompt_text);
        let think_start = if think {
            llm::tokenize(&self.model, prompt::THINK_START)
        } else {
            Vec::new()
        };
        tokens.extend(&think_start);
        let n_ctx = tokens.len() as u32 + opts.max_think_tokens + opts.max_answer_tokens + 16;
        let mut ctx = self.context(n_ctx, 1)?;
        let t0 = Instant::now();
        let last = self.feed(&mut ctx, &tokens, 0, epoch)?;
        let mut timings = Timings {
            prompt_tokens: tokens.len() as u32,
            prompt_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        };
        let t1 = Instant::now();
        let raw = String::from_utf8_lossy(
            &think_start
                .iter()
                .flat_map(|&t| self.piece(t))
                .collect::<Vec<u8>>(),
        )
        .into_owned();
        if !raw.is_empty() && !on_piece(&raw) {
            return Err(Error::Cancelled);
        }
        let mut d = Decoding::new(ctx, tokens.len() as i32, last, raw);
        // Phase one: reasoning, bounded; the end marker is forced when the bound is reached.
        if think {
            let think_end = llm::tokenize(&self.model, prompt::THINK_END);
            let mut sampler = self.sampler(opts, None)?;
            let closed = self.sample_phase(
                &mut d,
                &mut sampler,
                opts.max_think_tokens,
                think_end.first().copied().filter(|_| think_end.len() == 1),
                epoch,
                on_piece,
            )?;
            if !closed {
                for t in llm::tokenize(&self.model, "\n")
                    .into_iter()
                    .chain(think_end)
                {
                    self.emit_and_feed(&mut d, t, on_piece)?;
                }
            }
        }
        let (think_sample_ms, think_tokens) = (d.sample_ms, d.generated);
        // Phase two: the JSON answer under the grammar (see `Chooser` for how the grammar is applied).
        let grammar = answer_grammar(if think { "\n\n" } else { "" })?;
        let mut sampler = self.sampler(opts, Some(&grammar))?;
        self.sample_phase(
            &mut d,
            &mut sampler,
            opts.max_answer_tokens,
            None,
            epoch,
            on_piece,
        )?;
        timings.generated_tokens = d.generated;
        timings.decode_ms = d.decode_ms;
        timings.sample_ms = d.sample_ms;
        timings.grammar_sample_ms = d.sample_ms - think_sample_ms;
        timings.grammar_tokens = d.generated - think_tokens;
        let (mut raw, mut stream) = (d.raw, d.stream);
        let tail = stream.finish();
        if !tail.is_empty() {
            raw.push_str(&tail);
            on_piece(&tail);
        }
        timings.generate_ms = t1.elapsed().as_secs_f64() * 1e3;
        let (reasoning, answer) = prompt::parse_answer(&raw);
        let parsed = answer
            .as_ref()
            .is_some_and(|a| a.target_ins.is_some() && a.target_tid.is_some());
        let a = answer.unwrap_or_default();
        Ok(Instruction {
            target_tid: a.target_tid.unwrap_or_default(),
            target_ins: a.target_ins.unwrap_or_default(),
            reasoning,
            parsed,
            raw,
            timings,
        })
    }
}

/// How the next token is chosen.
enum Chooser {
    /// Temperature sampling: a llama.cpp sampler chain, the grammar first when there is one
    /// (`sample` accepts the token itself: never `accept` again, llama.cpp aborts on it).
    Chain(LlamaSampler),
    /// Greedy. Under a grammar the best token is checked against the grammar alone first and the
    /// whole vocabulary is filtered only when it is refused (as llama.cpp's common sampler does): the
    /// same token as filtering first, at a small fraction of the cost (filtering 49k candidates took
    /// 70% of a SmolLM2 decode step).
    Greedy(Option<LlamaSampler>),
}

impl Chooser {
    fn choose(&mut self, ctx: &LlamaContext<'_>, idx: i32, model: &LlamaModel) -> Result<i32> {
        let grammar = match self {
            Chooser::Chain(s) => return Ok(s.sample(ctx, idx).0),
            Chooser::Greedy(None) => return Ok(llm::argmax(ctx.get_logits_ith(idx))),
            Chooser::Greedy(Some(g)) => g,
        };
        let logits = ctx.get_logits_ith(idx);
        let best = llm::argmax(logits);
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(LlamaToken(best), logits[best as usize], 0.0)], false);
        grammar.apply(&mut one);
        let token = if one.data[0].logit() > f32::NEG_INFINITY {
            best
        } else {
            match best_allowed_among_top(grammar, logits, GRAMMAR_TOP) {
                Some(t) => t,
                None => best_allowed(grammar, (0..logits.len()).map(|i| (i as i32, logits[i])))
                    .ok_or_else(|| Error::Llama("the JSON grammar allows no token here".into()))?,
            }
        };
        // End of generation is never fed back, and accepting it into a grammar that is not complete
        // would abort inside llama.cpp.
        if !model.vocab().is_eog(LlamaToken(token)) {
            grammar.try_accept(LlamaToken(token)).map_err(llama_err)?;
        }
        Ok(token)
    }
}

/// Candidates tried against the grammar before the whole vocabulary when the best token is refused.
const GRAMMAR_TOP: usize = 32;

/// The first (lowest id) of the highest-logit tokens the grammar allows among `candidates`.
fn best_allowed(grammar: &mut LlamaSampler, candidates: impl Iterator<Item = (i32, f32)>) -> Option<i32> {
    let mut arr = LlamaTokenDataArray::from_iter(candidates.map(|(t, l)| LlamaTokenData::new(LlamaToken(t), l, 0.0)), false);
    grammar.apply(&mut arr);
    let mut pick: Option<(i32, f32)> = None;
    for d in &arr.data {
        let better = match pick {
            None => true,
            Some((t, l)) => d.logit() > l || (d.logit() == l && d.id().0 < t),
        };
        if d.logit() > f32::NEG_INFINITY && better {
            pick = Some((d.id().0, d.logit()));
        }
    }
    pick.map(|(t, _)| t)
}

/// [`best_allowed`] over the `n` highest logits only. Gives the answer of the whole vocabulary
/// whenever it gives one: every token above the pick is in the set and was refused. `None` when no
/// candidate is allowed, or when the pick ties with the lowest logit of the set (a token with the same
/// logit and a lower id might be outside it).
fn best_allowed_among_top(grammar: &mut LlamaSampler, logits: &[f32], n: usize) -> Option<i32> {
    if logits.len() <= n {
        return None;
    }
    let mut ids: Vec<i32> = (0..logits.len() as i32).collect();
    ids.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    ids.truncate(n);
    let floor = ids.iter().map(|&t| logits[t as usize]).fold(f32::INFINITY, f32::min);
    let pick = best_allowed(grammar, ids.iter().map(|&t| (t, logits[t as usize])))?;
    (logits[pick as usize] > floor).then_some(pick)
}

/// State of one generation: the context, where the next token goes, and the text so far.
struct Decoding<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    pos: i32,
    /// Batch index of the logits to sample from next.
    last: i32,
    raw: String,
    stream: Utf8Stream,
    generated: u32,
    decode_ms: f64,
    sample_ms: f64,
}

impl<'m> Decoding<'m> {
    /// A generation whose next token goes at `pos`, sampled from the logits at batch index `last`.
    fn new(ctx: LlamaContext<'m>, pos: i32, last: i32, raw: String) -> Self {
        Decoding { ctx, batch: LlamaBatch::new(8, 1), pos, last, raw, stream: Utf8Stream::default(), generated: 0, decode_ms: 0.0, sample_ms: 0.0 }
    }
}

impl Engine {
    /// Streams a token's text, then feeds the token so its logits come next.
    fn emit_and_feed(
        &self,
        d: &mut Decoding<'_>,
        t: i32,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<()> {
        let s = d.stream.push(&self.piece(t));
        d.raw.push_str(&s);
        if !s.is_empty() && !on_piece(&s) {
            return Err(Error::Cancelled);
        }
        d.batch.clear();
        d.batch
            .add(LlamaToken(t), d.pos, &[0], true)
            .map_err(llama_err)?;
        let t = Instant::now();
        d.ctx.decode(&mut d.batch).map_err(llama_err)?;
        d.ctx.synchronize();
        d.decode_ms += ms(t);
        d.pos += 1;
        d.last = 0;
        Ok(())
    }

    /// Samples up to `max` tokens; stops at end of generation (not fed) or after `stop` (fed).
    /// Returns whether `stop` was reached.
    fn sample_phase(
        &self,
        d: &mut Decoding<'_>,
        sampler: &mut Chooser,
        max: u32,
        stop: Option<i32>,
        epoch: u64,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<bool> {
        for _ in 0..max {
            self.check(epoch)?;
            let t0 = Instant::now();
            let t = sampler.choose(&d.ctx, d.last, &self.model)?;
            d.sample_ms += ms(t0);
            d.generated += 1;
            if self.model.vocab().is_eog(LlamaToken(t)) {
                return Ok(false);
            }
            self.emit_and_feed(d, t, on_piece)?;
            if Some(t) == stop {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Engine {
    /// One speed measurement through the engine's own loops, under llama-bench's protocol so the two
    /// compare: prefill = `n_prompt` tokens into an empty context (fed as every call feeds prompts, in
    /// chunks); decode = `n_gen` steps from an empty context, each choosing its token with the greedy
    /// sampler and streaming its text as `generate_instruction` does (end-of-generation ignored).
    /// Returns (prefill tokens/s, decode tokens/s).
    pub fn measure_speed(&self, n_prompt: usize, n_gen: usize) -> Result<(f64, f64)> {
        let epoch = self.cancel_epoch.load(Ordering::SeqCst);
        // Deterministic ordinary tokens (llama-bench uses random ones: content does not matter).
        let n_vocab = self.model.n_vocab().max(2) as u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let prompt: Vec<i32> = (0..n_prompt.max(1))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n_vocab) as i32
            })
            .collect();
        // One context for both tests, warmed up first (llama.cpp sizes its compute buffers on the
        // first decode), then emptied before each test, as llama-bench does.
        let mut ctx = self.context((prompt.len() + n_gen) as u32 + 8, 1)?;
        self.feed(&mut ctx, &prompt, 0, epoch)?;
        ctx.clear_kv_cache();
        let t = Instant::now();
        self.feed(&mut ctx, &prompt, 0, epoch)?;
        ctx.synchronize();
        let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
        ctx.clear_kv_cache();

        let mut d = Decoding::new(ctx, 0, 0, String::new());
        let mut sampler = self.sampler(&InstructionOptions::default(), None)?;
        let first = self.model.vocab().bos().0;
        let t = Instant::now();
        self.emit_and_feed(&mut d, first, &mut |_| true)?;
        for _ in 1..n_gen {
            self.check(epoch)?;
            let tok = sampler.choose(&d.ctx, d.last, &self.model)?;
            self.emit_and_feed(&mut d, tok, &mut |_| true)?;
        }
        let decode = n_gen as f64 / t.elapsed().as_secs_f64();
        Ok((prefill, decode))
    }
}

