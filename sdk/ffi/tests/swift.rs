//! The Swift package (bindings/swift) on a bundle trained in this run, through
//! scripts/swift-check.sh (`swift test` in a Debian trixie root: Swift is not in bookworm). Opt-in,
//! as it needs root and a 3 GB root the first time:
//!
//!   cargo test -p navigen-ffi --test swift -- --ignored

mod common;

use std::process::Command;

use common::{bundle, check, lib_dir, root, test_history};

#[test]
#[ignore = "needs root and a Debian trixie root with Swift (scripts/swift-check.sh); run with --ignored"]
fn swift_package_on_a_real_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path());
    let history = serde_json::to_string(&test_history(tmp.path())).unwrap();
    let o = Command::new("bash")
        .arg(root().join("scripts/swift-check.sh"))
        .arg("--lib")
        .arg(lib_dir())
        .arg("--bundle")
        .arg(&b)
        .args(["--history", &history])
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
