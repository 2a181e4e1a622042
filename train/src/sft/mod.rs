//! Supervised fine-tuning. Stage 1 (cold start) on cid2tid, tid2cid and cid2cid: for a pretrained base
//! the backbone is frozen and only the new token rows and the output head train; a randomly initialised
//! preset has nothing to keep and trains everything. Stage 2: everything trains, adding reasoning and
//! cid2ins. Next-item training puts a loss on every item of every training sequence
//! (`tasks::next_item_windows`). AdamW with warmup + cosine, gradient clipping and accumulation; the kept
//! model is the one with the best validation next-item Recall@10 through the device's constrained beam
//! search ([`crate::model::beam`]), validation loss breaking ties; resumable checkpoints written atomically.
//!
//! The run folder, checkpoints, metrics and the optimiser are [`crate::run`]'s; stage 1 creates the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::sequences::{self, Example, TrainSequence};
use crate::model::batch::{self, CodeConstraint, Row, Tokenized};
use crate::model::{self, preset, ModelConfig, Rope, Trainable, Weights};
use crate::run::{
    checkpoint, metrics, optim, recall, save_weights, stage_weights, RunInfo, BASE_WEIGHTS,
    CONFIG_FILE, RUN_FILE, TOKENIZER_FILE,
};
use crate::tasks::{self, InstructionTeacher, MixOptions, OfflineTeacher, SftExample};
use crate::tokenizer::encode;
use navigen::format::{catalog, write_atomic};
use navigen::Catalog;

#[derive(Clone, Debug)]
pub struct SftOptions {
    pub data: PathBuf,
    pub run: PathBuf,
    /// Needed when the run is created (stage 1); later stages read it from the run.
    pub preset: Option<preset::Preset>,
    pub stage: u8,
    pub lr: f64,
    pub epochs: f64,
    pub max_steps: Option<usize>,
    /// Stop after this many steps of the schedule that `epochs`/`max_steps` size (same learning rates
    /// as the full run: how a short reference run follows a long one step for step).
    pub stop_after: Option<usize>,
    pub batch_rows: usize,
    pub max_len: usize,
    pub grad_accum: usize,
    pub warmup_frac: f64,
    pub clip: f64,
    pub weight_decay: f64,
    /// Residual-stream dropout while training (0 = none; [`crate::model::transformer::Dropout`]).
    pub dropout: f32,
    /// Decay of the weights' moving average that validation, the kept model and the export read
    /// (0 = the raw weights; [`optim::AdamW::ema`]).
    pub ema: f64,
    pub eval_every: usize,
    pub save_every: usize,
    pub log_every: usize,
    pub windows_per_user: usize,
    /// Stage 2's cid2ins supervision.
    pub instructions: Instructions,
    /// Validation users for the loss and for Recall@10 (0 = all).
    pub val_users: usize,
    /// Beams of the validation next-item search (the device's default).
    pub val_beams: usize,
    /// What picks the kept model.
    pub select: Select,
    pub seed: u64,
    pub device: Device,
    pub dtype: DType,
    /// Resume from the newest checkpoint of this stage if there is one (or from a named one).
    pub resume: Resume,
    /// How many checkpoints to keep.
    pub keep_checkpoints: usize,
    pub progress: bool,
}

/// Where stage 2's cid2ins examples come from (docs/method.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Instructions {
    /// `DATA/supervision.jsonl` when `teach` wrote one, else the offline template.
    Auto,
    /// The offline template, whatever the data folder holds.
    Template,
    /// `DATA/supervision.jsonl` (`navigen-train teach`); an error when there is none.
    Searched,
}

/// The instruction teacher `sft` trains cid2ins from: searched supervision or the offline template.
pub fn instruction_teacher(
    data: &Path,
    choice: Instructions,
) -> Result<Box<dyn InstructionTeacher>> {
    let file = data.join(crate::teach::SUPERVISION_FILE);
    Ok(match choice {
        Instructions::Template => Box::new(OfflineTeacher),
        Instructions::Auto if !file.exists() => Box::new(OfflineTeacher),
        Instructions::Auto | Instructions::Searched => {
            Box::new(crate::teach::Searched::open(data)?)
        }
    })
}

/// What picks the model a stage keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Select {
    /// Validation next-item Recall@10 through constrained beam search (history items excluded).
    Recall,
    /// Validation loss over the stage's tasks.
    Loss,
}

