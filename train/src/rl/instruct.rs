//! Rollouts of the instruction task (cid2ins), decoded by the device's own code: the policy is written
//! as a bundle after each update and `navigen::Engine::generate_instruction` samples the G completions
//! of a history in its two phases (bounded thinking, then the answer under the JSON grammar), as an
//! app would get them. Each completion is scored with the method's instruction reward (docs/method.md
//! section 5): gate, penalties and format from the text, and S the mean of the judge's quality (when a
//! judge is given) and three similarities under the bundle's embedder.
//!
//! Why llama.cpp here and candle for next-item rollouts: an instruction is hundreds of tokens under a
//! grammar, which candle has no sampler for, so exporting the policy (milliseconds for the tiny preset,
//! a second or two for SmolLM2) costs little next to the decoding; TRL generates on vLLM for the same
//! reason. A next-item completion is three tokens under the trie, cheaper in candle than an export.
//!
//! The update scores the completion's text re-tokenised by the run's tokenizer (the export checks it
//! tokenises as llama.cpp does); the grammar's masking is not part of the log-probabilities (as with
//! TRL's guided decoding): tokens the grammar forced are scored like sampled ones.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use navigen::embedding::TextEmbedder;
use navigen::engine::{Engine, InstructionOptions};
use navigen::prompt::{self, Mode};
use navigen::{Catalog, Cid};
use tokenizers::Tokenizer;

use super::reward;
use crate::gguf::ExportDtype;
use crate::model::batch::Row;
use crate::model::Weights;
use crate::run::RunInfo;
use crate::score;
use crate::teach::ask::Asker;
use crate::teach::{self, search};

/// One cid2ins prompt: the history (ids for the engine, CIDs for the training row) and the target's TID.
#[derive(Clone, Debug)]
pub struct InsPrompt {
    pub history: Vec<String>,
    pub history_cids: Vec<Cid>,
    pub target_tid: Vec<String>,
}

/// A completion and its reward, each part on its own.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct InsCompletion {
    /// What the model wrote after the prompt's think marker.
    pub text: String,
    pub reward: f32,
    /// The judge's quality in [0, 1] (mean of its four 0-10 scores / 10); `None` without a judge or
    /// when it gave no valid answer.
    pub quality: Option<f32>,
    /// Cosine (clamped to [0, 1]) of the instruction with the target's TID, with the predicted TID,
    /// and of the predicted TID with the target's.
    pub sim_ins_target: f32,
    pub sim_ins_pred: f32,
    pub sim_pred_target: f32,
    pub gate: f32,
    pub pen: f32,
    pub fmt: bool,
}

/// Token budgets of the rollouts.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct InsBudget {
    pub max_think_tokens: u32,
    pub max_answer_tokens: u32,
}

/// The policy as a bundle, the engine on it and the embedder of the rewards.
pub struct InsRollouts {
    dir: PathBuf,
    engine: Option<Engine>,
    embedder: Option<TextEmbedder>,
    budget: InsBudget,
    temperature: f32,
}

impl InsRollouts {
    /// Rollouts writing the policy's bundle into `dir` (a folder of the run), sampling at
    /// `temperature`.
    pub fn new(dir: &Path, budget: InsBudget, temperature: f32) -> Self {
        InsRollouts {
            dir: dir.to_path_buf(),
            engine: None,
            embedder: None,
            budget,
            temperature,
        }
    }

    /// Writes the current policy as the bundle and opens the engine on it (after every update).
    pub fn refresh(&mut self, w: &Weights, tok: &Tokenizer, info: &RunInfo) -> Result<()> {
        self.engine = None;
        crate::export::write_bundle(w, tok, info, super::STAGE, &self.dir, ExportDtype::F32)?;
        let e = Engine::open(&self.dir, crate::engine_params())?;
        if self.embedder.is_none() {
            let entry =
                e.manifest().embedder.as_ref().context(
                    "the run's data has no embedder.gguf: the instruction reward needs it",
                )?;
            self.embedder = Some(TextEmbedder::open(
                &navigen::bundle::Manifest::path(e.dir(), entry),
                crate::thread_count(),
            )?);
        }
        self.engine = Some(e);
        Ok(())
    }

