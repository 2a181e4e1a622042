//! `teach`: searched supervision for cid2ins (docs/method.md section 4). For every (history, target)
//! window that `sft` stage 2 trains cid2ins on (or a stated sample of users), a teacher reasons,
//! writes founders, a judge scores them, rounds of crossover and mutation follow, and the winner's
//! reasoning is distilled in the first person. One line per window goes to `DATA/supervision.jsonl`;
//! `sft` reads it ([`Searched`] implements the trainer's [`InstructionTeacher`]).
//!
//! - `backend.rs`: the teachers (a local GGUF on navigen's runtime, an OpenAI-compatible endpoint);
//! - `ask.rs`: the on-disk answer cache, validation, retries and counters;
//! - `search.rs`: the search for one window.
//!
//! Resuming: every teacher answer is cached as it arrives and every finished window is appended, so a
//! run killed at any point restarts where it was, and asks nothing twice.

pub mod ask;
pub mod backend;
pub mod search;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use navigen::prompt::teacher::{ItemText, TEACHER_PROMPT_VERSION};
use navigen::Catalog;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::sequences::{self, Example, TrainSequence};
use crate::tasks::{self, InstructionTeacher, ItemView, OfflineTeacher, Supervision};
use ask::Asker;
use backend::Teacher;
use search::SearchConfig;

/// The file `teach` writes and `sft` reads, in the data folder.
pub const SUPERVISION_FILE: &str = "supervision.jsonl";
/// The teacher's answer cache and the run report, in `DATA/teach/`.
pub const TEACH_DIR: &str = "teach";
pub const CACHE_FILE: &str = "answers.jsonl";
pub const REPORT_FILE: &str = "teach.json";

/// One searched window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Hash of (user, history, target): what `sft` looks the window up by.
    pub key: String,
    pub user: String,
    pub history: Vec<String>,
    pub target: String,
    pub target_tid: Vec<String>,
    pub teacher: String,
    pub judge: String,
    pub prompt_version: u32,
    /// Step-1 reasoning, every judged candidate, the winner.
    #[serde(flatten)]
    pub search: search::Searched,
    /// The winner's instruction (the cid2ins answer's `target_ins`).
    pub instruction: String,
}

pub fn window_key(ex: &Example) -> String {
    ask::sha256_hex(
        serde_json::json!([ex.user, ex.history, ex.target])
            .to_string()
            .as_bytes(),
    )
}

/// What `teach` is asked to do.
pub struct TeachOptions {
    pub data: PathBuf,
    /// cid2ins windows per user: the same as `sft --windows-per-user`.
    pub windows_per_user: usize,
    /// Users searched (0 = all): a seeded sample, stated in the report.
    pub users: usize,
    /// The seed `sft` draws its windows with (`sft --seed`).
    pub seed: u64,
    pub search: SearchConfig,
    pub progress: bool,
    /// Tests: stop and wait to be killed after this many teacher requests (0 = never).
    pub pause_after: u64,
}

/// The windows to search: [`tasks::instruction_windows`] of the sampled users.
pub fn windows(
    train: &[TrainSequence],
    max_history: usize,
    opts: &TeachOptions,
) -> (Vec<Example>, usize) {
    let mut users: Vec<&TrainSequence> = train.iter().collect();
    if opts.users > 0 && opts.users < users.len() {
        users.shuffle(
            &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(opts.seed ^ 0x7EAC),
        );
        users.truncate(opts.users);
        // File order again: the sample is a set, its order is the data's.
        let keep: HashSet<&str> = users.iter().map(|s| s.user.as_str()).collect();
        users = train
            .iter()
            .filter(|s| keep.contains(s.user.as_str()))
            .collect();
    }
    let n = users.len();
    let out = users
        .into_iter()
        .flat_map(|s| tasks::instruction_windows(s, max_history, opts.windows_per_user, opts.seed))
        .collect();
    (out, n)
}

/// The items as the teacher's prompts show them (title and TID terms), in order; unknown ids skipped.
pub fn item_texts(cat: &Catalog, ids: &[String]) -> Vec<ItemText> {
    ids.iter()
        .filter_map(|id| cat.find_id(id).and_then(|i| cat.item(i)))
        .map(|it| ItemText {
            title: it.title.to_string(),
            terms: it.tid_vec(),
        })
        .collect()
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut good = 0usize;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => {
                out.push(r);
                good += line.len();
            }
            Err(_) => break,
        }
    }
    if good < text.len() {
        // A torn or damaged tail (a kill mid-write): cut it; its window is searched again (from the
        // answer cache).
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(good as u64)?;
    }
    Ok(out)
}

