//! The language model: configuration, weights, the trainable decoder, packed batches and their loss,
//! GGUF import/export (llama.cpp's names and keys), presets.

pub mod batch;
pub mod beam;
pub mod config;
pub mod gguf;
pub mod ops;
pub mod ops_check;
#[cfg(feature = "cuda")]
mod ops_cuda;
pub mod preset;
pub mod transformer;
pub mod weights;

use anyhow::Result;
use candle_core::{DType, Tensor};

pub use batch::Batch;
pub use config::{Arch, ModelConfig};
pub use transformer::Rope;
pub use weights::{Trainable, Weights};

/// Mean cross-entropy over the answer tokens of a batch. Logits are computed only at positions that
/// carry a target (a small fraction of the row), which saves most of the output-head cost; CID code
/// targets are scored over the codes the trie allows ([`batch::CodeConstraint`]), the rest over the
/// whole vocabulary. `columns`: the token ids of the code block (from the same constraint);
/// `dropout` only while training.
pub fn loss(
    w: &Weights,
    rope: &Rope,
    b: &Batch,
    columns: Option<&Tensor>,
    dropout: Option<&mut transformer::Dropout>,
) -> Result<Tensor> {
    let h = transformer::hidden_states(w, rope, &b.ids, &b.positions, &b.mask, dropout)?;
    let (bsz, t, d) = h.dims3()?;
    let flat = h.reshape((bsz * t, d))?;
    let head = w.head()?;
    let n_text = b.targets.dim(0)?;
    let mut sum: Option<Tensor> = None;
    if n_text > 0 {
        let logits = flat
            .index_select(&b.target_index, 0)?
            .matmul(&head.t()?)?
            .to_dtype(DType::F32)?;
        sum = Some(ops::cross_entropy_sum(&logits, &b.targets)?);
    }
    if let (Some(logits), Some(tgt)) = (code_logits(&flat, &head, b, columns)?, &b.code_targets) {
        let part = ops::cross_entropy_sum(&logits, tgt)?;
        sum = Some(match sum {
            Some(s) => (s + part)?,
            None => part,
        });
    }
    let sum = sum.ok_or_else(|| anyhow::anyhow!("batch has no targets"))?;
    Ok((sum / b.loss_tokens.max(1) as f64)?)
}

/// Logits (f32) of the batch's code-target positions over the code block's columns, with the trie's
/// mask added (disallowed codes at -1e9). `flat`: hidden states (B * T, H).
fn code_logits(
    flat: &Tensor,
    head: &Tensor,
    b: &Batch,
    columns: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (Some(idx), Some(mask), Some(cols)) = (&b.code_index, &b.code_mask, columns) else {
        return Ok(None);
    };
    let rows = head.index_select(cols, 0)?;
    Ok(Some(
        (flat
            .index_select(idx, 0)?
            .matmul(&rows.t()?)?
            .to_dtype(DType::F32)?
            + mask)?,
    ))
}

/// Log-probabilities (f32, with gradient) of the batch's code targets, each under the softmax over
/// the codes the trie allows at its position, as decoding draws them (logits divided by
/// `temperature`). In the batch's order: row by row, position by position.
pub fn code_log_probs(
    w: &Weights,
    rope: &Rope,
    b: &Batch,
    columns: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let h = transformer::hidden_states(w, rope, &b.ids, &b.positions, &b.mask, None)?;
    let (bsz, t, d) = h.dims3()?;
    let flat = h.reshape((bsz * t, d))?;
    let (Some(logits), Some(tgt)) = (
        code_logits(&flat, &w.head()?, b, Some(columns))?,
        &b.code_targets,
    ) else {
        anyhow::bail!("the batch has no code targets");
    };
    let lp = candle_nn::ops::log_softmax(&(logits / temperature)?, candle_core::D::Minus1)?;
    Ok(lp.gather(&tgt.unsqueeze(1)?, 1)?.squeeze(1)?)
}

/// Log-probabilities (f32, with gradient) of the batch's text targets under the full-vocabulary
/// softmax at `temperature` (the distribution sampling draws from), in the batch's order: row by row,
/// position by position. Build the batch without a code constraint so that every target is here.
pub fn token_log_probs(w: &Weights, rope: &Rope, b: &Batch, temperature: f64) -> Result<Tensor> {
    let h = transformer::hidden_states(w, rope, &b.ids, &b.positions, &b.mask, None)?;
    let (bsz, t, d) = h.dims3()?;
    let logits = h
        .reshape((bsz * t, d))?
        .index_select(&b.target_index, 0)?
        .matmul(&w.head()?.t()?)?
        .to_dtype(DType::F32)?;
    let lp = candle_nn::ops::log_softmax(&(logits / temperature)?, candle_core::D::Minus1)?;
    Ok(lp.gather(&b.targets.unsqueeze(1)?, 1)?.squeeze(1)?)
}
