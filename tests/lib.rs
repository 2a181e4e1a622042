//! Shared helpers of the cross-crate tests: a real bundle made by the trainer in the test run.

use std::path::{Path, PathBuf};

use navigen_train::export::{export, zero_shot_bundle, ExportOptions};
use navigen_train::gguf::ExportDtype;
use navigen_train::model::preset::Preset;
use navigen_train::prepare::{prepare, PrepareOptions};
use navigen_train::sft::{self, SftOptions};

pub struct Fixture {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub bundle: PathBuf,
}

/// Prepares ml-100k, trains the tiny preset a little through both stages and exports the bundle.
pub fn trained_bundle(steps: usize) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("navigen-e2e-")
        .tempdir()
        .unwrap()
        .keep();
    let data = dir.join("data");
    prepare(&PrepareOptions::new("ml-100k".parse().unwrap(), &data)).unwrap();
    let run = dir.join("run");
    for stage in [1u8, 2] {
        let mut o = SftOptions::new(&data, &run, Some(Preset::Tiny), stage);
        o.max_steps = Some(steps);
        o.eval_every = steps;
        o.save_every = steps;
        o.progress = false;
        sft::run_stage(&o).unwrap();
    }
    let bundle = dir.join("bundle");
    export(&ExportOptions {
        run,
        out: bundle.clone(),
        dtype: ExportDtype::F32,
        verify_prompts: 0,
        verify_tokens: 0,
    })
    .unwrap();
    Fixture { dir, data, bundle }
}

/// A zero-shot bundle (SmolLM2-135M-Instruct) over the fixture's catalog.
pub fn zero_shot(f: &Fixture) -> PathBuf {
    zero_shot_bundle(None, &f.data, &f.dir.join("zero-shot")).unwrap()
}

/// The histories of the first `n` test users.
pub fn test_histories(data: &Path, n: usize) -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(data.join("test.jsonl")).unwrap();
    text.lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
                v["target"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
