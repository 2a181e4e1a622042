//! The history store opening a profile log whose bytes the fuzzer chose (raw, or a valid header
//! followed by them): opening recovers or refuses, never panics; after a successful open the profile
//! can be listed, appended to and reopened with the new event last.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use navigen::format::history::{header, Event, EventKind};
use navigen::history::{History, HistoryParams, Sync};

fn params() -> HistoryParams {
    HistoryParams {
        sync: Sync::Os,
        ..HistoryParams::default()
    }
}

/// The folder and the file name the store gives profile "p" (asked of the store once).
fn place() -> &'static (PathBuf, String) {
    static PLACE: OnceLock<(PathBuf, String)> = OnceLock::new();
    PLACE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("navigen-fuzz-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let h = History::open(&dir, params()).unwrap();
        let e = Event { item_id: "seed".into(), kind: EventKind::View, timestamp_ms: 1 };
        h.append("p", &e).unwrap();
        drop(h);
        let name = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".nvh"))
            .expect("the store wrote a .nvh log");
        (dir, name)
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, name) = place();
    // A fresh folder holding only the fuzzed log (recovery may have set files aside last time).
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut bytes = if data.first().is_some_and(|b| b & 1 == 1) { header() } else { Vec::new() };
    bytes.extend_from_slice(data.get(1..).unwrap_or_default());
    std::fs::write(dir.join(name), &bytes).unwrap();
    if let Ok(h) = History::open(dir, params()) {
        if let Ok(before) = h.list("p") {
            let e = Event { item_id: "after".into(), kind: EventKind::Play, timestamp_ms: i64::MAX };
            if h.append("p", &e).is_ok() {
                drop(h);
                let h = History::open(dir, params()).unwrap();
                let after = h.list("p").unwrap();
                assert_eq!(after.last(), Some(&e), "the acknowledged event is read back last");
                assert!(after.len() <= before.len() + 1);
            }
        }
    }
});
