//! The smollm2-135m preset on CPU: imports the real SmolLM2-135M-Instruct GGUF (Q4_1, dequantised),
//! expands the vocabulary, trains a few stage-1 steps and exports a bundle that llama.cpp loads.

use navigen_train::export::{export, ExportOptions};
use navigen_train::gguf::ExportDtype;
use navigen_train::model::preset::Preset;
use navigen_train::prepare::{prepare, PrepareOptions};
use navigen_train::run::RunInfo;
use navigen_train::sft::{self, SftOptions};

#[test]
fn smollm2_starts_trains_and_exports() {
    let data = tempfile::tempdir().unwrap();
    prepare(&PrepareOptions::new(
        "ml-100k".parse().unwrap(),
        data.path(),
    ))
    .unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut o = SftOptions::new(data.path(), run.path(), Some(Preset::Smollm2_135m), 1);
    o.max_steps = Some(3);
    o.max_len = 256;
    o.batch_rows = 2;
    o.windows_per_user = 1;
    o.val_users = 4;
    o.eval_every = 3;
    o.progress = false;
    let s = sft::run_stage(&o).unwrap();
    assert_eq!(s.steps, 3);
    assert!(s.last_loss.is_finite());
    // Tied embeddings: stage 1 trains only the new rows (which are also the head's rows).
    let info = RunInfo::read(run.path()).unwrap();
    assert_eq!(info.first_new_row, 49152);
    assert!(s.trainable_params < s.total_params / 10);
    let out = tempfile::tempdir().unwrap();
    let rep = export(&ExportOptions {
        run: run.path().to_path_buf(),
        out: out.path().to_path_buf(),
        dtype: ExportDtype::F16,
        verify_prompts: 2,
        verify_tokens: 8,
    })
    .unwrap();
    for c in &rep.checks {
        assert!(
            c.same_tokenization,
            "{}: llama.cpp tokenises differently",
            c.task
        );
        assert!(!c.llama.is_empty());
    }
}
