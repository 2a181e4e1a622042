//! The language model: configuration, weights, the trainable decoder, packed batches and their loss,
//! GGUF import/export (llama.cpp's names and keys), presets.

pub mod batch;
pub mod beam;
pub mod config;
pub mod gguf;
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
/// carry a target (a small fraction of the row), which saves most of the output-head cost.
pub fn loss(w: &Weights, rope: &Rope, b: &Batch) -> Result<Tensor> {
    let h = transformer::hidden_states(w, rope, &b.ids, &b.positions, &b.mask)?;
    let (bsz, t, d) = h.dims3()?;
    let picked = h.reshape((bsz * t, d))?.index_select(&b.target_index, 0)?;
    let logits = picked.matmul(&w.head()?.t()?)?.to_dtype(DType::F32)?;
    Ok(candle_nn::loss::cross_entropy(&logits, &b.targets)?)
}
