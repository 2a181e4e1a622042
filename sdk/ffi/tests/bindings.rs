//! The bindings over the shared library, each on one bundle trained in this run:
//! - Python (bindings/python): its unittest suite (streaming, cancelling from another thread and by a
//!   consumer that stops reading, errors on a broken bundle, the history) and the ComfyUI node's
//!   (bindings/comfyui) against the source tree; then the wheel built, installed into a folder of its
//!   own and imported with no NAVIGEN_LIB (the library travels in the wheel).
//! - Kotlin (bindings/kotlin) on the host JVM: the JNI shim built against the host JDK, the classes
//!   compiled with the Kotlin compiler from npm (the `kotlin-compiler` asset), and the JUnit 4 suite
//!   (streaming as a Flow, cancelling from another coroutine, a collector that stops, errors on a
//!   broken bundle, the history, an encrypted history with the app's key store) under `-Xcheck:jni`,
//!   which fails on JNI misuse the JVM would otherwise tolerate.
//! - android/: the Gradle module's CMake project, which builds the JNI shim against a prebuilt
//!   libnavigen, built with the host compiler and JDK (Gradle's Android plugin and the NDK are not
//!   here; see docs/bindings.md).
//! - Swift (bindings/swift), opt-in (`-- --ignored`: it needs root and a Debian trixie root, as Swift
//!   is not in bookworm): `swift test` through scripts/swift-check.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{bundle, check, lib_dir, root, test_history};
use navigen_train::assets::KOTLIN_COMPILER;

/// One bundle for every test of this binary, trained once, and the history of its first test user as
/// a JSON array. It lives in cargo's folder for test files (one copy, replaced at every run), since a
/// temporary folder held in a static is never removed.
fn shared_bundle() -> (&'static Path, &'static str) {
    static B: OnceLock<(PathBuf, String)> = OnceLock::new();
    let (b, h) = B.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bindings-bundle");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let b = bundle(&dir);
        let h = serde_json::to_string(&test_history(&dir)).unwrap();
        (b, h)
    });
    (b, h)
}

// --- Python ---

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
    let (b, history) = shared_bundle();
    // Every test ran (none skipped or lost to a collection error).
    let report = unittest(&root().join("bindings/python"), b, history);
    assert!(report.contains("Ran 15 tests"), "{report}");
    let report = unittest(&root().join("bindings/comfyui"), b, history);
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

// --- Kotlin ---

/// JUnit 4 and Hamcrest, as Debian's junit4 package installs them (`NAVIGEN_JUNIT`: another
/// colon-separated class path).
fn junit() -> String {
    if let Ok(cp) = std::env::var("NAVIGEN_JUNIT") {
        return cp;
    }
    let jars = [
        "/usr/share/java/junit4.jar",
        "/usr/share/java/hamcrest-core.jar",
    ];
    for j in jars {
        assert!(
            Path::new(j).exists(),
            "{j} is missing: scripts/setup.sh installs Debian's junit4 (or set NAVIGEN_JUNIT)"
        );
    }
    jars.join(":")
}

#[test]
fn kotlin_binding_on_a_real_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, history) = shared_bundle();
    let kotlin = KOTLIN_COMPILER
        .ensure()
        .expect("fetching the Kotlin compiler");
    let junit = junit();
    let out = tmp.path().join("kotlin");
    let o = Command::new("bash")
        .arg(root().join("bindings/kotlin/build.sh"))
        .arg("--lib")
        .arg(lib_dir())
        .arg("--kotlin")
        .arg(&kotlin)
        .arg("--out")
        .arg(&out)
        .args(["--tests", &junit])
        .output()
        .unwrap();
    check("bindings/kotlin/build.sh", &o);

    let lib = kotlin.join("lib");
    let cp: Vec<PathBuf> = vec![
        lib.join("kotlin-stdlib.jar"),
        lib.join("kotlinx-coroutines-core-jvm.jar"),
        out.join("navigen-kotlin.jar"),
        out.join("navigen-kotlin-tests.jar"),
    ];
    let junit_jars = std::env::split_paths(&junit).collect::<Vec<_>>();
    let cp = std::env::join_paths(cp.iter().chain(&junit_jars)).unwrap();
    let o = Command::new("java")
        .arg("-Xcheck:jni")
        .arg(format!(
            "-Dnavigen.jni.path={}",
            out.join("libnavigen_jni.so").display()
        ))
        .arg("-cp")
        .arg(&cp)
        .args([
            "org.junit.runner.JUnitCore",
            "dev.navigen.EngineTest",
            "dev.navigen.HistoryTest",
        ])
        .env("NAVIGEN_TEST_BUNDLE", b)
        .env("NAVIGEN_TEST_HISTORY", history)
        .output()
        .expect("java is needed for this test (scripts/setup.sh installs a JDK)");
    check("the Kotlin tests", &o);
    let report = String::from_utf8_lossy(&o.stdout);
    // Every test ran, and -Xcheck:jni found nothing to warn about.
    assert!(report.contains("OK (15 tests)"), "{report}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !report.contains("WARNING") && !err.contains("WARNING"),
        "-Xcheck:jni: {report}\n{err}"
    );
}

// --- android/ ---

/// The JDK that `javac` on the PATH belongs to (its include/ has jni.h).
fn java_home() -> String {
    if let Ok(h) = std::env::var("JAVA_HOME") {
        return h;
    }
    let javac = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v javac)\""])
        .output()
        .expect("sh");
    let javac = String::from_utf8_lossy(&javac.stdout).trim().to_string();
    assert!(
        !javac.is_empty(),
        "javac is needed (scripts/setup.sh installs a JDK)"
    );
    let home = Path::new(&javac).parent().and_then(|p| p.parent()).unwrap();
    home.display().to_string()
}

#[test]
fn android_cmake_project_builds_the_jni_shim() {
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    let o = Command::new("cmake")
        .arg("-S")
        .arg(root().join("android/navigen/src/main/cpp"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DNAVIGEN_JNILIBS={}", lib_dir().display()))
        .arg(format!("-DJAVA_HOME={}", java_home()))
        .output()
        .expect("cmake");
    check("cmake configure of android/navigen/src/main/cpp", &o);
    let o = Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .output()
        .unwrap();
    check("cmake --build", &o);
    let shim = build.join("libnavigen_jni.so");
    assert!(shim.exists(), "{} was not built", shim.display());
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&shim)
        .output()
        .unwrap();
    check("nm", &o);
    let syms = String::from_utf8_lossy(&o.stdout);
    assert!(syms.contains(" JNI_OnLoad"), "{syms}");
    assert!(!syms.contains("Java_"), "{syms}");
    // It links libnavigen by name (found beside it in the APK), not by a build path.
    let o = Command::new("readelf")
        .args(["-d"])
        .arg(&shim)
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&o.stdout);
    assert!(
        dynamic.contains("Shared library: [libnavigen.so]"),
        "{dynamic}"
    );
}

// --- Swift ---

#[test]
#[ignore = "needs root and a Debian trixie root with Swift (scripts/swift-check.sh); run with --ignored"]
fn swift_package_on_a_real_bundle() {
    let (b, history) = shared_bundle();
    let o = Command::new("bash")
        .arg(root().join("scripts/swift-check.sh"))
        .arg("--lib")
        .arg(lib_dir())
        .arg("--bundle")
        .arg(b)
        .args(["--history", history])
        .output()
        .unwrap();
    check("scripts/swift-check.sh", &o);
    let out = String::from_utf8_lossy(&o.stdout);
    // Every test ran (XCTest's summary of the whole run).
    assert!(
        out.contains("Executed 9 tests, with 0 failures"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
