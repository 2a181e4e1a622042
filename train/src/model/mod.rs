//! The language model: configuration, weights, the trainable decoder, packed batches and their loss,
//! GGUF import/export (llama.cpp's names and keys), presets.

pub mod batch;
pub mod beam;
pub mod config;
pub mod gguf;
pub mod ops;
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
    if let (Some(idx), Some(tgt), Some(mask), Some(cols)) =
        (&b.code_index, &b.code_targets, &b.code_mask, columns)
    {
        let rows = head.index_select(cols, 0)?;
        let logits = (flat
            .index_select(idx, 0)?
            .matmul(&rows.t()?)?
            .to_dtype(DType::F32)?
            + mask)?;
        let part = ops::cross_entropy_sum(&logits, tgt)?;
        sum = Some(match sum {
            Some(s) => (s + part)?,
            None => part,
        });
    }
    let sum = sum.ok_or_else(|| anyhow::anyhow!("batch has no targets"))?;
    Ok((sum / b.loss_tokens.max(1) as f64)?)
}