    /// Samples `g` completions of `p` (seeds `seed`, `seed + 1`, ...) and scores them; `judge` adds the
    /// quality part.
    pub fn sample_group(
        &self,
        cat: &Catalog,
        p: &InsPrompt,
        g: usize,
        seed: u32,
        judge: Option<&Asker<'_>>,
    ) -> Result<Vec<InsCompletion>> {
        let e = self.engine.as_ref().context("refresh the policy first")?;
        let embedder = self.embedder.as_ref().context("refresh the policy first")?;
        let refs: Vec<&str> = p.history.iter().map(String::as_str).collect();
        let target_text = p.target_tid.join(", ");
        let target_v = embedder.embed(&target_text)?;
        let history = judge.map(|_| teach::item_texts(cat, &p.history));
        let mut out = Vec::with_capacity(g);
        for i in 0..g {
            let ins = e.generate_instruction(
                &refs,
                &InstructionOptions {
                    max_think_tokens: self.budget.max_think_tokens,
                    max_answer_tokens: self.budget.max_answer_tokens,
                    temperature: self.temperature,
                    // Plain sampling: the distribution the update's log-probabilities describe.
                    top_p: 1.0,
                    no_repeat_ngram: 0,
                    seed: Some(seed.wrapping_add(i as u32)),
                },
                &mut |_| true,
            )?;
            let text = ins
                .raw
                .strip_prefix(prompt::THINK_START)
                .unwrap_or(&ins.raw)
                .to_string();
            let checks = reward::text_checks(&ins.raw);
            let sim = |a: &[f32], b: &[f32]| score::cosine(a, b).clamp(0.0, 1.0);
            let (mut s_ins_t, mut s_ins_p, mut s_p_t) = (0.0, 0.0, 0.0);
            let pred_text = ins.target_tid.join(", ");
            let said = !ins.target_ins.trim().is_empty();
            if said || !pred_text.is_empty() {
                let pred_v = embedder.embed(&pred_text)?;
                s_p_t = sim(&pred_v, &target_v);
                if said {
                    let ins_v = embedder.embed(&ins.target_ins)?;
                    s_ins_t = sim(&ins_v, &target_v);
                    s_ins_p = sim(&ins_v, &pred_v);
                }
            }
            let quality = match (judge, &history) {
                (Some(j), Some(h)) if said => {
                    search::judge_scores(j, h, &p.target_tid, &ins.target_ins).map(|s| {
                        let q = (s.consistency + s.novelty + s.aesthetic + s.executability) / 40.0;
                        q.clamp(0.0, 1.0) as f32
                    })
                }
                _ => None,
            };
            let mut parts = vec![s_ins_t, s_ins_p, s_p_t];
            if judge.is_some() {
                // A judged run counts a failed judgement as 0, not as a missing part.
                parts.insert(0, quality.unwrap_or(0.0));
            }
            out.push(InsCompletion {
                text,
                reward: reward::cid2ins(&checks, &parts),
                quality,
                sim_ins_target: s_ins_t,
                sim_ins_pred: s_ins_p,
                sim_pred_target: s_p_t,
                gate: checks.gate(),
                pen: checks.pen(),
                fmt: reward::cid2ins_format(&checks),
            });
        }
        Ok(out)
    }
}

/// A completion as a training row: the prompt and the think marker (no targets), then the
/// completion's tokens, each the target of the position before it; at most `max_tokens` of them.
pub fn completion_row(
    tok: &Tokenizer,
    p: &InsPrompt,
    text: &str,
    max_tokens: usize,
) -> Result<Row> {
    let mut ids =
        crate::tokenizer::encode(tok, &prompt::prompt_cid2ins(&p.history_cids, Mode::Think))?;
    ids.extend(crate::tokenizer::encode(tok, prompt::THINK_START)?);
    let ctx = ids.len();
    let mut done = crate::tokenizer::encode(tok, text)?;
    done.truncate(max_tokens);
    anyhow::ensure!(!done.is_empty(), "an empty completion");
    ids.extend(done);
    let n = ids.len();
    Ok(Row {
        positions: (0..n as u32).collect(),
        segments: vec![0; n],
        targets: (0..n)
            .map(|i| (i + 1 >= ctx && i + 1 < n).then(|| ids[i + 1]))
            .collect(),
        ids,
    })
}

/// Every (history, next item) of the training prefixes, as catalog indices: the prompts are built
/// when drawn ([`InsPool::get`]), so the pool costs 8 bytes a training item, not a history of strings.
pub struct InsPool {
    seqs: Vec<Vec<u32>>,
    /// (sequence, position of the target)
    at: Vec<(u32, u32)>,
}

impl InsPool {
    pub fn new(cat: &Catalog, train: &[crate::data::sequences::TrainSequence]) -> Self {
        let mut seqs = Vec::with_capacity(train.len());
        let mut at = Vec::new();
        for t in train {
            let items: Vec<u32> = t.items.iter().filter_map(|id| cat.find_id(id)).collect();
            for end in 1..items.len() {
                at.push((seqs.len() as u32, end as u32));
            }
            seqs.push(items);
        }
        InsPool { seqs, at }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Prompt `i`: at most the device's history length before the target.
    pub fn get(&self, cat: &Catalog, i: usize) -> Result<InsPrompt> {
        let (s, end) = self.at[i];
        let items = &self.seqs[s as usize];
        let end = end as usize;
        let start = end.saturating_sub(prompt::MAX_HISTORY);
        let item = |k: u32| cat.item(k).context("catalog item");
        let mut p = InsPrompt {
            history: Vec::with_capacity(end - start),
            history_cids: Vec::with_capacity(end - start),
            target_tid: item(items[end])?.tid_vec(),
        };
        for &k in &items[start..end] {
            let it = item(k)?;
            p.history.push(it.id.to_string());
            p.history_cids.push(it.cid);
        }
        Ok(p)
    }
}
