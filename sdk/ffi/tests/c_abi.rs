//! C programs (the demo examples/c/navigen_demo.c and the tests in sdk/ffi/tests/c/), built against
//! include/navigen.h and linked with the static and the shared library, run on a bundle that the
//! trainer exports in this test run.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bundle, lib_dir, root, test_history};

/// Compiles `src` (a path from the repository root).
fn compile(src: &str, out: &Path, shared: bool) {
    compile_with(src, out, shared, &[]);
}

/// The C side under AddressSanitizer (leaks included) and UndefinedBehaviorSanitizer; a report
/// fails the run (`halt_on_error`). The Rust and llama.cpp side is not instrumented, but every
/// allocation the C program touches through the ABI (strings it frees, handles) is checked.
const SANITIZE: &[&str] = &[
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
    "-g",
];

fn run_sanitized(exe: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(exe)
        .args(args)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:halt_on_error=1:abort_on_error=0",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .unwrap()
}

fn compile_with(src: &str, out: &Path, shared: bool, extra: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new("gcc");
    cmd.args(extra);
    cmd.args([
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-pedantic-errors",
        "-Werror",
        "-O1",
    ])
    .arg("-I")
    .arg(root().join("include"))
    .arg(root().join(src))
    .arg("-o")
    .arg(out);
    if shared {
        cmd.arg(format!("-L{}", lib.display()))
            .arg("-lnavigen")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    } else {
        // llama.cpp inside the static library is C++ with OpenMP (the default `openmp` feature): the C
        // program links the C++ and OpenMP runtimes.
        cmd.arg(lib.join("libnavigen.a"))
            .args(["-lstdc++", "-lgomp", "-lm", "-lpthread", "-ldl"]);
    }
    let o = cmd.output().expect("gcc is needed for this test");
    assert!(
        o.status.success(),
        "compiling {src} ({}): {}",
        if shared { "shared" } else { "static" },
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds the C test program `src` against the static library, runs it with `args`, requires
/// success, and returns its stdout.
fn run_c(src: &str, dir: &Path, args: &[&std::ffi::OsStr]) -> String {
    let exe = dir.join(Path::new(src).file_stem().unwrap());
    compile_with(src, &exe, false, &["-pthread"]);
    let out = Command::new(&exe).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{src}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The bundle, a history folder and the held-out history as a C program's arguments.
fn c_args<'a>(b: &'a Path, history: &'a Path, items: &'a [String]) -> Vec<&'a std::ffi::OsStr> {
    [b.as_os_str(), history.as_os_str()]
        .into_iter()
        .chain(items.iter().map(|s| std::ffi::OsStr::new(s.as_str())))
        .collect()
}

#[test]
fn c_programs_predict_and_instruct_through_the_c_abi() {
    assert!(
        lib_dir().join("libnavigen.a").exists(),
        "cargo did not build libnavigen.a in {}",
        lib_dir().display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    // A real held-out history from the test split.
    let items = test_history(tmp.path());
    for shared in [false, true] {
        let exe = tmp
            .path()
            .join(if shared { "demo_shared" } else { "demo_static" });
        compile("examples/c/navigen_demo.c", &exe, shared);
        let out = Command::new(&exe).arg(&b).args(&items).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed: {stdout}\n{}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let preds = stdout
            .lines()
            .find_map(|l| l.strip_prefix("predictions: "))
            .expect("predictions line");
        let preds: serde_json::Value = serde_json::from_str(preds).unwrap();
        assert_eq!(preds.as_array().unwrap().len(), 5);
        let cat = navigen::Catalog::open(&b.join("catalog.nvct")).unwrap();
        for p in preds.as_array().unwrap() {
            assert!(
                cat.find_id(p["id"].as_str().unwrap()).is_some(),
                "predicted an item outside the catalog: {p}"
            );
        }
        let ins = stdout
            .lines()
            .find_map(|l| l.strip_prefix("instruction: "))
            .expect("instruction line");
        let ins: serde_json::Value = serde_json::from_str(ins).unwrap();
        assert!(ins["raw"].as_str().unwrap().starts_with("<think>"));
        let reg = stdout
            .lines()
            .find_map(|l| l.strip_prefix("registered: "))
            .expect("registered line");
        let reg: serde_json::Value = serde_json::from_str(reg).unwrap();
        let cid = navigen::Cid::parse(reg["cid"].as_str().unwrap()).expect("a CID");
        assert_eq!(cid.levels(), cat.levels());
        assert_eq!(reg["taken_by"].is_null(), cat.find_cid(&cid).is_none());
    }
}

#[test]
fn null_and_garbage_arguments_never_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let exe = tmp.path().join("null_args");
    compile("sdk/ffi/tests/c/null_args.c", &exe, false);
    let out = Command::new(&exe)
        .arg(&b)
        .arg(tmp.path().join("history"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Both C programs again under ASan + UBSan: garbage arguments, then predict, instruct (streamed)
    // and register on the real bundle.
    let items = test_history(tmp.path());
    for (src, name) in [
        ("sdk/ffi/tests/c/null_args.c", "null_args_asan"),
        ("examples/c/navigen_demo.c", "demo_asan"),
    ] {
        let exe = tmp.path().join(name);
        compile_with(src, &exe, false, SANITIZE);
        let hist = tmp.path().join("history-asan");
        let args: Vec<&std::ffi::OsStr> = if name == "demo_asan" {
            std::iter::once(b.as_os_str())
                .chain(items.iter().map(|s| std::ffi::OsStr::new(s.as_str())))
                .collect()
        } else {
            vec![b.as_os_str(), hist.as_os_str()]
        };
        let out = run_sanitized(&exe, &args);
        assert!(
            out.status.success(),
            "{name} under ASan/UBSan: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn eight_threads_share_an_engine_while_a_history_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let items = test_history(tmp.path());
    let hist = tmp.path().join("history");
    let stdout = run_c(
        "sdk/ffi/tests/c/threads.c",
        tmp.path(),
        &c_args(&b, &hist, &items),
    );
    assert_eq!(stdout.matches(" failed 0").count(), 8, "{stdout}");
}

/// Resident set (KiB) and open descriptors per cycle of `soak.c`.
fn soak_samples(stdout: &str) -> Vec<(i64, i64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 6 && w[0] == "cycle")
                .then(|| (w[3].parse().unwrap(), w[5].parse().unwrap()))
        })
        .collect()
}

#[test]
fn soak_open_predict_instruct_cancel_free_keeps_memory_and_descriptors_flat() {
    const CYCLES: usize = 60;
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let items = test_history(tmp.path());
    let hist = tmp.path().join("history");
    let cycles = CYCLES.to_string();
    let mut args = c_args(&b, &hist, &items);
    args.insert(2, std::ffi::OsStr::new(&cycles));
    let stdout = run_c("sdk/ffi/tests/c/soak.c", tmp.path(), &args);
    let s = soak_samples(&stdout);
    assert_eq!(s.len(), CYCLES, "{stdout}");
    // The first cycles warm up the allocator's arenas and llama.cpp's one-time state; from then on
    // a cycle frees what it took: descriptors exactly, the resident set (sampled after malloc_trim)
    // within allocator noise. The resident set compares the medians of the two halves of the warm
    // cycles, 20 cycles apart, so one sample caught high or low decides nothing: a leak of one
    // engine (tens of MiB with the model's buffers) or of 64 KiB per cycle fails.
    let warm = &s[CYCLES / 3..];
    let (first, last) = (warm[0], warm[warm.len() - 1]);
    assert_eq!(first.1, last.1, "open descriptors grew: {stdout}");
    let max_fd = warm.iter().map(|x| x.1).max().unwrap();
    assert_eq!(
        max_fd, first.1,
        "descriptors left open by a cycle: {stdout}"
    );
    let median = |xs: &[(i64, i64)]| {
        let mut v: Vec<i64> = xs.iter().map(|x| x.0).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (early, late) = warm.split_at(warm.len() / 2);
    let (m_early, m_late) = (median(early), median(late));
    let growth_kib = m_late - m_early;
    println!(
        "soak: cycles {}..{}: median rss {} -> {} KiB (min {}, max {}), fds {}",
        CYCLES / 3,
        CYCLES - 1,
        m_early,
        m_late,
        warm.iter().map(|x| x.0).min().unwrap(),
        warm.iter().map(|x| x.0).max().unwrap(),
        last.1
    );
    assert!(
        growth_kib < 1024,
        "resident set grew {growth_kib} KiB between the halves of the warm cycles: {stdout}"
    );
}

#[test]
fn an_encrypted_history_from_c_with_the_apps_key_store() {
    let tmp = tempfile::tempdir().unwrap();
    // Plainly and under ASan/UBSan: the key store's callbacks write into navigen's buffers.
    for (name, flags) in [
        ("encrypted_history", &[][..]),
        ("encrypted_history_asan", SANITIZE),
    ] {
        let exe = tmp.path().join(name);
        compile_with("sdk/ffi/tests/c/encrypted_history.c", &exe, false, flags);
        let dir = tmp.path().join(format!("history-{name}"));
        let out = run_sanitized(&exe, &[dir.as_os_str()]);
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn predict_and_instruct_straight_from_a_stored_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let items = test_history(tmp.path());
    let hist = tmp.path().join("history");
    let stdout = run_c(
        "sdk/ffi/tests/c/for_profile.c",
        tmp.path(),
        &c_args(&b, &hist, &items),
    );
    let preds = stdout
        .lines()
        .find_map(|l| l.strip_prefix("predictions: "))
        .expect("predictions line");
    let preds: serde_json::Value = serde_json::from_str(preds).unwrap();
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), 7, "k from the params");
    for p in preds {
        assert!(
            !items.contains(&p["id"].as_str().unwrap().to_string()),
            "a history item predicted with exclude_history: {p}"
        );
    }
}

/// A desktop C user's path: `scripts/install.sh` puts the header, both libraries and navigen.pc under
/// a prefix; the demo builds with `pkg-config` alone (shared) and with the static library and the
/// runtimes the .pc names, and both run on a real bundle.
#[test]
fn installed_with_pkg_config_the_demo_builds_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let o = Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--from")
        .arg(lib_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pc = |args: &[&str]| -> Vec<String> {
        let o = Command::new("pkg-config")
            .args(args)
            .arg("navigen")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
            .output()
            .expect("pkg-config is needed for this test (scripts/setup.sh installs it)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let version = pc(&["--modversion"]);
    assert_eq!(version, vec![env!("CARGO_PKG_VERSION").to_string()]);
    let b = bundle(tmp.path());
    let items = test_history(tmp.path());
    let src = root().join("examples/c/navigen_demo.c");
    for (name, flags) in [
        (
            "shared",
            [
                pc(&["--cflags", "--libs"]),
                vec![format!("-Wl,-rpath,{}", prefix.join("lib").display())],
            ]
            .concat(),
        ),
        (
            "static",
            [
                pc(&["--cflags"]),
                vec![prefix.join("lib/libnavigen.a").display().to_string()],
                pc(&["--variable=static_libs"]),
            ]
            .concat(),
        ),
    ] {
        let exe = tmp.path().join(format!("demo_pc_{name}"));
        let o = Command::new("gcc")
            .args(["-std=c99", "-Wall", "-Werror", "-O1"])
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .args(&flags)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = Command::new(&exe).arg(&b).args(&items).output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("predictions: "),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
