//! The Python package (bindings/python) over the shared library, on a bundle trained in this run: its
//! unittest suite (streaming, cancelling from another thread and by a consumer that stops reading,
//! errors on a broken bundle, the history) and the ComfyUI node's (bindings/comfyui) against the
//! source tree; then the wheel built, installed into a folder of its own and imported with no
//! NAVIGEN_LIB (the library travels in the wheel).

mod common;

use std::path::Path;
use std::process::Command;

use common::{bundle, check, lib_dir, root, test_history};

fn python() -> String {
    std::env::var("NAVIGEN_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn shared_lib() -> std::path::PathBuf {
    let name = if cfg!(target_os = "macos") {
        "libnavigen.dylib"
    } else {
        "libnavigen.so"
    };
    lib_dir().join(name)
}

fn bundle_and_history(dir: &Path) -> (std::path::PathBuf, String) {
    let b = bundle(dir);
    let h = serde_json::to_string(&test_history(dir)).unwrap();
    (b, h)
}

/// Runs `python -m unittest discover -s tests` in `dir` with the package on the path; returns the
/// report (stderr).
fn unittest(dir: &Path, b: &Path, history: &str) -> String {
    let o = Command::new(python())
        .args(["-m", "unittest", "discover", "-v", "-s", "tests"])
        .current_dir(dir)
        .env("PYTHONPATH", root().join("bindings/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NAVIGEN_LIB", shared_lib())
        .env("NAVIGEN_TEST_BUNDLE", b)
        .env("NAVIGEN_TEST_HISTORY", history)
        .output()
        .expect("python3 is needed for this test (NAVIGEN_TEST_PYTHON picks another)");
    check(&format!("the Python tests in {}", dir.display()), &o);
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The package's suite, then the ComfyUI node's (loaded as ComfyUI loads a custom node), on one bundle.
#[test]
fn python_package_and_comfyui_node_on_a_real_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, history) = bundle_and_history(tmp.path());
    // Every test ran (none skipped or lost to a collection error).
    let report = unittest(&root().join("bindings/python"), &b, &history);
    assert!(report.contains("Ran 14 tests"), "{report}");
    let report = unittest(&root().join("bindings/comfyui"), &b, &history);
    assert!(report.contains("Ran 3 tests"), "{report}");
}

#[test]
fn python_wheel_carries_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    let o = Command::new("bash")
        .arg(root().join("bindings/python/build_wheel.sh"))
        .arg(shared_lib())
        .arg(&dist)
        .output()
        .unwrap();
    check("build_wheel.sh", &o);
    let wheel = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        wheel.contains("-py3-none-") && !wheel.ends_with("-any.whl"),
        "a platform wheel: {wheel}"
    );
    let site = tmp.path().join("site");
    let o = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--no-index", "--target"])
        .arg(&site)
        .arg(&wheel)
        .output()
        .unwrap();
    check("pip install of the wheel", &o);
    let o = Command::new(python())
        .args([
            "-c",
            "import navigen, os; print(navigen.version()); print(os.path.dirname(navigen.__file__))",
        ])
        .current_dir(tmp.path())
        .env("PYTHONPATH", &site)
        .env_remove("NAVIGEN_LIB")
        .output()
        .unwrap();
    check("importing the installed wheel", &o);
    let out = String::from_utf8_lossy(&o.stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(env!("CARGO_PKG_VERSION")));
    let dir = Path::new(lines.next().unwrap());
    assert!(dir.starts_with(&site), "imported from {}", dir.display());
    assert!(dir.join(shared_lib().file_name().unwrap()).exists());
}
