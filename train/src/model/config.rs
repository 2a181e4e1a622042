//! Model hyper-parameters, with Hugging Face `config.json` key names.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The two supported families. They differ in QK-norm (Qwen3) and in how GGUF stores Q/K rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Qwen3,
    Llama,
}

impl Arch {
    /// The `general.architecture` value of llama.cpp.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Qwen3 => "qwen3",
            Arch::Llama => "llama",
        }
    }
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(rename = "model_type")]
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Reads a Hugging Face config.json (Qwen3 or Llama).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).context("config.json is not JSON")?;
        let arch = match v["model_type"].as_str() {
            Some("qwen3") => Arch::Qwen3,
            Some("llama") => Arch::Llama,
            other => bail!("model_type {other:?} is not supported (qwen3 or llama)"),
        };
        let get = |k: &str| {
            v[k].as_u64()
                .map(|x| x as usize)
                .with_context(|| format!("config.json lacks {k}"))
        };
        let hidden = get("hidden_size")?;
        let heads = get("num_attention_heads")?;
        let c = ModelConfig {
            arch,
            vocab_size: get("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: get("intermediate_size")?,
            num_hidden_layers: get("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: v["num_key_value_heads"]
                .as_u64()
                .map(|x| x as usize)
                .unwrap_or(heads),
            head_dim: v["head_dim"]
                .as_u64()
                .map(|x| x as usize)
                .unwrap_or(hidden / heads.max(1)),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            max_position_embeddings: get("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} must be even", self.head_dim);
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            bail!("empty model shape");
        }
        Ok(())
    }

    /// The tiny Qwen3-shaped preset: trains in minutes on 2 CPU cores.
    pub fn tiny(vocab_size: usize) -> Self {
        ModelConfig {
            arch: Arch::Qwen3,
            vocab_size,
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
        }
    }

    /// The `small` preset: twice the tiny width (measured in docs/benchmarks.md).
    pub fn small(vocab_size: usize) -> Self {
        ModelConfig {
            hidden_size: 256,
            intermediate_size: 768,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            ..Self::tiny(vocab_size)
        }
    }

    pub fn param_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let per_layer = h * q
            + 2 * h * kv
            + q * h
            + 3 * h * self.intermediate_size
            + 2 * h
            + if self.arch.qk_norm() {
                2 * self.head_dim
            } else {
                0
            };
        let embed = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        embed + self.num_hidden_layers * per_layer + h
    }
}
