//! Base models: the `tiny` preset (Qwen3-shaped, random init, BPE trained on the catalog text), SmolLM2-135M
//! from its GGUF asset, any llama/qwen3 GGUF, or a Hugging Face folder. Each comes with its tokenizer, to
//! which navigen's tokens are added (vocabulary expansion).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::config::{Arch, ModelConfig};
use super::gguf;
use super::weights::{Weights, EMBED, HEAD};
use crate::tokenizer::{self as tk, TOKEN_NORMAL};
use navigen::Catalog;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Preset {
    /// Random init, 128 wide and 4 deep: the demo's and the tests' preset (minutes on 2 cores).
    Tiny,
    /// Random init, 256 wide and 4 deep: the CPU quality preset (docs/benchmarks.md).
    Small,
    Smollm2_135m,
    Hf(PathBuf),
    Gguf(PathBuf),
}

impl Preset {
    /// Whether the weights come from a trained model (then stage 1 freezes the backbone).
    pub fn pretrained(&self) -> bool {
        !matches!(self, Preset::Tiny | Preset::Small)
    }

    /// A short name for folders and tables.
    pub fn slug(&self) -> String {
        match self {
            Preset::Tiny => "tiny".into(),
            Preset::Small => "small".into(),
            Preset::Smollm2_135m => "smollm2-135m".into(),
            Preset::Hf(p) | Preset::Gguf(p) => p
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "tiny" => Preset::Tiny,
            "small" => Preset::Small,
            "smollm2-135m" => Preset::Smollm2_135m,
            _ => match s.split_once(':') {
                Some(("hf", p)) => Preset::Hf(PathBuf::from(p)),
                Some(("gguf", p)) => Preset::Gguf(PathBuf::from(p)),
                _ => bail!("unknown preset {s:?}: tiny, small, smollm2-135m, hf:PATH or gguf:PATH"),
            },
        })
    }
}

/// A base model with its tokenizer, after vocabulary expansion.
pub struct Base {
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// llama.cpp pre-tokenizer name for export.
    pub gguf_pre: String,
    /// GGUF token types of the original vocabulary (kept on export).
    pub original_types: Option<Vec<i32>>,
    /// Rows from here on are navigen's new tokens.
    pub first_new_row: usize,
    pub name: String,
}

/// Vocabulary size of the tiny preset's BPE (before navigen's tokens).
pub const TINY_BPE_VOCAB: usize = 2048;

/// Every CID token of the catalog (sorted by level then code) and the markers.
pub fn cid_tokens(cat: &Catalog) -> Vec<String> {
    let mut toks = vec![
        navigen::cid::CID_BEGIN.to_string(),
        navigen::cid::CID_END.to_string(),
    ];
    for (l, &k) in cat.sizes().iter().enumerate() {
        for c in 0..k {
            toks.push(navigen::cid::code_token(l, c as u16));
        }
    }
    toks
}

/// A base model before vocabulary expansion: weights, tokenizer, llama.cpp pre-tokenizer name, GGUF
/// token types of the vocabulary (when known) and the model's name.
type RawBase = (Weights, Tokenizer, String, Option<Vec<i32>>, String);

fn raw_base(
    preset: &Preset,
    tiny_corpus: impl FnOnce() -> Vec<String>,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<RawBase> {
    match preset {
        Preset::Tiny | Preset::Small => {
            let tok = tk::train_bpe(&tiny_corpus(), TINY_BPE_VOCAB)?;
            let v = tok.get_vocab_size(true);
            let config = if *preset == Preset::Tiny {
                ModelConfig::tiny(v)
            } else {
                ModelConfig::small(v)
            };
            let w = Weights::random(&config, device, dtype, seed)?;
            let name = if *preset == Preset::Tiny {
                "navigen-tiny"
            } else {
                "navigen-small"
            };
            Ok((w, tok, tk::SMOLLM_PRE.to_string(), None, name.into()))
        }
        Preset::Smollm2_135m => {
            let dir = crate::assets::SMOLLM2.ensure()?;
            let p = dir.join(crate::assets::SMOLLM2.members[0].1);
            from_gguf(&p, device, dtype, "navigen-smollm2-135m")
        }
        Preset::Gguf(p) => from_gguf(
            p,
            device,
            dtype,
            &format!(
                "navigen-{}",
                p.file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default()
            ),
        ),
        Preset::Hf(dir) => from_hf(dir, device, dtype),
    }
}

fn from_gguf(p: &Path, device: &Device, dtype: DType, name: &str) -> Result<RawBase> {
    let imp = gguf::import(p)?;
    let (tok, pre) = tk::from_gguf(&imp.metadata)?;
    let types = imp
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|x| x.to_i32().unwrap_or(TOKEN_NORMAL))
                .collect()
        });
    let w = Weights::from_map(imp.config, imp.tensors, device, dtype)?;
    Ok((w, tok, pre, types, name.to_string()))
}

fn from_hf(dir: &Path, device: &Device, dtype: DType) -> Result<RawBase> {
    let config = ModelConfig::from_hf_json(
        &std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}/config.json", dir.display()))?,
    )?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} has no .safetensors files", dir.display());
    }
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{}/tokenizer.json: {e}", dir.display()))?;
    let pre = llama_cpp_pre(&tok, config.arch)?;
    // Checkpoints may have more embedding rows than tokens (padding); the tokenizer decides.
    let w = Weights::from_safetensors(config, &files, device, dtype)?;
    let name = format!(
        "navigen-{}",
        dir.file_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default()
    );
    Ok((w, tok, pre, None, name))
}

