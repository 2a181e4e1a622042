//! A plain chat with any instruct GGUF: the messages rendered with the model's own chat template,
//! then sampling, optionally under a grammar made from a JSON schema. The trainer's local teacher
//! (`train/src/teach/`) runs on this; a bundle's engine has its own loops ([`crate::engine`]).

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use crate::error::{Error, Result};
use crate::llm::{backend, default_threads, Model};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// How a reply is sampled.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatOptions {
    pub max_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    /// 0 = the cores available.
    pub threads: u32,
    /// The reply must be a JSON value of this schema (a grammar built by llama.cpp's converter).
    pub json_schema: Option<String>,
    /// Bytes at the start of the last message's content that other requests share (a history): the
    /// prompt is decoded in two batches split there, and a [`ChatSession`] keeps the first between
    /// requests. 0: one batch, nothing kept.
    pub shared_prefix: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 0.95,
            seed: 0,
            threads: 0,
            json_schema: None,
            shared_prefix: 0,
        }
    }
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its turn (or the grammar completed).
    Stop,
    /// `max_tokens` ran out first.
    Length,
}

/// A reply and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: u32,
    /// Prompt tokens whose keys and values a [`ChatSession`] kept from its earlier requests.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub finish: Finish,
}

/// The GBNF grammar llama.cpp makes from a JSON schema.
pub fn schema_grammar(schema: &str) -> Result<String> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(Error::llama)
}

/// llama.cpp's built-in chat template for a model family without one in its file.
fn builtin_template(arch: &str) -> Option<&'static str> {
    match arch {
        a if a.starts_with("gemma") => Some("gemma"),
        "llama" | "qwen2" | "qwen3" => Some("chatml"),
        _ => None,
    }
}

impl Model {
    /// The messages in the model's own chat template (from its GGUF metadata), ending where the
    /// assistant's turn starts.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        let tmpl = match self.llama().chat_template(None) {
            Ok(t) => t,
            // Some GGUFs carry no template (the Gemma 3 270M on PyPI): llama.cpp's built-in one of the
            // model's family, named by its architecture.
            Err(e) => {
                let arch = self
                    .llama()
                    .meta_val_str("general.architecture")
                    .unwrap_or_default();
                let name = builtin_template(&arch).ok_or_else(|| {
                    Error::Llama(format!(
                        "the model has no chat template ({e}) and its architecture {arch:?} has no built-in one"
                    ))
                })?;
                LlamaChatTemplate::new(name).map_err(Error::llama)?
            }
        };
        let msgs = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("chat message: {e}")))?;
        self.llama()
            .apply_chat_template(&tmpl, &msgs, true)
            .map_err(Error::llama)
    }

    /// Answers `messages` in a context of its own. Callers that ask many questions sharing a prefix
    /// (a system prompt, a history) keep a [`ChatSession`] instead.
    pub fn chat(&self, messages: &[Message], opts: &ChatOptions) -> Result<Reply> {
        ChatSession::new(self).chat(messages, opts)
    }
}

/// A context kept between replies. A prompt is decoded in two batches, split where
/// [`ChatOptions::shared_prefix`] says, and the first batch's keys and values stay in the context for
/// the next request that starts with the same tokens: a judge scoring eight instructions for one
/// history, or a teacher's rounds over one window, decode the system prompt and the history once.
///
/// Why a fixed split rather than llama-server's longest common prefix: llama.cpp's logits depend on
/// how a prompt is cut into batches (docs/benchmarks.md, "Reusing the shared prompt prefix"), so reuse
/// at an arbitrary point would answer differently from a fresh context. Split at a point the prompt
/// itself gives, a reply is a function of the request alone, cached or not.
pub struct ChatSession<'m> {
    model: &'m Model,
    /// The context, with its size and thread count (a request that needs more or other threads gets a
    /// new one).
    ctx: Option<(LlamaContext<'m>, u32, i32)>,
    /// The tokens whose keys and values are in the context, from position 0 ...
    held: Vec<i32>,
    /// ... of which the first `first` were decoded as one batch on an empty context.
    first: usize,
}

/// Contexts grow in steps of this many tokens, so that prompts of similar lengths share one.
const CTX_STEP: usize = 512;

impl<'m> ChatSession<'m> {
    pub fn new(model: &'m Model) -> Self {
        ChatSession {
            model,
            ctx: None,
            held: Vec::new(),
            first: 0,
        }
    }

    /// Answers `messages`. With a schema, the grammar is checked on the sampled token first and
    /// applied to the whole vocabulary only when it refuses it (as llama.cpp's common sampler does).
    pub fn chat(&mut self, messages: &[Message], opts: &ChatOptions) -> Result<Reply> {
        let r = self.answer(messages, opts);
        if r.is_err() {
            // A failed decode may leave the cache half written: start the next request afresh.
            self.ctx = None;
            self.held.clear();
            self.first = 0;
        }
        r
    }

    /// The prompt's tokens and where its shared part ends (0: not split).
    fn tokens(&self, messages: &[Message], shared: usize) -> Result<(Vec<i32>, usize)> {
        let model = self.model;
        let text = model.render_chat(messages)?;
        // The shared part ends `shared` bytes into the last message's content, found in the rendered
        // text; a template that rewrites the content, or a split that is not one, means no split.
        let cut = messages
            .last()
            .filter(|m| {
                shared > 0 && shared < m.content.len() && m.content.is_char_boundary(shared)
            })
            .and_then(|m| text.rfind(m.content.as_str()).map(|at| at + shared));
        let bos = |t: &mut Vec<i32>| {
            if model.llama().vocab().should_add_bos() && t.first() != Some(&model.bos()) {
                t.insert(0, model.bos());
            }
        };
        let (prompt, split) = match cut {
            Some(at) => {
                let mut a = model.tokenize(&text[..at]);
                bos(&mut a);
                let b = model.tokenize(&text[at..]);
                let split = a.len();
                a.extend(b);
                (a, split)
            }
            None => {
                let mut a = model.tokenize(&text);
                bos(&mut a);
                (a, 0)
            }
        };
        if prompt.is_empty() {
            return Err(Error::InvalidArgument(
                "the chat renders to no tokens".into(),
            ));
        }
        // The second batch must hold at least the last token: its logits start the reply.
        let split = if split < prompt.len() { split } else { 0 };
        Ok((prompt, split))
    }

