//! GGUF import (a base model to fine-tune, quantised tensors dequantised to f32) and export (the model
//! the device runs), with llama.cpp's tensor names and hyper-parameter keys. The file itself is written
//! by [`crate::gguf`].
//!
//! llama-architecture GGUF files store Q and K rows permuted for llama.cpp's interleaved RoPE; our
//! module uses the Hugging Face (NEOX, rotate-half) layout, so they are un-permuted on import and
//! permuted back on export. Qwen3 uses the NEOX layout in llama.cpp too: no permutation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{Arch, ModelConfig};
use crate::gguf::{quantize, write, ExportDtype};

/// Hugging Face name -> GGUF name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, name) = rest.split_once('.')?;
    let g = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{i}.{g}"))
}

/// llama.cpp's permutation of Q/K rows (HF -> GGUF) for `heads` heads.
fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?)
}

/// The inverse (GGUF -> HF).
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .reshape((out, inp))?)
}

fn meta_u(meta: &HashMap<String, gguf_file::Value>, key: &str) -> Result<usize> {
    let v = meta.get(key).with_context(|| format!("GGUF lacks {key}"))?;
    Ok(v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))?)
}

fn meta_f(meta: &HashMap<String, gguf_file::Value>, key: &str) -> Option<f64> {
    meta.get(key)
        .and_then(|v| v.to_f32().map(|x| x as f64).or_else(|_| v.to_f64()).ok())
}

/// A model read from GGUF.
pub struct Imported {
    pub config: ModelConfig,
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, gguf_file::Value>,
}

pub fn import(path: &Path) -> Result<Imported> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = gguf_file::Content::read(&mut f)
        .with_context(|| format!("{} is not a GGUF file", path.display()))?;
    let meta = &content.metadata;
    let arch_name = meta
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen3" => Arch::Qwen3,
        a => bail!("GGUF architecture {a:?} is not supported (llama or qwen3)"),
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    let heads = meta_u(meta, &k("attention.head_count"))?;
    let hidden = meta_u(meta, &k("embedding_length"))?;
    let vocab = match meta.get("tokenizer.ggml.tokens") {
        Some(v) => v.to_vec()?.len(),
        None => meta_u(meta, &k("vocab_size"))?,
    };
    let config = ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta_u(meta, &k("feed_forward_length"))?,
        num_hidden_layers: meta_u(meta, &k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: meta_u(meta, &k("attention.head_count_kv")).unwrap_or(heads),
        head_dim: meta_u(meta, &k("attention.key_length"))
            .or_else(|_| meta_u(meta, &k("rope.dimension_count")))
            .unwrap_or(hidden / heads),
        rope_theta: meta_f(meta, &k("rope.freq_base")).unwrap_or(10_000.0),
        rms_norm_eps: meta_f(meta, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        max_position_embeddings: meta_u(meta, &k("context_length")).unwrap_or(4096),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    };
    config.validate()?;
    let mut tensors = BTreeMap::new();
    for (hf, _) in super::weights::Weights::expected_shapes(&config) {
        let g = gguf_name(&hf).expect("every expected tensor has a GGUF name");
        let q = content
            .tensor(&mut f, &g, &Device::Cpu)
            .with_context(|| format!("reading {g}"))?;
        let mut t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if arch == Arch::Llama {
            if hf.ends_with("q_proj.weight") {
                t = unpermute(&t, config.num_attention_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = unpermute(&t, config.num_key_value_heads)?;
            }
        }
        tensors.insert(hf, t);
    }
    Ok(Imported {
        config,
        tensors,
        metadata: content.metadata,
    })
}

/// Writes a GGUF that stock llama.cpp loads: tensors under llama.cpp names, every hyper-parameter key,
/// plus `extra` metadata (tokenizer, navigen keys).
pub fn export(
    path: &Path,
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    dtype: ExportDtype,
    name: &str,
    extra: Vec<(String, gguf_file::Value)>,
) -> Result<()> {
    use gguf_file::Value as V;
    let a = config.arch.gguf_name();
    let k = |s: &str| format!("{a}.{s}");
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(a.into())),
        ("general.name".into(), V::String(name.into())),
        ("general.file_type".into(), V::U32(dtype.file_type())),
        (
            k("context_length"),
            V::U32(config.max_position_embeddings as u32),
        ),
        (k("embedding_length"), V::U32(config.hidden_size as u32)),
        (k("block_count"), V::U32(config.num_hidden_layers as u32)),
        (
            k("feed_forward_length"),
            V::U32(config.intermediate_size as u32),
        ),
        (
            k("attention.head_count"),
            V::U32(config.num_attention_heads as u32),
        ),
        (
            k("attention.head_count_kv"),
            V::U32(config.num_key_value_heads as u32),
        ),
        (k("attention.key_length"), V::U32(config.head_dim as u32)),
        (k("attention.value_length"), V::U32(config.head_dim as u32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            V::F32(config.rms_norm_eps as f32),
        ),
        (k("rope.freq_base"), V::F32(config.rope_theta as f32)),
        (k("rope.dimension_count"), V::U32(config.head_dim as u32)),
        (k("vocab_size"), V::U32(config.vocab_size as u32)),
    ];
    meta.extend(extra);
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (hf, t) in tensors {
        if config.tie_word_embeddings && hf == super::weights::HEAD {
            continue;
        }
        let g = gguf_name(hf).with_context(|| format!("no GGUF name for {hf}"))?;
        let mut t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        if config.arch == Arch::Llama {
            if hf.ends_with("q_proj.weight") {
                t = permute(&t, config.num_attention_heads)?;
            } else if hf.ends_with("k_proj.weight") {
                t = permute(&t, config.num_key_value_heads)?;
            }
        }
        let q = quantize(hf, &t, dtype)?;
        qtensors.push((g, q));
    }
    write(path, &meta, &qtensors)
}
