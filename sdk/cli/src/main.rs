//! `navigen`: the SDK on the desktop. Predict the next items, stream a creation instruction, keep a local
//! history, and run the end-to-end demo on a held-out user.

mod bench;
mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use navigen::engine::{Engine, EngineParams, InstructionOptions};
use navigen::history::{Event, EventKind, History, HistoryParams};

#[derive(Parser)]
#[command(
    name = "navigen",
    version,
    about = "On-device next-item prediction and creation instructions"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// CPU threads (0: all available cores).
    #[arg(long, global = true, default_value_t = 0)]
    threads: u32,
    /// How long one prompt chunk may take in ms (the delay of a cancel during a prompt; larger is
    /// faster on slow CPUs).
    #[arg(long, global = true, default_value_t = 250)]
    prompt_chunk_ms: u32,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Predict the next items after a history (item ids, oldest first) or a stored profile.
    Predict {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = navigen::engine::DEFAULT_BEAMS)]
        beams: usize,
        #[command(flatten)]
        who: Who,
    },
    /// Write a creation instruction, streamed to the terminal.
    Instruct {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 256)]
        max_think: u32,
        #[command(flatten)]
        who: Who,
    },
    /// Give a new item (its text) a CID on the device and say whether a catalog item holds it.
    Register {
        #[arg(long)]
        bundle: PathBuf,
        /// The item's text: title, description, genres (as the catalog's items were described).
        text: String,
    },
    /// Validate a navigen file (catalog, codebooks) completely and print what it holds.
    Inspect {
        file: PathBuf,
        /// Items of a catalog to list.
        #[arg(long, default_value_t = 5)]
        items: usize,
    },
    /// The local history store.
    History {
        #[arg(long)]
        dir: PathBuf,
        #[command(subcommand)]
        op: HistoryOp,
    },
    /// Speed of the runtime on a bundle: open time, prefill and decode tokens/s, next-item and
    /// latency, and how much resident memory opening added (mapped model pages included once touched).
    Bench(bench::BenchOptions),
    /// An OpenAI-compatible chat endpoint over an instruct GGUF (loopback by default): serves a teacher
    /// to `navigen-train teach --teacher-url`.
    Serve(serve::ServeOptions),
    /// The end-to-end demo on a held-out user of a prepared dataset.
    Demo {
        #[arg(long)]
        bundle: PathBuf,
        /// A zero-shot bundle (SmolLM2-Instruct) to compare with.
        #[arg(long)]
        zero_shot: Option<PathBuf>,
        /// The prepared data folder (for the held-out test split).
        #[arg(long)]
        data: PathBuf,
        /// Which test user (default: the first).
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(clap::Args)]
struct Who {
    /// Item ids, oldest first.
    #[arg(long, value_delimiter = ',')]
    items: Vec<String>,
    /// Or a profile of a history folder.
    #[arg(long, requires = "history")]
    profile: Option<String>,
    #[arg(long)]
    history: Option<PathBuf>,
}

impl Who {
    fn items(&self) -> Result<Vec<String>> {
        match (&self.profile, &self.history) {
            (Some(p), Some(dir)) => Ok(History::open(dir, HistoryParams::default())?.item_ids(p)?),
            _ if !self.items.is_empty() => Ok(self.items.clone()),
            _ => anyhow::bail!("give --items ID,ID,... or --profile NAME --history DIR"),
        }
    }
}

