//! `navigen-train export`: the run's latest model as GGUF plus the codebooks and catalog beside it, the
//! bundle the device opens. The export is verified by loading it with llama.cpp and comparing its
//! tokenisation and greedy tokens with candle's on real task prompts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};
use serde::Serialize;

use crate::data::sequences::{self, Example};
use crate::files::copy_atomic;
use crate::gguf::ExportDtype;
use crate::model::{gguf, transformer, Rope, Weights};
use crate::run::{load_run_model, RunInfo};
use navigen::bundle::{FileEntry, Kind, Manifest, BUNDLE_VERSION, MODEL_FILE};
use navigen::format::{catalog, codebooks};
use navigen::prompt::{self, Mode};
use navigen::{Catalog, Cid};

#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub run: PathBuf,
    pub out: PathBuf,
    pub dtype: ExportDtype,
    /// Prompts to compare greedy tokens on (0 skips verification).
    pub verify_prompts: usize,
    pub verify_tokens: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PromptCheck {
    pub task: String,
    pub prompt_tokens: usize,
    pub same_tokenization: bool,
    pub candle: Vec<u32>,
    pub llama: Vec<i32>,
    pub identical: bool,
    /// Tokens that agree before the first difference.
    pub common_prefix: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub bundle: PathBuf,
    pub model_bytes: u64,
    pub dtype: String,
    pub stage: u8,
    pub checks: Vec<PromptCheck>,
}

impl ExportReport {
    pub fn all_identical(&self) -> bool {
        self.checks
            .iter()
            .all(|c| c.identical && c.same_tokenization)
    }
}

fn entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let p = dir.join(name);
    Ok(FileEntry {
        name: name.to_string(),
        bytes: std::fs::metadata(&p)?.len(),
        sha256: crate::assets::sha256_file(&p)?,
    })
}

/// Hard-links `from` to `to` where the file system allows it (saves a copy of a large model), else copies.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        copy_atomic(from, to)?;
    }
    Ok(())
}

/// The embedder the catalog was embedded with (a prepared folder's `embedder.gguf`), into the bundle.
/// Folders prepared before the embedder existed have none: the bundle then cannot register items.
fn copy_embedder(data: &Path, out: &Path) -> Result<Option<FileEntry>> {
    let src = data.join(navigen::embedding::FILE_NAME);
    if !src.is_file() {
        return Ok(None);
    }
    link_or_copy(&src, &out.join(navigen::embedding::FILE_NAME))?;
    Ok(Some(entry(out, navigen::embedding::FILE_NAME)?))
}

pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    let (w, tok, info, stage) = load_run_model(&opts.run, &Device::Cpu, DType::F32)?;
    if stage == 0 {
        bail!(
            "{} has no trained stage yet: run `navigen-train sft --stage 1` first",
            opts.run.display()
        );
    }
    let cat = write_bundle(&w, &tok, &info, stage, &opts.out, opts.dtype)?;
    let dtype_name = format!("{:?}", opts.dtype).to_lowercase();
    let checks = if opts.verify_prompts > 0 {
        verify(&opts.out, &w, &tok, &cat, &info, opts)?
    } else {
        Vec::new()
    };
    Ok(ExportReport {
        bundle: opts.out.clone(),
        model_bytes: std::fs::metadata(opts.out.join(MODEL_FILE))?.len(),
        dtype: dtype_name,
        stage,
        checks,
    })
}

/// Writes `w` as a bundle in `out`: the GGUF (with the tokenizer and navigen's keys), the catalog,
/// codebooks and embedder the run was trained with, and the manifest. Returns the catalog.
/// `export` and GRPO's instruction rollouts (the policy after each update) both write bundles here.
pub fn write_bundle(
    w: &Weights,
    tok: &tokenizers::Tokenizer,
    info: &RunInfo,
    stage: u8,
    out: &Path,
    dtype: ExportDtype,
) -> Result<Catalog> {
    std::fs::create_dir_all(out)?;
    let mut extra =
        crate::tokenizer::gguf_metadata(tok, &info.gguf_pre, info.original_types.as_deref())?;
    extra.push((
        "navigen.prompt_version".into(),
        Value::U32(prompt::PROMPT_VERSION),
    ));
    extra.push(("navigen.stage".into(), Value::U32(stage as u32)));
    let tensors = w.merged()?;
    gguf::export(
        &out.join(MODEL_FILE),
        &w.config,
        &tensors,
        dtype,
        &info.name,
        extra,
    )?;
    // The catalog and codebooks the model was trained with travel with it.
    copy_atomic(
        &info.data.join(catalog::FILE_NAME),
        &out.join(catalog::FILE_NAME),
    )?;
    copy_atomic(
        &info.data.join(codebooks::FILE_NAME),
        &out.join(codebooks::FILE_NAME),
    )?;
    let embedder = copy_embedder(&info.data, out)?;
    let dtype_name = format!("{:?}", dtype).to_lowercase();
    Manifest {
        bundle_version: BUNDLE_VERSION,
        prompt_version: prompt::PROMPT_VERSION,
        kind: Kind::Finetuned,
        max_history: crate::prepare::max_history(&info.data)?,
        model: entry(out, MODEL_FILE)?,
        catalog: Some(entry(out, catalog::FILE_NAME)?),
        codebooks: Some(entry(out, codebooks::FILE_NAME)?),
        embedder,
        info: serde_json::json!({
            "architecture": w.config.arch.gguf_name(), "stage": stage, "dtype": dtype_name, "name": info.name,
            "preset": info.preset, "teacher": info.teacher,
            "created_by": concat!("navigen-train ", env!("CARGO_PKG_VERSION")),
        }),
    }
    .write(out)?;
    Catalog::open(&out.join(catalog::FILE_NAME)).map_err(Into::into)
}

