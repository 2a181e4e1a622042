#!/usr/bin/env python3
"""Shows that each hardening test (issue 14) fails without its fix: undoes one fix at a time in the
working tree (a small source edit that restores the old behaviour), runs the test that covers it,
expects it to FAIL, and puts the file back. Prints one JSON line per defect and a summary; exits 1
if a test passed without its fix (a test that cannot fail) or an edit no longer applies (the fix
moved: update the edit here). docs/hardening.md records the last run.

    scripts/failing-before.py [--list | --check] [DEFECT...]   (defect numbers as in docs/hardening.md)

--check only says whether every undo still applies (run it after changing a fixed place).

Runs `cargo test` per defect (one build at a time; the engine-level ones train a small bundle).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

H = ["cargo", "test", "-p", "navigen", "--lib", "--", "--exact"]
FFI = ["cargo", "test", "-p", "navigen-ffi", "--lib", "--", "--exact"]
E = ["cargo", "test", "-p", "navigen-tests", "--test", "engine", "--", "--exact"]

# (defect, what it was, file, text of the fix, text restoring the old behaviour, test command + name)
UNDO = [
    (1, "a freed or stale handle was checked by reading its magic value from its memory",
     "sdk/ffi/src/handle.rs", """    let map = live();
    let Some(e) = map.get(&(p as usize)) else {""", """    // The old check: read the handle's magic value where the pointer points.
    let _magic = unsafe { std::ptr::read_volatile(p as *const u64) };
    let map = live();
    let Some(e) = map.get(&(p as usize)) else {""",
     FFI + ["handle::tests::stale_foreign_and_wrong_type_pointers_are_refused_without_reading_them"]),
    (3, "setting the error message could panic outside the boundary",
     "sdk/ffi/src/boundary.rs",
     """    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut m) = e.try_borrow_mut() {
            *m = c;
        }
    });""",
     "    LAST_ERROR.with(|e| *e.borrow_mut() = c);",
     FFI + ["boundary::tests::setting_the_message_while_it_is_borrowed_does_not_panic"]),
    (4, "engine parameters were not range-checked (threads as i32)",
     "sdk/src/engine/mod.rs", "        params.validate()?;\n", "",
     H + ["engine::tests::engine_params_out_of_range_are_refused"]),
    (5, "the header did not say the callback's text is valid only during the call",
     "sdk/ffi/src/engine.rs", "`piece` is valid only during the call: copy the bytes to keep them. ", "",
     ["cargo", "test", "-p", "navigen-ffi", "--test", "header", "--", "--exact", "header_states_borrowed_lifetimes"]),
    (6, "a far-future timestamp aged out every other event",
     "sdk/src/history.rs", "let cutoff = newest.min(now_ms()).saturating_sub(",
     "let cutoff = newest.saturating_sub(",
     H + ["history::tests::an_event_from_the_future_ages_out_nothing"]),
    (7, "a timestamp near i64::MIN overflowed the age limit",
     "sdk/src/history.rs", "let cutoff = newest.min(now_ms()).saturating_sub(self.params.max_age_ms);",
     "let cutoff = newest.min(now_ms()) - self.params.max_age_ms;",
     H + ["history::tests::an_event_at_i64_min_under_an_age_limit"]),
    (8, "an append whose record was written reported its compaction's failure",
     "sdk/src/history.rs",
     """            if self.rewrite(&path, &events, sealer.as_deref()).is_ok() {
                state.file_records = events.len();
            }""",
     """            self.rewrite(&path, &events, sealer.as_deref())?;
            state.file_records = events.len();""",
     H + ["history::tests::a_failed_compaction_does_not_fail_the_append"]),
    (9, "valid profile names could make file names over 255 bytes",
     "sdk/src/history.rs", "pub const MAX_PROFILE_BYTES: usize = 100;",
     "pub const MAX_PROFILE_BYTES: usize = 256;",
     H + ["history::tests::profile_names_fit_a_file_name"]),
    (10, "a damaged header locked a profile for good",
     "sdk/src/history.rs",
     """                    Err(_) => {
                        let mut fixed = header_for(s);""",
     """                    Err(e) => return Err(Error::format(&path, e)),
                    #[allow(unreachable_patterns)]
                    Err(_) => {
                        let mut fixed = header_for(s);""",
     H + ["history::tests::a_damaged_header_is_recovered"]),
    (11, "recovery renamed the log away before rewriting it",
     "sdk/src/history.rs",
     """        crate::format::write_atomic(&copy, bytes)?;
        self.rewrite(path, good, sealer)?;""",
     """        let _ = bytes;
        std::fs::rename(path, &copy).map_err(|e| Error::io(path, e))?;
        self.rewrite(path, good, sealer)?;""",
     H + ["history::tests::a_failed_recovery_keeps_the_log"]),
    (12, "at the cap every append rewrote and synced the whole log",
     "sdk/src/history.rs", "if state.file_records > state.events.len() + slack {",
     "if state.file_records > state.events.len() {",
     H + ["history::tests::compaction_at_the_cap_is_amortised"]),
    (13, "two handles could write one folder",
     "sdk/src/history.rs", "        match lock.try_lock() {", "        match Ok::<(), std::fs::TryLockError>(()) {",
     H + ["history::tests::one_handle_per_folder"]),
    (14, "log versions replaced by compaction or recovery were unlinked without zeroing",
     "sdk/src/history.rs", "            let _ = zero_file(&f);", "            let _ = &f;",
     H + ["history::tests::a_replaced_log_version_is_zeroed"]),
    (16, "k = 256 (as many beams) failed with a llama.cpp error",
     "sdk/src/engine/predict.rs", "let mut ctx = self.context(n_ctx, width as u32)?;",
     "let mut ctx = self.context(n_ctx, width as u32 + 1)?;",
     E + ["beam_width_is_independent_of_k_and_history_can_be_excluded"]),
    (17, "no test reached the catalog's checks behind its checksums",
     "sdk/src/format/catalog.rs", "if items[w[0] as usize].cid >= items[w[1] as usize].cid {",
     "if false {",
     H + ["format::catalog::tests::semantic_checks_behind_the_checksums"]),
    (19, "the eval test only checked that values lie in [0, 1] (here: every baseline rank lost)",
     "train/src/eval.rs", """            pop_hit,
        ));
        bar.inc(1);""", """            pop_hit,
        ).filter(|_| false));
        bar.inc(1);""",
     E + ["eval_through_the_runtime_writes_every_metric"]),
    (20, "the loss test could be met by the fixed JSON tokens alone (here: stage 2 trains on the frame only)",
     "train/src/tasks.rs", """                instruction_example(cat, &ex, teacher, &mut out);
            }
        }
    }
    out.shuffle(&mut rng);""", """                instruction_example(cat, &ex, teacher, &mut out);
                if let Some(last) = out.last_mut().filter(|e| e.task == Task::Cid2Ins) {
                    last.answer = prompt::answer_text(Some(""), &prompt::answer_json_ins::<&str>(&[], ""));
                }
            }
        }
    }
    out.shuffle(&mut rng);""",
     ["cargo", "test", "-p", "navigen-train", "--test", "sft_tiny", "--", "--exact",
      "stage_two_learns_the_instruction_content"]),
    (14.5, "forget could not reach blocks kept by copy-on-write or flash storage (now: the key is destroyed)",
     "sdk/src/history.rs", "            keys.destroy(profile)?;", "            let _ = keys;",
     H + ["history::tests::forget_destroys_the_key"]),
    (15, "a damaged model.gguf of the right size reached llama.cpp (NaN predictions)",
     "sdk/src/engine/mod.rs", "        crate::bundle::verify_files(dir, &files, params.verify_checksums)?;\n", "",
     E + ["broken_bundles_are_refused_with_clear_errors"]),
]


def run(defect, what, rel, fix, old, cmd):
    path = ROOT / rel
    original = path.read_text()
    if original.count(fix) != 1:
        return {"defect": defect, "result": "stale", "why": f"the fix's text is not once in {rel}"}
    start = time.time()
    try:
        path.write_text(original.replace(fix, old))
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, NAVIGEN_NO_PROGRESS="1"))
    finally:
        path.write_text(original)
    out = p.stdout + p.stderr
    name = cmd[-1]
    built = "error[E" not in out and "could not compile" not in out
    failed = p.returncode != 0 and built and (f"{name} ... FAILED" in out or "panicked" in out or "signal: " in out)
    line = next((l.strip() for l in out.splitlines()
                 if "panicked at" in l or "assertion" in l or "signal: " in l), "")
    return {"defect": defect, "what": what, "test": name,
            "result": "failed without the fix" if failed else
            ("did not build without the fix" if not built else "PASSED without the fix"),
            "seconds": round(time.time() - start), "first_failure_line": line[:200]}


def main():
    args = sys.argv[1:]
    if "--check" in args:
        # Whether every undo still applies (the fix's text once in its file), without running.
        stale = [d for d, _, rel, fix, *_ in UNDO if (ROOT / rel).read_text().count(fix) != 1]
        print(json.dumps({"stale": stale}))
        return 1 if stale else 0
    if "--list" in args:
        for d, what, rel, *_ , cmd in UNDO:
            print(f"{d:>4}  {what}  ({rel}; {cmd[-1]})")
        return 0
    chosen = {float(a) for a in args}
    bad = 0
    for case in UNDO:
        if chosen and case[0] not in chosen:
            continue
        r = run(*case)
        print(json.dumps(r), flush=True)
        bad += r["result"] != "failed without the fix"
    print(json.dumps({"summary": "every test failed without its fix" if bad == 0 else f"{bad} not shown"}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
