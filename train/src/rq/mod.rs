//! Residual quantisation of item embeddings into CIDs.

pub mod collab;
pub mod kmeans;
pub mod residual;

pub use residual::{
    assign, auto_codebook_size, train, train_codebooks, RqConfig, RqResult, RqStats, Trained,
};
