//! Instruction generation: a bounded reasoning phase (fine-tuned bundles), then the JSON answer under
//! its grammar; the text streams out as whole UTF-8 characters.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::generation::Decoding;
use super::{Engine, Instruction, InstructionOptions, Kind, Timings};
use crate::error::{Error, Result};
use crate::prompt::{self, Mode};

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
    let g =
        llama_cpp_2::json_schema_to_grammar(&prompt::ins_answer_schema()).map_err(Error::llama)?;
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
                    prompt::zero_shot_prompt(
                        &items[n.saturating_sub(self.manifest().max_history)..],
                    ),
                    false,
                )
            }
        };
        let mut tokens = self.model.tokenize(&prompt_text);
        let think_start = if think {
            self.model.tokenize(prompt::THINK_START)
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
            let think_end = self.model.tokenize(prompt::THINK_END);
            let mut sampler = self.sampler(opts, None)?;
            let closed = self.sample_phase(
                &mut d,
                &mut sampler,
                opts.max_think_tokens,
                think_end.first().copied().filter(|_| think_end.len() == 1),
                // Reasoning restates terms by design; only the answer is guarded.
                0,
                epoch,
                on_piece,
            )?;
            if !closed {
                for t in self.model.tokenize("\n").into_iter().chain(think_end) {
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
            opts.no_repeat_ngram as usize,
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
        // The budget can cut the answer open: close it, so that every answer is one JSON object.
        let answer_from = if think {
            raw.rfind(prompt::THINK_END)
                .map_or(0, |p| p + prompt::THINK_END.len())
        } else {
            0
        };
        let close = prompt::close_ins_answer(&raw[answer_from..]);
        if !close.is_empty() {
            raw.push_str(&close);
            on_piece(&close);
        }
        timings.generate_ms = t1.elapsed().as_secs_f64() * 1e3;
        let (reasoning, answer) = prompt::parse_answer(&raw);
        let parsed = answer
            .as_ref()
            .is_some_and(|a| a.target_ins.is_some() && a.target_tid.is_some());
        let a = answer.unwrap_or_default();
        // A TID is a list of distinct terms (docs/method.md, section 2): a repeat the n-gram guard
        // let through (a term first written in another context) is dropped, case-insensitively, and so
        // is an empty term that closing a cut answer made.
        let mut seen = std::collections::HashSet::new();
        let target_tid = a
            .target_tid
            .unwrap_or_default()
            .into_iter()
            .filter(|t: &String| !t.trim().is_empty() && seen.insert(t.trim().to_lowercase()))
            .collect();
        Ok(Instruction {
            target_tid,
            target_ins: a.target_ins.unwrap_or_default(),
            reasoning,
            parsed,
            raw,
            timings,
        })
    }
}
