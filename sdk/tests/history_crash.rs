//! History crash safety with real process kills: a child appends events and acknowledges each one on
//! stdout; the parent kills it (SIGKILL) at many different moments. Every acknowledged event must be
//! there afterwards, in order, and the log must be clean.
//!
//! The verdict does not depend on the speed of the disk or the CPU: the parent kills after a fixed
//! number of acknowledgements per round (it waits for them, however long they take), each child
//! writes a bounded number of events and then waits to be killed, and retention is off, so every
//! event ever written must still be there. Only where the kill lands inside a write varies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use navigen::history::{Event, EventKind, History, HistoryParams};

const CHILD: &str = "NAVIGEN_HISTORY_CHILD_DIR";
const ROUNDS: u64 = 25;
/// A child writes at most this many events beyond the ones the parent waits for, then idles.
const SLACK: usize = 64;

/// Retention off: nothing may leave the log, so a missing event is a loss, never a policy.
fn params() -> HistoryParams {
    HistoryParams {
        max_items: 0,
        ..HistoryParams::default()
    }
}

/// Acknowledgements the parent waits for in `round` before it kills (1..=40, varied).
fn kill_after(round: u64) -> usize {
    1 + ((round * 17) % 40) as usize
}

/// The child: appends `kill_after(round) + SLACK` events, printing the index of each acknowledged
/// one, then waits to be killed.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let round: u64 = std::env::var("NAVIGEN_HISTORY_CHILD_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let h = History::open(std::path::Path::new(&dir), params()).unwrap();
    let start = h.list("p").unwrap().len();
    for i in start..start + kill_after(round) + SLACK {
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
    loop {
        std::thread::park();
    }
}

#[test]
fn killed_writers_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: i64 = -1;
    let mut written_max = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, dir.path())
            .env("NAVIGEN_HISTORY_CHILD_ROUND", round.to_string())
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
        // Wait for this round's acknowledgements, however long they take, then kill at once: the
        // child is somewhere in its next writes (or idle after its last one).
        let before = acked;
        let mut seen = 0;
        while seen < kill_after(round) {
            let n = rx
                .recv()
                .unwrap_or_else(|_| panic!("round {round}: the child died after {seen} acks"));
            acked = acked.max(n);
            seen += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The reader ends at end of file, so this drains every ack that was printed.
        while let Ok(n) = rx.recv() {
            acked = acked.max(n);
        }
        assert!(
            acked >= before + kill_after(round) as i64,
            "round {round}: acks did not advance"
        );
        let h = History::open(dir.path(), params()).unwrap();
        let rec = h.recover("p").unwrap();
        assert_eq!(
            rec.damaged_bytes, 0,
            "round {round}: damage in the middle of the log"
        );
        let events = h.list("p").unwrap();
        // Bounded by construction: retention could never have been what removed an event.
        written_max += kill_after(round) + SLACK;
        assert!(events.len() <= written_max);
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
    let expected: usize = (0..ROUNDS).map(kill_after).sum();
    assert!(
        acked + 1 >= expected as i64,
        "the children acknowledged {} events, fewer than the {expected} waited for",
        acked + 1
    );
}
