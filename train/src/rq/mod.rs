//! Residual quantisation of item embeddings into CIDs.

pub mod kmeans;
pub mod residual;

pub use residual::{auto_codebook_size, train, RqConfig, RqResult, RqStats};