/// Runs `teach`; returns the report (also written to `DATA/teach/teach.json`).
pub fn teach(
    opts: &TeachOptions,
    teacher: &dyn Teacher,
    judge: Option<&dyn Teacher>,
) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let cat = Catalog::open(&opts.data.join(navigen::format::catalog::FILE_NAME))?;
    let train: Vec<TrainSequence> = sequences::read_jsonl(&opts.data.join(sequences::TRAIN_FILE))?;
    let max_history = crate::prepare::max_history(&opts.data)?;
    let (all, users) = windows(&train, max_history, opts);
    let dir = opts.data.join(TEACH_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut ask = Asker::open(teacher, &dir.join(CACHE_FILE))?;
    ask.pause_after = opts.pause_after;
    let judge_ask = match judge {
        Some(j) => {
            let mut a = Asker::open(j, &dir.join(format!("judge-{CACHE_FILE}")))?;
            a.pause_after = opts.pause_after;
            Some(a)
        }
        None => None,
    };
    let judge_by = judge_ask.as_ref().unwrap_or(&ask);
    let out_path = opts.data.join(SUPERVISION_FILE);
    let done: HashMap<String, Record> = read_records(&out_path)?
        .into_iter()
        .filter(|r| r.teacher == ask.identity() && r.prompt_version == TEACHER_PROMPT_VERSION)
        .map(|r| (r.key.clone(), r))
        .collect();
    let todo: Vec<&Example> = all
        .iter()
        .filter(|e| !done.contains_key(&window_key(e)))
        .collect();
    let bar = crate::progress::bar(all.len() as u64, "teach");
    if !opts.progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_position((all.len() - todo.len()) as u64);
    // Records of another teacher or prompt version are dropped; the file is rewritten in order at
    // the end, so start from what is kept.
    {
        let mut f = std::fs::File::create(out_path.with_extension("jsonl.part"))?;
        for e in &all {
            if let Some(r) = done.get(&window_key(e)) {
                serde_json::to_writer(&mut f, r)?;
                f.write_all(b"\n")?;
            }
        }
        f.sync_all()?;
        std::fs::rename(out_path.with_extension("jsonl.part"), &out_path)?;
    }
    let out = Mutex::new(std::fs::OpenOptions::new().append(true).open(&out_path)?);
    let next = AtomicUsize::new(0);
    let fresh: Mutex<Vec<Record>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let offline = OfflineTeacher;
    std::thread::scope(|s| {
        for _ in 0..teacher.concurrency().max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(ex) = todo.get(i) else { break };
                if failed.lock().unwrap().is_some() {
                    break;
                }
                let r = (|| -> Result<Record> {
                    let target = cat
                        .find_id(&ex.target)
                        .and_then(|i| cat.item(i))
                        .with_context(|| format!("target {} is not in the catalog", ex.target))?;
                    let target_tid = target.tid_vec();
                    let history = item_texts(&cat, &ex.history);
                    let views: Vec<ItemView> = history
                        .iter()
                        .map(|h| ItemView {
                            title: h.title.clone(),
                            tid: h.terms.clone(),
                        })
                        .collect();
                    let fb = offline.supervise(&views, &ItemView::from(target));
                    let key = window_key(ex);
                    let seed = u64::from_str_radix(&key[..16], 16).unwrap_or(0);
                    let found = search::search(
                        &ask,
                        judge_by,
                        &history,
                        &target_tid,
                        (&fb.reasoning, &fb.instruction),
                        &opts.search,
                        seed,
                    );
                    Ok(Record {
                        key,
                        user: ex.user.clone(),
                        history: ex.history.clone(),
                        target: ex.target.clone(),
                        target_tid,
                        teacher: ask.identity().to_string(),
                        judge: judge_by.identity().to_string(),
                        prompt_version: TEACHER_PROMPT_VERSION,
                        instruction: found.candidates[found.winner].prompt.clone(),
                        search: found,
                    })
                })();
                match r {
                    Ok(rec) => {
                        let mut line = serde_json::to_vec(&rec).expect("records serialise");
                        line.push(b'\n');
                        let mut f = out.lock().unwrap();
                        if let Err(e) = f.write_all(&line).and_then(|_| f.sync_data()) {
                            *failed.lock().unwrap() = Some(e.into());
                            break;
                        }
                        fresh.lock().unwrap().push(rec);
                        bar.inc(1);
                    }
                    Err(e) => {
                        *failed.lock().unwrap() = Some(e);
                        break;
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    // In window order, so that the file is the same however many workers wrote it.
    let mut by_key: HashMap<String, Record> = done;
    for r in fresh.into_inner().unwrap() {
        by_key.insert(r.key.clone(), r);
    }
    let records: Vec<&Record> = all
        .iter()
        .filter_map(|e| by_key.get(&window_key(e)))
        .collect();
    {
        let part = out_path.with_extension("jsonl.part");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&part)?);
        for r in &records {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(&part, &out_path)?;
    }
    let report = report(
        &records,
        &ask,
        judge_ask.as_ref(),
        opts,
        users,
        all.len(),
        todo.len(),
        t0,
    );
    navigen::format::write_atomic(&dir.join(REPORT_FILE), &serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn report(
    records: &[&Record],
    ask: &Asker<'_>,
    judge: Option<&Asker<'_>>,
    opts: &TeachOptions,
    users: usize,
    windows: usize,
    searched_now: usize,
    t0: Instant,
) -> serde_json::Value {
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    // Does the search help: the winner against the best founder, both as the judge scored them.
    let winners: Vec<f64> = records
        .iter()
        .map(|r| r.search.candidates[r.search.winner].overall)
        .collect();
    let best_founders: Vec<f64> = records
        .iter()
        .map(|r| {
            r.search
                .candidates
                .iter()
                .filter(|c| c.round == 0 && c.scores.is_some())
                .map(|c| c.overall)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .filter(|v| v.is_finite())
        .collect();
    let mut fallbacks: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        for f in &r.search.fallbacks {
            *fallbacks.entry(f.clone()).or_default() += 1;
        }
    }
    let won_by: BTreeMap<String, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.search.candidates[r.search.winner].origin.clone())
            .or_default() += 1;
        m
    });
    // How often each role writes an image prompt at all (not a task echo or a list of terms):
    // the share of its candidates that `describes_a_scene`, and the winners'.
    let mut scenes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in records {
        for c in &r.search.candidates {
            let e = scenes.entry(c.origin.clone()).or_default();
            e.0 += search::describes_a_scene(&c.prompt) as usize;
            e.1 += 1;
        }
    }
    let scene_share: BTreeMap<String, f64> = scenes
        .into_iter()
        .map(|(k, (a, n))| (k, a as f64 / n.max(1) as f64))
        .collect();
    let winner_scene_share = mean(
        &records
            .iter()
            .map(|r| search::describes_a_scene(&r.instruction) as u8 as f64)
            .collect::<Vec<_>>(),
    );
    serde_json::json!({
        "scene_share_by_origin": scene_share,
        "winner_scene_share": winner_scene_share,
        "teacher": ask.identity(),
        "judge": judge.map_or(ask.identity(), |j| j.identity()),
        "prompt_version": TEACHER_PROMPT_VERSION,
        "users": users,
        "users_asked": opts.users,
        "windows_per_user": opts.windows_per_user,
        "windows": windows,
        "records": records.len(),
        "searched_this_run": searched_now,
        "search": opts.search,
        "teacher_counts": ask.counts(),
        "judge_counts": judge.map(|j| j.counts()),
        "fallbacks_by_step": fallbacks,
        "winner_origin": won_by,
        "mean_winner_overall": mean(&winners),
        "mean_best_founder_overall": mean(&best_founders),
        "leak_rate_of_winners": mean(&records.iter().map(|r| r.search.candidates[r.search.winner].leak as u8 as f64).collect::<Vec<_>>()),
        "seconds": t0.elapsed().as_secs_f64(),
    })
}

/// Searched supervision as `sft` reads it: windows found in `supervision.jsonl` get the winner and
/// the distilled reasoning; windows outside the searched sample get no cid2ins example.
pub struct Searched {
    by_key: HashMap<String, Supervision>,
    name: String,
}

impl Searched {
    pub fn open(data: &Path) -> Result<Self> {
        let path = data.join(SUPERVISION_FILE);
        let records = read_records(&path)?;
        anyhow::ensure!(
            !records.is_empty(),
            "{} has no records: run `navigen-train teach` first",
            path.display()
        );
        let name = format!("searched:{}", records[0].teacher);
        let by_key = records
            .into_iter()
            .map(|r| {
                (
                    r.key,
                    Supervision {
                        reasoning: r.search.distilled,
                        target_tid: r.target_tid,
                        instruction: r.instruction,
                    },
                )
            })
            .collect();
        Ok(Searched { by_key, name })
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl InstructionTeacher for Searched {
    fn name(&self) -> &str {
        &self.name
    }
    fn supervise(&self, history: &[ItemView], target: &ItemView) -> Supervision {
        // Not a searched window (validation, item tasks' reasoning): the offline template.
        OfflineTeacher.supervise(history, target)
    }
    fn for_window(
        &self,
        ex: &Example,
        history: &[ItemView],
        target: &ItemView,
    ) -> Option<Supervision> {
        let _ = (history, target);
        self.by_key.get(&window_key(ex)).cloned()
    }
}
