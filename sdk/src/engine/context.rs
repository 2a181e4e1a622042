//! The llama.cpp context of one call: every call creates its own (see the threading note of the
//! module), sized for what the call needs and bounded by
//! [`EngineParams::context_size`](super::EngineParams::context_size).

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;

use super::Engine;
use crate::error::{Error, Result};
use crate::llm;

impl Engine {
    fn threads(&self) -> i32 {
        if self.params.threads == 0 {
            llm::default_threads()
        } else {
            self.params.threads as i32
        }
    }

    pub(super) fn context(&self, n_ctx: u32, n_seq: u32) -> Result<LlamaContext<'_>> {
        let max = if self.params.context_size == 0 {
            4096.max(n_ctx)
        } else {
            self.params.context_size
        };
        if n_ctx > max {
            return Err(Error::InvalidArgument(format!(
                "the call needs {n_ctx} tokens of context, the engine allows {max}"
            )));
        }
        let p = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx.max(64))
            .with_n_ubatch(512.min(n_ctx.max(64)))
            .with_n_seq_max(n_seq)
            .with_kv_unified(true)
            .with_n_threads(self.threads())
            .with_n_threads_batch(self.threads())
            .with_op_offload(self.params.op_offload);
        let _g = self.ctx_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.model
            .llama()
            .new_context(llm::backend()?, p)
            .map_err(Error::llama)
    }
}
