//! Next-item prediction: beam search over CID codes, every step restricted by the CID trie to codes
//! that continue an existing CID.

use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::{ms, Engine, PredictTimings, Prediction};
use crate::error::{Error, Result};
use crate::prompt;

/// Most beams of one call: llama.cpp keeps at most 256 sequences in a context (each beam is one).
pub const MAX_BEAMS: usize = 256;
/// Most predictions of one call.
pub const MAX_K: usize = 4096;

/// Options of [`Engine::predict`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PredictOptions {
    /// How many items to return (1..=[`MAX_K`]).
    pub k: usize,
    /// Beam width at every level but the last (1..=[`MAX_BEAMS`]). The last level ranks every
    /// continuation of the surviving beams, so `k` may exceed it and the top `k` of a call is the
    /// top-`k` prefix of a longer list of the same width: recall at several K from one call.
    pub beams: usize,
    /// Leave out items already in the history (what a recommender evaluated with RecBole's full
    /// ranking does); a re-watch predictor keeps them.
    pub exclude_history: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            k: 10,
            beams: super::DEFAULT_BEAMS,
            exclude_history: false,
        }
    }
}

impl Engine {
    /// Predicts the next `k` distinct items after `history` (item ids, oldest first) with beam search of
    /// width `beams`, every step restricted to codes that continue an existing CID; history items are
    /// kept (see [`Self::predict`]).
    pub fn predict_next(
        &self,
        history: &[&str],
        k: usize,
        beams: usize,
    ) -> Result<Vec<Prediction>> {
        Ok(self
            .predict(
                history,
                &PredictOptions {
                    k,
                    beams,
                    exclude_history: false,
                },
            )?
            .0)
    }

