//! Facts about the item-text embedding that the trainer and the device must agree on.

/// The sentence-embedding model whose space the codebooks live in.
pub const EMBEDDER_NAME: &str = "all-MiniLM-L6-v2";
/// Texts are cut to this many tokens (including [CLS]/[SEP]) before embedding, as sentence-transformers does.
pub const MAX_TOKENS: usize = 256;
