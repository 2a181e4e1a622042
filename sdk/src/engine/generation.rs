//! One generation's state and its token loop: stream a token's text, feed the token, sample a phase.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::sampling::{repeated_ngram_bans, Chooser};
use super::{ms, Engine, Utf8Stream};
use crate::error::{Error, Result};

/// State of one generation: the context, where the next token goes, and the text so far.
pub(super) struct Decoding<'m> {
    pub(super) ctx: LlamaContext<'m>,
    pub(super) batch: LlamaBatch<'static>,
    pub(super) pos: i32,
    /// Batch index of the logits to sample from next.
    pub(super) last: i32,
    pub(super) raw: String,
    pub(super) stream: Utf8Stream,
    pub(super) generated: u32,
    pub(super) decode_ms: f64,
    pub(super) sample_ms: f64,
}

impl<'m> Decoding<'m> {
    /// A generation whose next token goes at `pos`, sampled from the logits at batch index `last`.
    pub(super) fn new(ctx: LlamaContext<'m>, pos: i32, last: i32, raw: String) -> Self {
        Decoding {
            ctx,
            batch: LlamaBatch::new(8, 1),
            pos,
            last,
            raw,
            stream: Utf8Stream::default(),
            generated: 0,
            decode_ms: 0.0,
            sample_ms: 0.0,
        }
    }
}

impl Engine {
    pub(super) fn piece(&self, t: i32) -> Vec<u8> {
        self.model.token_to_piece(t)
    }

    /// Streams a token's text, then feeds the token so its logits come next.
    pub(super) fn emit_and_feed(
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
            .map_err(Error::llama)?;
        let t = Instant::now();
        d.ctx.decode(&mut d.batch).map_err(Error::llama)?;
        d.ctx.synchronize();
        d.decode_ms += ms(t);
        d.pos += 1;
        d.last = 0;
        Ok(())
    }

    /// Samples up to `max` tokens; stops at end of generation (not fed) or after `stop` (fed).
    /// `no_repeat` >= 2 keeps greedy decoding from repeating any `no_repeat`-gram of this phase (a
    /// small model's failure mode is a term repeated until the budget ends). Returns whether `stop`
    /// was reached.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sample_phase(
        &self,
        d: &mut Decoding<'_>,
        sampler: &mut Chooser,
        max: u32,
        stop: Option<i32>,
        no_repeat: usize,
        epoch: u64,
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<bool> {
        let mut phase: Vec<i32> = Vec::new();
        for _ in 0..max {
            self.check(epoch)?;
            let t0 = Instant::now();
            let banned = repeated_ngram_bans(&phase, no_repeat);
            let t = sampler.choose(&d.ctx, d.last, &self.model, &banned)?;
            d.sample_ms += ms(t0);
            d.generated += 1;
            if self.model.is_eog(t) {
                return Ok(false);
            }
            phase.push(t);
            self.emit_and_feed(d, t, on_piece)?;
            if Some(t) == stop {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
