//! Resumable checkpoints: weights, optimiser moments and the training state. Each checkpoint is a
//! folder written under a temporary name, synced, then renamed; `latest` names the newest complete one
//! and is itself replaced atomically. A kill at any moment leaves the previous checkpoint usable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::model::Weights;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub stage: u8,
    pub step: usize,
    pub best_val_loss: Option<f64>,
    /// Best validation next-item Recall@10 so far (what picks the kept model).
    #[serde(default)]
    pub best_val_recall: Option<f64>,
    pub seed: u64,
    pub total_steps: usize,
    /// What else a stage needs to continue exactly (GRPO: its watch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// Where a stage starts: its newest checkpoint, a given one, or afresh.
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    Latest,
    Step(usize),
    Never,
}

fn step_dir(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

fn sync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

pub fn save(dir: &Path, state: &State, w: &Weights, opt: &AdamW, keep: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let final_dir = step_dir(dir, state.step);
    let tmp = dir.join(format!(".tmp-step-{:08}", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    // LoRA factors unmerged, so a resumed run continues from the same factors.
    w.save_raw(&tmp.join("weights.safetensors"))?;
    let mut moments: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in &opt.m {
        moments.insert(format!("m.{k}"), t.to_device(&Device::Cpu)?);
    }
    for (k, t) in &opt.v {
        moments.insert(format!("v.{k}"), t.to_device(&Device::Cpu)?);
    }
    for (k, t) in &opt.master {
        moments.insert(format!("w32.{k}"), t.to_device(&Device::Cpu)?);
    }
    for (k, t) in &opt.ema {
        moments.insert(format!("ema.{k}"), t.to_device(&Device::Cpu)?);
    }
    moments.insert(
        "adam_step".into(),
        Tensor::new(&[opt.step as u32], &Device::Cpu)?,
    );
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    for f in ["weights.safetensors", "optimizer.safetensors", "state.json"] {
        std::fs::File::open(tmp.join(f))?.sync_all()?;
    }
    sync_dir(&tmp);
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir)?;
    sync_dir(dir);
    navigen::format::write_atomic(
        &dir.join("latest"),
        final_dir
            .file_name()
            .expect("named")
            .to_string_lossy()
            .as_bytes(),
    )?;
    // Keep the newest `keep` checkpoints.
    let mut all = list(dir)?;
    all.sort_unstable();
    let n = all.len();
    for s in all.into_iter().take(n.saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(step_dir(dir, s));
    }
    Ok(())
}

/// Steps of the complete checkpoints in `dir`.
pub fn list(dir: &Path) -> Result<Vec<usize>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    Ok(rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|s| s.parse().ok())
        })
        .collect())
}

/// The step `latest` points at, if any.
pub fn latest(dir: &Path) -> Result<Option<usize>> {
    match std::fs::read_to_string(dir.join("latest")) {
        Ok(s) => Ok(s.trim().strip_prefix("step-").and_then(|s| s.parse().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The training state of the checkpoint at `step`, without loading its tensors.
pub fn read_state(dir: &Path, step: usize) -> Result<State> {
    let d = step_dir(dir, step);
    Ok(serde_json::from_slice(
        &std::fs::read(d.join("state.json"))
            .with_context(|| format!("no checkpoint at {}", d.display()))?,
    )?)
}

/// Restores weights (trainable set kept as configured) and optimiser state; returns the training state.
pub fn load(
    dir: &Path,
    step: usize,
    w: &mut Weights,
    opt: &mut AdamW,
    device: &Device,
    dtype: DType,
) -> Result<State> {
    let d = step_dir(dir, step);
    let state: State = serde_json::from_slice(
        &std::fs::read(d.join("state.json"))
            .with_context(|| format!("no checkpoint at {}", d.display()))?,
    )?;
    let was = w.trainable_mode();
    let loaded = candle_core::safetensors::load(d.join("weights.safetensors"), device)?;
    let mut merged = w.merged()?;
    let mut factors = std::collections::BTreeMap::new();
    for (k, t) in loaded {
        let t = t.to_dtype(dtype)?;
        if k.ends_with(crate::model::weights::LORA_A) || k.ends_with(crate::model::weights::LORA_B)
        {
            factors.insert(k, t);
        } else {
            merged.insert(k, t);
        }
    }
    *w = Weights::from_map(w.config.clone(), merged, device, dtype)?;
    w.set_trainable(was)?;
    if w.lora().is_some() {
        w.load_lora_factors(&factors)?;
    } else if !factors.is_empty() {
        anyhow::bail!(
            "the checkpoint at {} holds LoRA factors but this run trains without LoRA",
            d.display()
        );
    }
    let moments = candle_core::safetensors::load(d.join("optimizer.safetensors"), device)?;
    opt.m.clear();
    opt.v.clear();
    opt.master.clear();
    opt.ema.clear();
    for (k, t) in moments {
        if let Some(name) = k.strip_prefix("m.") {
            opt.m.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("v.") {
            opt.v.insert(name.to_string(), t);
        } else if let Some(name) = k.strip_prefix("w32.") {
            // Only while the weights stay narrow (a run resumed in f32 uses its own weights).
            if dtype != DType::F32 {
                opt.master.insert(name.to_string(), t);
            }
        } else if let Some(name) = k.strip_prefix("ema.") {
            opt.ema.insert(name.to_string(), t);
        } else if k == "adam_step" {
            opt.step = t.to_vec1::<u32>()?.first().copied().unwrap_or(0) as u64;
        }
    }
    Ok(state)
}
