//! `navigen-train bench quality`: navigen against RecBole's SASRec and Pop on the same split, in one
//! run. navigen's split is written as RecBole atomic files (same users, same validation and test
//! items, checked), RecBole trains in its own pinned environment, navigen's bundle is evaluated through
//! the runtime (llama.cpp, constrained beam search) on the same test users, and one table is printed.
//! Every figure ranks with the user's own items excluded (RecBole's full ranking does the same);
//! navigen's with-history figures are in the JSON too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::recbole::{self, RecboleOptions};
use crate::data::sequences::{self, Example};
use crate::data::Source;
use crate::eval::{self, rank_json};
use crate::export::{self, ExportOptions};
use crate::gguf::ExportDtype;
use crate::model::preset::Preset;
use crate::prepare::{self, PrepareOptions};
use crate::sft::{self, SftOptions};
use navigen::engine::Engine;

pub struct QualityOptions {
    pub dataset: String,
    pub out: PathBuf,
    /// Evaluate this bundle instead of training one (it must come from `OUT/data`).
    pub bundle: Option<PathBuf>,
    /// More bundles trained on the same data, each a row of the table (e.g. SFT and SFT+GRPO).
    pub also: Vec<(String, PathBuf)>,
    pub preset: Preset,
    pub epochs: f64,
    /// navigen's training steps (overrides `epochs`; the schedule ends there).
    pub max_steps: Option<usize>,
    /// Validation users for navigen's checkpoint selection (0 = all) and how often it runs.
    pub val_users: Option<usize>,
    pub eval_every: Option<usize>,
    pub dropout: f32,
    /// `sft --ema`.
    pub ema: f64,
    pub lr: Option<f64>,
    pub max_history: usize,
    pub beams: usize,
    pub sasrec_epochs: usize,
    /// SASRec's training batch (None: RecBole's 2048).
    pub sasrec_batch: Option<usize>,
    pub seed: u64,
    /// Skip RecBole (navigen's rows only).
    pub no_recbole: bool,
    pub collab_weight: f32,
    /// Retrain RecBole's models even when an identical earlier result is in OUT.
    pub rerun_recbole: bool,
    /// SASRec stops after the first epoch that ends past this many seconds (None: early stopping only).
    pub sasrec_time_cap_s: Option<u64>,
}

/// The columns of the table.
const COLUMNS: [&str; 5] = ["recall@1", "recall@5", "recall@10", "recall@20", "ndcg@10"];