    /// Next-item prediction with [`PredictOptions`], and the time split between the model and the
    /// constraint.
    pub fn predict(
        &self,
        history: &[&str],
        o: &PredictOptions,
    ) -> Result<(Vec<Prediction>, PredictTimings)> {
        let t_all = Instant::now();
        let toks = self.cid_tokens.as_ref().ok_or_else(|| {
            Error::NotSupported(
                "next-item prediction needs a fine-tuned bundle (CID tokens)".into(),
            )
        })?;
        if o.k == 0 || o.k > MAX_K {
            return Err(Error::InvalidArgument(format!("k = {} (1..={MAX_K})", o.k)));
        }
        if o.beams == 0 || o.beams > MAX_BEAMS {
            return Err(Error::InvalidArgument(format!(
                "beams = {} (1..={MAX_BEAMS})",
                o.beams
            )));
        }
        let width = o.beams;
        let epoch = self.cancel_epoch.load(Ordering::SeqCst);
        let h = self.history_cids(history);
        if h.is_empty() {
            return Err(Error::InvalidArgument(
                "no item of the history is in the catalog".into(),
            ));
        }
        let seen: std::collections::HashSet<u32> = if o.exclude_history {
            history
                .iter()
                .filter_map(|id| self.catalog.find_id(id))
                .collect()
        } else {
            Default::default()
        };
        // Prompt and items tokenised apart, exactly as in training (`prompt::prompt_next`).
        let mut tokens = self.model.tokenize(&prompt::prompt_next());
        tokens.extend(self.model.tokenize(&prompt::items_text(&h)));
        let levels = self.trie.levels();
        let n_ctx = (tokens.len() + width * levels + 16) as u32;
        let mut ctx = self.context(n_ctx, width as u32)?;
        let t0 = Instant::now();
        let last = self.feed(&mut ctx, &tokens, 0, epoch)?;
        let mut tm = PredictTimings {
            prompt_tokens: tokens.len() as u32,
            prompt_ms: ms(t0),
            ..Default::default()
        };
        let base = tokens.len() as i32;
        // Level 0 from the prompt's logits.
        // Each level's softmax is over the codes the trie allows there, as the model was trained
        // (`train/src/model/batch.rs`, `CodeConstraint`).
        let t_norm = Instant::now();
        let first = ctx.get_logits_ith(last);
        let roots = self.trie.allowed(&[]);
        let lse = log_sum_exp(
            roots
                .iter()
                .map(|&c| first[toks.codes[0][c as usize] as usize]),
        );
        tm.normalize_ms += ms(t_norm);
        let t_host = Instant::now();
        let mut beams_now: Vec<(Vec<u16>, f32)> = roots
            .iter()
            .map(|&c| (vec![c], first[toks.codes[0][c as usize] as usize] - lse))
            .collect();
        let keep = |level: usize| {
            if level + 1 == levels {
                usize::MAX
            } else {
                width
            }
        };
        self.rank(&mut beams_now, keep(0), &seen);
        tm.constrain_ms += ms(t_host);
        let mut batch = LlamaBatch::new(width * levels, width as i32);
        for level in 1..levels {
            self.check(epoch)?;
            let t_dec = Instant::now();
            batch.clear();
            let mut last_index = Vec::with_capacity(beams_now.len());
            for (j, (codes, _)) in beams_now.iter().enumerate() {
                // Beam j lives in sequence j: sequence 0 holds the prompt, the others copy it; what
                // the previous level appended is dropped first (a beam's codes are fed again whole).
                let seq = j as i32;
                if j == 0 {
                    ctx.clear_kv_cache_seq(Some(0), Some(base as u32), None)
                        .map_err(Error::llama)?;
                } else {
                    ctx.clear_kv_cache_seq(Some(seq as u32), None, None)
                        .map_err(Error::llama)?;
                    ctx.copy_kv_cache_seq(0, seq, None, Some(base as u32))
                        .map_err(Error::llama)?;
                }
                for (l, &c) in codes.iter().enumerate() {
                    let last = l + 1 == codes.len();
                    batch
                        .add(
                            LlamaToken(toks.codes[l][c as usize]),
                            base + l as i32,
                            &[seq],
                            last,
                        )
                        .map_err(Error::llama)?;
                    if last {
                        last_index.push(batch.n_tokens() - 1);
                    }
                }
            }
            ctx.decode(&mut batch).map_err(Error::llama)?;
            // Logits are read lazily: synchronise so the decode's time is not billed to the constraint.
            ctx.synchronize();
            tm.decode_ms += ms(t_dec);
            let mut next: Vec<(Vec<u16>, f32)> = Vec::new();
            for (j, (codes, score)) in beams_now.iter().enumerate() {
                let t_norm = Instant::now();
                let logits = ctx.get_logits_ith(last_index[j]);
                let kids = self.trie.allowed(codes);
                let lse = log_sum_exp(
                    kids.iter()
                        .map(|&c| logits[toks.codes[level][c as usize] as usize]),
                );
                tm.normalize_ms += ms(t_norm);
                let t_host = Instant::now();
                for &c in kids {
                    let mut n = codes.clone();
                    n.push(c);
                    next.push((
                        n,
                        score + logits[toks.codes[level][c as usize] as usize] - lse,
                    ));
                }
                tm.constrain_ms += ms(t_host);
            }
            let t_host = Instant::now();
            self.rank(&mut next, keep(level), &seen);
            beams_now = next;
            tm.constrain_ms += ms(t_host);
        }
        let preds = beams_now
            .into_iter()
            .take(o.k)
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

    /// Sorts candidates best first and keeps `n`; complete CIDs of `seen` items are dropped.
    fn rank(&self, v: &mut Vec<(Vec<u16>, f32)>, n: usize, seen: &std::collections::HashSet<u32>) {
        if !seen.is_empty() {
            v.retain(|(codes, _)| {
                codes.len() < self.trie.levels()
                    || self.trie.item(codes).is_none_or(|i| !seen.contains(&i))
            });
        }
        top(v, n);
    }
}

/// log(sum(exp(x))): a code's log-probability among `x` is its logit minus this.
fn log_sum_exp(x: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = x.clone().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + x.map(|v| (v - max).exp()).sum::<f32>().ln()
}

/// Keeps the `n` best (highest score; ties by codes for determinism).
fn top(v: &mut Vec<(Vec<u16>, f32)>, n: usize) {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
}