pub use crate::run::checkpoint::Resume;

impl SftOptions {
    /// Defaults for a preset (randomly initialised ones train from scratch and take a larger learning
    /// rate; `None` is a later stage of such a run).
    pub fn new(
        data: impl Into<PathBuf>,
        run: impl Into<PathBuf>,
        preset: Option<preset::Preset>,
        stage: u8,
    ) -> Self {
        let tiny = preset.as_ref().is_none_or(|p| !p.pretrained());
        SftOptions {
            data: data.into(),
            run: run.into(),
            preset,
            stage,
            // The tiny preset trains from scratch; its full fine-tune (stage 2) spikes at 3e-3.
            lr: match (tiny, stage) {
                (true, 1) => 3e-3,
                (true, _) => 1e-3,
                _ => 5e-4,
            },
            epochs: 1.0,
            max_steps: None,
            stop_after: None,
            // Many short rows: candle's cost per token falls with the batch and rises with the row
            // length (dense attention masks), measured in docs/benchmarks.md.
            batch_rows: match (tiny, stage) {
                (true, 1) => 64,
                (true, _) => 16,
                _ => 2,
            },
            // A stage-1 next-item window is ~85 tokens (max_history 20); stage 2 answers carry
            // reasoning and instructions: longer rows.
            max_len: match (tiny, stage) {
                (true, 1) => 128,
                (true, _) => 384,
                _ => 1024,
            },
            grad_accum: 1,
            warmup_frac: 0.03,
            clip: 1.0,
            weight_decay: 0.01,
            dropout: 0.0,
            ema: 0.0,
            eval_every: 50,
            save_every: 50,
            log_every: 1,
            windows_per_user: 2,
            instructions: Instructions::Auto,
            val_users: 1000,
            val_beams: navigen::engine::DEFAULT_BEAMS,
            select: Select::Recall,
            seed: 42,
            device: Device::Cpu,
            dtype: DType::F32,
            resume: Resume::Latest,
            keep_checkpoints: 2,
            progress: true,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SftSummary {
    pub stage: u8,
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub first_loss: f64,
    pub last_loss: f64,
    pub best_val_loss: Option<f64>,
    pub best_val_recall10: Option<f64>,
    pub examples: usize,
    pub rows: usize,
    pub skipped_too_long: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

fn create_run(opts: &SftOptions, cat: &Catalog) -> Result<()> {
    let preset = opts.preset.clone().context("a new run needs --preset")?;
    eprintln!(
        "navigen: creating run {} from preset {:?}",
        opts.run.display(),
        preset
    );
    let base = preset::load(
        &preset,
        cat,
        || tasks::tiny_tokenizer_corpus(cat),
        &Device::Cpu,
        DType::F32,
        opts.seed,
    )?;
    std::fs::create_dir_all(&opts.run)?;
    base.tokenizer
        .save(opts.run.join(TOKENIZER_FILE), false)
        .map_err(|e| anyhow::anyhow!("saving tokenizer: {e}"))?;
    write_atomic(
        &opts.run.join(CONFIG_FILE),
        &serde_json::to_vec_pretty(&base.weights.config)?,
    )?;
    let tmp = opts.run.join(".base.part.safetensors");
    base.weights.save(&tmp)?;
    std::fs::rename(&tmp, opts.run.join(BASE_WEIGHTS))?;
    RunInfo {
        preset,
        name: base.name,
        data: std::fs::canonicalize(&opts.data)?,
        gguf_pre: base.gguf_pre,
        original_types: base.original_types,
        first_new_row: base.first_new_row,
        stages_done: vec![],
        teacher: OfflineTeacher.name().to_string(),
    }
    .write(&opts.run)
}

/// Shuffled order of rows for an epoch (a pure function of seed and epoch, so resuming needs no RNG
/// state beyond the step).
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)),
    ));
    order
}

/// Tokenises examples; those longer than `max_len` are skipped and counted.
pub fn tokenize_all(
    tok: &Tokenizer,
    examples: &[SftExample],
    max_len: usize,
) -> Result<(Vec<Tokenized>, usize)> {
    let mut out = Vec::with_capacity(examples.len());
    let mut too_long = 0;
    for ex in examples {
        let mut ids = encode(tok, &ex.prompt)?;
        let prompt_len = ids.len();
        ids.extend(encode(tok, &ex.answer)?);
        if ids.len() > max_len {
            too_long += 1;
            continue;
        }
        out.push(Tokenized { ids, prompt_len });
    }
    Ok((out, too_long))
}

