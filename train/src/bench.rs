//! `navigen-train bench rq`: our residual k-means against faiss on the same embeddings, settings and
//! thread count, in one run. Prints the ratios recorded in docs/benchmarks.md.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::data::{self, Source};
use crate::embed::Embedder;
use crate::rq;

pub struct RqBenchOptions {
    pub dataset: Source,
    pub k: usize,
    pub levels: usize,
    pub iterations: usize,
    pub seed: u64,
    pub repeats: usize,
}

pub fn bench_rq(o: &RqBenchOptions) -> Result<Value> {
    let ds = o.dataset.load()?;
    let texts: Vec<String> = ds.items.iter().map(data::item_text).collect();
    let embedder = Embedder::minilm(&candle_core::Device::Cpu)?;
    let (vectors, _) = embedder.embed_cached(&texts, 64)?;
    let dim = embedder.dim();
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    let n = vectors.len();
    let threads = rayon::current_num_threads();

    let cfg = rq::RqConfig { sizes: vec![o.k; o.levels], iterations: o.iterations, seed: o.seed };
    let mut ours_s = Vec::new();
    let mut ours = None;
    for _ in 0..o.repeats.max(1) {
        let t = Instant::now();
        let r = rq::train(&flat, dim, &cfg)?;
        ours_s.push(t.elapsed().as_secs_f64());
        ours = Some(r);
    }
    let ours = ours.expect("at least one run");

    let raw: PathBuf = std::env::temp_dir().join(format!("navigen-bench-{}.f32", std::process::id()));
    std::fs::write(&raw, bytemuck::cast_slice::<f32, u8>(&flat))?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/faiss_rq.py");
    let mut faiss_s = Vec::new();
    let mut faiss: Option<Value> = None;
    for _ in 0..o.repeats.max(1) {
        let out = Command::new(std::env::var("NAVIGEN_PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(&script)
            .args([raw.display().to_string(), n.to_string(), dim.to_string(), o.k.to_string(), o.levels.to_string(), o.iterations.to_string(), o.seed.to_string(), threads.to_string()])
            .output()
            .context("running python3 for faiss")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&raw);
            anyhow::bail!("faiss run failed (install it with `pip install faiss-cpu numpy`): {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        faiss_s.push(v["seconds"].as_f64().unwrap_or(f64::NAN));
        faiss = Some(v);
    }
    let _ = std::fs::remove_file(&raw);
    let faiss = faiss.expect("at least one run");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ours_t, faiss_t) = (median(&mut ours_s), median(&mut faiss_s));
    let faiss_mse: Vec<f64> = faiss["recon_mse"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    let ours_last = *ours.stats.recon_mse.last().unwrap_or(&f64::NAN);
    let faiss_last = *faiss_mse.last().unwrap_or(&f64::NAN);
    Ok(json!({
        "dataset": ds.name, "items": n, "dim": dim, "k": o.k, "levels": o.levels, "iterations": o.iterations,
        "threads": threads, "repeats": o.repeats,
        "ours": {"seconds_median": ours_t, "recon_mse": ours.stats.recon_mse, "collisions_before": ours.stats.collisions_before,
                 "collisions_after": ours.stats.collisions_after},
        "faiss": {"seconds_median": faiss_t, "recon_mse": faiss_mse, "version": faiss["faiss_version"]},
        "time_ratio_ours_over_faiss": ours_t / faiss_t,
        "error_ratio_ours_over_faiss": ours_last / faiss_last,
    }))
}
