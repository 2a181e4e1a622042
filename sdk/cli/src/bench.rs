//! `navigen bench`: the runtime's speed on a bundle, and the same GGUF under llama.cpp's own
//! `llama-bench` in the same run (same threads, same prompt and generation lengths) for the ratios.
//!
//! Measurements alternate: each round runs ours once and llama-bench once (`-r 1`), and the ratio is
//! the mean of the per-round ratios, which cancels most of a shared machine's drift.
//!
//! Our prefill and decode follow llama-bench's protocol (empty context, `-p` tokens in, `-n` single
//! steps) but run the engine's own loops: prompts fed in the engine's chunks, every step's token chosen
//! by the greedy sampler and streamed. The cost of constrained decoding is measured inside real calls:
//! the host-side work of next-item beam search (trie, log-softmax, ranking) against its decode time,
//! and grammar sampling against decode time in instruction answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use navigen::engine::{InstructionOptions, Kind, PredictOptions};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct BenchOptions {
    #[arg(long)]
    pub bundle: PathBuf,
    /// Item ids of a history to use (default: the first items of the catalog).
    #[arg(long, value_delimiter = ',')]
    pub items: Vec<String>,
    /// Prompt tokens of the prefill test (llama-bench -p).
    #[arg(long, default_value_t = 512)]
    pub prompt: usize,
    /// Generated tokens of the decode test (llama-bench -n).
    #[arg(long, default_value_t = 128)]
    pub gen: usize,
    /// Measured repetitions of each test (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// A llama-bench binary built against the same llama.cpp (scripts/build-llama-bench.sh):
    /// runs it on the same GGUF and threads in this run and reports the ratios.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// Engine settings (from the global options).
    #[arg(skip)]
    pub params: navigen::engine::EngineParams,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn stddev(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt()
}

