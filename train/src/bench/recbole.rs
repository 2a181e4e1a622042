//! RecBole as the reference recommender: navigen's own split written as RecBole atomic files, a pinned
//! virtual environment under the cache, and `train/bench/recbole/run.py` trained and evaluated on them.
//!
//! Timestamps are written as each user's ranks (0, 1, 2, ... in navigen's order, ties already broken
//! by file order), so RecBole's float32 timestamps and its sort cannot reorder anything: its
//! leave-one-out validation and test items are navigen's, which [`check_test_items`] verifies.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::data::sequences::{self, Example, TrainSequence};

pub const REQUIREMENTS: &str = include_str!("../../bench/recbole/requirements.txt");
pub const RUN_PY: &str = include_str!("../../bench/recbole/run.py");

/// Writes `DIR/NAME/NAME.inter` from a prepared data folder: every user's training items, then the
/// validation and the test target. Returns the number of users written.
pub fn write_atomic(data: &Path, dir: &Path, name: &str) -> Result<usize> {
    let train: Vec<TrainSequence> = sequences::read_jsonl(&data.join(sequences::TRAIN_FILE))?;
    let valid: HashMap<String, Example> =
        sequences::read_jsonl::<Example>(&data.join(sequences::VALID_FILE))?
            .into_iter()
            .map(|e| (e.user.clone(), e))
            .collect();
    let test: HashMap<String, Example> =
        sequences::read_jsonl::<Example>(&data.join(sequences::TEST_FILE))?
            .into_iter()
            .map(|e| (e.user.clone(), e))
            .collect();
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder)?;
    let path = folder.join(format!("{name}.inter"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(out, "user_id:token\titem_id:token\ttimestamp:float")?;
    // RecBole tokens are whitespace-free fields; ids with a tab or newline would break the file.
    let token = |s: &str| -> Result<String> {
        if s.contains(['\t', '\n', '\r']) {
            bail!("id {s:?} has a tab or newline: RecBole atomic files cannot hold it");
        }
        Ok(s.to_string())
    };
    let mut users = 0;
    for t in &train {
        let (Some(v), Some(te)) = (valid.get(&t.user), test.get(&t.user)) else {
            bail!("user {} has no validation or test item", t.user);
        };
        let items = t.items.iter().chain([&v.target, &te.target]);
        for (rank, item) in items.enumerate() {
            writeln!(out, "{}\t{}\t{rank}", token(&t.user)?, token(item)?)?;
        }
        users += 1;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(users)
}

/// The venv for [`REQUIREMENTS`] under the cache (one per requirements text), created on first use.
pub fn venv() -> Result<PathBuf> {
    let hash = hex(&Sha256::digest(REQUIREMENTS.as_bytes()))[..12].to_string();
    let dir = crate::assets::cache_dir()
        .join("recbole")
        .join(format!("venv-{hash}"));
    let python = dir.join("bin").join("python");
    if dir.join(".complete").exists() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().expect("has a parent"))?;
    eprintln!(
        "navigen-train: creating the RecBole environment {} (torch from PyPI, ~3 GB; once)",
        dir.display()
    );
    let host = std::env::var("NAVIGEN_PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&host).args(["-m", "venv"]).arg(&dir))?;
    let req = dir.join("requirements.txt");
    std::fs::write(&req, REQUIREMENTS)?;
    // The file is the whole pinned closure; see its header for why resolution is off.
    run(Command::new(dir.join("bin").join("pip"))
        .args(["install", "--no-deps", "--disable-pip-version-check", "-r"])
        .arg(&req))?;
    std::fs::write(dir.join(".complete"), b"")?;
    Ok(python)
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Options of a RecBole run.
pub struct RecboleOptions {
    pub models: Vec<String>,
    pub epochs: usize,
    pub threads: usize,
    pub seed: u64,
    pub max_seq_len: usize,
    /// Training batch (None: RecBole's 2048).
    pub train_batch_size: Option<usize>,
    /// Stop fitting after the first epoch that ends past this many seconds (the best checkpoint so
    /// far is tested); the result records `stopped_by` and the validation curve.
    pub time_cap_s: Option<u64>,
    /// Reuse `out` when it was made from the same atomic file, options, script and environment.
    pub reuse: bool,
    /// Where run.py's progress goes (None: this process's stderr).
    pub log: Option<PathBuf>,
}

/// A RecBole run that was started ([`start`]) and is collected with [`Pending::wait`].
pub enum Pending {
    Reused(serde_json::Value),
    Running {
        child: std::process::Child,
        out: PathBuf,
        key_file: PathBuf,
        key: String,
        log: Option<PathBuf>,
    },
}

impl Pending {
    /// Waits for the run and returns run.py's JSON (`reused: true` for a reused result).
    pub fn wait(self) -> Result<serde_json::Value> {
        match self {
            Pending::Reused(v) => Ok(v),
            Pending::Running {
                mut child,
                out,
                key_file,
                key,
                log,
            } => {
                let st = child.wait().context("waiting for RecBole")?;
                if !st.success() {
                    let tail = log
                        .as_ref()
                        .and_then(|l| std::fs::read_to_string(l).ok())
                        .map(|t| {
                            let lines: Vec<&str> = t.lines().collect();
                            lines[lines.len().saturating_sub(20)..].join("\n")
                        })
                        .unwrap_or_default();
                    bail!("RecBole's run.py failed with {st}\n{tail}");
                }
                let v = serde_json::from_slice(&std::fs::read(&out)?)?;
                std::fs::write(&key_file, key)?;
                Ok(v)
            }
        }
    }
}

/// Trains and evaluates the models on `DIR/NAME`: starts run.py on `DIR/NAME` in a child process (or finds a reusable result) and returns at once,
/// so navigen can train beside it.
pub fn start(dir: &Path, name: &str, out: &Path, o: &RecboleOptions) -> Result<Pending> {
    let python = venv()?;
    // What determines the result: the data, the options (threads only change speed), the script
    // and the pinned environment.
    let inter = dir.join(name).join(format!("{name}.inter"));
    let mut h = Sha256::new();
    h.update(std::fs::read(&inter).with_context(|| format!("reading {}", inter.display()))?);
    h.update(RUN_PY.as_bytes());
    h.update(REQUIREMENTS.as_bytes());
    h.update(
        format!(
            "{:?} {} {} {} {:?}{}",
            o.models,
            o.epochs,
            o.seed,
            o.max_seq_len,
            o.train_batch_size,
            // Absent from keys made before the cap existed, so those results stay reusable.
            o.time_cap_s
                .map(|s| format!(" cap {s}"))
                .unwrap_or_default()
        )
        .as_bytes(),
    );
    let key = hex(&h.finalize());
    let key_file = out.with_extension("key");
    if o.reuse && out.exists() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        eprintln!(
            "navigen-train: reusing RecBole's result {} (same data, options and script; --rerun-recbole retrains)",
            out.display()
        );
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(out)?)?;
        v["reused"] = true.into();
        return Ok(Pending::Reused(v));
    }
    let _ = std::fs::remove_file(&key_file);
    let script = out.with_file_name("recbole_run.py");
    std::fs::write(&script, RUN_PY)?;
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--atomic-dir")
        .arg(dir)
        .args(["--dataset", name, "--models", &o.models.join(",")])
        .arg("--out")
        .arg(out)
        .args(["--epochs", &o.epochs.to_string()])
        .args(["--threads", &o.threads.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .args(["--max-seq-len", &o.max_seq_len.to_string()]);
    if let Some(b) = o.train_batch_size {
        cmd.args(["--train-batch-size", &b.to_string()]);
    }
    if let Some(s) = o.time_cap_s {
        cmd.args(["--time-cap-s", &s.to_string()]);
    }
    if let Some(l) = &o.log {
        let f = std::fs::File::create(l).with_context(|| format!("creating {}", l.display()))?;
        cmd.stdout(f.try_clone()?).stderr(f);
    }
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    Ok(Pending::Running {
        child,
        out: out.to_path_buf(),
        key_file,
        key,
        log: o.log.clone(),
    })
}

/// RecBole's test item of every user (`OUT.test_items.tsv`) against navigen's test split; returns
/// the number of users compared and fails on the first difference.
pub fn check_test_items(tsv: &Path, data: &Path) -> Result<usize> {
    let test: HashMap<String, String> =
        sequences::read_jsonl::<Example>(&data.join(sequences::TEST_FILE))?
            .into_iter()
            .map(|e| (e.user, e.target))
            .collect();
    let text =
        std::fs::read_to_string(tsv).with_context(|| format!("reading {}", tsv.display()))?;
    let mut n = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (u, i) = line.split_once('\t').context("user<TAB>item")?;
        match test.get(u) {
            Some(t) if t == i => n += 1,
            Some(t) => bail!("user {u}: RecBole's test item is {i}, navigen's {t}"),
            None => bail!("user {u} is in RecBole's test split but not navigen's"),
        }
    }
    if n != test.len() {
        bail!("RecBole tested {n} users, navigen {}", test.len());
    }
    Ok(n)
}
