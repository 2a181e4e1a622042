//! The model's tensors by Hugging Face name, and which of them train.
//!
//! Frozen weights are plain tensors (no gradient is kept for them); trainable ones are `Var`s. In stage 1
//! the embedding is split into frozen base rows and a trainable block of new rows (the added tokens),
//! concatenated at every forward pass, so every pretrained row stays bit-identical. With LoRA the
//! projections stay frozen and two low-rank factors per projection train; the effective weight
//! W + (alpha / r) B A is formed at each forward (cheap next to the products it feeds) and folded into W
//! for export.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::config::ModelConfig;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const NEW_ROWS: &str = "model.embed_tokens.new_rows";
pub const HEAD: &str = "lm_head.weight";
pub const FINAL_NORM: &str = "model.norm.weight";

/// The projections LoRA adapts in every layer (the reference's q, k, v, o, gate, up and down).
pub const LORA_TARGETS: [&str; 7] = [
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];
/// Suffixes of a projection's LoRA factors: A (rank, in) and B (out, rank).
pub const LORA_A: &str = ".lora_a";
pub const LORA_B: &str = ".lora_b";

/// Low-rank adapters: rank r and scale alpha / r.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lora {
    pub rank: usize,
    pub alpha: f64,
}

impl Lora {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

pub fn layer(i: usize, name: &str) -> String {
    format!("model.layers.{i}.{name}")
}

/// What trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trainable {
    /// Nothing (inference, export).
    None,
    /// Stage 1: the new embedding rows from `first_new_row` on, and the output head (when untied).
    NewRowsAndHead { first_new_row: usize },
    /// Stage 2: everything.
    All,
    /// LoRA factors on [`LORA_TARGETS`] only; every weight of the model stays frozen.
    Lora(Lora),
}

pub struct Weights {
    pub config: ModelConfig,
    pub dtype: DType,
    pub device: Device,
    tensors: BTreeMap<String, Tensor>,
    vars: BTreeMap<String, Var>,
    split: Option<usize>,
    lora: Option<Lora>,
}

/// Deterministic N(0, std) values (candle's own random tensors are not seedable on every device).
fn normal(n: usize, std: f32, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}