    fn answer(&mut self, messages: &[Message], opts: &ChatOptions) -> Result<Reply> {
        let model = self.model;
        let (prompt, split) = self.tokens(messages, opts.shared_prefix)?;
        let threads = if opts.threads == 0 {
            default_threads()
        } else {
            opts.threads as i32
        };
        let need = prompt.len() + opts.max_tokens as usize + 8;
        if !matches!(&self.ctx, Some((_, n, t)) if *n as usize >= need && *t == threads) {
            let n_ctx = need.div_ceil(CTX_STEP) * CTX_STEP;
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(n_ctx as u32))
                .with_n_batch(n_ctx as u32)
                .with_n_threads(threads)
                .with_n_threads_batch(threads);
            self.ctx = None;
            self.held.clear();
            self.first = 0;
            let ctx = model
                .llama()
                .new_context(backend()?, params)
                .map_err(Error::llama)?;
            self.ctx = Some((ctx, n_ctx as u32, threads));
        }
        let (ctx, n_ctx, _) = self.ctx.as_mut().expect("a context was just made");
        let mut batch = LlamaBatch::new(*n_ctx as usize, 1);
        // Keep the first batch when this prompt starts with exactly it; otherwise decode it afresh.
        let reuse = split > 0
            && self.first == split
            && self.held.get(..split) == Some(&prompt[..split])
            && ctx
                .clear_kv_cache_seq(Some(0), Some(split as u32), None)
                .map_err(Error::llama)?;
        if reuse {
            self.held.truncate(split);
        } else {
            ctx.clear_kv_cache();
            self.held.clear();
            self.first = 0;
            if split > 0 {
                for (i, &t) in prompt[..split].iter().enumerate() {
                    batch
                        .add(LlamaToken(t), i as i32, &[0], false)
                        .map_err(Error::llama)?;
                }
                ctx.decode(&mut batch).map_err(Error::llama)?;
                self.held.extend_from_slice(&prompt[..split]);
                self.first = split;
            }
        }
        let keep = if reuse { split } else { 0 };
        batch.clear();
        for (i, &t) in prompt.iter().enumerate().skip(split) {
            batch
                .add(LlamaToken(t), i as i32, &[0], i + 1 == prompt.len())
                .map_err(Error::llama)?;
        }
        ctx.decode(&mut batch).map_err(Error::llama)?;
        self.held.extend_from_slice(&prompt[split..]);

        let mut grammar = match &opts.json_schema {
            Some(s) => Some(
                LlamaSampler::grammar(model.llama(), &schema_grammar(s)?, "root")
                    .map_err(Error::llama)?,
            ),
            None => None,
        };
        let mut chain = if opts.temperature > 0.0 {
            LlamaSampler::chain_simple([
                LlamaSampler::top_k(40),
                LlamaSampler::top_p(opts.top_p.clamp(0.0, 1.0), 1),
                LlamaSampler::temp(opts.temperature),
                LlamaSampler::dist(opts.seed),
            ])
        } else {
            LlamaSampler::greedy()
        };
        let mut idx = batch.n_tokens() - 1;
        let mut out = Vec::new();
        let mut stream = crate::engine::Utf8Stream::default();
        let mut reply = String::new();
        let mut finish = Finish::Length;
        for pos in (prompt.len() as i32..).take(opts.max_tokens as usize) {
            let all = || {
                LlamaTokenDataArray::from_iter(
                    ctx.get_logits_ith(idx)
                        .iter()
                        .enumerate()
                        .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
                    false,
                )
            };
            let mut cands = all();
            chain.apply(&mut cands);
            let mut token = cands
                .selected_token()
                .ok_or_else(|| Error::Llama("the sampler selected no token".into()))?;
            if let Some(g) = grammar.as_mut() {
                let mut one =
                    LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 0.0, 0.0)], false);
                g.apply(&mut one);
                if one.data[0].logit() == f32::NEG_INFINITY {
                    let mut cands = all();
                    g.apply(&mut cands);
                    chain.apply(&mut cands);
                    token = cands.selected_token().ok_or_else(|| {
                        Error::Llama("the JSON grammar allows no token here".into())
                    })?;
                }
            }
            chain.accept(token);
            out.push(token.0);
            if model.is_eog(token.0) {
                finish = Finish::Stop;
                break;
            }
            if let Some(g) = grammar.as_mut() {
                g.try_accept(token).map_err(Error::llama)?;
            }
            reply.push_str(&stream.push(&model.token_to_piece(token.0)));
            batch.clear();
            batch.add(token, pos, &[0], true).map_err(Error::llama)?;
            ctx.decode(&mut batch).map_err(Error::llama)?;
            self.held.push(token.0);
            idx = 0;
        }
        reply.push_str(&stream.finish());
        Ok(Reply {
            text: reply,
            prompt_tokens: prompt.len() as u32,
            cached_tokens: keep as u32,
            completion_tokens: out.len() as u32,
            finish,
        })
    }
}
