//! GRPO, the third stage (docs/method.md section 5), on the next-item task: from the run's stage-2
//! model, G completions per prompt decoded as the device decodes ([`rollout`]), rewarded with the
//! method's hierarchical CID reward ([`reward`]), and the clipped, KL-regularised, group-relative
//! objective ([`objective`]). The kept model (`stage3.safetensors`) is the newest whose validation
//! Recall@10 through the device's beam search is within one standard error of the best so far, the
//! starting model included: never measurably worse at next items than the model GRPO started from, and
//! among tied models the one with the most instruction training.
//!
//! The watch (the "Generate, Not Recommend" collapse: rewards within groups become all equal): every
//! step logs the reward mean, the within-group std, the share of groups with zero std, the entropy, the
//! KL and the clipped share (`metrics.jsonl`, `grpo.png`). When the zero-std share stays at or above
//! `collapse_share` for `patience` steps the run stops; when validation recall falls by more than
//! `recall_drop` under the best while the reward rises (reward hacking), the policy rolls back to the
//! best model; after `max_rollbacks` the run stops. Either way the kept model is the best one.
//!
//! Two tasks: next-item (`prompts` a step, rolled out in candle under the trie) and instructions
//! (`ins_prompts` a step, rolled out by the device's own engine on the policy exported after each
//! update, [`instruct`]; rewarded with the judge's quality when one is given and the embedding
//! similarities). Full-parameter updates, or LoRA adapters (`lora`) merged into the weights the stage
//! writes.
//!
//! Uses the run, checkpoint, metrics and optimiser code of [`crate::run`]; no SFT internals.

pub mod instruct;
pub mod objective;
pub mod reward;
pub mod rollout;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::sequences::{self, Example, TrainSequence};
use crate::model::batch::{self, CodeConstraint, Row};
use crate::model::beam::NextItemDecoder;
use crate::model::weights::Lora;
use crate::model::{self, ModelConfig, Rope, Trainable, Weights};
use crate::run::checkpoint::{self, Resume};
use crate::run::{metrics, optim, recall, save_weights, stage_weights, RunInfo, CONFIG_FILE};
use navigen::format::catalog;
use navigen::{Catalog, Cid};
use objective::{group_advantages, grpo_loss, Objective};

/// The stage number GRPO writes (`stage3.safetensors`, metrics' `stage`).
pub const STAGE: u8 = 3;

#[derive(Clone, Debug, Serialize)]
pub struct GrpoOptions {
    pub data: PathBuf,
    pub run: PathBuf,
    /// Optimiser steps.
    pub steps: usize,
    /// Completions per prompt (G).
    pub group: usize,
    /// Next-item prompts per step.
    pub prompts: usize,
    /// Instruction (cid2ins) prompts per step (0: next-item only).
    pub ins_prompts: usize,
    /// Budgets of the instruction rollouts (the method's are 768 thinking and 192 answer tokens).
    pub ins_budget: instruct::InsBudget,
    pub lr: f64,
    pub warmup_frac: f64,
    pub weight_decay: f64,
    pub clip: f64,
    /// Sampling temperature of the rollouts (the log-probabilities use the same).
    pub temperature: f32,
    pub objective: Objective,
    /// Policy updates per batch of rollouts (1: on-policy, the ratio is 1 at the update).
    pub updates: usize,
    pub val_every: usize,
    pub val_users: usize,
    pub val_beams: usize,
    /// The watch: stop when the share of zero-std groups stays at or above this for `patience` steps.
    pub collapse_share: f64,
    pub patience: usize,
    /// Roll back when validation Recall@10 falls this far under the best while the reward rises.
    pub recall_drop: f64,
    pub max_rollbacks: usize,
    /// DAPO's dynamic sampling: a group whose completions all earned the same reward is replaced by
    /// another prompt's, up to this many times a step (0: off).
    pub resample_zero_std: usize,
    /// Checkpoint every this many steps (and at the end).
    pub save_every: usize,
    /// Stop after this many steps of the schedule (a run to resume later; tests).
    pub stop_after: Option<usize>,
    #[serde(skip)]
    pub resume: Resume,
    pub seed: u64,
    /// LoRA adapters (the reference's r 16 / alpha 32 on q, k, v, o, gate, up, down) instead of
    /// full-parameter updates; merged into the weights the stage writes.
    pub lora: Option<Lora>,
    #[serde(skip)]
    pub device: Device,
    #[serde(skip)]
    pub dtype: DType,
}

