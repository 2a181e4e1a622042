//! `navigen-train prepare`: data -> item text -> embeddings -> residual k-means CIDs -> TIDs ->
//! codebooks + catalog + leave-one-out splits + prepare.json.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::data::{self, sequences, Source};
use crate::embed;
use crate::gguf::ExportDtype;
use crate::rq;
use crate::tid::{OfflineTid, TidSource};
use navigen::format::{catalog, codebooks, write_atomic, Dtype, ItemEntry};
use navigen::Cid;

pub const REPORT_FILE: &str = "prepare.json";
/// Measured in docs/benchmarks.md ("Item codes that carry behaviour").
pub const DEFAULT_COLLAB_WEIGHT: f32 = 0.95;

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub source: Source,
    pub out: PathBuf,
    pub levels: usize,
    /// Codebook size per level; `None` picks one from the catalog size.
    pub codebook_size: Option<usize>,
    pub iterations: usize,
    /// k-means runs per level (best kept).
    pub restarts: usize,
    pub seed: u64,
    pub max_history: usize,
    pub dtype: Dtype,
    /// An embedder GGUF (`navigen-train export-embedder`); `None`: all-MiniLM-L6-v2 exported in f16.
    pub embedder: Option<PathBuf>,
    /// Share of the collaborative vector in the fused item vector the CIDs quantise (0: text only).
    pub collab_weight: f32,
    pub collab: rq::collab::CollabConfig,
}