fn mean_loss(
    w: &Weights,
    rope: &Rope,
    rows: &[Row],
    opts: &SftOptions,
    pad: u32,
    codes: (&CodeConstraint, &Tensor),
) -> Result<f64> {
    let mut total = 0f64;
    let mut n = 0usize;
    for chunk in rows.chunks(opts.batch_rows.max(1)) {
        let b = batch::make_batch(chunk, pad, &opts.device, opts.dtype, Some(codes.0))?;
        let l = model::loss(w, rope, &b, Some(codes.1), None)?.to_scalar::<f32>()? as f64;
        total += l * b.loss_tokens as f64;
        n += b.loss_tokens;
    }
    Ok(total / n.max(1) as f64)
}

/// Mean loss of the run's weights `weights_file` on the validation split's instruction answers
/// (stage-2 examples, `opts.val_users` users), counting only the tokens that are not the answer's
/// fixed frame: the think tags, the JSON keys and punctuation of `{"target_tid":[...],"target_ins":".."}`
/// are left out, so what remains (reasoning words, TID terms, the instruction) is what a model must
/// learn beyond the template.
pub fn instruction_content_loss(opts: &SftOptions, weights_file: &str) -> Result<f64> {
    let cat = Catalog::open(&opts.data.join(catalog::FILE_NAME))?;
    let config: ModelConfig = serde_json::from_slice(&std::fs::read(opts.run.join(CONFIG_FILE))?)?;
    let w = Weights::from_safetensors(
        config,
        &[opts.run.join(weights_file)],
        &opts.device,
        opts.dtype,
    )?;
    let (tok, pad) = crate::run::run_tokenizer(&opts.run)?;
    let valid: Vec<Example> = sequences::read_jsonl(&opts.data.join(sequences::VALID_FILE))?;
    let teacher = instruction_teacher(&opts.data, opts.instructions)?;
    let users = if opts.val_users == 0 {
        valid.len()
    } else {
        opts.val_users.min(valid.len())
    };
    let examples: Vec<SftExample> =
        tasks::validation_examples(&cat, &valid, 2, teacher.as_ref(), users)
            .into_iter()
            .filter(|e| e.task == navigen::prompt::Task::Cid2Ins)
            .collect();
    // The frame: an answer with empty reasoning, no terms and an empty instruction.
    let frame =
        navigen::prompt::answer_text(Some(""), &navigen::prompt::answer_json_ins::<&str>(&[], ""));
    let frame_ids: std::collections::HashSet<u32> = encode(&tok, &frame)?.into_iter().collect();
    let (tokenized, _) = tokenize_all(&tok, &examples, opts.max_len)?;
    let mut rows = batch::pack(&tokenized, opts.max_len);
    for r in &mut rows {
        for t in r.targets.iter_mut() {
            if t.is_some_and(|id| frame_ids.contains(&id)) {
                *t = None;
            }
        }
    }
    rows.retain(|r| r.targets.iter().any(Option::is_some));
    if rows.is_empty() {
        bail!("no instruction answer tokens outside the frame");
    }
    let rope = Rope::new(&w.config, &opts.device, opts.dtype)?;
    let codes = CodeConstraint::new(&cat, &tok)?;
    let code_columns = Tensor::from_slice(&codes.columns, codes.columns.len(), &opts.device)?;
    mean_loss(&w, &rope, &rows, opts, pad, (&codes, &code_columns))
}

