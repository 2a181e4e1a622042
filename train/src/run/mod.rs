//! What every training stage (SFT now, RL next) shares: the run folder, resumable checkpoints, metrics
//! and the optimiser. A stage imports these, never another stage's internals.
//!
//! Run folder: `run.json` (what the run is), `tokenizer.json`, `config.json`, `base.safetensors` (the base
//! model after vocabulary expansion), `stage1.safetensors`, `stage2.safetensors` (best validation loss of
//! each stage), `checkpoints/stage-N/` (resume points of each stage: one folder per stage, because step
//! numbers restart at every stage and a later stage's pruning must never remove, or its step overwrite,
//! another's), `metrics.jsonl`, `loss.png`.

pub mod checkpoint;
pub mod metrics;
pub mod optim;
pub mod recall;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::model::{preset, ModelConfig, Weights};
use navigen::format::write_atomic;

pub const RUN_FILE: &str = "run.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const CONFIG_FILE: &str = "config.json";
pub const BASE_WEIGHTS: &str = "base.safetensors";
/// The folder of the resume points, one sub-folder per stage ([`checkpoints_dir`]).
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// Where `stage` keeps its resume points in `run`.
pub fn checkpoints_dir(run: &Path, stage: u8) -> PathBuf {
    run.join(CHECKPOINTS_DIR).join(format!("stage-{stage}"))
}

pub fn stage_weights(stage: u8) -> String {
    format!("stage{stage}.safetensors")
}

/// What a run is; written when the run is created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub preset: preset::Preset,
    pub name: String,
    pub data: PathBuf,
    pub gguf_pre: String,
    pub original_types: Option<Vec<i32>>,
    pub first_new_row: usize,
    pub stages_done: Vec<u8>,
    pub teacher: String,
}

impl RunInfo {
    pub fn read(run: &Path) -> Result<Self> {
        let p = run.join(RUN_FILE);
        serde_json::from_slice(
            &std::fs::read(&p)
                .with_context(|| format!("reading {} (is this a run folder?)", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))
    }
    pub fn write(&self, run: &Path) -> Result<()> {
        write_atomic(&run.join(RUN_FILE), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// The run's tokenizer and the id that pads its batches (end of text, else the chat end token).
pub fn run_tokenizer(run: &Path) -> Result<(Tokenizer, u32)> {
    let tok = Tokenizer::from_file(run.join(TOKENIZER_FILE))
        .map_err(|e| anyhow::anyhow!("{}: {e}", run.join(TOKENIZER_FILE).display()))?;
    let pad = tok
        .token_to_id(crate::tokenizer::END_OF_TEXT)
        .or_else(|| tok.token_to_id(navigen::prompt::IM_END))
        .unwrap_or(0);
    Ok((tok, pad))
}

/// The model the run holds after its latest finished stage (or the base model).
pub fn load_run_model(
    run: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(Weights, Tokenizer, RunInfo, u8)> {
    let info = RunInfo::read(run)?;
    let config: ModelConfig = serde_json::from_slice(&std::fs::read(run.join(CONFIG_FILE))?)?;
    let tok = Tokenizer::from_file(run.join(TOKENIZER_FILE))
        .map_err(|e| anyhow::anyhow!("{}: {e}", run.join(TOKENIZER_FILE).display()))?;
    let stage = info.stages_done.iter().copied().max().unwrap_or(0);
    let file = if stage == 0 {
        BASE_WEIGHTS.to_string()
    } else {
        stage_weights(stage)
    };
    let w = Weights::from_safetensors(config, &[run.join(&file)], device, dtype)?;
    Ok((w, tok, info, stage))
}

/// Writes weights through a temporary file, synced, then renamed into place.
pub fn save_weights(w: &Weights, path: &Path) -> Result<()> {
    let tmp = path.with_extension("part.safetensors");
    w.save(&tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