/// Runs llama-bench once (one warm-up, one measured repetition) and returns its (prefill tokens/s
/// samples, decode tokens/s samples, build).
fn llama_bench(
    bin: &Path,
    model: &Path,
    o: &BenchOptions,
    threads: i32,
) -> Result<(Vec<f64>, Vec<f64>, String)> {
    let out = Command::new(bin)
        .args(["-m", &model.display().to_string()])
        .args(["-p", &o.prompt.to_string(), "-n", &o.gen.to_string()])
        .args(["-t", &threads.to_string(), "-r", "1", "-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("llama-bench -o json output")?;
    let tests = v.as_array().context("llama-bench JSON is not an array")?;
    let samples = |pp: bool| -> Vec<f64> {
        tests
            .iter()
            .find(|t| {
                (t["n_prompt"].as_u64().unwrap_or(0) > 0) == pp
                    && (t["n_gen"].as_u64().unwrap_or(0) > 0) != pp
            })
            .and_then(|t| t["samples_ts"].as_array())
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let build = tests
        .first()
        .map(|t| {
            format!(
                "{} ({})",
                t["build_commit"].as_str().unwrap_or("?"),
                t["build_number"]
            )
        })
        .unwrap_or_default();
    Ok((samples(true), samples(false), build))
}

pub fn run(o: &BenchOptions) -> Result<Value> {
    let before = crate::rss_kib();
    let t = Instant::now();
    let e = crate::open(&o.bundle, &o.params)?;
    let open_s = t.elapsed().as_secs_f64();
    let after = crate::rss_kib();
    let threads = if o.params.threads == 0 {
        navigen::llm::default_threads()
    } else {
        o.params.threads as i32
    };
    let items: Vec<String> = if o.items.is_empty() {
        e.catalog()
            .items()
            .take(20)
            .map(|i| i.id.to_string())
            .collect()
    } else {
        o.items.clone()
    };
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    let reps = o.reps.max(1);

    // Rounds of (ours, llama-bench) back to back: the machine's drift (other load, clocks) hits both
    // sides of a round alike, and the ratio is taken per round.
    e.measure_speed(o.prompt, o.gen)?; // warm-up
    let model = e.dir().join(&e.manifest().model.name);
    let (mut pp, mut tg, mut lpp, mut ltg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut build = String::new();
    for _ in 0..reps {
        let (p, d) = e.measure_speed(o.prompt, o.gen)?;
        pp.push(p);
        tg.push(d);
        if let Some(bin) = &o.llama_bench {
            let (a, b, v) = llama_bench(bin, &model, o, threads)?;
            lpp.extend(a);
            ltg.extend(b);
            build = v;
        }
    }
    let reference = o.llama_bench.as_ref().map(|_| (lpp, ltg, build));
    // Constrained decoding inside real calls.
    let predict = if e.kind() == Kind::Finetuned {
        let mut rows = Vec::new();
        let opts = |k: usize| PredictOptions {
            k,
            beams: k,
            exclude_history: false,
        };
        for k in [20usize, 40] {
            e.predict(&refs, &opts(k))?; // warm-up
            let (mut dec, mut norm, mut con, mut tot, mut prompt) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for _ in 0..reps {
                let (_, t) = e.predict(&refs, &opts(k))?;
                dec += t.decode_ms;
                norm += t.normalize_ms;
                con += t.constrain_ms;
                tot += t.total_ms;
                prompt += t.prompt_ms;
            }
            let n = reps as f64;
            // Overhead against the model's own work in the call (prompt + beam decoding).
            rows.push(json!({"k": k, "beams": k, "total_ms": tot / n, "prompt_ms": prompt / n, "beam_decode_ms": dec / n,
                "normalize_ms": norm / n, "constrain_ms": con / n, "constraint_overhead": con / (dec + prompt).max(1e-9)}));
        }
        Some(rows)
    } else {
        None
    };
    let ins = e.generate_instruction(&refs, &InstructionOptions::default(), &mut |_| true)?;
    let tm = &ins.timings;
    let grammar = json!({
        "answer_tokens": tm.grammar_tokens, "grammar_sample_ms": tm.grammar_sample_ms,
        "decode_ms": tm.decode_ms, "generated_tokens": tm.generated_tokens,
        "grammar_overhead": if tm.generated_tokens > 0 && tm.grammar_tokens > 0 {
            (tm.grammar_sample_ms / tm.grammar_tokens as f64) / (tm.decode_ms / tm.generated_tokens as f64)
        } else { 0.0 },
        "instruction_total_ms": tm.prompt_ms + tm.generate_ms,
    });

    let mut report = json!({
        "bundle": o.bundle, "model": e.manifest().model.name, "model_bytes": e.manifest().model.bytes,
        "threads": threads, "prompt_chunk_ms": o.params.prompt_chunk_ms, "prompt_tokens": o.prompt, "generated_tokens": o.gen, "reps": reps,
        "open_s": open_s,
        "rss_growth_at_open_kib": match (before, after) { (Some(b), Some(a)) => Some(a.saturating_sub(b)), _ => None },
        "ours": {"prefill_tokens_per_s": mean(&pp), "prefill_stddev": stddev(&pp), "decode_tokens_per_s": mean(&tg), "decode_stddev": stddev(&tg)},
        "predict_next": predict,
        "instruction_grammar": grammar,
    });
    if let Some((lpp, ltg, build)) = reference {
        anyhow::ensure!(
            lpp.len() == pp.len() && ltg.len() == tg.len(),
            "llama-bench returned {} prefill and {} decode samples for {} rounds",
            lpp.len(),
            ltg.len(),
            pp.len()
        );
        let per_round = |a: &[f64], b: &[f64]| -> Vec<f64> {
            a.iter().zip(b).map(|(x, y)| x / y.max(1e-9)).collect()
        };
        let (rp, rd) = (per_round(&pp, &lpp), per_round(&tg, &ltg));
        report["llama_bench"] = json!({"build": build, "prefill_tokens_per_s": mean(&lpp), "prefill_stddev": stddev(&lpp),
            "decode_tokens_per_s": mean(&ltg), "decode_stddev": stddev(&ltg)});
        report["ratio"] = json!({"prefill": mean(&rp), "prefill_stddev": stddev(&rp), "decode": mean(&rd), "decode_stddev": stddev(&rd),
            "prefill_per_round": rp, "decode_per_round": rd});
    }
    Ok(report)
}

pub fn print(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "bundle {} ({} threads): open {:.3} s, RSS +{} KiB at open",
        r["bundle"].as_str().unwrap_or("?"),
        r["threads"],
        f(&r["open_s"]),
        r["rss_growth_at_open_kib"]
    );
    println!(
        "ours        prefill {:>9.1} tok/s (±{:.1})  decode {:>8.1} tok/s (±{:.1})",
        f(&r["ours"]["prefill_tokens_per_s"]),
        f(&r["ours"]["prefill_stddev"]),
        f(&r["ours"]["decode_tokens_per_s"]),
        f(&r["ours"]["decode_stddev"])
    );
    if r.get("llama_bench").is_some() {
        let l = &r["llama_bench"];
        println!(
            "llama-bench prefill {:>9.1} tok/s (±{:.1})  decode {:>8.1} tok/s (±{:.1})   [{}]",
            f(&l["prefill_tokens_per_s"]),
            f(&l["prefill_stddev"]),
            f(&l["decode_tokens_per_s"]),
            f(&l["decode_stddev"]),
            l["build"].as_str().unwrap_or("?")
        );
        println!(
            "ratio       prefill {:.3} (±{:.3})  decode {:.3} (±{:.3})  [mean of per-round ratios]",
            f(&r["ratio"]["prefill"]),
            f(&r["ratio"]["prefill_stddev"]),
            f(&r["ratio"]["decode"]),
            f(&r["ratio"]["decode_stddev"])
        );
    }
    if let Some(rows) = r["predict_next"].as_array() {
        for p in rows {
            println!(
                "predict k={:<3} {:>7.1} ms (prompt {:.1} ms, beam decode {:.1} ms, log-softmax {:.2} ms, constraint {:.2} ms = {:.2}% of the model's time)",
                p["k"],
                f(&p["total_ms"]),
                f(&p["prompt_ms"]),
                f(&p["beam_decode_ms"]),
                f(&p["normalize_ms"]),
                f(&p["constrain_ms"]),
                100.0 * f(&p["constraint_overhead"])
            );
        }
    }
    let g = &r["instruction_grammar"];
    println!(
        "instruction {:.1} ms; grammar sampling {:.2} ms over {} answer tokens = {:.2}% of a decode step",
        f(&g["instruction_total_ms"]),
        f(&g["grammar_sample_ms"]),
        g["answer_tokens"],
        100.0 * f(&g["grammar_overhead"])
    );
}
