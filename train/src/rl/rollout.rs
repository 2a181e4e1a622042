//! Rollouts of the next-item task, decoded as the device decodes: the prompt and the history's code
//! tokens, then one CID level at a time, each code drawn from the softmax over the codes the catalog's
//! trie allows after the codes before it (`navigen::engine::predict` ranks the same distribution).
//! The G completions of a prompt are the rows of one batched forward, on one KV cache forked from the
//! prompt's.
//!
//! Why in candle and not on llama.cpp: a completion is three tokens, so a rollout costs one prompt
//! forward and two batched one-token steps; exporting the policy to GGUF after every update (TRL's
//! vLLM route) would cost more than the rollouts themselves.

use anyhow::Result;
use candle_core::Tensor;
use rand::Rng;

use crate::model::beam::NextItemDecoder;
use crate::model::transformer::{forward_cached_rows, KvCache};
use crate::model::{Rope, Weights};
use navigen::Cid;

/// One group: the completions' codes and the mean entropy (nats) of the distributions they were
/// drawn from.
pub struct Group {
    pub codes: Vec<Vec<u16>>,
    pub entropy: f32,
}

/// Samples `g` completions after `history` at `temperature` from the trie-restricted softmax.
/// `heads`: [`NextItemDecoder::level_heads`] of the policy.
pub fn sample_group(
    decoder: &NextItemDecoder,
    net: (&Weights, &Rope, &[Tensor]),
    history: &[Cid],
    g: usize,
    temperature: f32,
    rng: &mut impl Rng,
) -> Result<Group> {
    let (w, rope, heads) = net;
    let trie = decoder.trie();
    let levels = trie.levels();
    let ids = decoder.context_ids(history);
    let mut cache = KvCache::default();
    let first = forward_cached_rows(w, rope, &heads[0], &ids, 1, &mut cache)?.to_vec2::<f32>()?;
    // Every row starts from the prompt's logits.
    let mut logits: Vec<Vec<f32>> = vec![first[0].clone(); g];
    cache = cache.select(&vec![0u32; g])?;
    let mut codes: Vec<Vec<u16>> = vec![Vec::with_capacity(levels); g];
    let (mut entropy, mut counted) = (0f32, 0usize);
    for level in 0..levels {
        for (row, c) in logits.iter().zip(codes.iter_mut()) {
            let kids = trie.allowed(c);
            anyhow::ensure!(!kids.is_empty(), "the trie has no code after {c:?}");
            let z: Vec<f32> = kids
                .iter()
                .map(|&k| row[k as usize] / temperature)
                .collect();
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            entropy -= e
                .iter()
                .map(|&p| p / sum)
                .filter(|&p| p > 0.0)
                .map(|p| p * p.ln())
                .sum::<f32>();
            counted += 1;
            let mut u = rng.gen::<f32>() * sum;
            let mut pick = kids.len() - 1;
            for (i, &p) in e.iter().enumerate() {
                if u < p {
                    pick = i;
                    break;
                }
                u -= p;
            }
            c.push(kids[pick]);
        }
        if level + 1 < levels {
            let toks: Vec<u32> = codes
                .iter()
                .map(|c| decoder.code_token(level, *c.last().expect("one code")))
                .collect();
            logits = forward_cached_rows(w, rope, &heads[level + 1], &toks, g, &mut cache)?
                .to_vec2::<f32>()?;
        }
    }
    Ok(Group {
        codes,
        entropy: entropy / counted.max(1) as f32,
    })
}
