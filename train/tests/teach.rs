//! `teach` with the local teacher (SmolLM2-135M-Instruct on navigen's llama.cpp runtime) on real
//! MovieLens-100k: killed with SIGKILL part way, it resumes without asking the teacher anything twice,
//! writes a record for every window `sft` will ask for, and a third run asks nothing at all.
//!
//! The kill lands at a known point whatever the machine's speed: the child waits, after a fixed number
//! of answers, to be killed (`--pause-after`); a torn line (a kill inside a write) is appended by hand.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use navigen_train::data::sequences::{self, TrainSequence};
use navigen_train::prepare::{prepare, PrepareOptions};
use navigen_train::teach::{self, Record, TeachOptions};

fn keys(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["key"].as_str().unwrap().to_string()
        })
        .collect()
}

fn teach_cmd(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_navigen-train"));
    c.args(["teach", "--data"])
        .arg(data)
        .args([
            "--users",
            "2",
            "--windows-per-user",
            "1",
            "--population",
            "2",
            "--max-tokens",
            "48",
            "--threads",
            "2",
        ])
        .env("NAVIGEN_NO_PROGRESS", "1");
    c
}

fn report(data: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(data.join(teach::TEACH_DIR).join(teach::REPORT_FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn teach_resumes_after_kill_9_without_asking_twice() {
    let data = tempfile::Builder::new()
        .prefix("navigen-teach-")
        .tempdir()
        .unwrap()
        .keep();
    prepare(&PrepareOptions::new("ml-100k".parse().unwrap(), &data)).expect("prepare ml-100k");
    let answers = data.join(teach::TEACH_DIR).join(teach::CACHE_FILE);

    // 1. Killed after 5 answers.
    let mut child = teach_cmd(&data)
        .args(["--pause-after", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the child ended before pausing")
            .unwrap();
        if line.contains("paused after 5 requests") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = keys(&answers);
    assert_eq!(
        before.len(),
        5,
        "every answer given before the kill is kept"
    );
    // A kill inside a write leaves half a line: it must be cut, not break the cache.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&answers)
        .unwrap()
        .write_all(br#"{"key":"0123","role":"jud"#)
        .unwrap();

    // 2. Resumed to the end.
    let out = teach_cmd(&data).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = keys(&answers);
    let unique: HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "a question was asked twice");
    assert!(before.iter().all(|k| unique.contains(k)));
    let r = report(&data);
    let c = &r["teacher_counts"];
    assert_eq!(
        c["requests"].as_u64().unwrap() as usize,
        after.len() - before.len(),
        "every request of the resumed run is a new question"
    );
    assert!(c["cache_hits"].as_u64().unwrap() >= 5, "{r}");
    assert!(c["tokens_out"].as_u64().unwrap() > 0);

    // Every window `sft` asks for has its record: the same windows `tasks` draws.
    let train: Vec<TrainSequence> =
        sequences::read_jsonl(&data.join(sequences::TRAIN_FILE)).unwrap();
    let opts = TeachOptions {
        data: data.clone(),
        windows_per_user: 1,
        users: 2,
        seed: 42,
        search: Default::default(),
        progress: false,
        pause_after: 0,
    };
    let max_history = navigen_train::prepare::max_history(&data).unwrap();
    let (windows, users) = teach::windows(&train, max_history, &opts);
    assert_eq!((windows.len(), users), (2, 2));
    let text = std::fs::read_to_string(data.join(teach::SUPERVISION_FILE)).unwrap();
    let records: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        windows.iter().map(teach::window_key).collect::<Vec<_>>()
    );
    for rec in &records {
        assert!(rec.search.winner < rec.search.candidates.len());
        assert_eq!(
            rec.instruction,
            rec.search.candidates[rec.search.winner].prompt
        );
        assert!(!rec.instruction.trim().is_empty() && !rec.search.distilled.is_empty());
        assert!(
            rec.search.candidates.iter().any(|c| c.round == 0),
            "{rec:?}"
        );
    }
    // `sft` finds them.
    let searched = teach::Searched::open(&data).unwrap();
    assert_eq!(searched.len(), 2);
    // ... and trains stage 2's cid2ins on exactly those windows, with the winners and the distilled
    // reasoning (`sft --instructions auto`, the default, picks the file up).
    let cat = navigen::Catalog::open(&data.join(navigen::format::catalog::FILE_NAME)).unwrap();
    let mix = navigen_train::tasks::MixOptions {
        stage: 2,
        max_history,
        windows_per_user: 1,
        item_tasks: true,
        seed: 42,
    };
    let cid2ins = |choice| {
        let t = navigen_train::sft::instruction_teacher(&data, choice).unwrap();
        navigen_train::tasks::training_examples(&cat, &train, &mix, t.as_ref())
            .into_iter()
            .filter(|e| e.task == navigen::prompt::Task::Cid2Ins)
            .collect::<Vec<_>>()
    };
    let from_search = cid2ins(navigen_train::sft::Instructions::Auto);
    assert_eq!(from_search.len(), records.len());
    for rec in &records {
        let ins = serde_json::to_string(&rec.instruction).unwrap();
        assert!(
            from_search.iter().any(
                |e| e.answer.contains(&ins) && e.answer.contains(rec.search.distilled.as_str())
            ),
            "no cid2ins example carries {ins}"
        );
    }
    // The template stays an explicit choice: every user's window, none of the searched text.
    let template = cid2ins(navigen_train::sft::Instructions::Template);
    assert_eq!(template.len(), train.len());
    assert!(!template
        .iter()
        .any(|e| records.iter().any(|r| e.answer.contains(&r.instruction))));

    // 3. Nothing left to ask.
    let out = teach_cmd(&data).output().unwrap();
    assert!(out.status.success());
    let r = report(&data);
    assert_eq!(r["teacher_counts"]["requests"], 0, "{r}");
    assert_eq!(r["searched_this_run"], 0);
    assert_eq!(keys(&answers).len(), after.len());
    // How often each role wrote a scene at all, a share per origin.
    let shares = r["scene_share_by_origin"]
        .as_object()
        .expect("scene shares");
    assert!(shares.contains_key("balanced"), "{r}");
    assert!(shares
        .values()
        .all(|v| v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))));
    assert!(r["winner_scene_share"].as_f64().is_some());
}
