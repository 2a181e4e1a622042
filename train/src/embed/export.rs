//! `navigen-train export-embedder`: all-MiniLM-L6-v2 (Hugging Face BERT safetensors + tokenizer.json)
//! as a GGUF that stock llama.cpp runs as `bert` with its WordPiece tokenizer and mean pooling. The
//! trainer embeds the catalog through this file on llama.cpp (`navigen::embedding::TextEmbedder`) and
//! the bundle carries it, so the device embeds new items exactly as the catalog was embedded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value as V;
use candle_core::{DType, Device};

use super::bert::BertConfig;
use crate::assets;
use crate::gguf::{self as g, ExportDtype};
use navigen::embedding::{EMBEDDER_NAME, GGUF_NAME_KEY};

/// Bumped when the exported file changes for the same source weights (it keys the cache).
const EXPORT_VERSION: u32 = 2;
/// llama.cpp token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;

/// Hugging Face BERT name -> llama.cpp name; `None` for tensors llama.cpp does not use (pooler).
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "embeddings.word_embeddings.weight" => Some("token_embd.weight"),
        "embeddings.position_embeddings.weight" => Some("position_embd.weight"),
        "embeddings.token_type_embeddings.weight" => Some("token_types.weight"),
        "embeddings.LayerNorm.weight" => Some("token_embd_norm.weight"),
        "embeddings.LayerNorm.bias" => Some("token_embd_norm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let (i, rest) = hf.strip_prefix("encoder.layer.")?.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let m = match module {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return None,
    };
    Some(format!("blk.{i}.{m}.{kind}"))
}

/// WordPiece vocabulary in llama.cpp's "phantom space" form: word-initial pieces get "▁", continuation
/// pieces lose "##", bracketed specials stay as they are.
fn phantom(tok: &str) -> String {
    if tok.starts_with('[') && tok.ends_with(']') {
        tok.to_string()
    } else if let Some(rest) = tok.strip_prefix("##") {
        rest.to_string()
    } else {
        format!("\u{2581}{tok}")
    }
}

fn tokenizer_meta(dir: &Path) -> Result<Vec<(String, V)>> {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json"))?)
        .context("reading tokenizer.json")?;
    let model = &j["model"];
    if model["type"] != "WordPiece" || model["continuing_subword_prefix"] != "##" {
        bail!("tokenizer.json is not a WordPiece tokenizer with ## continuations");
    }
    let lowercase = j["normalizer"]["lowercase"].as_bool().unwrap_or(false);
    let vocab = model["vocab"]
        .as_object()
        .context("tokenizer.json has no model.vocab")?;
    let mut tokens = vec![String::new(); vocab.len()];
    for (tok, id) in vocab {
        let id = id.as_u64().context("vocab id")? as usize;
        anyhow::ensure!(
            id < tokens.len() && tokens[id].is_empty(),
            "vocab ids are not 0..{}",
            tokens.len()
        );
        tokens[id] = tok.clone();
    }
    let special: std::collections::HashMap<String, u32> = j["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["special"] == true)
                .filter_map(|t| {
                    Some((t["content"].as_str()?.to_string(), t["id"].as_u64()? as u32))
                })
                .collect()
        })
        .unwrap_or_default();
    let id_of = |name: &str| {
        special
            .get(name)
            .copied()
            .with_context(|| format!("tokenizer.json lacks the special token {name}"))
    };
    let unk = id_of("[UNK]")?;
    let types: Vec<V> = (0..tokens.len() as u32)
        .map(|i| {
            V::I32(if i == unk {
                UNKNOWN
            } else if special.values().any(|&s| s == i) {
                CONTROL
            } else {
                NORMAL
            })
        })
        .collect();
    Ok(vec![
        ("tokenizer.ggml.model".into(), V::String("bert".into())),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(tokens.iter().map(|t| V::String(phantom(t))).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), V::Array(types)),
        ("tokenizer.ggml.token_type_count".into(), V::U32(2)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            V::U32(id_of("[CLS]")?),
        ),
        (
            "tokenizer.ggml.seperator_token_id".into(),
            V::U32(id_of("[SEP]")?),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), V::U32(unk)),
        (
            "tokenizer.ggml.padding_token_id".into(),
            V::U32(id_of("[PAD]")?),
        ),
        (
            "tokenizer.ggml.mask_token_id".into(),
            V::U32(id_of("[MASK]")?),
        ),
        (
            "tokenizer.ggml.normalizer.lowercase".into(),
            V::Bool(lowercase),
        ),
    ])
}

