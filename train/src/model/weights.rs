//! The model's tensors by Hugging Face name, and which of them train.
//!
//! Frozen weights are plain tensors (no gradient is kept for them); trainable ones are `Var`s. In stage 1
//! the embedding is split into frozen base rows and a trainable block of new rows (the added tokens),
//! concatenated at every forward pass, so every pretrained row stays bit-identical.

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

pub fn layer(i: usize, name: &str) -> String {
    format!("model.layers.{i}.{name}")
}

/// What trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// Nothing (inference, export).
    None,
    /// Stage 1: the new embedding rows from `first_new_row` on, and the output head (when untied).
    NewRowsAndHead { first_new_row: usize },
    /// Stage 2: everything.
    All,
}

pub struct Weights {
    pub config: ModelConfig,
    pub dtype: DType,
    pub device: Device,
    tensors: BTreeMap<String, Tensor>,
    vars: BTreeMap<String, Var>,
    split: Option<usize>,
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
        match t {
            Trainable::None => {}
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

    /// Every weight under its Hugging Face name, split embedding merged, detached from training.
    pub fn merged(&self) -> Result<BTreeMap<String, Tensor>> {
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

    /// Writes the merged weights as f32 safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut m = std::collections::HashMap::new();
        for (k, t) in self.merged()? {
            m.insert(k, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        }
        candle_core::safetensors::save(&m, path)?;
        Ok(())
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