/// llama.cpp's name for a Hugging Face tokenizer's pre-tokenizer, read from its structure: digits split
/// one by one then GPT-2's byte-level regex is "smollm"; a Split on the Qwen regex then byte-level is
/// "qwen2"; plain byte-level with its regex is "gpt2". Anything else is refused rather than exported with
/// a tokenizer llama.cpp would apply differently.
pub fn llama_cpp_pre(tok: &Tokenizer, arch: Arch) -> Result<String> {
    let json: serde_json::Value =
        serde_json::from_str(&tok.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?)?;
    let pre = &json["pre_tokenizer"];
    let kinds: Vec<&str> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["type"].as_str()).collect())
            .unwrap_or_default(),
        Some(t) => vec![t],
        None => vec![],
    };
    let name = match kinds.as_slice() {
        ["Digits", "ByteLevel"] if pre["pretokenizers"][0]["individual_digits"] == true => "smollm",
        ["Split", "ByteLevel"] if arch == Arch::Qwen3 => "qwen2",
        ["ByteLevel"] if pre["use_regex"] != false => "gpt2",
        other => bail!("pre-tokenizer {other:?} has no known llama.cpp equivalent; export would tokenise differently"),
    };
    Ok(name.to_string())
}

/// Loads the base model and expands its vocabulary with navigen's tokens.
///
/// New rows are initialised from what they stand for: the row of `<s_x_N>` is the mean of the embedding
/// rows of the title tokens of every item whose level-x code is N (those items are neighbours in the
/// embedding space, so this starts the token near their shared meaning); markers and reasoning tokens
/// start at the mean of all rows. The output head (when untied) is initialised the same way from its
/// own rows.
///
/// `tiny_corpus` gives the text the tiny preset's tokenizer is trained on (the supervision's shapes,
/// `tasks::tiny_tokenizer_corpus`); it is called for the tiny preset only.
pub fn load(
    preset: &Preset,
    cat: &Catalog,
    tiny_corpus: impl FnOnce() -> Vec<String>,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Base> {
    let (mut weights, mut tokenizer, gguf_pre, original_types, name) =
        raw_base(preset, tiny_corpus, device, dtype, seed)?;
    let base_tok_vocab = tokenizer.get_vocab_size(true);
    if weights.config.vocab_size < base_tok_vocab {
        bail!(
            "the model has {} embedding rows but its tokenizer {} tokens",
            weights.config.vocab_size,
            base_tok_vocab
        );
    }
    // Keep the tokenizer and the matrix the same size: drop padding rows past the tokenizer.
    if weights.config.vocab_size > base_tok_vocab {
        bail!("the model has {} embedding rows for {} tokens; padded vocabularies are not supported yet", weights.config.vocab_size, base_tok_vocab);
    }
    let cids = cid_tokens(cat);
    let added_from = tk::add_navigen_tokens(&mut tokenizer, &cids)? as usize;
    // A base that already knows navigen's tokens (a navigen model trained further) trains them again
    // in stage 1: they start at the lowest id among them.
    let first_new = cids
        .iter()
        .chain(
            navigen::prompt::THINK_TOKENS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .iter(),
        )
        .filter_map(|t| tokenizer.token_to_id(t))
        .map(|i| i as usize)
        .min()
        .unwrap_or(added_from)
        .min(added_from);
    let total = tokenizer.get_vocab_size(true);
    let merged = weights.merged()?;
    let embed: Vec<Vec<f32>> = merged[EMBED].to_dtype(DType::F32)?.to_vec2()?;
    let head: Option<Vec<Vec<f32>>> = merged
        .get(HEAD)
        .map(|h| h.to_dtype(DType::F32)?.to_vec2())
        .transpose()?;
    let mean = |rows: &[Vec<f32>], ids: &[u32]| -> Vec<f32> {
        let h = rows[0].len();
        let mut m = vec![0f32; h];
        let ids: Vec<u32> = if ids.is_empty() {
            (0..rows.len() as u32).collect()
        } else {
            ids.to_vec()
        };
        for &i in &ids {
            m.iter_mut()
                .zip(&rows[i as usize])
                .for_each(|(a, b)| *a += b);
        }
        m.iter_mut().for_each(|a| *a /= ids.len() as f32);
        m
    };
    // Title tokens of the items behind each code.
    let mut by_code: std::collections::HashMap<String, Vec<u32>> = std::collections::HashMap::new();
    for it in cat.items() {
        let ids: Vec<u32> = tk::encode(&tokenizer, it.title)?
            .into_iter()
            .filter(|&i| (i as usize) < first_new)
            .collect();
        for (l, &c) in it.cid.codes().iter().enumerate() {
            by_code
                .entry(navigen::cid::code_token(l, c))
                .or_default()
                .extend(&ids);
        }
    }
    let mut new_embed = Vec::with_capacity(total - added_from);
    let mut new_head = Vec::with_capacity(total - added_from);
    for id in added_from..total {
        let t = tokenizer.id_to_token(id as u32).unwrap_or_default();
        let ids = by_code.get(&t).cloned().unwrap_or_default();
        new_embed.push(mean(&embed, &ids));
        if let Some(h) = &head {
            new_head.push(mean(h, &ids));
        }
    }
    weights.grow_vocab(
        total,
        &new_embed,
        head.as_ref().map(|_| new_head.as_slice()),
    )?;
    Ok(Base {
        weights,
        tokenizer,
        gguf_pre,
        original_types,
        first_new_row: first_new,
        name,
    })
}
