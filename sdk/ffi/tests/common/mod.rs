//! Shared by the tests that run programs in other languages over the C library: the library
//! folder (built once per test binary) and a real bundle trained and exported in the test run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use navigen_train::export::{export, ExportOptions};
use navigen_train::gguf::ExportDtype;
use navigen_train::model::preset::Preset;
use navigen_train::prepare::{prepare, PrepareOptions};
use navigen_train::sft::{self, SftOptions};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// target/<profile>, where libnavigen.a and libnavigen.so are. `cargo test` does not (re)build a
/// staticlib/cdylib for integration tests, so the test builds them itself (once per run). It builds
/// the whole workspace with all targets: that is the dependency graph `cargo test --workspace`
/// resolved, so llama.cpp is reused; `-p navigen-ffi` alone resolves build-dependency features
/// differently and compiled llama.cpp a second time (minutes on a 2-core CI machine).
pub fn lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let target = dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--workspace", "--all-targets"])
                .arg("--target-dir")
                .arg(target)
                .current_dir(root());
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let o = cmd
                .output()
                .expect("running cargo build for the C libraries");
            assert!(
                o.status.success(),
                "building navigen-ffi: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            dir
        })
        .clone()
}

pub fn bundle(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    prepare(&PrepareOptions::new("ml-100k".parse().unwrap(), &data)).unwrap();
    let run = dir.join("run");
    let mut o = SftOptions::new(&data, &run, Some(Preset::Tiny), 1);
    o.max_steps = Some(8);
    o.eval_every = 8;
    o.progress = false;
    sft::run_stage(&o).unwrap();
    let out = dir.join("bundle");
    export(&ExportOptions {
        run,
        out: out.clone(),
        dtype: ExportDtype::F16,
        verify_prompts: 0,
        verify_tokens: 0,
    })
    .unwrap();
    out
}

/// The history of the first held-out test user of the bundle's data (`bundle(dir)` wrote it).
pub fn test_history(dir: &Path) -> Vec<String> {
    let test = std::fs::read_to_string(dir.join("data/test.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(test.lines().next().unwrap()).unwrap();
    row["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Fails the test with the program's output unless it succeeded.
#[allow(dead_code)] // c_abi.rs checks its programs its own way
pub fn check(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