impl GrpoOptions {
    /// What the updates train: LoRA factors or every weight.
    pub fn trainable(&self) -> Trainable {
        match self.lora {
            Some(l) => Trainable::Lora(l),
            None => Trainable::All,
        }
    }

    /// The method's defaults (G = 8, eps 0.2, beta 0.01, 600 steps); the learning rate is for
    /// full-parameter updates (the reference's 3e-4 is LoRA's).
    pub fn new(data: &Path, run: &Path) -> Self {
        GrpoOptions {
            data: data.to_path_buf(),
            run: run.to_path_buf(),
            steps: 600,
            group: 8,
            prompts: 8,
            ins_prompts: 2,
            ins_budget: instruct::InsBudget {
                max_think_tokens: 128,
                max_answer_tokens: 96,
            },
            lr: 1e-5,
            warmup_frac: 0.03,
            weight_decay: 0.01,
            clip: 1.0,
            temperature: 1.0,
            objective: Objective::default(),
            updates: 1,
            val_every: 50,
            val_users: 300,
            val_beams: 20,
            collapse_share: 0.9,
            patience: 10,
            recall_drop: 0.02,
            max_rollbacks: 2,
            resample_zero_std: 0,
            save_every: 50,
            stop_after: None,
            resume: Resume::Latest,
            seed: 42,
            lora: None,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GrpoSummary {
    pub steps: usize,
    pub start_val_recall10: f64,
    pub best_val_recall10: f64,
    pub best_step: usize,
    /// The step of the kept model (`stage3.safetensors`): the best by validation Recall@10, or a
    /// later one within one standard error of it.
    pub kept_step: usize,
    pub first_reward: Option<f64>,
    pub last_reward: Option<f64>,
    pub rollbacks: usize,
    pub resumed_from: Option<usize>,
    /// Why the run stopped before `steps` (the watch), if it did.
    pub stopped: Option<String>,
    pub seconds: f64,
}

/// The watch's memory, saved in checkpoints so a resumed run decides as the uninterrupted one.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
struct Watch {
    best: f64,
    best_step: usize,
    /// The step of the kept model: the best, or a later one within a standard error of it.
    #[serde(default)]
    kept_step: usize,
    reward_at_best: Option<f64>,
    start: f64,
    first_reward: Option<f64>,
    last_reward: Option<f64>,
    rollbacks: usize,
    collapsed_for: usize,
    /// Mean rewards of the steps since the last validation.
    recent: Vec<f64>,
}

/// The rollouts of a step draw from their own seeded generator, so a resumed run draws the same.
fn step_rng(seed: u64, step: usize) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// One prompt: the history's CIDs and the target's.
struct Prompt {
    history: Vec<Cid>,
    target: Cid,
}

/// Every (history, next item) of the training prefixes, as sft's next-item windows see them: at most
/// the device's history length before the target.
fn prompts(cat: &Catalog, train: &[TrainSequence]) -> Vec<Prompt> {
    let mut out = Vec::new();
    for t in train {
        let cids: Vec<Cid> = t
            .items
            .iter()
            .filter_map(|id| cat.find_id(id).and_then(|i| cat.item(i)).map(|it| it.cid))
            .collect();
        for end in 1..cids.len() {
            let start = end.saturating_sub(navigen::prompt::MAX_HISTORY);
            out.push(Prompt {
                history: cids[start..end].to_vec(),
                target: cids[end],
            });
        }
    }
    out
}

/// A completion as a training row: the context (no targets), then the sampled codes, each the target
/// of the position before it, so the batch scores them under the trie ([`CodeConstraint`]).
fn completion_row(decoder: &NextItemDecoder, history: &[Cid], codes: &[u16]) -> Row {
    let mut ids = decoder.context_ids(history);
    let ctx = ids.len();
    ids.extend(
        codes
            .iter()
            .enumerate()
            .map(|(l, &c)| decoder.code_token(l, c)),
    );
    let n = ids.len();
    let targets = (0..n)
        .map(|i| (i + 1 >= ctx && i + 1 < n).then(|| ids[i + 1]))
        .collect();
    Row {
        positions: (0..n as u32).collect(),
        segments: vec![0; n],
        targets,
        ids,
    }
}

/// The model's log-probabilities of every completion's codes, (completions, levels).
pub fn completion_log_probs(
    w: &Weights,
    rope: &Rope,
    rows: &[Row],
    pad: u32,
    codes: &CodeConstraint,
    columns: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let b = batch::make_batch(rows, pad, &w.device, w.dtype, Some(codes))?;
    let lp = model::code_log_probs(w, rope, &b, columns, temperature)?;
    let n = rows.len();
    let per = lp.dim(0)? / n.max(1);
    anyhow::ensure!(per * n == lp.dim(0)?, "completions of unequal length");
    Ok(lp.reshape((n, per))?)
}

/// The model's log-probabilities of instruction completions, (completions, longest) with a mask of
/// their scored tokens.
fn ins_log_probs(
    w: &Weights,
    rope: &Rope,
    rows: &[Row],
    pad: u32,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let b = batch::make_batch(rows, pad, &w.device, w.dtype, None)?;
    let flat = model::token_log_probs(w, rope, &b, temperature)?;
    let lens: Vec<usize> = rows.iter().map(Row::loss_tokens).collect();
    let longest = lens.iter().copied().max().unwrap_or(0).max(1);
    let total = flat.dim(0)?;
    // Padding reads one extra zero past the end.
    let ext = Tensor::cat(&[&flat, &Tensor::zeros(1, DType::F32, &w.device)?], 0)?;
    let (mut idx, mut mask) = (Vec::new(), Vec::new());
    let mut off = 0usize;
    for &l in &lens {
        for j in 0..longest {
            idx.push(if j < l {
                (off + j) as u32
            } else {
                total as u32
            });
            mask.push(if j < l { 1f32 } else { 0.0 });
        }
        off += l;
    }
    anyhow::ensure!(off == total, "scored tokens {total} but rows hold {off}");
    let n = rows.len();
    let idx = Tensor::from_vec(idx, n * longest, &w.device)?;
    Ok((
        ext.index_select(&idx, 0)?.reshape((n, longest))?,
        Tensor::from_vec(mask, (n, longest), &w.device)?,
    ))
}

fn load(run: &Path, file: &str, opts: &GrpoOptions) -> Result<Weights> {
    let config: ModelConfig = serde_json::from_slice(&std::fs::read(run.join(CONFIG_FILE))?)?;
    Weights::from_safetensors(config, &[run.join(file)], &opts.device, opts.dtype)
}

/// Runs GRPO from the run's stage-2 model (or resumes it); writes `stage3.safetensors` (the best by
/// validation recall). The instruction reward has no judge part (see [`run_with_judge`]).
pub fn run(opts: &GrpoOptions) -> Result<GrpoSummary> {
    run_with_judge(opts, None)
}

/// [`run`] with a judge whose quality scores join the instruction reward (answers cached in
/// `RUN/grpo-judge.jsonl`, so a resumed run does not ask again).
pub fn run_with_judge(
    opts: &GrpoOptions,
    judge: Option<&dyn crate::teach::backend::Teacher>,
) -> Result<GrpoSummary> {
    let t0 = Instant::now();
    let mut info = RunInfo::read(&opts.run)?;
    if !info.stages_done.contains(&2) {
        bail!("GRPO starts from stage 2's model: run `navigen-train sft --stage 2` first");
    }
    anyhow::ensure!(opts.group >= 2, "a group needs at least 2 completions");
    anyhow::ensure!(
        opts.prompts + opts.ins_prompts > 0,
        "no prompts a step: set prompts or ins_prompts"
    );
    let start_file = stage_weights(2);
    let mut w = load(&opts.run, &start_file, opts)?;
    w.set_trainable(opts.trainable())?;
    let reference = if opts.objective.beta > 0.0 {
        Some(load(&opts.run, &start_file, opts)?)
    } else {
        None
    };
    let (tok, pad) = crate::run::run_tokenizer(&opts.run)?;
    let cat = Catalog::open(&opts.data.join(catalog::FILE_NAME))?;
    let train: Vec<TrainSequence> = sequences::read_jsonl(&opts.data.join(sequences::TRAIN_FILE))?;
    let valid: Vec<Example> = sequences::read_jsonl(&opts.data.join(sequences::VALID_FILE))?;
    let pool = prompts(&cat, &train);
    let ins_pool = instruct::InsPool::new(&cat, &train);
    let judge = match judge {
        Some(j) => Some(crate::teach::ask::Asker::open(
            j,
            &opts.run.join("grpo-judge.jsonl"),
        )?),
        None => None,
    };
    let mut ins = instruct::InsRollouts::new(
        &opts.run.join("grpo-policy"),
        opts.ins_budget,
        opts.temperature,
    );
    // Instruction completions are scored up to the rollout's budget (and the answer's fixed text).
    let ins_max_tokens =
        (opts.ins_budget.max_think_tokens + opts.ins_budget.max_answer_tokens) as usize + 64;
    anyhow::ensure!(
        !pool.is_empty(),
        "no training prompts in {}",
        opts.data.display()
    );
    let val_users = if opts.val_users == 0 {
        valid.len()
    } else {
        opts.val_users.min(valid.len())
    };
    let val = recall::ValidationSet::new(&cat, &train, &valid[..val_users]);
    let decoder = NextItemDecoder::new(&cat, &tok)?;
    let codes = CodeConstraint::new(&cat, &tok)?;
    let columns = Tensor::from_slice(&codes.columns, codes.columns.len(), &opts.device)?;
    let rope = Rope::new(&w.config, &opts.device, opts.dtype)?;
    let new_opt = || {
        optim::AdamW::new(optim::AdamWConfig {
            weight_decay: opts.weight_decay,
            ..Default::default()
        })
    };
    let mut opt = new_opt();
    let warmup = ((opts.warmup_frac * opts.steps as f64).ceil() as usize).max(1);
    let kept = opts.run.join(stage_weights(STAGE));
    let ckpt_dir = crate::run::checkpoints_dir(&opts.run, STAGE);
    let measure = |w: &Weights| -> Result<(f64, f64)> {
        if val.is_empty() {
            return Ok((0.0, 0.0));
        }
        val.measure(w, &rope, &decoder, opts.val_beams)
    };

    // Resume from a GRPO checkpoint, or start: the starting model is the first candidate, and GRPO
    // keeps it unless a later one recommends better.
    let wanted = match opts.resume {
        Resume::Never => None,
        Resume::Latest => checkpoint::latest(&ckpt_dir)?,
        Resume::Step(s) => Some(s),
    };
    let mut resumed = None;
    if let Some(s) = wanted {
        let mut trial = load(&opts.run, &start_file, opts)?;
        trial.set_trainable(opts.trainable())?;
        let mut trial_opt = new_opt();
        let st = checkpoint::load(
            &ckpt_dir,
            s,
            &mut trial,
            &mut trial_opt,
            &opts.device,
            opts.dtype,
        )?;
        if st.stage == STAGE {
            let watch: Watch = serde_json::from_value(
                st.extra
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("GRPO checkpoint {s} without its watch"))?,
            )?;
            w = trial;
            opt = trial_opt;
            resumed = Some((st.step, watch));
        }
    }
    let mut step;
    let mut watch;
    let resumed_from;
    match resumed {
        Some((s, wt)) => {
            step = s;
            watch = wt;
            resumed_from = Some(s);
            metrics::truncate_after(&opts.run, STAGE, s)?;
            eprintln!("grpo: resumed at step {s}");
        }
        None => {
            metrics::drop_stage(&opts.run, STAGE)?;
            let (r0, n0) = measure(&w)?;
            save_weights(&w, &kept)?;
            metrics::append(
                &opts.run,
                &metrics::Record {
                    stage: STAGE,
                    step: 0,
                    val_recall10: Some(r0),
                    val_ndcg10: Some(n0),
                    ..Default::default()
                },
            )?;
            step = 0;
            watch = Watch {
                best: r0,
                start: r0,
                ..Default::default()
            };
            resumed_from = None;
        }
    }
    eprintln!(
        "grpo: from stage 2 of {}: {} prompts, G = {}, {} prompts a step, {} steps; val Recall@10 {:.4}",
        opts.run.display(),
        pool.len(),
        opts.group,
        opts.prompts,
        opts.steps,
        watch.start
    );
    let stop = opts.stop_after.unwrap_or(opts.steps).min(opts.steps);
    let mut stopped = None::<String>;
    let bar = crate::progress::bar(opts.steps as u64, "grpo");
    bar.set_position(step as u64);
    while step < stop {
        step += 1;
        let ts = Instant::now();
        let mut rng = step_rng(opts.seed, step);
        // Rollouts with the current policy.
        let heads = decoder.level_heads(&w.head()?)?;
        let mut rows = Vec::new();
        let mut rewards = Vec::new();
        let (mut entropy, mut groups, mut redraws) = (0f64, 0usize, 0usize);
        while groups < opts.prompts {
            let p = &pool[rng.gen_range(0..pool.len())];
            let g = rollout::sample_group(
                &decoder,
                (&w, &rope, &heads),
                &p.history,
                opts.group,
                opts.temperature,
                &mut rng,
            )?;
            let mut r = Vec::with_capacity(g.codes.len());
            for c in &g.codes {
                let cid = Cid::new(c).ok_or_else(|| anyhow::anyhow!("bad codes {c:?}"))?;
                r.push(reward::cid2cid_codes(&cid, &p.target).total);
            }
            if r.iter().all(|&x| x == r[0]) && redraws < opts.resample_zero_std {
                redraws += 1;
                continue;
            }
            entropy += g.entropy as f64;
            groups += 1;
            rewards.extend(r);
            rows.extend(
                g.codes
                    .iter()
                    .map(|c| completion_row(&decoder, &p.history, c)),
            );
        }
        let next_groups = rewards.len();
        let mut parts = BTreeMap::<String, f64>::new();
        if next_groups > 0 {
            let cid_mean = rewards
                .iter()
                .map(|&r| ((r - 0.1) / 0.9) as f64)
                .sum::<f64>()
                / next_groups as f64;
            parts.insert("cid".into(), cid_mean);
            parts.insert(
                "cid2cid".into(),
                rewards.iter().map(|&r| r as f64).sum::<f64>() / next_groups as f64,
            );
        }
        // Instruction rollouts on the device's engine, with the current policy.
        let mut ins_rows = Vec::new();
        if opts.ins_prompts > 0 && !ins_pool.is_empty() {
            ins.refresh(&w, &tok, &info)?;
            let mut done: Vec<instruct::InsCompletion> = Vec::new();
            for _ in 0..opts.ins_prompts {
                let p = ins_pool.get(&cat, rng.gen_range(0..ins_pool.len()))?;
                let seed = rng.gen::<u32>();
                let group = ins.sample_group(&cat, &p, opts.group, seed, judge.as_ref())?;
                for c in &group {
                    ins_rows.push(instruct::completion_row(&tok, &p, &c.text, ins_max_tokens)?);
                    rewards.push(c.reward);
                }
                done.extend(group);
            }
            let n = done.len().max(1) as f64;
            let mean =
                |f: &dyn Fn(&instruct::InsCompletion) -> f64| done.iter().map(f).sum::<f64>() / n;
            parts.insert("cid2ins".into(), mean(&|c| c.reward as f64));
            parts.insert("sim_ins_target".into(), mean(&|c| c.sim_ins_target as f64));
            parts.insert("sim_ins_pred".into(), mean(&|c| c.sim_ins_pred as f64));
            parts.insert(
                "sim_pred_target".into(),
                mean(&|c| c.sim_pred_target as f64),
            );
            parts.insert("gate".into(), mean(&|c| c.gate as f64));
            parts.insert("pen".into(), mean(&|c| c.pen as f64));
            parts.insert("fmt".into(), mean(&|c| c.fmt as u8 as f64));
            if judge.is_some() {
                parts.insert("quality".into(), mean(&|c| c.quality.unwrap_or(0.0) as f64));
            }
        }
        let (adv, stds) = group_advantages(&rewards, opts.group);
        let zero_share = stds.iter().filter(|&&s| s < 1e-6).count() as f64 / stds.len() as f64;
        let reward_mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / rewards.len() as f64;
        let reward_std = stds.iter().map(|&s| s as f64).sum::<f64>() / stds.len() as f64;
        watch.first_reward.get_or_insert(reward_mean);
        watch.last_reward = Some(reward_mean);
        let t = opts.temperature as f64;
        let n_next = rows.len();
        let n_ins = ins_rows.len();
        // The log-probabilities of both tasks' completions under a model: next-item codes under the
        // trie, instruction tokens under the full vocabulary; (rows, tokens) with a mask.
        let score = |m: &Weights| -> Result<Vec<(Tensor, Tensor)>> {
            let mut out = Vec::new();
            if n_next > 0 {
                let lp = completion_log_probs(m, &rope, &rows, pad, &codes, &columns, t)?;
                let mask = lp.ones_like()?.detach();
                out.push((lp, mask));
            }
            if n_ins > 0 {
                out.push(ins_log_probs(m, &rope, &ins_rows, pad, t)?);
            }
            Ok(out)
        };
        // One forward gives the behaviour policy's log-probabilities (detached) and the first
        // update's (with gradient): before that update the policy is the behaviour policy.
        let mut first = Some(score(&w)?);
        let (old, masks): (Vec<Tensor>, Vec<Tensor>) = first
            .as_ref()
            .expect("just set")
            .iter()
            .map(|(lp, m)| (lp.detach(), m.clone()))
            .unzip();
        let reference_lp: Option<Vec<Tensor>> = match &reference {
            Some(r) => Some(score(r)?.into_iter().map(|(lp, _)| lp.detach()).collect()),
            None => None,
        };
        // The policy's k3 KL to the reference before this step's update (logged also when the
        // update is skipped), over every scored token of both tasks.
        let kl = match &reference_lp {
            Some(r) => {
                let (mut sum, mut count) = (0f64, 0f64);
                for ((r, o), m) in r.iter().zip(&old).zip(&masks) {
                    let d = (r - o)?;
                    let k3 = (((d.exp()? - &d)? - 1.0)? * m)?;
                    sum += k3.sum_all()?.to_scalar::<f32>()? as f64;
                    count += m.sum_all()?.to_scalar::<f32>()? as f64;
                }
                sum / count.max(1.0)
            }
            None => 0.0,
        };
        // Advantages of each task's completions (the next-item groups come first).
        let mut adv_t = Vec::new();
        if n_next > 0 {
            adv_t.push(Tensor::from_slice(&adv[..n_next], n_next, &opts.device)?);
        }
        if n_ins > 0 {
            adv_t.push(Tensor::from_slice(&adv[n_next..], n_ins, &opts.device)?);
        }
        let lr = optim::lr_at(step - 1, opts.steps, warmup, opts.lr, 0.1);
        let (mut clip_frac, mut norm) = (0.0, 0.0);
        // Groups whose rewards are all equal have zero advantage: nothing to learn, skip the update.
        if zero_share < 1.0 {
            for _ in 0..opts.updates.max(1) {
                let lps = match first.take() {
                    Some(lps) => lps,
                    None => score(&w)?,
                };
                // Each task's loss weighted by its number of completions.
                let (mut loss, mut clipped) = (None::<Tensor>, 0.0);
                let total = (n_next + n_ins) as f64;
                for (i, (lp, _)) in lps.iter().enumerate() {
                    let share = lp.dim(0)? as f64 / total;
                    let parts = grpo_loss(
                        lp,
                        &old[i],
                        reference_lp.as_ref().map(|r| &r[i]),
                        &adv_t[i],
                        &masks[i],
                        &opts.objective,
                    )?;
                    clipped += parts.clip_frac * share;
                    let l = (parts.loss * share)?;
                    loss = Some(match loss {
                        Some(x) => (x + l)?,
                        None => l,
                    });
                }
                let loss = loss.ok_or_else(|| anyhow::anyhow!("no completions this step"))?;
                let g = loss.backward()?;
                let mut grads = BTreeMap::new();
                for (name, var) in w.trainable() {
                    if let Some(gt) = g.get(var.as_tensor()) {
                        grads.insert(name.clone(), gt.to_dtype(DType::F32)?);
                    }
                }
                norm = optim::clip(&mut grads, opts.clip)?;
                opt.update(w.trainable(), &grads, lr)?;
                clip_frac = clipped;
            }
        }
        // The watch, part 1: a collapse of the reward's spread within groups.
        watch.collapsed_for = if zero_share >= opts.collapse_share {
            watch.collapsed_for + 1
        } else {
            0
        };
        let mut event = None;
        if watch.collapsed_for >= opts.patience.max(1) {
            let why = format!(
                "reward std collapsed: {:.0} % of groups had zero std for {} steps",
                zero_share * 100.0,
                watch.collapsed_for
            );
            event = Some(why.clone());
            stopped = Some(why);
        }
        metrics::append(
            &opts.run,
            &metrics::Record {
                stage: STAGE,
                step,
                lr: Some(lr),
                grad_norm: Some(norm),
                reward_mean: Some(reward_mean),
                reward_std: Some(reward_std),
                zero_std_share: Some(zero_share),
                entropy: (groups > 0).then(|| entropy / groups as f64),
                kl: Some(kl),
                clip_frac: Some(clip_frac),
                reward_parts: Some(parts),
                elapsed_s: Some(t0.elapsed().as_secs_f64()),
                // Completion tokens (three per completion) per second of rollout and update.
                tokens_per_s: Some(rows.len() as f64 * 3.0 / ts.elapsed().as_secs_f64().max(1e-9)),
                event,
                ..Default::default()
            },
        )?;
        watch.recent.push(reward_mean);
        bar.set_message(format!("grpo reward {reward_mean:.3} std {reward_std:.3}"));
        bar.set_position(step as u64);
        if stopped.is_some() {
            break;
        }
        if step % opts.val_every.max(1) == 0 || step == opts.steps {
            let (r, n) = measure(&w)?;
            let reward_now = watch.recent.iter().sum::<f64>() / watch.recent.len().max(1) as f64;
            watch.recent.clear();
            let mut event = None;
            // One standard error of the best recall over the validation users: a model within it is
            // tied with the best on next items, and the later one has had more of both tasks (the
            // instruction task is not in this validation), so it is the one kept.
            let se = (watch.best * (1.0 - watch.best) / val_users.max(1) as f64).sqrt();
            if r > watch.best {
                watch.best = r;
                watch.best_step = step;
                watch.kept_step = step;
                watch.reward_at_best = Some(reward_now);
                save_weights(&w, &kept)?;
            } else if r >= watch.best - se {
                watch.kept_step = step;
                save_weights(&w, &kept)?;
            } else if r < watch.best - opts.recall_drop
                && watch.reward_at_best.is_none_or(|rb| reward_now > rb)
            {
                // The watch, part 2: the reward rises while what it stands for falls.
                watch.rollbacks += 1;
                w = load(&opts.run, &stage_weights(STAGE), opts)?;
                w.set_trainable(opts.trainable())?;
                opt = new_opt();
                let reward = match watch.reward_at_best {
                    Some(rb) => format!("while the reward rose from {rb:.3} to {reward_now:.3}"),
                    None => format!("with the reward at {reward_now:.3}"),
                };
                let why = format!(
                    "val Recall@10 {r:.4} fell under the best {:.4} (step {}) {reward}: rolled back",
                    watch.best, watch.best_step
                );
                if watch.rollbacks > opts.max_rollbacks {
                    stopped = Some(format!("{why}; {} rollbacks, stopping", watch.rollbacks));
                }
                event = Some(why);
            }
            metrics::append(
                &opts.run,
                &metrics::Record {
                    stage: STAGE,
                    step,
                    val_recall10: Some(r),
                    val_ndcg10: Some(n),
                    event,
                    ..Default::default()
                },
            )?;
            bar.println(format!(
                "grpo step {step}: val Recall@10 {r:.4} (best {:.4} at step {}), reward {reward_now:.3}",
                watch.best, watch.best_step
            ));
            if stopped.is_some() {
                break;
            }
        }
        if step % opts.save_every.max(1) == 0 || step == stop {
            checkpoint::save(
                &ckpt_dir,
                &checkpoint::State {
                    stage: STAGE,
                    step,
                    best_val_loss: None,
                    best_val_recall: Some(watch.best),
                    seed: opts.seed,
                    total_steps: opts.steps,
                    extra: Some(serde_json::to_value(&watch)?),
                },
                &w,
                &opt,
                2,
            )?;
        }
    }
    bar.finish_and_clear();
    if let Some(s) = &stopped {
        eprintln!(
            "grpo: stopped at step {step}: {s}; kept the model of step {}",
            watch.kept_step
        );
    }
    if !info.stages_done.contains(&STAGE) {
        info.stages_done.push(STAGE);
    }
    info.write(&opts.run)?;
    metrics::plot_grpo(&opts.run, STAGE)?;
    Ok(GrpoSummary {
        steps: step,
        start_val_recall10: watch.start,
        best_val_recall10: watch.best,
        best_step: watch.best_step,
        kept_step: watch.kept_step,
        first_reward: watch.first_reward,
        last_reward: watch.last_reward,
        rollbacks: watch.rollbacks,
        resumed_from,
        stopped,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
