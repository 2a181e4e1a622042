//! The Kotlin binding (bindings/kotlin) on the host JVM, over the shared library, on a bundle trained
//! in this run: the JNI shim built against the host JDK, the classes compiled with the Kotlin
//! compiler from npm (the `kotlin-compiler` asset), and the JUnit 4 suite (streaming as a Flow,
//! cancelling from another coroutine, a collector that stops, errors on a broken bundle, the
//! history, an encrypted history with the app's key store) run under `-Xcheck:jni`, which fails on
//! JNI misuse the JVM would otherwise tolerate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bundle, check, lib_dir, root, test_history};
use navigen_train::assets::KOTLIN_COMPILER;

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
    let b = bundle(tmp.path());
    let history = serde_json::to_string(&test_history(tmp.path())).unwrap();
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
        .env("NAVIGEN_TEST_BUNDLE", &b)
        .env("NAVIGEN_TEST_HISTORY", &history)
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
