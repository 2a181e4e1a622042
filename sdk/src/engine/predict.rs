//! Next-item prediction: beam search over CID codes, every step restricted by the CID trie to codes
//! that continue an existing CID.

use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::{ms, Engine, PredictTimings, Prediction};
use crate::error::{Error, Result};
use crate::prompt::{self, Mode};

impl Engine {
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
        let mut tokens = self
            .model
            .tokenize(&prompt::prompt_cid2cid(&h, Mode::Direct));
        tokens.extend(self.model.tokenize(prompt::CID_ANSWER_PREFIX));
        tokens.push(toks.begin);
        let levels = self.trie.levels();
        let n_ctx = (tokens.len() + width * levels + 16) as u32;
        let mut ctx = self.context(n_ctx, width as u32 + 1)?;
        let t0 = Instant::now();
        let last = self.feed(&mut ctx, &tokens, 0, epoch)?;
        let mut tm = PredictTimings {
            prompt_tokens: tokens.len() as u32,
            prompt_ms: ms(t0),
            ..Default::default()
        };
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
                    .map_err(Error::llama)?;
                ctx.copy_kv_cache_seq(0, seq, None, None)
                    .map_err(Error::llama)?;
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
                let lse = log_sum_exp(logits);
                tm.normalize_ms += ms(t_norm);
                let t_host = Instant::now();
                for &c in self.trie.allowed(codes) {
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
