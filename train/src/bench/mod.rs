//! Benchmarks against reference implementations, each in one run (docs/benchmarks.md):
//! `bench rq` (our residual k-means against faiss on the same embeddings, settings and thread count),
//! `bench train` (trainer tokens/s against PyTorch), `bench quality` ([`quality`]: next-item quality
//! against RecBole's SASRec and Pop).

pub mod quality;
pub mod recbole;

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

    let cfg = rq::RqConfig {
        sizes: vec![o.k; o.levels],
        iterations: o.iterations,
        seed: o.seed,
        // One run, as faiss (nredo = 1), so the comparison stays like for like.
        restarts: 1,
    };
    let mut ours_s = Vec::new();
    let mut ours = None;
    for _ in 0..o.repeats.max(1) {
        let t = Instant::now();
        let r = rq::train(&flat, dim, &cfg)?;
        ours_s.push(t.elapsed().as_secs_f64());
        ours = Some(r);
    }
    let ours = ours.expect("at least one run");

    let raw: PathBuf =
        std::env::temp_dir().join(format!("navigen-bench-{}.f32", std::process::id()));
    std::fs::write(&raw, bytemuck::cast_slice::<f32, u8>(&flat))?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/faiss_rq.py");
    let mut faiss_s = Vec::new();
    let mut faiss: Option<Value> = None;
    for _ in 0..o.repeats.max(1) {
        let out =
            Command::new(std::env::var("NAVIGEN_PYTHON").unwrap_or_else(|_| "python3".into()))
                .arg(&script)
                .args([
                    raw.display().to_string(),
                    n.to_string(),
                    dim.to_string(),
                    o.k.to_string(),
                    o.levels.to_string(),
                    o.iterations.to_string(),
                    o.seed.to_string(),
                    threads.to_string(),
                ])
                .output()
                .context("running python3 for faiss")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&raw);
            anyhow::bail!(
                "faiss run failed (install it with `pip install faiss-cpu numpy`): {}",
                String::from_utf8_lossy(&out.stderr)
            );
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
    let faiss_mse: Vec<f64> = faiss["recon_mse"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
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

/// Options of `bench train`.
pub struct TrainBenchOptions {
    pub shape: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    /// Alternating rounds of ours and the reference (the VM's speed drifts; medians over rounds).
    pub rounds: usize,
    /// `cpu` or `cuda[:N]` (PyTorch runs on the same device).
    pub device: String,
    pub dtype: candle_core::DType,
    /// Also time our composed (unfused) path in each round: what the fused kernels save, same run.
    pub composed: bool,
    /// Also run the reference with PyTorch's fused attention (`scaled_dot_product_attention`).
    pub torch_sdpa: bool,
}

/// The model shapes benchmarked: the tiny preset (vocabulary as on ml-100k) and SmolLM2-135M with
/// navigen's tokens added.
pub fn bench_shape(name: &str) -> Result<crate::model::ModelConfig> {
    use crate::model::{Arch, ModelConfig};
    Ok(match name {
        "tiny" => ModelConfig::tiny(2436),
        "smollm2" => ModelConfig {
            arch: Arch::Llama,
            vocab_size: 49152 + 388,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        },
        other => anyhow::bail!("unknown shape {other:?} (tiny or smollm2)"),
    })
}

/// The process's peak resident memory in MiB (Linux `VmHWM`; None elsewhere).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Forward + backward tokens/s of our candle model against the PyTorch reference on the same shape,
/// batch, sequence length, thread count, device and dtype, in alternating rounds.
pub fn bench_train(o: &TrainBenchOptions) -> Result<Value> {
    use crate::model::batch::{make_batch, Row};
    use crate::model::{self, Rope, Trainable, Weights};
    crate::tune_allocator();
    let config = bench_shape(&o.shape)?;
    let dev = crate::device::parse(&o.device)?;
    let dtype = o.dtype;
    let mut w = Weights::random(&config, &dev, dtype, 0)?;
    w.set_trainable(Trainable::All)?;
    let rope = Rope::new(&config, &dev, dtype)?;
    // One example per row, causal, loss on every fourth position (as the reference does).
    let rows: Vec<Row> = (0..o.batch)
        .map(|r| Row {
            ids: (0..o.seq)
                .map(|i| ((r * 7919 + i * 104729) % config.vocab_size) as u32)
                .collect(),
            positions: (0..o.seq as u32).collect(),
            segments: vec![0; o.seq],
            targets: (0..o.seq)
                .map(|i| {
                    (r * o.seq + i)
                        .is_multiple_of(4)
                        .then_some(((i * 31) % config.vocab_size) as u32)
                })
                .collect(),
        })
        .collect();
    let b = make_batch(&rows, 0, &dev, dtype, None)?;
    let threads = rayon::current_num_threads();
    let cfg_path = std::env::temp_dir().join(format!("navigen-bench-{}.json", std::process::id()));
    std::fs::write(&cfg_path, serde_json::to_vec(&config)?)?;
    // The reference travels inside the binary: a binary carried to another machine (the GPU check)
    // has no source tree beside it.
    let script =
        std::env::temp_dir().join(format!("navigen-torch-train-{}.py", std::process::id()));
    std::fs::write(&script, include_str!("../../bench/torch_train.py"))?;
    let torch_dtype = if dtype == candle_core::DType::BF16 {
        "bf16"
    } else {
        "f32"
    };
    let torch_device = if dev.is_cuda() { "cuda" } else { "cpu" };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut ours_tps, mut torch_tps, mut torch_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut composed_tps = Vec::new();
    // Tokens/s of `steps` timed forward+backward steps after one warm-up (median step time).
    let time_ours = || -> Result<f64> {
        let mut times = Vec::new();
        for step in 0..=o.steps {
            dev.synchronize()?;
            let t = Instant::now();
            let loss = model::loss(&w, &rope, &b, None, None)?;
            let _grads = loss.backward()?;
            dev.synchronize()?;
            if step > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        Ok((o.batch * o.seq) as f64 / median(&mut times))
    };
    // One run of the reference; `attention` eager (our math) or sdpa (PyTorch's fused attention).
    let torch_run = |attention: &str| -> Result<Value> {
        let out =
            Command::new(std::env::var("NAVIGEN_PYTHON").unwrap_or_else(|_| "python3".into()))
                .arg(&script)
                .args([
                    cfg_path.display().to_string(),
                    o.batch.to_string(),
                    o.seq.to_string(),
                    o.steps.to_string(),
                    threads.to_string(),
                    format!("--device={torch_device}"),
                    format!("--dtype={torch_dtype}"),
                    format!("--attention={attention}"),
                ])
                .output()
                .context("running python3 for torch")?;
        if !out.status.success() {
            anyhow::bail!("torch run failed (install the CPU wheel: `pip install torch --index-url https://download.pytorch.org/whl/cpu`; NAVIGEN_PYTHON picks the interpreter): {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut sdpa_tps = Vec::new();
    let rounds = (|| -> Result<()> {
        for _round in 0..o.rounds.max(1) {
            ours_tps.push(time_ours()?);
            if o.composed {
                composed_tps.push(crate::model::ops::unfused(time_ours)?);
            }
            let torch = torch_run("eager")?;
            torch_tps.push(torch["tokens_per_s"].as_f64().unwrap_or(f64::NAN));
            torch_runs.push(torch);
            if o.torch_sdpa {
                sdpa_tps.push(
                    torch_run("sdpa")?["tokens_per_s"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                );
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&cfg_path);
    let _ = std::fs::remove_file(&script);
    rounds?;
    let ours_rss = peak_rss_mb();
    let torch_rss: Vec<f64> = torch_runs
        .iter()
        .filter_map(|t| t["peak_rss_mb"].as_f64())
        .collect();
    let ours_round_tps = ours_tps.clone();
    let torch_round_tps = torch_tps.clone();
    let (ours_med, torch_med) = (median(&mut ours_tps), median(&mut torch_tps));
    Ok(json!({
        "shape": o.shape, "params": config.param_count(), "batch": o.batch, "seq": o.seq, "steps": o.steps,
        "rounds": o.rounds.max(1), "threads": threads, "device": o.device, "dtype": torch_dtype,
        "ours": {"tokens_per_s": ours_med, "rounds_tokens_per_s": ours_round_tps, "peak_rss_mb": ours_rss},
        "torch": {"tokens_per_s": torch_med, "rounds_tokens_per_s": torch_round_tps,
                  "peak_rss_mb": torch_rss.iter().copied().fold(f64::NAN, f64::max),
                  "version": torch_runs[0]["torch_version"], "last": torch_runs.last()},
        "ratio_ours_over_torch": ours_med / torch_med,
        "torch_sdpa": (!sdpa_tps.is_empty()).then(|| json!({
            "tokens_per_s": median(&mut sdpa_tps.clone()),
            "rounds_tokens_per_s": sdpa_tps,
            "note": "the reference with F.scaled_dot_product_attention (causal) instead of our explicit masked softmax",
        })),
        "ours_composed": (!composed_tps.is_empty()).then(|| json!({
            "tokens_per_s": median(&mut composed_tps.clone()),
            "rounds_tokens_per_s": composed_tps,
            "note": "our unfused path (candle primitives), timed in the same rounds",
        })),
    }))
}
