//! Tokenizers: training the tiny preset's byte-level BPE, rebuilding a Hugging Face tokenizer from a
//! GGUF file's vocabulary, adding navigen's atomic tokens, and writing the GGUF tokenizer metadata that
//! llama.cpp reads (so the device tokenizes exactly as the trainer did).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::json;
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use navigen::prompt::{CHAT_SPECIAL_TOKENS, THINK_TOKENS};

/// GGUF token types (llama.cpp `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;

/// The end-of-text token of the tiny preset's tokenizer.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Pre-tokenizer and decoder shared by the presets we build: digits split one by one, then GPT-2's
/// byte-level regex. llama.cpp calls this pre-tokenizer "smollm" (the same two regexes).
fn pre_tokenizer_json() -> serde_json::Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
    ]})
}

pub const SMOLLM_PRE: &str = "smollm";

fn tokenizer_json(
    vocab: serde_json::Value,
    merges: Vec<String>,
    added: Vec<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer_json(),
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

fn from_json(v: &serde_json::Value) -> Result<Tokenizer> {
    Tokenizer::from_bytes(serde_json::to_vec(v)?).map_err(|e| anyhow!("building tokenizer: {e}"))
}

/// Trains a byte-level BPE of `vocab_size` tokens on `texts`; the chat tokens and end-of-text come first.
/// Token id of every CID code of the catalog, `[level][code]` (the trainer's one mapping: beam
/// search and the trie-restricted loss both use it).
pub fn code_token_ids(cat: &navigen::Catalog, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    cat.sizes()
        .iter()
        .enumerate()
        .map(|(l, &k)| {
            (0..k)
                .map(|c| {
                    let t = navigen::cid::code_token(l, c as u16);
                    tok.token_to_id(&t)
                        .with_context(|| format!("the tokenizer lacks {t}"))
                })
                .collect()
        })
        .collect()
}

pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let mut tok = from_json(&tokenizer_json(json!({}), vec![], vec![]))?;
    let specials: Vec<AddedToken> = std::iter::once(END_OF_TEXT)
        .chain(CHAT_SPECIAL_TOKENS)
        .map(|s| AddedToken::from(s, true))
        .collect();
    let alphabet: std::collections::HashSet<char> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
            .into_iter()
            .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(alphabet)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tok.train(&mut trainer, texts.iter().map(|s| s.as_str()))
        .map_err(|e| anyhow!("training BPE: {e}"))?;
    Ok(tok)
}

/// Rebuilds a tokenizer from GGUF metadata (`tokenizer.ggml.*`, gpt2 BPE). Returns it and the
/// llama.cpp pre-tokenizer name.
pub fn from_gguf(meta: &HashMap<String, Value>) -> Result<(Tokenizer, String)> {
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model != "gpt2" {
        bail!("tokenizer model {model:?} is not supported (byte-level BPE, \"gpt2\", only)");
    }
    let pre = meta
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "default".into());
    if pre != SMOLLM_PRE {
        bail!("pre-tokenizer {pre:?} is not supported yet (only {SMOLLM_PRE:?}, SmolLM2's)");
    }
    let tokens = meta
        .get("tokenizer.ggml.tokens")
        .context("no tokenizer.ggml.tokens")?
        .to_vec()?;
    let types = meta
        .get("tokenizer.ggml.token_type")
        .map(|v| v.to_vec())
        .transpose()?;
    let merges = meta
        .get("tokenizer.ggml.merges")
        .context("no tokenizer.ggml.merges")?
        .to_vec()?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let s = t.to_string()?.clone();
        let ty = types
            .and_then(|ts| ts.get(id))
            .and_then(|v| v.to_i32().ok())
            .unwrap_or(TOKEN_NORMAL);
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": ty == TOKEN_CONTROL}));
        }
        vocab.insert(s, json!(id));
    }
    let merges: Vec<String> = merges
        .iter()
        .map(|m| m.to_string().cloned())
        .collect::<candle_core::Result<_>>()?;
    Ok((
        from_json(&tokenizer_json(
            serde_json::Value::Object(vocab),
            merges,
            added,
        ))?,
        pre,
    ))
}

/// Adds navigen's tokens: the chat markers (special, if missing), the reasoning markers and the given
/// CID tokens (atomic, not special). Returns the id of the first token that was new.
pub fn add_navigen_tokens(tok: &mut Tokenizer, cid_tokens: &[String]) -> Result<u32> {
    let first_new = tok.get_vocab_size(true) as u32;
    let specials: Vec<AddedToken> = CHAT_SPECIAL_TOKENS
        .iter()
        .filter(|s| tok.token_to_id(s).is_none())
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&specials);
    let atomic: Vec<AddedToken> = THINK_TOKENS
        .iter()
        .map(|s| s.to_string())
        .chain(cid_tokens.iter().cloned())
        .filter(|s| tok.token_to_id(s).is_none())
        .map(|s| AddedToken::from(s, false).normalized(false))
        .collect();
    tok.add_tokens(&atomic);
    Ok(first_new)
}

/// Token id of a string that must be a single token.
pub fn single_id(tok: &Tokenizer, s: &str) -> Result<u32> {
    tok.token_to_id(s)
        .with_context(|| format!("{s:?} is not a token of the vocabulary"))
}

/// Token ids of a text, with added tokens recognised (no BOS/EOS added).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec())
}

/// The `tokenizer.*` GGUF metadata of a tokenizer: every token in id order with its type, the merges,
/// special ids and the chat template.
pub fn gguf_metadata(
    tok: &Tokenizer,
    pre: &str,
    original_types: Option<&[i32]>,
) -> Result<Vec<(String, Value)>> {
    let n = tok.get_vocab_size(true);
    let added = tok.get_added_tokens_decoder();
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let s = tok
            .id_to_token(id)
            .with_context(|| format!("token id {id} has no text: ids must be contiguous"))?;
        let ty = match added.get(&id) {
            Some(a) if a.special => TOKEN_CONTROL,
            Some(_) => TOKEN_USER_DEFINED,
            None => original_types
                .and_then(|t| t.get(id as usize).copied())
                .unwrap_or(TOKEN_NORMAL),
        };
        tokens.push(Value::String(s));
        types.push(Value::I32(ty));
    }
    let json: serde_json::Value =
        serde_json::from_str(&tok.to_string(false).map_err(|e| anyhow!("{e}"))?)?;
    let merges: Vec<Value> = json["model"]["merges"]
        .as_array()
        .context("tokenizer model has no merges (not BPE?)")?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::String(s.clone())),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            ))),
            other => Err(anyhow!("unexpected merge {other}")),
        })
        .collect::<Result<_>>()?;
    let id = |s: &str| tok.token_to_id(s);
    let eos = id(navigen::prompt::IM_END).context("no <|im_end|> token")?;
    let pad = id(END_OF_TEXT).unwrap_or(eos);
    let bos = id(END_OF_TEXT)
        .or_else(|| id(navigen::prompt::IM_START))
        .unwrap_or(eos);
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(pad)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(navigen::prompt::CHAT_TEMPLATE_JINJA.into()),
        ),
    ])
}