/// Runs one SFT stage.
pub fn run_stage(opts: &SftOptions) -> Result<SftSummary> {
    let t0 = Instant::now();
    crate::tune_allocator();
    if !(1..=2).contains(&opts.stage) {
        bail!("--stage must be 1 or 2");
    }
    let cat = Catalog::open(&opts.data.join(catalog::FILE_NAME))?;
    if !opts.run.join(RUN_FILE).exists() {
        if opts.stage != 1 {
            bail!(
                "{} is not a run yet: start with --stage 1",
                opts.run.display()
            );
        }
        create_run(opts, &cat)?;
    }
    let mut info = RunInfo::read(&opts.run)?;
    if opts.stage == 2 && !info.stages_done.contains(&1) {
        bail!("stage 2 starts from stage 1's model: run --stage 1 first");
    }
    // Start from the previous stage's model.
    let config: ModelConfig = serde_json::from_slice(&std::fs::read(opts.run.join(CONFIG_FILE))?)?;
    let start_file = if opts.stage == 1 {
        BASE_WEIGHTS.to_string()
    } else {
        stage_weights(opts.stage - 1)
    };
    let mut w = Weights::from_safetensors(
        config,
        &[opts.run.join(&start_file)],
        &opts.device,
        opts.dtype,
    )?;
    let (tok, pad) = crate::run::run_tokenizer(&opts.run)?;

    // Data.
    let train: Vec<TrainSequence> = sequences::read_jsonl(&opts.data.join(sequences::TRAIN_FILE))?;
    let valid: Vec<Example> = sequences::read_jsonl(&opts.data.join(sequences::VALID_FILE))?;
    let teacher = if opts.stage >= 2 {
        instruction_teacher(&opts.data, opts.instructions)?
    } else {
        Box::new(OfflineTeacher)
    };
    if opts.stage >= 2 && info.teacher != teacher.name() {
        // The bundle's manifest says which supervision its instructions were trained on.
        info.teacher = teacher.name().to_string();
        info.write(&opts.run)?;
    }
    let mix = MixOptions {
        stage: opts.stage,
        // What prepare split the data with (`prepare --max-history`), not a second default.
        max_history: crate::prepare::max_history(&opts.data)?,
        windows_per_user: opts.windows_per_user,
        // A pretrained base's cold start ties the new tokens to what it knows (cid2tid, tid2cid); a
        // random one learns next items first, and the item tasks join in stage 2 (docs/benchmarks.md).
        item_tasks: opts.stage >= 2 || info.preset.pretrained(),
        seed: opts.seed,
    };
    let examples = tasks::training_examples(&cat, &train, &mix, teacher.as_ref());
    if opts.stage >= 2 && teacher.name() != OfflineTeacher.name() {
        let n = examples
            .iter()
            .filter(|e| e.task == navigen::prompt::Task::Cid2Ins)
            .count();
        if n == 0 {
            bail!(
                "{} has no record for the windows sft draws: run `teach` with this --seed and --windows-per-user",
                opts.data.join(crate::teach::SUPERVISION_FILE).display()
            );
        }
        eprintln!("sft: {n} cid2ins examples from {}", teacher.name());
    }
    let (tokenized, too_long) = tokenize_all(&tok, &examples, opts.max_len)?;
    let rows = batch::pack(&tokenized, opts.max_len);
    let val_users = if opts.val_users == 0 {
        valid.len()
    } else {
        opts.val_users.min(valid.len())
    };
    let val_ex = tasks::validation_examples(&cat, &valid, opts.stage, teacher.as_ref(), val_users);
    let val_next = recall::ValidationSet::new(&cat, &train, &valid[..val_users]);
    let decoder = crate::model::beam::NextItemDecoder::new(&cat, &tok)?;
    let codes = CodeConstraint::new(&cat, &tok)?;
    let code_columns = Tensor::from_slice(&codes.columns, codes.columns.len(), &opts.device)?;
    let (val_tok, _) = tokenize_all(&tok, &val_ex, opts.max_len)?;
    let val_rows = batch::pack(&val_tok, opts.max_len);
    if rows.is_empty() {
        bail!(
            "no training rows (examples longer than --max-len {}?)",
            opts.max_len
        );
    }
    let per_step = opts.batch_rows.max(1) * opts.grad_accum.max(1);
    let steps_per_epoch = rows.len().div_ceil(per_step);
    let total = opts
        .max_steps
        .unwrap_or(((opts.epochs * steps_per_epoch as f64).ceil() as usize).max(1));
    let warmup = ((opts.warmup_frac * total as f64).ceil() as usize).max(1);

    // Freezing the backbone keeps what a pretrained base knows; a random one has nothing to keep.
    let trainable = if opts.stage == 1 && info.preset.pretrained() {
        Trainable::NewRowsAndHead {
            first_new_row: info.first_new_row,
        }
    } else {
        Trainable::All
    };
    w.set_trainable(trainable)?;
    let rope = Rope::new(&w.config, &opts.device, opts.dtype)?;
    let mut opt = optim::AdamW::new(optim::AdamWConfig {
        weight_decay: opts.weight_decay,
        ema_decay: opts.ema,
        ..Default::default()
    });
    let ckpt_dir = crate::run::checkpoints_dir(&opts.run, opts.stage);
    let mut step = 0usize;
    let mut best_val: Option<f64> = None;
    let mut best_recall: Option<f64> = None;
    let mut resumed_from = None;
    let wanted = match opts.resume {
        Resume::Never => None,
        Resume::Latest => checkpoint::latest(&ckpt_dir)?,
        Resume::Step(s) => Some(s),
    };
    if let Some(s) = wanted {
        let st = checkpoint::load(&ckpt_dir, s, &mut w, &mut opt, &opts.device, opts.dtype)?;
        if st.stage == opts.stage {
            step = st.step;
            best_val = st.best_val_loss;
            best_recall = st.best_val_recall;
            resumed_from = Some(step);
            metrics::truncate_after(&opts.run, opts.stage, step)?;
            eprintln!("navigen: resumed stage {} at step {step}", opts.stage);
        } else {
            // A checkpoint of another stage: start this stage afresh.
            w = Weights::from_safetensors(
                w.config.clone(),
                &[opts.run.join(&start_file)],
                &opts.device,
                opts.dtype,
            )?;
            w.set_trainable(trainable)?;
            opt = optim::AdamW::new(optim::AdamWConfig {
                weight_decay: opts.weight_decay,
                ema_decay: opts.ema,
                ..Default::default()
            });
        }
    }
    if resumed_from.is_none() {
        // A fresh start of this stage replaces its earlier records.
        metrics::truncate_after(&opts.run, opts.stage, 0)?;
    }
    let total_params = w.config.param_count();
    let trainable_params = w.trainable_params();
    eprintln!(
        "navigen: stage {} on {}: {} examples in {} rows ({} too long), {} steps, {} of {} parameters train",
        opts.stage,
        opts.data.display(),
        tokenized.len(),
        rows.len(),
        too_long,
        total,
        trainable_params,
        total_params
    );

    let bar = crate::progress::bar(total as u64, &format!("stage {}", opts.stage));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    if !opts.progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_position(step as u64);
    let mut first_loss = None;
    let mut last_loss = f64::NAN;
    let mut tokens_done = 0usize;
    let t_train = Instant::now();
    let trainable_names: Vec<String> = w.trainable().keys().cloned().collect();
    let mut order: (usize, Vec<usize>) = (0, epoch_order(rows.len(), opts.seed, 0));
    let stop = opts.stop_after.unwrap_or(total).min(total);
    while step < stop {
        let ts = Instant::now();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0f64;
        let mut step_tokens = 0usize;
        for micro in 0..opts.grad_accum.max(1) {
            let start = (step * opts.grad_accum.max(1) + micro) * opts.batch_rows.max(1);
            let picked: Vec<Row> = (start..start + opts.batch_rows.max(1))
                .map(|g| {
                    let epoch = g / rows.len();
                    if order.0 != epoch {
                        order = (epoch, epoch_order(rows.len(), opts.seed, epoch));
                    }
                    rows[order.1[g % rows.len()]].clone()
                })
                .collect();
            let b = batch::make_batch(&picked, pad, &opts.device, opts.dtype, Some(&codes))?;
            step_tokens += b.tokens;
            // Masks seeded by (seed, step, micro-batch): reproducible, and the same after a resume.
            let mut dropout = crate::model::transformer::Dropout::new(
                opts.dropout,
                opts.seed
                    ^ ((step as u64) << 20 | micro as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let loss = model::loss(&w, &rope, &b, Some(&code_columns), dropout.as_mut())?;
            let scaled = (&loss / opts.grad_accum.max(1) as f64)?;
            let g = scaled.backward()?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            for name in &trainable_names {
                let var = &w.trainable()[name];
                if let Some(gt) = g.get(var.as_tensor()) {
                    let gt = gt.to_dtype(DType::F32)?;
                    let acc = match grads.remove(name) {
                        Some(a) => (a + gt)?,
                        None => gt,
                    };
                    grads.insert(name.clone(), acc);
                }
            }
        }
        let norm = optim::clip(&mut grads, opts.clip)?;
        let lr = optim::lr_at(step, total, warmup, opts.lr, 0.1);
        opt.update(w.trainable(), &grads, lr)?;
        step += 1;
        let loss = loss_sum / opts.grad_accum.max(1) as f64;
        if !loss.is_finite() {
            bail!("loss became {loss} at step {step}: lower --lr");
        }
        first_loss.get_or_insert(loss);
        last_loss = loss;
        tokens_done += step_tokens;
        let tps = step_tokens as f64 / ts.elapsed().as_secs_f64().max(1e-9);
        if step.is_multiple_of(opts.log_every.max(1)) || step == stop {
            metrics::append(
                &opts.run,
                &metrics::Record {
                    stage: opts.stage,
                    step,
                    loss: Some(loss),
                    lr: Some(lr),
                    grad_norm: Some(norm),
                    tokens_per_s: Some(tps),
                    elapsed_s: Some(t0.elapsed().as_secs_f64()),
                    ..Default::default()
                },
            )?;
        }
        bar.set_message(format!(
            "stage {} loss {loss:.4} {tps:.0} tok/s",
            opts.stage
        ));
        bar.set_position(step as u64);
        let eval_now =
            !val_rows.is_empty() && (step.is_multiple_of(opts.eval_every.max(1)) || step == stop);
        if eval_now {
            // Validation and the kept model read the moving average (when there is one); the
            // training state and the checkpoint keep the raw weights.
            opt.swap_ema(w.trainable())?;
            let v = mean_loss(&w, &rope, &val_rows, opts, pad, (&codes, &code_columns))?;
            let (r, n) = if opts.select == Select::Recall && !val_next.is_empty() {
                let (r, n) = val_next.measure(&w, &rope, &decoder, opts.val_beams)?;
                (Some(r), Some(n))
            } else {
                (None, None)
            };
            metrics::append(
                &opts.run,
                &metrics::Record {
                    stage: opts.stage,
                    step,
                    val_loss: Some(v),
                    val_recall10: r,
                    val_ndcg10: n,
                    ..Default::default()
                },
            )?;
            if let Some(r) = r {
                bar.println(format!(
                    "stage {} step {step}: val loss {v:.4}, val Recall@10 {r:.4}, NDCG@10 {:.4}",
                    opts.stage,
                    n.unwrap_or(0.0)
                ));
            }
            let better = match (r, best_recall) {
                (Some(r), Some(b)) => r > b || (r == b && best_val.is_none_or(|bv| v < bv)),
                (Some(_), None) => true,
                (None, _) => best_val.is_none_or(|b| v < b),
            };
            if better {
                best_val = Some(v);
                best_recall = r;
                save_weights(&w, &opts.run.join(stage_weights(opts.stage)))?;
            }
            opt.swap_ema(w.trainable())?;
        }
        if step.is_multiple_of(opts.save_every.max(1)) || step == stop {
            checkpoint::save(
                &ckpt_dir,
                &checkpoint::State {
                    stage: opts.stage,
                    step,
                    best_val_loss: best_val,
                    best_val_recall: best_recall,
                    seed: opts.seed,
                    total_steps: total,
                    extra: None,
                },
                &w,
                &opt,
                opts.keep_checkpoints,
            )?;
            let _ = metrics::plot(&opts.run);
        }
    }
    bar.finish_and_clear();
    if val_rows.is_empty() || !opts.run.join(stage_weights(opts.stage)).exists() {
        opt.swap_ema(w.trainable())?;
        save_weights(&w, &opts.run.join(stage_weights(opts.stage)))?;
        opt.swap_ema(w.trainable())?;
    }
    if !info.stages_done.contains(&opts.stage) {
        info.stages_done.push(opts.stage);
        info.stages_done.sort_unstable();
    }
    info.write(&opts.run)?;
    metrics::plot(&opts.run)?;
    let secs = t_train.elapsed().as_secs_f64();
    Ok(SftSummary {
        stage: opts.stage,
        steps: step,
        resumed_from,
        first_loss: first_loss.unwrap_or(f64::NAN),
        last_loss,
        best_val_loss: best_val,
        best_val_recall10: best_recall,
        examples: tokenized.len(),
        rows: rows.len(),
        skipped_too_long: too_long,
        trainable_params,
        total_params,
        tokens_per_s: tokens_done as f64 / secs.max(1e-9),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
