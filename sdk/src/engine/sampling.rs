//! Choosing the next token: greedy or a temperature chain, optionally under a grammar.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::{Engine, InstructionOptions};
use crate::error::{Error, Result};
use crate::llm::{self, Model};

impl Engine {
    pub(super) fn sampler(
        &self,
        opts: &InstructionOptions,
        grammar: Option<&str>,
    ) -> Result<Chooser> {
        let grammar = grammar
            .map(|g| LlamaSampler::grammar(self.model.llama(), g, "root").map_err(Error::llama))
            .transpose()?;
        if opts.temperature <= 0.0 {
            return Ok(Chooser::Greedy(grammar));
        }
        let mut chain: Vec<LlamaSampler> = grammar.into_iter().collect();
        chain.push(LlamaSampler::top_p(opts.top_p.clamp(0.0, 1.0), 1));
        chain.push(LlamaSampler::temp(opts.temperature));
        chain.push(LlamaSampler::dist(opts.seed.unwrap_or(self.params.seed)));
        Ok(Chooser::Chain(LlamaSampler::chain_simple(chain)))
    }
}

/// How the next token is chosen.
pub(super) enum Chooser {
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
    /// The next token. Greedy choice never picks a `banned` token while another is allowed (the
    /// no-repeat guard); temperature sampling ignores `banned`.
    pub(super) fn choose(
        &mut self,
        ctx: &LlamaContext<'_>,
        idx: i32,
        model: &Model,
        banned: &[i32],
    ) -> Result<i32> {
        if let Chooser::Chain(s) = self {
            return Ok(s.sample(ctx, idx).0);
        }
        let raw = ctx.get_logits_ith(idx);
        let lowered;
        let logits = if banned.is_empty() {
            raw
        } else {
            // Below every real logit but finite: still chosen when the grammar allows nothing else.
            let floor = raw.iter().copied().fold(f32::INFINITY, f32::min) - 1e4;
            let mut l = raw.to_vec();
            for &b in banned {
                if let Some(v) = l.get_mut(b as usize) {
                    *v = floor;
                }
            }
            lowered = l;
            &lowered[..]
        };
        let grammar = match self {
            Chooser::Greedy(Some(g)) => g,
            _ => return Ok(llm::argmax(logits)),
        };
        let best = llm::argmax(logits);
        let mut one = LlamaTokenDataArray::new(
            vec![LlamaTokenData::new(
                LlamaToken(best),
                logits[best as usize],
                0.0,
            )],
            false,
        );
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
        if !model.is_eog(token) {
            grammar
                .try_accept(LlamaToken(token))
                .map_err(Error::llama)?;
        }
        Ok(token)
    }
}

/// Tokens that would repeat an `n`-gram already in `tokens`: every token that followed an earlier
/// occurrence of the last `n - 1` tokens (`n` < 2 bans nothing).
pub(super) fn repeated_ngram_bans(tokens: &[i32], n: usize) -> Vec<i32> {
    if n < 2 || tokens.len() < n {
        return Vec::new();
    }
    let tail = &tokens[tokens.len() - (n - 1)..];
    let mut bans: Vec<i32> = tokens
        .windows(n)
        .filter(|w| &w[..n - 1] == tail)
        .map(|w| w[n - 1])
        .collect();
    bans.sort_unstable();
    bans.dedup();
    bans
}

/// Candidates tried against the grammar before the whole vocabulary when the best token is refused.
const GRAMMAR_TOP: usize = 32;

/// The first (lowest id) of the highest-logit tokens the grammar allows among `candidates`.
fn best_allowed(
    grammar: &mut LlamaSampler,
    candidates: impl Iterator<Item = (i32, f32)>,
) -> Option<i32> {
    let mut arr = LlamaTokenDataArray::from_iter(
        candidates.map(|(t, l)| LlamaTokenData::new(LlamaToken(t), l, 0.0)),
        false,
    );
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
    ids.select_nth_unstable_by(n - 1, |&a, &b| {
        logits[b as usize].total_cmp(&logits[a as usize])
    });
    ids.truncate(n);
    let floor = ids
        .iter()
        .map(|&t| logits[t as usize])
        .fold(f32::INFINITY, f32::min);
    let pick = best_allowed(grammar, ids.iter().map(|&t| (t, logits[t as usize])))?;
    (logits[pick as usize] > floor).then_some(pick)
}

#[cfg(test)]
mod tests {
    use super::repeated_ngram_bans;

    #[test]
    fn bans_what_would_repeat_an_ngram() {
        // 7 8 9 seen; the text ends in 7 8 again: 9 would repeat the trigram.
        assert_eq!(repeated_ngram_bans(&[7, 8, 9, 1, 7, 8], 3), vec![9]);
        assert_eq!(
            repeated_ngram_bans(&[7, 8, 9, 7, 8, 2, 7, 8], 3),
            vec![2, 9]
        );
        assert!(repeated_ngram_bans(&[7, 8, 9, 1, 7], 3).is_empty());
        assert!(repeated_ngram_bans(&[5, 5], 0).is_empty());
        assert_eq!(repeated_ngram_bans(&[5, 5], 2), vec![5]);
    }
}
