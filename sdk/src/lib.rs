//! navigen: the on-device runtime. It opens a bundle (GGUF model, codebooks, catalog), keeps a
//! person's history, predicts the next item and writes a creation instruction, with no server.

#[cfg(target_endian = "big")]
compile_error!(
    "navigen files are little-endian and used in place; big-endian targets are not supported"
);

pub mod bundle;
pub mod chat;
pub mod cid;
pub mod embedding;
pub mod engine;
pub mod error;
pub mod format;
pub mod history;
pub mod llm;
pub mod prompt;
pub mod trie;

pub use cid::Cid;
pub use error::{Error, FormatError, Result};
pub use format::{Catalog, Codebooks};
