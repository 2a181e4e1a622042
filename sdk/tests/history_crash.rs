//! History crash safety with real process kills: a child appends events and acknowledges each one on
//! stdout; the parent kills it (SIGKILL) at many different moments. Every acknowledged event must be
//! there afterwards, in order, and the log must be clean.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use navigen::history::{Event, EventKind, History, HistoryParams};

const CHILD: &str = "NAVIGEN_HISTORY_CHILD_DIR";

/// The child: appends forever, printing the index of each acknowledged event.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let h = History::open(std::path::Path::new(&dir), HistoryParams::default()).unwrap();
    let start = h.list("p").unwrap().len();
    for i in start.. {
        // Long ids make each write big, so kills land inside writes too.
        let id = format!("{i:08}-{}", "x".repeat(i % 3000));
        h.append(
            "p",
            &Event {
                item_id: id,
                kind: EventKind::View,
                timestamp_ms: i as i64,
            },
        )
        .unwrap();
        println!("ack {i}");
    }
}

#[test]
fn killed_writers_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: i64 = -1;
    for round in 0..25u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ack ") {
                    let _ = tx.send(n.parse::<i64>().unwrap());
                }
            }
        });
        // Kill after a varying number of milliseconds.
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 150));
        child.kill().unwrap();
        child.wait().unwrap();
        while let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
            acked = acked.max(n);
        }
        let h = History::open(dir.path(), HistoryParams::default()).unwrap();
        let rec = h.recover("p").unwrap();
        assert_eq!(
            rec.damaged_bytes, 0,
            "round {round}: damage in the middle of the log"
        );
        let events = h.list("p").unwrap();
        assert!(
            events.len() as i64 > acked,
            "round {round}: {} events on disk, {} acknowledged",
            events.len(),
            acked + 1
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.timestamp_ms, i as i64,
                "round {round}: events out of order or corrupt"
            );
            assert!(e.item_id.starts_with(&format!("{i:08}-")));
        }
    }
    assert!(
        acked > 25,
        "the children acknowledged too little to test anything: {acked}"
    );
}