#[derive(Subcommand)]
enum HistoryOp {
    /// Append an event.
    Add {
        profile: String,
        item: String,
        #[arg(long, default_value = "view")]
        kind: String,
        /// Milliseconds since the epoch (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
    },
    List {
        profile: String,
    },
    Forget {
        profile: String,
    },
    /// Export as JSON (with a bundle, flags items that are not in its catalog).
    Export {
        profile: String,
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
}

pub(crate) fn open(bundle: &Path, params: &EngineParams) -> Result<Engine> {
    Engine::open(bundle, params.clone())
        .with_context(|| format!("opening bundle {}", bundle.display()))
}

fn stream_instruction(
    e: &Engine,
    items: &[&str],
    opts: &InstructionOptions,
    echo: bool,
) -> Result<navigen::engine::Instruction> {
    let mut out = std::io::stdout();
    let ins = e.generate_instruction(items, opts, &mut |piece| {
        if echo {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        true
    })?;
    if echo {
        println!();
    }
    Ok(ins)
}

fn run(cli: Cli) -> Result<()> {
    let ep = EngineParams {
        threads: cli.threads,
        prompt_chunk_ms: cli.prompt_chunk_ms,
        ..Default::default()
    };
    match cli.cmd {
        Cmd::Predict {
            bundle,
            k,
            beams,
            who,
        } => {
            let e = open(&bundle, &ep)?;
            let items = who.items()?;
            let refs: Vec<&str> = items.iter().map(String::as_str).collect();
            let preds = e.predict_next(&refs, k, beams)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&preds)?);
            } else {
                for (i, p) in preds.iter().enumerate() {
                    println!(
                        "{:>2}. {:<50} {:>8.3}  {} ({})",
                        i + 1,
                        p.title,
                        p.score,
                        p.id,
                        p.cid
                    );
                }
            }
        }
        Cmd::Instruct {
            bundle,
            temperature,
            max_think,
            who,
        } => {
            let e = open(&bundle, &ep)?;
            let items = who.items()?;
            let refs: Vec<&str> = items.iter().map(String::as_str).collect();
            let opts = InstructionOptions {
                temperature,
                max_think_tokens: max_think,
                ..Default::default()
            };
            let ins = stream_instruction(&e, &refs, &opts, !cli.json)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&ins)?);
            } else {
                println!(
                    "\ntarget terms: {}\ninstruction: {}",
                    ins.target_tid.join(", "),
                    ins.target_ins
                );
            }
        }
        Cmd::Inspect { file, items } => {
            print!("{}", navigen::format::inspect::inspect(&file, items)?);
        }
        Cmd::Register { bundle, text } => {
            let e = open(&bundle, &ep)?;
            let r = e.register_item(&text)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                match &r.taken_by {
                    Some(t) => println!(
                        "{}  taken by {} ({}); nearest free: {}",
                        r.cid,
                        t.title,
                        t.id,
                        r.free_cid.as_deref().unwrap_or("none under this prefix")
                    ),
                    None => println!("{}  free", r.cid),
                }
                println!("squared distance to the code: {:.4}", r.distance);
            }
        }
        Cmd::History { dir, op } => {
            let h = History::open(&dir, HistoryParams::default())?;
            match op {
                HistoryOp::Add {
                    profile,
                    item,
                    kind,
                    timestamp,
                } => {
                    let kind: EventKind = serde_json::from_value(serde_json::Value::String(kind.clone())).with_context(|| format!("unknown kind {kind:?} (view, click, purchase, play, rate, like, other)"))?;
                    let ts = timestamp.unwrap_or_else(|| {
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0)
                    });
                    h.append(
                        &profile,
                        &Event {
                            item_id: item,
                            kind,
                            timestamp_ms: ts,
                        },
                    )?;
                }
                HistoryOp::List { profile } => {
                    let evs = h.list(&profile)?;
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&evs)?);
                    } else {
                        for e in evs {
                            println!("{}\t{:?}\t{}", e.timestamp_ms, e.kind, e.item_id);
                        }
                    }
                }
                HistoryOp::Forget { profile } => h.forget(&profile)?,
                HistoryOp::Export { profile, bundle } => {
                    let e = bundle.map(|b| open(&b, &ep)).transpose()?;
                    println!(
                        "{}",
                        h.export_json(&profile, e.as_ref().map(|e| e.catalog()))?
                    );
                }
            }
        }
        Cmd::Serve(mut o) => {
            o.threads = cli.threads;
            serve::run(o)?;
        }
        Cmd::Bench(mut o) => {
            o.params = ep.clone();
            let r = bench::run(&o)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                bench::print(&r);
            }
        }
        Cmd::Demo {
            bundle,
            zero_shot,
            data,
            user,
        } => demo(
            &bundle,
            zero_shot.as_deref(),
            &data,
            user.as_deref(),
            &ep,
            cli.json,
        )?,
    }
    Ok(())
}

fn demo(
    bundle: &Path,
    zero_shot: Option<&Path>,
    data: &Path,
    user: Option<&str>,
    params: &EngineParams,
    json: bool,
) -> Result<()> {
    let test = std::fs::read_to_string(data.join("test.jsonl"))
        .with_context(|| format!("reading {}/test.jsonl", data.display()))?;
    let rows: Vec<serde_json::Value> = test
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let row = match user {
        Some(u) => rows
            .iter()
            .find(|r| r["user"] == u)
            .with_context(|| format!("user {u} is not in the test split"))?,
        None => rows.first().context("empty test split")?,
    };
    let history: Vec<String> = row["history"]
        .as_array()
        .context("history")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let target = row["target"].as_str().unwrap_or_default().to_string();
    let e = open(bundle, params)?;
    let cat = e.catalog();
    let title = |id: &str| {
        cat.find_id(id)
            .and_then(|i| cat.item(i))
            .map(|it| it.title.to_string())
            .unwrap_or_else(|| id.to_string())
    };
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    if !json {
        println!(
            "== held-out user {} ({} items in the history)",
            row["user"].as_str().unwrap_or("?"),
            history.len()
        );
        println!("last five:");
        for id in history.iter().rev().take(5).rev() {
            println!("  - {}", title(id));
        }
        println!("actually next (held out): {}", title(&target));
    }
    // What a person has already watched is not a recommendation.
    let (preds, _) = e.predict(
        &refs,
        &navigen::engine::PredictOptions {
            k: 5,
            exclude_history: true,
            ..Default::default()
        },
    )?;
    if !json {
        println!("\n== predicted next (top 5 not yet seen, constrained beam search over the catalog's CIDs)");
        for (i, p) in preds.iter().enumerate() {
            println!(
                "  {}. {}{}",
                i + 1,
                p.title,
                if p.id == target {
                    "   <- the held-out item"
                } else {
                    ""
                }
            );
        }
        println!("\n== creation instruction (fine-tuned, streamed)");
    }
    let ins = stream_instruction(&e, &refs, &InstructionOptions::default(), !json)?;
    let zs = match zero_shot {
        Some(z) => {
            let ze = open(z, params)?;
            if !json {
                println!(
                    "\n== creation instruction (zero-shot {} from titles and terms, streamed)",
                    ze.manifest().info["name"].as_str().unwrap_or("model")
                );
            }
            Some(stream_instruction(
                &ze,
                &refs,
                &InstructionOptions {
                    max_answer_tokens: 160,
                    ..Default::default()
                },
                !json,
            )?)
        }
        None => None,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"user": row["user"], "history": history, "target": target, "predictions": preds, "instruction": ins, "zero_shot": zs})
            )?
        );
    } else {
        println!(
            "\n== summary\nfine-tuned: {}\nzero-shot:  {}",
            ins.target_ins,
            zs.map(|z| z.target_ins)
                .unwrap_or_else(|| "(no zero-shot bundle given)".into())
        );
    }
    Ok(())
}

pub(crate) fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("navigen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
