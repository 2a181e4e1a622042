//! Next-item beam search on the trainer's model: the runtime's algorithm (`navigen::engine::Engine::
//! predict`) on candle. The prompt and the history's code tokens, then one CID level at a time, each
//! restricted by the CID trie to codes that continue an existing CID; the last level ranks every
//! continuation of the surviving beams. The trainer picks its checkpoint by the recall this gives, so
//! the model kept is the one that ranks best through the decoding the device does.

use std::collections::HashSet;

use anyhow::Result;
use candle_core::Tensor;
use tokenizers::Tokenizer;

use super::transformer::{forward_cached_rows, KvCache};
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

    /// The tokens before the next item: the prompt, then the history's code tokens.
    pub fn context_ids(&self, history: &[Cid]) -> Vec<u32> {
        let mut ids = self.prompt_ids.clone();
        for c in history {
            for (l, &code) in c.codes().iter().enumerate() {
                ids.push(self.code_ids[l][code as usize]);
            }
        }
        ids
    }

    /// The token of `code` at `level`.
    pub fn code_token(&self, level: usize, code: u16) -> u32 {
        self.code_ids[level][code as usize]
    }

    pub fn trie(&self) -> &CidTrie {
        &self.trie
    }

    /// The output head's rows of each level's code tokens, [level] -> (codes, hidden): beam search
    /// scores only these (the softmax runs over the allowed codes anyway). Once per set of weights.
    pub fn level_heads(&self, head: &Tensor) -> Result<Vec<Tensor>> {
        self.code_ids
            .iter()
            .map(|ids| {
                let idx = Tensor::from_slice(ids, ids.len(), head.device())?;
                Ok(head.index_select(&idx, 0)?)
            })
            .collect()
    }

    /// The `k` best next items (catalog indices, best first) after `history`, with `beams` beams;
    /// items of `seen` are left out.
    /// `net`: the weights, their rotary tables and [`Self::level_heads`]. The beams of a level run as
    /// one batched forward (their caches are rows of one cache).
    pub fn predict(
        &self,
        net: (&Weights, &Rope, &[Tensor]),
        history: &[Cid],
        seen: &HashSet<u32>,
        beams: usize,
        k: usize,
    ) -> Result<Vec<u32>> {
        let (w, rope, heads) = net;
        let levels = self.trie.levels();
        anyhow::ensure!(heads.len() == levels, "one head per CID level");
        let ids = self.context_ids(history);
        let mut cache = KvCache::default();
        // Row r of `logits` scores level `level`'s codes after beam r's codes.
        let mut logits =
            forward_cached_rows(w, rope, &heads[0], &ids, 1, &mut cache)?.to_vec2::<f32>()?;
        let mut live: Vec<(Vec<u16>, f32)> = vec![(Vec::new(), 0.0)];
        for level in 0..levels {
            let last = level + 1 == levels;
            // (codes, log-probability, parent row)
            let mut next: Vec<(Vec<u16>, f32, u32)> = Vec::new();
            for (j, ((codes, score), row)) in live.iter().zip(&logits).enumerate() {
                // Softmax over the codes allowed here, as trained and as the runtime ranks.
                let kids = self.trie.allowed(codes);
                let lse = log_sum_exp(kids.iter().map(|&c| row[c as usize]));
                for &c in kids {
                    let mut n = codes.clone();
                    n.push(c);
                    if last && self.trie.item(&n).is_some_and(|i| seen.contains(&i)) {
                        continue;
                    }
                    next.push((n, score + row[c as usize] - lse, j as u32));
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
            if next.is_empty() {
                break;
            }
            let parents: Vec<u32> = next.iter().map(|n| n.2).collect();
            let toks: Vec<u32> = next
                .iter()
                .map(|(codes, _, _)| {
                    self.code_ids[level][*codes.last().expect("one code") as usize]
                })
                .collect();
            cache = cache.select(&parents)?;
            logits =
                forward_cached_rows(w, rope, &heads[level + 1], &toks, toks.len(), &mut cache)?
                    .to_vec2::<f32>()?;
            live = next.into_iter().map(|(c, s, _)| (c, s)).collect();
        }
        Ok(Vec::new())
    }
}