/// Real prompts of every task, from the validation split and the catalog.
pub fn sample_prompts(cat: &Catalog, data: &Path, n: usize) -> Result<Vec<(String, String)>> {
    let valid: Vec<Example> = sequences::read_jsonl(&data.join(sequences::VALID_FILE))?;
    let mut out = Vec::new();
    let cids = |ids: &[String]| -> Vec<Cid> {
        ids.iter()
            .filter_map(|id| cat.find_id(id).and_then(|i| cat.item(i)))
            .map(|it| it.cid)
            .collect()
    };
    for (i, ex) in valid.iter().take(n).enumerate() {
        let h = cids(&ex.history);
        let item = cat
            .item((i * 37 % cat.len()) as u32)
            .context("catalog item")?;
        let (task, p) = match i % 4 {
            0 => (
                "cid2cid",
                format!("{}{}", prompt::prompt_next(), prompt::items_text(&h)),
            ),
            1 => ("cid2ins", prompt::prompt_cid2ins(&h, Mode::Think)),
            2 => ("cid2tid", prompt::prompt_cid2tid(&item.cid, Mode::Direct)),
            _ => (
                "tid2cid",
                prompt::prompt_tid2cid(&item.tid_vec(), Mode::Direct),
            ),
        };
        out.push((task.to_string(), p));
    }
    Ok(out)
}

/// Greedy tokens of candle and of llama.cpp on the exported file, prompt by prompt. For f16/q8_0 the
/// candle side runs on weights rounded through the exported type, so both see the same numbers.
fn verify(
    dir: &Path,
    w: &Weights,
    tok: &tokenizers::Tokenizer,
    cat: &Catalog,
    info: &RunInfo,
    opts: &ExportOptions,
) -> Result<Vec<PromptCheck>> {
    let rounded;
    let w = match opts.dtype {
        ExportDtype::F32 => w,
        ExportDtype::F16 | ExportDtype::Q8_0 => {
            let mut m = w.merged()?;
            for t in m.values_mut() {
                if t.rank() == 2 {
                    *t = if opts.dtype == ExportDtype::F16 {
                        t.to_dtype(DType::F16)?.to_dtype(DType::F32)?
                    } else {
                        candle_core::quantized::QTensor::quantize(
                            t,
                            candle_core::quantized::GgmlDType::Q8_0,
                        )?
                        .dequantize(&Device::Cpu)?
                    };
                }
            }
            rounded = Weights::from_map(w.config.clone(), m, &Device::Cpu, DType::F32)?;
            &rounded
        }
    };
    let rope = Rope::new(&w.config, &Device::Cpu, DType::F32)?;
    let model = navigen::llm::Model::load(&dir.join(MODEL_FILE), 0)?;
    let im_end = crate::tokenizer::single_id(tok, prompt::IM_END)?;
    let threads = navigen::llm::default_threads();
    let mut checks = Vec::new();
    for (task, p) in sample_prompts(cat, &info.data, opts.verify_prompts)? {
        let ids = crate::tokenizer::encode(tok, &p)?;
        let llama_ids = model.tokenize(&p);
        let same_tokenization = llama_ids.len() == ids.len()
            && llama_ids.iter().zip(&ids).all(|(a, b)| *a as u32 == *b);
        let candle = transformer::greedy(w, &rope, &ids, opts.verify_tokens, &[im_end])?;
        let prompt_i32: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
        let llama = model.greedy(&prompt_i32, opts.verify_tokens, threads)?;
        let common_prefix = candle
            .iter()
            .zip(&llama)
            .take_while(|(a, b)| **a as i32 == **b)
            .count();
        let identical = common_prefix == candle.len() && candle.len() == llama.len();
        checks.push(PromptCheck {
            task,
            prompt_tokens: ids.len(),
            same_tokenization,
            candle,
            llama,
            identical,
            common_prefix,
        });
    }
    Ok(checks)
}

/// Writes a zero-shot bundle: an instruct GGUF without CID tokens (SmolLM2-135M-Instruct by default) with a
/// prepared catalog, for the zero-shot mode and the prompting baseline.
pub fn zero_shot_bundle(model: Option<&Path>, data: &Path, out: &Path) -> Result<PathBuf> {
    let model = match model {
        Some(m) => m.to_path_buf(),
        None => crate::assets::SMOLLM2
            .ensure()?
            .join(crate::assets::SMOLLM2.members[0].1),
    };
    std::fs::create_dir_all(out)?;
    link_or_copy(&model, &out.join(MODEL_FILE))?;
    copy_atomic(
        &data.join(catalog::FILE_NAME),
        &out.join(catalog::FILE_NAME),
    )?;
    copy_atomic(
        &data.join(codebooks::FILE_NAME),
        &out.join(codebooks::FILE_NAME),
    )?;
    let embedder = copy_embedder(data, out)?;
    Manifest {
        bundle_version: BUNDLE_VERSION,
        prompt_version: prompt::PROMPT_VERSION,
        kind: Kind::ZeroShot,
        max_history: crate::prepare::max_history(data)?,
        model: entry(out, MODEL_FILE)?,
        catalog: Some(entry(out, catalog::FILE_NAME)?),
        codebooks: Some(entry(out, codebooks::FILE_NAME)?),
        embedder,
        info: serde_json::json!({"name": model.file_stem().map(|s| s.to_string_lossy().into_owned()), "created_by": concat!("navigen-train ", env!("CARGO_PKG_VERSION"))}),
    }
    .write(out)?;
    Ok(out.to_path_buf())
}
