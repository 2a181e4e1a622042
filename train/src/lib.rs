//! navigen-train: builds what the navigen SDK runs. Data -> embeddings -> CIDs -> TIDs -> supervision
//! -> SFT -> GRPO -> export.

pub mod assets;
pub mod bench;
pub mod data;
pub mod device;
pub mod embed;
pub mod export;
pub mod inspect;
pub mod model;
pub mod prepare;
pub mod progress;
pub mod rq;
pub mod sft;
pub mod tasks;
pub mod tid;
pub mod tokenizer;