impl Weights {
    /// The tensor names and shapes a config implies.
    pub fn expected_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let mut v = vec![
            (EMBED.to_string(), vec![c.vocab_size, h]),
            (FINAL_NORM.to_string(), vec![h]),
        ];
        if !c.tie_word_embeddings {
            v.push((HEAD.to_string(), vec![c.vocab_size, h]));
        }
        for i in 0..c.num_hidden_layers {
            v.push((layer(i, "input_layernorm.weight"), vec![h]));
            v.push((layer(i, "post_attention_layernorm.weight"), vec![h]));
            v.push((layer(i, "self_attn.q_proj.weight"), vec![q, h]));
            v.push((layer(i, "self_attn.k_proj.weight"), vec![kv, h]));
            v.push((layer(i, "self_attn.v_proj.weight"), vec![kv, h]));
            v.push((layer(i, "self_attn.o_proj.weight"), vec![h, q]));
            if c.arch.qk_norm() {
                v.push((layer(i, "self_attn.q_norm.weight"), vec![c.head_dim]));
                v.push((layer(i, "self_attn.k_norm.weight"), vec![c.head_dim]));
            }
            v.push((
                layer(i, "mlp.gate_proj.weight"),
                vec![c.intermediate_size, h],
            ));
            v.push((layer(i, "mlp.up_proj.weight"), vec![c.intermediate_size, h]));
            v.push((
                layer(i, "mlp.down_proj.weight"),
                vec![h, c.intermediate_size],
            ));
        }
        v
    }

    /// Random initialisation: N(0, 0.02) matrices, unit norms; deterministic in `seed`.
    pub fn random(config: &ModelConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        for (name, shape) in Self::expected_shapes(config) {
            let n: usize = shape.iter().product();
            let t = if shape.len() == 1 {
                Tensor::ones(shape.as_slice(), DType::F32, device)?
            } else {
                Tensor::from_vec(normal(n, 0.02, &mut rng), shape.as_slice(), device)?
            };
            tensors.insert(name, t.to_dtype(dtype)?);
        }
        Self::from_map(config.clone(), tensors, device, dtype)
    }

    /// Takes a full set of tensors, checking names and shapes against the config.
    pub fn from_map(
        config: ModelConfig,
        mut tensors: BTreeMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        if config.tie_word_embeddings {
            // Some checkpoints store a copy of the tied head; it is the embedding.
            tensors.remove(HEAD);
        }
        let expected = Self::expected_shapes(&config);
        for (name, shape) in &expected {
            let t = tensors
                .get(name)
                .with_context(|| format!("missing tensor {name}"))?;
            if t.dims() != shape.as_slice() {
                bail!(
                    "tensor {name} has shape {:?}, config implies {shape:?}",
                    t.dims()
                );
            }
        }
        let known: std::collections::HashSet<&String> = expected.iter().map(|(n, _)| n).collect();
        let extra: Vec<String> = tensors
            .keys()
            .filter(|k| !known.contains(k))
            .cloned()
            .collect();
        for k in &extra {
            // e.g. rotary caches of some checkpoints: derived, not weights.
            tensors.remove(k);
        }
        let mut out = BTreeMap::new();
        for (k, t) in tensors {
            out.insert(k, t.to_device(device)?.to_dtype(dtype)?);
        }
        Ok(Weights {
            config,
            dtype,
            device: device.clone(),
            tensors: out,
            vars: BTreeMap::new(),
            split: None,
            lora: None,
        })
    }

    /// Loads safetensors files (sharded checkpoints too) holding Hugging Face names.
    pub fn from_safetensors(
        config: ModelConfig,
        files: &[std::path::PathBuf],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        for f in files {
            for (k, t) in candle_core::safetensors::load(f, &Device::Cpu)
                .with_context(|| format!("reading {}", f.display()))?
            {
                map.insert(k, t.to_dtype(DType::F32)?);
            }
        }
        Self::from_map(config, map, device, dtype)
    }

    /// Sets what trains (see [`Trainable`]). Turning training off folds everything back into plain tensors.
    pub fn set_trainable(&mut self, t: Trainable) -> Result<()> {
        // Fold vars and a split embedding back first.
        let merged = self.merged()?;
        self.tensors = merged;
        self.vars.clear();
        self.split = None;
        self.lora = None;
        match t {
            Trainable::None => {}
            Trainable::Lora(l) => {
                if l.rank == 0 || !l.alpha.is_finite() {
                    bail!(
                        "LoRA needs a rank of at least 1 and a finite alpha (got r {}, alpha {})",
                        l.rank,
                        l.alpha
                    );
                }
                // A as PEFT draws it (the variance of kaiming_uniform with a = sqrt(5): 1 / (3 in)),
                // B zero: the adapted model starts as the model. Deterministic, so a resumed run that
                // re-creates the factors before loading them is the same run.
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x10a4);
                for i in 0..self.config.num_hidden_layers {
                    for target in LORA_TARGETS {
                        let name = layer(i, target);
                        let (out, inn) = self.get(&name)?.dims2()?;
                        let std = (1.0 / (3.0 * inn as f64)).sqrt() as f32;
                        let a = Tensor::from_vec(
                            normal(l.rank * inn, std, &mut rng),
                            (l.rank, inn),
                            &self.device,
                        )?
                        .to_dtype(self.dtype)?;
                        let b = Tensor::zeros((out, l.rank), self.dtype, &self.device)?;
                        self.vars
                            .insert(format!("{name}{LORA_A}"), Var::from_tensor(&a)?);
                        self.vars
                            .insert(format!("{name}{LORA_B}"), Var::from_tensor(&b)?);
                    }
                }
                self.lora = Some(l);
            }
            Trainable::All => {
                for (k, v) in std::mem::take(&mut self.tensors) {
                    let var = Var::from_tensor(&v)?;
                    self.tensors.insert(k.clone(), var.as_tensor().clone());
                    self.vars.insert(k, var);
                }
            }
            Trainable::NewRowsAndHead { first_new_row } => {
                let embed = self.tensors.remove(EMBED).expect("checked at load");
                let v = embed.dim(0)?;
                if first_new_row >= v {
                    bail!("no new rows to train: first new row {first_new_row}, vocabulary {v}");
                }
                let base = embed.narrow(0, 0, first_new_row)?.contiguous()?;
                let new = Var::from_tensor(
                    &embed
                        .narrow(0, first_new_row, v - first_new_row)?
                        .contiguous()?,
                )?;
                self.tensors.insert(EMBED.to_string(), base);
                self.tensors
                    .insert(NEW_ROWS.to_string(), new.as_tensor().clone());
                self.vars.insert(NEW_ROWS.to_string(), new);
                self.split = Some(first_new_row);
                if let Some(head) = self.tensors.remove(HEAD) {
                    let var = Var::from_tensor(&head)?;
                    self.tensors
                        .insert(HEAD.to_string(), var.as_tensor().clone());
                    self.vars.insert(HEAD.to_string(), var);
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("no tensor {name}"))
    }

    /// A projection as the forward pass uses it: with LoRA, W + (alpha / r) B A (differentiable in
    /// the factors); otherwise the tensor itself.
    pub fn weight(&self, name: &str) -> Result<Tensor> {
        let w = self.get(name)?;
        let Some(l) = self.lora else {
            return Ok(w.clone());
        };
        match (
            self.vars.get(&format!("{name}{LORA_A}")),
            self.vars.get(&format!("{name}{LORA_B}")),
        ) {
            (Some(a), Some(b)) => Ok((w + (b.as_tensor().matmul(a.as_tensor())? * l.scale())?)?),
            _ => Ok(w.clone()),
        }
    }

    /// The LoRA configuration while adapters train.
    pub fn lora(&self) -> Option<Lora> {
        self.lora
    }

    /// What trains now, as [`Weights::set_trainable`] would set it again.
    pub fn trainable_mode(&self) -> Trainable {
        if let Some(l) = self.lora {
            Trainable::Lora(l)
        } else if let Some(first_new_row) = self.split {
            Trainable::NewRowsAndHead { first_new_row }
        } else if self.vars.is_empty() {
            Trainable::None
        } else {
            Trainable::All
        }
    }

    /// The full embedding matrix (base and new rows concatenated in stage 1).
    pub fn embedding(&self) -> Result<Tensor> {
        match self.split {
            Some(_) => Ok(Tensor::cat(&[self.get(EMBED)?, self.get(NEW_ROWS)?], 0)?),
            None => Ok(self.get(EMBED)?.clone()),
        }
    }

    /// The output head (the embedding when tied).
    pub fn head(&self) -> Result<Tensor> {
        if self.config.tie_word_embeddings {
            self.embedding()
        } else {
            Ok(self.get(HEAD)?.clone())
        }
    }

    pub fn trainable(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Every weight under its Hugging Face name, split embedding and LoRA factors merged, detached
    /// from training.
    pub fn merged(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = self.unmerged_base()?;
        if self.lora.is_some() {
            for (k, t) in out.iter_mut() {
                *t = self.weight(k)?.detach();
            }
        }
        Ok(out)
    }

    /// The weights without LoRA folded in, plus the LoRA factors under `<projection>.lora_a/_b`:
    /// what a checkpoint holds, so a resumed run continues from the same factors.
    pub fn raw(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = self.unmerged_base()?;
        if self.lora.is_some() {
            for (k, v) in &self.vars {
                out.insert(k.clone(), v.as_tensor().detach());
            }
        }
        Ok(out)
    }

    fn unmerged_base(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.tensors {
            if k == NEW_ROWS {
                continue;
            }
            out.insert(k.clone(), t.detach());
        }
        if self.split.is_some() {
            out.insert(EMBED.to_string(), self.embedding()?.detach());
        }
        Ok(out)
    }

    /// Sets the LoRA factors from a checkpoint's [`Weights::raw`] map (after
    /// `set_trainable(Trainable::Lora(..))`); every factor must be there with its shape.
    pub fn load_lora_factors(&mut self, raw: &BTreeMap<String, Tensor>) -> Result<()> {
        for (k, v) in &self.vars {
            let t = raw
                .get(k)
                .with_context(|| format!("the checkpoint lacks the LoRA factor {k}"))?;
            if t.dims() != v.dims() {
                bail!(
                    "LoRA factor {k} has shape {:?}, expected {:?}",
                    t.dims(),
                    v.dims()
                );
            }
            v.set(&t.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// Writes [`Weights::raw`] as f32 safetensors (a checkpoint's weights).
    pub fn save_raw(&self, path: &Path) -> Result<()> {
        save_map(self.raw()?, path)
    }

    /// Writes the merged weights as f32 safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_map(self.merged()?, path)
    }

    /// Grows the vocabulary to `new_vocab` rows; `init(row)` gives the embedding (and head) values of each
    /// new row.
    pub fn grow_vocab(
        &mut self,
        new_vocab: usize,
        init_embed: &[Vec<f32>],
        init_head: Option<&[Vec<f32>]>,
    ) -> Result<()> {
        let merged = self.merged()?;
        let old = self.config.vocab_size;
        if new_vocab < old || init_embed.len() != new_vocab - old {
            bail!(
                "cannot grow vocabulary from {old} to {new_vocab} with {} rows",
                init_embed.len()
            );
        }
        let h = self.config.hidden_size;
        let rows = |r: &[Vec<f32>]| -> Result<Tensor> {
            let flat: Vec<f32> = r.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(flat, (r.len(), h), &self.device)?.to_dtype(self.dtype)?)
        };
        self.tensors = merged;
        self.vars.clear();
        self.split = None;
        self.lora = None;
        if new_vocab == old {
            return Ok(());
        }
        let e = self.tensors.remove(EMBED).expect("embedding exists");
        self.tensors.insert(
            EMBED.to_string(),
            Tensor::cat(&[&e, &rows(init_embed)?], 0)?,
        );
        if let Some(head) = self.tensors.remove(HEAD) {
            let extra = rows(init_head.unwrap_or(init_embed))?;
            self.tensors
                .insert(HEAD.to_string(), Tensor::cat(&[&head, &extra], 0)?);
        }
        self.config.vocab_size = new_vocab;
        Ok(())
    }

    /// Number of parameters that train now.
    pub fn trainable_params(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}

fn save_map(map: BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut m = std::collections::HashMap::new();
    for (k, t) in map {
        m.insert(k, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    candle_core::safetensors::save(&m, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::{make_batch, Row};
    use crate::model::{loss, Rope};
    use crate::run::{checkpoint, optim};

    fn config() -> ModelConfig {
        ModelConfig {
            num_hidden_layers: 2,
            ..ModelConfig::tiny(64)
        }
    }

    fn row() -> Row {
        let mut r = Row::default();
        for i in 0..12u32 {
            r.ids.push((i * 7 + 3) % 64);
            r.positions.push(i);
            r.segments.push(0);
            r.targets.push((i > 2).then_some((i * 5 + 1) % 64));
        }
        r
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn step(w: &Weights, l: &Tensor, opt: &mut optim::AdamW) {
        let g = l.backward().unwrap();
        let grads = w
            .trainable()
            .iter()
            .filter_map(|(n, v)| g.get(v.as_tensor()).map(|t| (n.clone(), t.clone())))
            .collect();
        opt.update(w.trainable(), &grads, 1e-2).unwrap();
    }

    const LORA: Lora = Lora {
        rank: 4,
        alpha: 8.0,
    };

    /// Only the factors train; at the start (B = 0) the adapted model is the model; after a few
    /// optimiser steps the loss falls, every frozen weight is bit-identical, and the merged weights
    /// give the adapted model's loss.
    #[test]
    fn lora_trains_only_its_factors_and_merges_exactly() {
        let dev = Device::Cpu;
        let c = config();
        let base = Weights::random(&c, &dev, DType::F32, 3)
            .unwrap()
            .merged()
            .unwrap();
        let mut w = Weights::from_map(c.clone(), base.clone(), &dev, DType::F32).unwrap();
        let rope = Rope::new(&c, &dev, DType::F32).unwrap();
        let b = make_batch(&[row()], 0, &dev, DType::F32, None).unwrap();
        let before = loss(&w, &rope, &b, None, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();

        w.set_trainable(Trainable::Lora(LORA)).unwrap();
        assert_eq!(w.trainable_mode(), Trainable::Lora(LORA));
        let per_layer: usize = LORA_TARGETS
            .iter()
            .map(|t| {
                let (o, i) = base[&layer(0, t)].dims2().unwrap();
                LORA.rank * (o + i)
            })
            .sum();
        assert_eq!(w.trainable_params(), c.num_hidden_layers * per_layer);
        let start = loss(&w, &rope, &b, None, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(start, before, "B = 0: the adapters change nothing yet");

        let mut opt = optim::AdamW::new(optim::AdamWConfig::default());
        for _ in 0..5 {
            let l = loss(&w, &rope, &b, None, None).unwrap();
            step(&w, &l, &mut opt);
        }
        let trained = loss(&w, &rope, &b, None, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(trained < start - 0.01, "{start} -> {trained}");
        for (k, t) in &base {
            assert_eq!(max_abs_diff(w.get(k).unwrap(), t), 0.0, "{k} is frozen");
        }

        let merged = Weights::from_map(c.clone(), w.merged().unwrap(), &dev, DType::F32).unwrap();
        assert!(merged.merged().unwrap().keys().all(|k| !k.contains("lora")));
        let q = layer(1, "self_attn.q_proj.weight");
        assert!(
            max_abs_diff(merged.get(&q).unwrap(), &base[&q]) > 0.0,
            "the adapters moved q"
        );
        let m = loss(&merged, &rope, &b, None, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (m - trained).abs() < 1e-5,
            "merged {m} vs adapted {trained}"
        );
    }

    /// A checkpoint keeps the factors apart from the frozen weights, and loading it into a run
    /// that trains LoRA restores both exactly (a resumed run continues from the same factors).
    #[test]
    fn lora_checkpoint_round_trip() {
        let dev = Device::Cpu;
        let c = config();
        let mut w = Weights::random(&c, &dev, DType::F32, 5).unwrap();
        w.set_trainable(Trainable::Lora(LORA)).unwrap();
        let rope = Rope::new(&c, &dev, DType::F32).unwrap();
        let b = make_batch(&[row()], 0, &dev, DType::F32, None).unwrap();
        let mut opt = optim::AdamW::new(optim::AdamWConfig::default());
        for _ in 0..3 {
            let l = loss(&w, &rope, &b, None, None).unwrap();
            step(&w, &l, &mut opt);
        }
        let dir = tempfile::tempdir().unwrap();
        let state = checkpoint::State {
            stage: 3,
            step: 3,
            best_val_loss: None,
            best_val_recall: None,
            seed: 1,
            total_steps: 10,
            extra: None,
        };
        checkpoint::save(dir.path(), &state, &w, &opt, 2).unwrap();

        let mut back = Weights::random(&c, &dev, DType::F32, 99).unwrap();
        back.set_trainable(Trainable::Lora(LORA)).unwrap();
        let mut opt2 = optim::AdamW::new(optim::AdamWConfig::default());
        checkpoint::load(dir.path(), 3, &mut back, &mut opt2, &dev, DType::F32).unwrap();
        assert_eq!(back.trainable_mode(), Trainable::Lora(LORA));
        let (a, z) = (w.raw().unwrap(), back.raw().unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), z.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            assert_eq!(max_abs_diff(t, &z[k]), 0.0, "{k}");
        }
        assert_eq!(opt2.step, opt.step);

        // A run without LoRA refuses the checkpoint instead of dropping the adapters.
        let mut full = Weights::random(&c, &dev, DType::F32, 99).unwrap();
        full.set_trainable(Trainable::All).unwrap();
        let err = checkpoint::load(dir.path(), 3, &mut full, &mut opt2, &dev, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("LoRA"), "{err}");
    }
}