pub fn bench_quality(o: &QualityOptions) -> Result<Value> {
    std::fs::create_dir_all(&o.out)?;
    let parallel = o.bundle.is_none() && !o.no_recbole;
    let threads = rayon::current_num_threads();
    let recbole_threads = if parallel {
        (threads / 2).max(1)
    } else {
        threads
    };
    let source: Source = o.dataset.parse()?;
    let data = o.out.join("data");
    if !data.join(prepare::REPORT_FILE).exists() {
        let mut p = PrepareOptions::new(source, &data);
        p.max_history = o.max_history;
        p.seed = o.seed;
        p.collab_weight = o.collab_weight;
        prepare::prepare(&p)?;
    }
    // RecBole first, in a child process, so that it trains beside navigen: on 2 cores each trainer
    // loses little to the other (neither scales well to a second thread at these model sizes).
    let mut recbole_run = None;
    if !o.no_recbole {
        let atomic = o.out.join("recbole").join("atomic");
        let name = format!("navigen-{}", o.dataset.replace([':', '/', ','], "-"));
        let users = recbole::write_atomic(&data, &atomic, &name)?;
        let result = o.out.join("recbole").join("result.json");
        let log = o.out.join("recbole").join("run.log");
        let pending = recbole::start(
            &atomic,
            &name,
            &result,
            &RecboleOptions {
                models: vec!["SASRec".into(), "Pop".into()],
                epochs: o.sasrec_epochs,
                threads: recbole_threads,
                seed: o.seed,
                max_seq_len: 50,
                reuse: !o.rerun_recbole,
                train_batch_size: o.sasrec_batch,
                time_cap_s: o.sasrec_time_cap_s,
                log: parallel.then(|| log.clone()),
            },
        )?;
        if parallel && matches!(pending, recbole::Pending::Running { .. }) {
            eprintln!(
                "navigen-train: RecBole trains beside navigen ({recbole_threads} thread(s)); its progress: {}",
                log.display()
            );
        }
        recbole_run = Some((pending, result, users));
    }
    let navigen_threads = match &recbole_run {
        Some((recbole::Pending::Running { .. }, ..)) if parallel => {
            (threads - recbole_threads).max(1)
        }
        _ => threads,
    };
    if navigen_threads < threads && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // candle sizes the worker pool of its element-wise ops once, on first use, from this
        // variable: navigen's share of the cores while RecBole trains beside it (set only then: a
        // reused RecBole result leaves navigen every core). When prepare ran above, the pool already
        // has every core, and the two trainers oversubscribe a little.
        std::env::set_var("CANDLE_NUM_THREADS", navigen_threads.to_string());
    }
    // navigen: train (or take) the bundle.
    let mut train_s = 0.0;
    let mut training = Value::Null;
    let bundle = match &o.bundle {
        Some(b) => b.clone(),
        None => {
            let name = o.preset.slug();
            let run = o.out.join(format!("run-{name}"));
            let bundle = o.out.join(format!("bundle-{name}"));
            let t = Instant::now();
            let mut s = SftOptions::new(&data, &run, Some(o.preset.clone()), 1);
            s.epochs = o.epochs;
            s.max_steps = o.max_steps;
            if let Some(v) = o.val_users {
                s.val_users = v;
            }
            if let Some(v) = o.eval_every {
                s.eval_every = v;
                s.save_every = v;
            }
            s.seed = o.seed;
            s.dropout = o.dropout;
            s.ema = o.ema;
            if let Some(lr) = o.lr {
                s.lr = lr;
            }
            // Rows that hold a whole window of max_history + 1 items (3 code tokens each, plus the
            // prompt), with the tokens per batch kept.
            let window = 3 * (o.max_history + 1) + 40;
            if window > s.max_len {
                let tokens = s.max_len * s.batch_rows;
                s.max_len = window.next_multiple_of(32);
                s.batch_rows = (tokens / s.max_len).max(1);
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(navigen_threads)
                .build()?;
            let summary = pool.install(|| sft::run_stage(&s))?;
            eprintln!(
                "navigen-train: stage 1 done: {} steps, best val Recall@10 {:?}",
                summary.steps, summary.best_val_recall10
            );
            export::export(&ExportOptions {
                run,
                out: bundle.clone(),
                dtype: ExportDtype::F16,
                verify_prompts: 2,
                verify_tokens: 16,
            })?;
            train_s = t.elapsed().as_secs_f64();
            training = json!({"preset": name, "epochs": o.epochs, "max_steps": o.max_steps, "steps": summary.steps,
                "val_users": s.val_users, "eval_every": s.eval_every,
                "lr": s.lr, "dropout": s.dropout, "ema": s.ema, "max_history": o.max_history, "max_len": s.max_len,
                "batch_rows": s.batch_rows, "best_val_recall10": summary.best_val_recall10});
            bundle
        }
    };
    let test: Vec<Example> = sequences::read_jsonl(&data.join(sequences::TEST_FILE))?;
    let full = eval::full_histories(&data)?;
    let e = Engine::open(&bundle, crate::engine_params())?;
    let ranks = eval::next_item_ranks(&e, &test, &full, o.beams)?;
    let mut rows = vec![
        json!({"model": format!("navigen ({})", e.manifest().info["name"].as_str().unwrap_or("bundle")),
               "metrics": rank_json(&ranks.model), "train_seconds": train_s, "eval_seconds": ranks.seconds,
               "threads": navigen_threads}),
    ];
    // Further bundles on the same users, with the same decoding budget.
    let catalog = std::fs::read(data.join(navigen::format::catalog::FILE_NAME))?;
    for (name, b) in &o.also {
        let theirs = std::fs::read(b.join(navigen::format::catalog::FILE_NAME))
            .with_context(|| format!("{}: not a bundle", b.display()))?;
        anyhow::ensure!(
            theirs == catalog,
            "{} was trained on other data than {} (the catalogs differ)",
            b.display(),
            data.display()
        );
        let e = Engine::open(b, crate::engine_params())?;
        let r = eval::next_item_ranks(&e, &test, &full, o.beams)?;
        rows.push(
            json!({"model": format!("navigen {name}"), "metrics": rank_json(&r.model),
            "eval_seconds": r.seconds, "bundle": b}),
        );
    }
    rows.push(json!({"model": "most-popular (navigen's)", "metrics": rank_json(&ranks.popular), "train_seconds": 0.0, "eval_seconds": 0.0}));
    let mut recbole_json = Value::Null;
    if let Some((pending, result, users)) = recbole_run {
        if matches!(pending, recbole::Pending::Running { .. }) {
            eprintln!("navigen-train: waiting for RecBole");
        }
        let r = pending.wait()?;
        let tsv = PathBuf::from(format!("{}.test_items.tsv", result.display()));
        let same = recbole::check_test_items(&tsv, &data)?;
        anyhow::ensure!(same == users, "RecBole tested {same} of {users} users");
        for m in ["SASRec", "Pop"] {
            let v = &r["models"][m];
            let reused = if r["reused"] == true {
                " (reused result)"
            } else {
                ""
            };
            let stop = match v["stopped_by"].as_str() {
                Some("time_cap") => format!(
                    ", {} epochs, time cap",
                    v["epochs_run"].as_u64().unwrap_or(0)
                ),
                Some("early_stopping") => format!(
                    ", {} epochs, early stopping",
                    v["epochs_run"].as_u64().unwrap_or(0)
                ),
                _ if m == "SASRec" => format!(", {} epochs", v["epochs_run"].as_u64().unwrap_or(0)),
                _ => String::new(),
            };
            rows.push(json!({"model": format!("RecBole {m}{stop}{reused}"), "metrics": v["test"], "train_seconds": v["train_seconds"], "eval_seconds": v["eval_seconds"], "threads": v["config"]["threads"]}));
        }
        recbole_json = r;
    }
    let table = markdown(&rows, test.len(), o.beams);
    println!("{table}");
    let report = json!({
        "dataset": o.dataset,
        "test_users": test.len(),
        "beams": o.beams,
        "history_excluded": true,
        "rows": rows,
        "navigen_with_history": rank_json(&ranks.model_with_history),
        "most_popular_with_history": rank_json(&ranks.popular_with_history),
        "recbole": recbole_json,
        "bundle": bundle,
        "navigen_training": training,
    });
    navigen::format::write_atomic(
        &o.out.join("quality.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(o.out.join("quality.md"), &table).context("writing quality.md")?;
    Ok(report)
}

fn markdown(rows: &[Value], users: usize, beams: usize) -> String {
    let mut s = format!(
        "{users} test users, leave-one-out, the user's own items excluded; navigen through the runtime, {beams} beams\n\n| model | {} | train s | eval s |\n|---|{}---|---|\n",
        COLUMNS.map(|c| c.replace("recall", "R").replace("ndcg", "NDCG")).join(" | "),
        "---|".repeat(COLUMNS.len())
    );
    for r in rows {
        let m = &r["metrics"];
        let cells: Vec<String> = COLUMNS
            .iter()
            .map(|c| m[*c].as_f64().map_or("-".into(), |v| format!("{v:.4}")))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} |\n",
            r["model"].as_str().unwrap_or("?"),
            cells.join(" | "),
            r["train_seconds"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.0}")),
            r["eval_seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    s
}