impl PrepareOptions {
    pub fn new(source: Source, out: impl Into<PathBuf>) -> Self {
        PrepareOptions {
            source,
            out: out.into(),
            levels: 3,
            codebook_size: None,
            iterations: 20,
            restarts: 4,
            seed: 42,
            max_history: sequences::DEFAULT_MAX_HISTORY,
            dtype: Dtype::F32,
            embedder: None,
            collab_weight: DEFAULT_COLLAB_WEIGHT,
            collab: rq::collab::CollabConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PrepareReport {
    pub dataset: String,
    pub items: usize,
    pub users: usize,
    /// Interactions in the kept sequences (after collapsing repeats).
    pub interactions: usize,
    pub levels: usize,
    pub codebook_size: usize,
    pub codebook_sizes: Vec<usize>,
    pub collisions_before: usize,
    pub collisions_after: usize,
    pub collision_rate_before: f64,
    pub reassigned: usize,
    pub utilisation: Vec<f64>,
    pub recon_mse: Vec<f64>,
    pub seconds: HashMap<String, f64>,
    pub embedder: String,
    pub embeddings_from_cache: bool,
    pub tid_source: String,
    pub max_history: usize,
    pub seed: u64,
    pub ingest: data::IngestReport,
    pub sequences: sequences::SequenceStats,
    pub train_examples: usize,
    /// Collaborative fusion (absent when the CIDs come from text alone).
    pub collab: Option<CollabReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CollabReport {
    pub weight: f32,
    pub dim: usize,
    pub window: usize,
    /// Catalog items seen in the training sequences (the others are fused with a predicted half).
    pub observed: usize,
    /// Mean cosine between an observed item's collaborative vector and the one its text predicts.
    pub text_prediction_cosine: f64,
    /// Catalog items whose first code is the same when quantised from their text alone, as a new
    /// item registered on a device is (count, and share of the catalog).
    pub text_only_same_first_code_items: usize,
    pub text_only_same_first_code: f64,
    /// The same two measures for items held out of the map's fit (5 folds): what a new item gets.
    pub held_out_cosine: f64,
    pub held_out_same_first_code: f64,
}

pub fn prepare(opts: &PrepareOptions) -> Result<PrepareReport> {
    let t_all = Instant::now();
    let mut seconds = HashMap::new();
    let mut lap = |name: &str, t: Instant| {
        seconds.insert(name.to_string(), t.elapsed().as_secs_f64());
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;

    let t = Instant::now();
    eprintln!("navigen: reading {:?}", opts.source);
    let ds = opts.source.load()?;
    ds.report.print();
    anyhow::ensure!(!ds.items.is_empty(), "the dataset has no items");
    let ids: Vec<String> = ds.items.iter().map(|i| i.id.clone()).collect();
    let index: HashMap<&str, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let (seqs, seq_stats) = sequences::build(&ds.interactions, &index);
    anyhow::ensure!(
        !seqs.is_empty(),
        "no user has {} or more interactions",
        sequences::MIN_SEQUENCE
    );
    let mut popularity = vec![0u32; ids.len()];
    let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for s in &seqs {
        // Popularity counts everything before the test target (what a deployed model could have seen).
        for &i in &s.items[..s.items.len() - 1] {
            popularity[i as usize] += 1;
        }
        let (tr, va, te) = sequences::split(s, &ids, opts.max_history);
        train.push(tr);
        valid.push(va);
        test.push(te);
    }
    lap("ingest", t);

    let t = Instant::now();
    let texts: Vec<String> = ds.items.iter().map(data::item_text).collect();
    // The device's embedder on llama.cpp: it travels in the bundle and embeds new items there.
    let embedder_path = match &opts.embedder {
        Some(p) => p.clone(),
        None => embed::cached_minilm_gguf(ExportDtype::F16)?,
    };
    let (text_vectors, from_cache, embedder_sha) = embed::embed_on_device(&embedder_path, &texts)?;
    let text_dim = text_vectors.first().map_or(0, Vec::len);
    lap("embed", t);

    let t = Instant::now();
    let fusion = if opts.collab_weight > 0.0 {
        let train_items: Vec<&[u32]> = seqs.iter().map(|s| &s.items[..s.items.len() - 2]).collect();
        let cv = rq::collab::item_vectors(&train_items, ids.len(), &opts.collab)?;
        let text_flat: Vec<f32> = text_vectors.iter().flatten().copied().collect();
        let map = rq::collab::text_map(&text_flat, text_dim, &cv, opts.collab.ridge)?;
        let fusion = codebooks::Fusion {
            text_dim,
            collab_dim: cv.dim,
            weight: opts.collab_weight,
            map,
        };
        let fused: Vec<Vec<f32>> = text_vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let c = &cv.vectors[i * cv.dim..(i + 1) * cv.dim];
                fusion.fuse(v, cv.observed[i].then_some(c))
            })
            .collect::<navigen::Result<_>>()?;
        Some((fusion, cv, fused))
    } else {
        None
    };
    lap("collab", t);
    let (vectors, dim) = match &fusion {
        Some((f, _, fused)) => (fused.clone(), f.text_dim + f.collab_dim),
        None => (text_vectors.clone(), text_dim),
    };

    let t = Instant::now();
    let k = opts
        .codebook_size
        .unwrap_or_else(|| rq::auto_codebook_size(ids.len()));
    let sizes = vec![k; opts.levels];
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    let trained = rq::train_codebooks(
        &flat,
        dim,
        &rq::RqConfig {
            sizes: sizes.clone(),
            iterations: opts.iterations,
            seed: opts.seed,
            restarts: opts.restarts,
        },
    )?;
    lap("rq", t);

    let t = Instant::now();
    let tid_source = OfflineTid;
    let tids: Vec<Vec<String>> = ds.items.iter().map(|it| tid_source.tid(it)).collect();
    lap("tid", t);

    let t = Instant::now();
    let info = serde_json::json!({
        "embedder": crate::embed::EMBEDDER_NAME,
        "embedder_sha256": embedder_sha,
        "max_tokens": crate::embed::MAX_TOKENS,
        "dataset": ds.name,
        "seed": opts.seed,
        "iterations": opts.iterations,
        "created_by": concat!("navigen-train ", env!("CARGO_PKG_VERSION")),
    });
    let cb_bytes = codebooks::write_codebooks_fused(
        &trained.codebooks,
        dim,
        opts.dtype,
        fusion.as_ref().map(|f| &f.0),
        &info,
    )?;
    // Read back through the device's own reader: proves the file, gives the CRC the catalog records,
    // and assigns the CIDs with the exact centroids and arithmetic the device uses.
    let cb = navigen::Codebooks::from_bytes(&cb_bytes)?;
    let (codes, rq_stats) = rq::assign(&flat, &cb, &trained)?;
    let collab = match &fusion {
        Some((f, cv, _)) => Some(collab_report(
            f,
            cv,
            &text_vectors,
            &cb,
            &codes,
            &opts.collab,
        )?),
        None => None,
    };
    write_atomic(&opts.out.join(codebooks::FILE_NAME), &cb_bytes)?;
    crate::files::copy_atomic(
        &embedder_path,
        &opts.out.join(navigen::embedding::FILE_NAME),
    )?;
    let entries: Vec<ItemEntry> = ds
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| ItemEntry {
            id: it.id.clone(),
            title: it.title.clone(),
            text: texts[i].clone(),
            tid: tids[i].clone(),
            cid: Cid::new(&codes[i]).expect("levels checked"),
            popularity: popularity[i],
        })
        .collect();
    let mut cat_info = info.clone();
    cat_info["tid_source"] = tid_source.name().into();
    let cat_bytes = catalog::write_catalog(&entries, &sizes, cb.centroid_crc(), &cat_info)?;
    navigen::Catalog::from_bytes(&cat_bytes)?;
    write_atomic(&opts.out.join(catalog::FILE_NAME), &cat_bytes)?;
    sequences::write_jsonl(&opts.out.join(sequences::TRAIN_FILE), &train)?;
    sequences::write_jsonl(&opts.out.join(sequences::VALID_FILE), &valid)?;
    sequences::write_jsonl(&opts.out.join(sequences::TEST_FILE), &test)?;
    lap("write", t);
    seconds.insert("total".into(), t_all.elapsed().as_secs_f64());

    let report = PrepareReport {
        dataset: ds.name.clone(),
        items: ids.len(),
        users: seqs.len(),
        interactions: seqs.iter().map(|s| s.items.len()).sum(),
        levels: opts.levels,
        codebook_size: k,
        codebook_sizes: sizes,
        collisions_before: rq_stats.collisions_before,
        collisions_after: rq_stats.collisions_after,
        collision_rate_before: rq_stats.collisions_before as f64 / ids.len() as f64,
        reassigned: rq_stats.reassigned,
        utilisation: rq_stats.utilisation.clone(),
        recon_mse: rq_stats.recon_mse.clone(),
        seconds,
        embedder: crate::embed::EMBEDDER_NAME.into(),
        embeddings_from_cache: from_cache,
        tid_source: tid_source.name().into(),
        max_history: opts.max_history,
        seed: opts.seed,
        ingest: ds.report.clone(),
        sequences: seq_stats,
        train_examples: train.iter().map(|t| t.items.len().saturating_sub(1)).sum(),
        collab,
    };
    let json = serde_json::to_vec_pretty(&report)?;
    write_atomic(&opts.out.join(REPORT_FILE), &json)?;
    Ok(report)
}

/// How well an item's text stands in for its behaviour: what a new item registered on a device gets.
fn collab_report(
    f: &codebooks::Fusion,
    cv: &rq::collab::CollabVectors,
    text: &[Vec<f32>],
    cb: &navigen::Codebooks,
    codes: &[Vec<u16>],
    cfg: &rq::collab::CollabConfig,
) -> Result<CollabReport> {
    let (mut cos, mut same, mut n) = (0f64, 0usize, 0usize);
    for (i, t) in text.iter().enumerate() {
        let fused = cb.fuse(t)?;
        same += usize::from(cb.quantize(&fused)?.0.codes()[0] == codes[i][0]);
        if cv.observed[i] {
            let predicted = &fused[f.text_dim..];
            let actual = &cv.vectors[i * cv.dim..(i + 1) * cv.dim];
            let norm = predicted
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            cos += (predicted
                .iter()
                .zip(actual)
                .map(|(p, a)| p * a)
                .sum::<f32>()
                / norm) as f64;
            n += 1;
        }
    }
    // 5-fold: the map fitted without an item predicts its collaborative half.
    let text_flat: Vec<f32> = text.iter().flatten().copied().collect();
    let (mut h_cos, mut h_same, mut h_n) = (0f64, 0usize, 0usize);
    for fold in 0..5 {
        let mut train = rq::collab::CollabVectors {
            dim: cv.dim,
            vectors: cv.vectors.clone(),
            observed: cv.observed.clone(),
        };
        let held: Vec<usize> = (0..text.len())
            .filter(|i| i % 5 == fold && cv.observed[*i])
            .collect();
        for &i in &held {
            train.observed[i] = false;
        }
        let fold_fusion = codebooks::Fusion {
            map: rq::collab::text_map(&text_flat, f.text_dim, &train, cfg.ridge)?,
            ..f.clone()
        };
        for &i in &held {
            let fused = fold_fusion.fuse(&text[i], None)?;
            let actual = &cv.vectors[i * cv.dim..(i + 1) * cv.dim];
            let p = &fused[f.text_dim..];
            let norm = p.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            h_cos += (p.iter().zip(actual).map(|(p, a)| p * a).sum::<f32>() / norm) as f64;
            h_same += usize::from(cb.quantize(&fused)?.0.codes()[0] == codes[i][0]);
            h_n += 1;
        }
    }
    Ok(CollabReport {
        held_out_cosine: h_cos / h_n.max(1) as f64,
        held_out_same_first_code: h_same as f64 / h_n.max(1) as f64,
        weight: f.weight,
        dim: f.collab_dim,
        window: cfg.window,
        observed: n,
        text_prediction_cosine: cos / n.max(1) as f64,
        text_only_same_first_code_items: same,
        text_only_same_first_code: same as f64 / text.len().max(1) as f64,
    })
}

/// The history length a prepared folder was made with (`prepare --max-history`): SFT windows and the
/// bundle's prompts use it. Folders from before it was recorded used the default.
pub fn max_history(dir: &Path) -> Result<usize> {
    let report = read_report(dir)?;
    match report.get("max_history") {
        None => Ok(sequences::DEFAULT_MAX_HISTORY),
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1 && n as usize <= navigen::bundle::MAX_HISTORY_LIMIT)
            .map(|n| n as usize)
            .with_context(|| {
                format!(
                    "{}: max_history {v} is not in 1..={}",
                    dir.join(REPORT_FILE).display(),
                    navigen::bundle::MAX_HISTORY_LIMIT
                )
            }),
    }
}

/// Reads `prepare.json` from a prepared folder.
pub fn read_report(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join(REPORT_FILE);
    Ok(serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
    )?)
}
