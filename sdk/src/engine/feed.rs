//! Prompt decoding in chunks, with a cancel check between chunks.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::Engine;
use crate::error::{Error, Result};

/// Prompt chunks: first and smallest size, largest size (llama.cpp's default micro-batch), and the
/// time one chunk should take (the worst-case delay of a cancel during a prompt).
const CHUNK_MIN: usize = 64;
const CHUNK_MAX: usize = 512;
const CHUNK_TARGET_S: f64 = 0.25;

impl Engine {
    /// Decodes `tokens` at positions from `start` on sequence 0 in chunks, checking for cancellation
    /// between chunks; logits only for the last token, whose batch index is returned. Chunks start
    /// at 64 tokens and are then sized from the measured speed to take about
    /// [`EngineParams::prompt_chunk_ms`](super::EngineParams::prompt_chunk_ms): a cancel is honoured
    /// that fast on a slow device, while a fast one feeds big, efficient batches.
    pub(super) fn feed(
        &self,
        ctx: &mut LlamaContext<'_>,
        tokens: &[i32],
        start: i32,
        epoch: u64,
    ) -> Result<i32> {
        let target_s = match self.params.prompt_chunk_ms {
            0 => CHUNK_TARGET_S,
            ms => ms as f64 / 1e3,
        };
        let mut chunk = CHUNK_MIN;
        let mut batch = LlamaBatch::new(CHUNK_MAX, 1);
        let mut done = 0;
        let mut last = 0;
        while done < tokens.len() {
            self.check(epoch)?;
            let n = chunk.min(tokens.len() - done);
            batch.clear();
            for (i, &t) in tokens[done..done + n].iter().enumerate() {
                let is_last = done + i + 1 == tokens.len();
                batch
                    .add(LlamaToken(t), start + (done + i) as i32, &[0], is_last)
                    .map_err(Error::llama)?;
            }
            let t = Instant::now();
            ctx.decode(&mut batch).map_err(Error::llama)?;
            ctx.synchronize();
            let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-6);
            chunk = ((rate * target_s) as usize).clamp(CHUNK_MIN, CHUNK_MAX);
            last = n as i32 - 1;
            done += n;
        }
        Ok(last)
    }
}
