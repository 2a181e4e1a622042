//! Next-item beam search on the trainer's model: the runtime's algorithm (`navigen::engine::Engine::
//! predict`) on candle. The prompt and the history's code tokens, then one CID level at a time, each
//! restricted by the CID trie to codes that continue an existing CID; the last level ranks every
//! continuation of the surviving beams. The trainer picks its checkpoint by the recall this gives, so
//! the model kept is the one that ranks best through the decoding the device does.

use std::collections::HashSet;

use anyhow::Result;
use candle_core::Tensor;
use tokenizers::Tokenizer;

use super::transformer::{forward_cached, KvCache};
use super::{Rope, Weights};
use navigen::trie::CidTrie;
use navigen::{Catalog, Cid};

/// The constant parts of next-item decoding for one catalog and tokenizer.
pub struct NextItemDecoder {
    trie: CidTrie,
    /// [level][code] -> token id
    code_ids: Vec<Vec<u32>>,
    prompt_ids: Vec<u32>,
}

/// log(sum(exp(x))).
fn log_sum_exp(x: impl Iterator<Item = f32> + Clone) -> f32 {
    let m = x.clone().fold(f32::NEG_INFINITY, f32::max);
    m + x.map(|v| (v - m).exp()).sum::<f32>().ln()
}

impl NextItemDecoder {
    pub fn new(cat: &Catalog, tok: &Tokenizer) -> Result<Self> {
        let code_ids = crate::tokenizer::code_token_ids(cat, tok)?;
        Ok(NextItemDecoder {
            trie: CidTrie::from_catalog(cat),
            code_ids,
            prompt_ids: crate::tokenizer::encode(tok, &navigen::prompt::prompt_next())?,
        })
    }

    /// The `k` best next items (catalog indices, best first) after `history`, with `beams` beams;
    /// items of `seen` are left out.
    /// `net`: the weights, their rotary tables and the output head.
    pub fn predict(
        &self,
        net: (&Weights, &Rope, &Tensor),
        history: &[Cid],
        seen: &HashSet<u32>,
        beams: usize,
        k: usize,
    ) -> Result<Vec<u32>> {
        let (w, rope, head) = net;
        let levels = self.trie.levels();
        let mut ids = self.prompt_ids.clone();
        for c in history {
            for (l, &code) in c.codes().iter().enumerate() {
                ids.push(self.code_ids[l][code as usize]);
            }
        }
        let mut root = KvCache::default();
        let logits = forward_cached(w, rope, head, &ids, &mut root)?.to_vec1::<f32>()?;
        // (codes, log-probability, cache after the codes but the last, logits after all codes)
        let mut level_logits = vec![(Vec::<u16>::new(), 0f32, root, logits)];
        for level in 0..levels {
            let last = level + 1 == levels;
            let mut next: Vec<(Vec<u16>, f32, usize)> = Vec::new();
            for (j, (codes, score, _, logits)) in level_logits.iter().enumerate() {
                // Softmax over the codes allowed here, as trained and as the runtime ranks.
                let kids = self.trie.allowed(codes);
                let ids = &self.code_ids[level];
                let lse = log_sum_exp(kids.iter().map(|&c| logits[ids[c as usize] as usize]));
                for &c in kids {
                    let mut n = codes.clone();
                    n.push(c);
                    if last && self.trie.item(&n).is_some_and(|i| seen.contains(&i)) {
                        continue;
                    }
                    let lp = logits[self.code_ids[level][c as usize] as usize] - lse;
                    next.push((n, score + lp, j));
                }
            }
            next.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            if last {
                return Ok(next
                    .into_iter()
                    .take(k)
                    .filter_map(|(codes, _, _)| self.trie.item(&codes))
                    .collect());
            }
            next.truncate(beams);
            let mut fed = Vec::with_capacity(next.len());
            for (codes, score, parent) in next {
                let mut cache = level_logits[parent].2.clone();
                let tok = self.code_ids[level][*codes.last().expect("one code") as usize];
                let logits = forward_cached(w, rope, head, &[tok], &mut cache)?.to_vec1::<f32>()?;
                fed.push((codes, score, cache, logits));
            }
            level_logits = fed;
        }
        Ok(Vec::new())
    }
}