/// Converts a BERT folder (`config.json`, `model.safetensors`, `tokenizer.json`) to an embedder GGUF.
/// `source_sha256` identifies the source weights inside the file.
pub fn export_embedder(
    dir: &Path,
    source_sha256: &str,
    out: &Path,
    dtype: ExportDtype,
) -> Result<()> {
    let config: BertConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
        .context("reading the BERT config.json")?;
    if config.hidden_act.as_deref().is_some_and(|a| a != "gelu") {
        bail!(
            "hidden_act {:?}: llama.cpp's bert graph uses gelu",
            config.hidden_act
        );
    }
    let a = "bert";
    let k = |s: &str| format!("{a}.{s}");
    let mut meta: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(a.into())),
        ("general.name".into(), V::String(EMBEDDER_NAME.into())),
        ("general.file_type".into(), V::U32(dtype.file_type())),
        (GGUF_NAME_KEY.into(), V::String(EMBEDDER_NAME.into())),
        (
            "navigen.embedder.source_sha256".into(),
            V::String(source_sha256.into()),
        ),
        (
            "navigen.embedder.export_version".into(),
            V::U32(EXPORT_VERSION),
        ),
        (
            k("context_length"),
            V::U32(config.max_position_embeddings as u32),
        ),
        (k("embedding_length"), V::U32(config.hidden_size as u32)),
        (
            k("feed_forward_length"),
            V::U32(config.intermediate_size as u32),
        ),
        (k("block_count"), V::U32(config.num_hidden_layers as u32)),
        (
            k("attention.head_count"),
            V::U32(config.num_attention_heads as u32),
        ),
        (
            k("attention.layer_norm_epsilon"),
            V::F32(config.layer_norm_eps as f32),
        ),
        (k("attention.causal"), V::Bool(false)),
        // 1 = mean (LLAMA_POOLING_TYPE_MEAN), as sentence-transformers pools this model.
        (k("pooling_type"), V::U32(1)),
    ];
    meta.extend(tokenizer_meta(dir)?);
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .context("reading model.safetensors")?;
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for hf in names {
        let Some(name) = gguf_name(hf) else { continue };
        let t = weights[hf].to_dtype(DType::F32)?;
        // llama.cpp adds the token-type row to f32 activations, an op its CPU backend has only for f32.
        let d = if name == "token_types.weight" {
            ExportDtype::F32
        } else {
            dtype
        };
        tensors.push((name, g::quantize(hf, &t, d)?));
    }
    let layers = (0..config.num_hidden_layers)
        .filter(|i| {
            tensors
                .iter()
                .any(|(n, _)| n == &format!("blk.{i}.attn_q.weight"))
        })
        .count();
    anyhow::ensure!(
        layers == config.num_hidden_layers && tensors.iter().any(|(n, _)| n == "token_embd.weight"),
        "model.safetensors lacks BERT tensors"
    );
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    g::write(out, &meta, &tensors)
}

/// The embedder GGUF of the cached all-MiniLM-L6-v2 asset in `dtype`, exported once and kept in the
/// cache (keyed by the source wheel's sha256, the dtype and [`EXPORT_VERSION`]).
pub fn cached_minilm_gguf(dtype: ExportDtype) -> Result<PathBuf> {
    let src = assets::MINILM.ensure()?;
    let name = format!(
        "{}-{}-v{EXPORT_VERSION}-{}.gguf",
        EMBEDDER_NAME,
        &assets::MINILM.sha256[..16],
        dtype.name()
    );
    let path = assets::cache_dir().join("embedder").join(name);
    if !path.is_file() {
        export_embedder(&src, assets::MINILM.sha256, &path, dtype)?;
    }
    Ok(path)
}
