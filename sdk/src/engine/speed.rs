//! Speed measurement through the engine's own loops, comparable with llama-bench.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::generation::Decoding;
use super::{Engine, InstructionOptions};
use crate::error::Result;

impl Engine {
    /// One speed measurement through the engine's own loops, under llama-bench's protocol so the two
    /// compare: prefill = `n_prompt` tokens into an empty context (fed as every call feeds prompts, in
    /// chunks); decode = `n_gen` steps from an empty context, each choosing its token with the greedy
    /// sampler and streaming its text as `generate_instruction` does (end-of-generation ignored).
    /// Returns (prefill tokens/s, decode tokens/s).
    pub fn measure_speed(&self, n_prompt: usize, n_gen: usize) -> Result<(f64, f64)> {
        let epoch = self.cancel_epoch.load(Ordering::SeqCst);
        // Deterministic ordinary tokens (llama-bench uses random ones: content does not matter).
        let n_vocab = self.model.n_vocab().max(2) as u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let prompt: Vec<i32> = (0..n_prompt.max(1))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n_vocab) as i32
            })
            .collect();
        // One context for both tests, warmed up first (llama.cpp sizes its compute buffers on the
        // first decode), then emptied before each test, as llama-bench does.
        let mut ctx = self.context((prompt.len() + n_gen) as u32 + 8, 1)?;
        self.feed(&mut ctx, &prompt, 0, epoch)?;
        ctx.clear_kv_cache();
        let t = Instant::now();
        self.feed(&mut ctx, &prompt, 0, epoch)?;
        ctx.synchronize();
        let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
        ctx.clear_kv_cache();

        let mut d = Decoding::new(ctx, 0, 0, String::new());
        let mut sampler = self.sampler(&InstructionOptions::default(), None)?;
        let first = self.model.bos();
        let t = Instant::now();
        self.emit_and_feed(&mut d, first, &mut |_| true)?;
        for _ in 1..n_gen {
            self.check(epoch)?;
            let tok = sampler.choose(&d.ctx, d.last, &self.model, &[])?;
            self.emit_and_feed(&mut d, tok, &mut |_| true)?;
        }
        let decode = n_gen as f64 / t.elapsed().as_secs_f64();
        Ok((prefill, decode))
    }
}
