//! History crash safety with real process kills: a child appends events (and in some rounds forgets a
//! profile) and acknowledges each step on stdout; the parent kills it with SIGKILL, 1,000 times, at
//! moments that land inside appends, compactions, the recovery of the previous kill's torn tail, and
//! `forget`. After every kill the parent reopens the folder and checks that no acknowledged event is
//! lost, nothing corrupt is read, and a forgotten profile is gone or whole.
//!
//! The encrypted variant runs the same rounds on a history opened with a key store (keys kept in
//! files of their own, as a Keychain would keep them, so that a destroyed key stays destroyed
//! across processes).
//!
//! The verdict does not depend on the speed of the disk or the CPU: the parent kills after a fixed
//! number of acknowledgements (or a fixed marker line) per round, however long they take, and the
//! checks hold wherever the kill lands. Only where it lands varies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use navigen::history::{Event, EventKind, History, HistoryParams, KeyStore};

const CHILD: &str = "NAVIGEN_HISTORY_CHILD_DIR";
/// Set for the child of the encrypted variant: the folder of its key files.
const CHILD_KEYS: &str = "NAVIGEN_HISTORY_CHILD_KEYS";
/// Kills (`NAVIGEN_KILL_ROUNDS` overrides).
const ROUNDS: u64 = 1000;
/// A child writes at most this many events beyond the ones the parent waits for, then idles.
const SLACK: usize = 16;
/// Retention by count: appends and loads compact the log to the newest CAP events.
const CAP: u32 = 96;

fn params() -> HistoryParams {
    HistoryParams {
        max_items: CAP,
        ..HistoryParams::default()
    }
}

/// Keys in files of their own (`<dir>/<profile>.key`, written atomically), as an app's Keychain
/// would keep them: they outlive a killed process, and a destroyed one stays destroyed.
struct FileKeys(PathBuf);

impl KeyStore for FileKeys {
    fn key(&self, profile: &str, create: bool) -> navigen::Result<Option<[u8; 32]>> {
        let path = self.0.join(format!("{profile}.key"));
        if let Ok(b) = std::fs::read(&path) {
            return Ok(Some(b.try_into().expect("a 32-byte key file")));
        }
        if !create {
            return Ok(None);
        }
        // Random enough for a test: the clock and the process, hashed.
        use std::hash::{BuildHasher, RandomState};
        let mut key = [0u8; 32];
        for (i, c) in key.chunks_mut(8).enumerate() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let h = RandomState::new().hash_one((nanos, i, std::process::id()));
            c.copy_from_slice(&h.to_le_bytes());
        }
        navigen::format::write_atomic(&path, &key)?;
        Ok(Some(key))
    }

    fn destroy(&self, profile: &str) -> navigen::Result<()> {
        match std::fs::remove_file(self.0.join(format!("{profile}.key"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(navigen::Error::io(self.0.join(profile), e))
            }
            _ => Ok(()),
        }
    }
}

/// The history folder, plain or encrypted with the key files in `keys`.
fn open(dir: &Path, keys: Option<&Path>) -> navigen::Result<History> {
    let store = keys.map(|k| Arc::new(FileKeys(k.to_path_buf())) as Arc<dyn KeyStore>);
    History::open_with_keys(dir, params(), store)
}

/// What a round does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Appends to "p"; killed after `kill_after` acknowledgements (inside a later append or a
    /// compaction).
    Append,
    /// Killed as soon as the child says it is opening the folder: inside the recovery of the last
    /// round's torn tail, or the compaction a load does.
    Open,
    /// Appends to "q", then forgets it; killed after some of those acknowledgements or right after
    /// the forget starts.
    Forget,
}

fn mode(round: u64) -> Mode {
    match round % 5 {
        0..=2 => Mode::Append,
        3 => Mode::Open,
        _ => Mode::Forget,
    }
}

/// Acknowledgements the parent waits for in `round` before it kills (1..=40, varied).
fn kill_after(round: u64) -> usize {
    1 + ((round * 17) % 40) as usize
}

fn event(i: i64) -> Event {
    // Ids of varied length make writes of varied size, so kills land inside writes too.
    Event {
        item_id: format!("{i:08}-{}", "x".repeat((i as usize * 37) % 400)),
        kind: EventKind::View,
        timestamp_ms: i,
    }
}

/// Next index of a profile: one past its newest event (older ones may have been compacted away).
fn next(h: &History, profile: &str) -> i64 {
    h.list(profile)
        .unwrap()
        .last()
        .map_or(0, |e| e.timestamp_ms + 1)
}

/// The child: see [`Mode`]. Prints `ack <i>` per acknowledged append to "p", `qack <i>` per append
/// to "q", `forgetting` / `forgot` around the forget, then waits to be killed.
#[test]
#[ignore = "the child process of the kill harness, which starts it with --ignored"]
fn child_writer() {
    let dir = std::env::var_os(CHILD).expect("started by the kill harness");
    let round: u64 = std::env::var("NAVIGEN_HISTORY_CHILD_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let keys = std::env::var_os(CHILD_KEYS).map(PathBuf::from);
    println!("opening");
    let h = open(Path::new(&dir), keys.as_deref()).unwrap();
    match mode(round) {
        Mode::Append | Mode::Open => {
            let start = next(&h, "p");
            for i in start..start + (kill_after(round) + SLACK) as i64 {
                h.append("p", &event(i)).unwrap();
                println!("ack {i}");
            }
        }
        Mode::Forget => {
            let start = next(&h, "q");
            for i in start..start + kill_after(round) as i64 {
                h.append("q", &event(i)).unwrap();
                println!("qack {i}");
            }
            println!("forgetting");
            h.forget("q").unwrap();
            println!("forgot");
        }
    }
    loop {
        std::thread::park();
    }
}

/// Events of a profile are one contiguous run of indices, oldest first, each intact.
fn check_run(events: &[Event], what: &str) -> Option<(i64, i64)> {
    let (lo, hi) = (events.first()?.timestamp_ms, events.last()?.timestamp_ms);
    for (k, e) in events.iter().enumerate() {
        assert_eq!(
            e,
            &event(lo + k as i64),
            "{what}: event {k} is out of order or corrupt"
        );
    }
    Some((lo, hi))
}

/// Lines up to and including the first for which `done` holds (all of them are kept: they are
/// acknowledgements too).
fn recv_until(
    rx: &Receiver<String>,
    mut done: impl FnMut(&str) -> bool,
    what: &str,
    child_err: &Path,
) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = rx.recv().unwrap_or_else(|_| {
            // Its stderr may still be written: give the child a moment to finish dying.
            std::thread::sleep(std::time::Duration::from_millis(200));
            panic!(
                "{what}: the child died before the kill after {lines:?}; its stderr:\n{}",
                std::fs::read_to_string(child_err).unwrap_or_default()
            )
        });
        let stop = done(&line);
        lines.push(line);
        if stop {
            return lines;
        }
    }
}

#[test]
fn killed_writers_lose_nothing_acknowledged() {
    harness(false);
}

#[test]
fn killed_writers_of_an_encrypted_history_lose_nothing_acknowledged() {
    harness(true);
}

/// The two harnesses take turns: a child forked by one inherits, until its exec, the folder lock the
/// other's parent holds while it checks a round, and the other's next child would find it taken.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn harness(sealed: bool) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rounds: u64 = std::env::var("NAVIGEN_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    let dir = tempfile::tempdir().unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let err_dir = tempfile::tempdir().unwrap();
    let keys = sealed.then(|| key_dir.path());
    let exe = std::env::current_exe().unwrap();
    // Highest acknowledged index of "p" and "q"; whether the last forget was acknowledged.
    let (mut acked_p, mut acked_q): (i64, i64) = (-1, -1);
    // Since q's last acknowledged append: a forget began / was acknowledged.
    let (mut forget_began, mut forgot) = (false, false);
    let mut kills_by_mode = [0u64; 3];
    for round in 0..rounds {
        let m = mode(round);
        // The child's panic message, if it dies before the kill.
        let child_err = err_dir.path().join(format!("round-{round}.txt"));
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, dir.path())
            .envs(keys.map(|k| (CHILD_KEYS, k)))
            .env("NAVIGEN_HISTORY_CHILD_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&child_err).unwrap()))
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest starts the child's first line with "test child_writer ... ".
                let line = line.rsplit(" ... ").next().unwrap_or_default().to_string();
                let _ = tx.send(line);
            }
        });
        let what = format!(
            "round {round} ({m:?}{})",
            if sealed { ", encrypted" } else { "" }
        );
        let mut seen = 0;
        let before_kill = match m {
            Mode::Append => recv_until(
                &rx,
                |l| {
                    seen += l.starts_with("ack ") as usize;
                    seen == kill_after(round)
                },
                &what,
                &child_err,
            ),
            Mode::Open => recv_until(&rx, |l| l == "opening", &what, &child_err),
            Mode::Forget => {
                // Every other forget round kills at the forget itself.
                let at_forget = round % 10 == 4;
                recv_until(
                    &rx,
                    |l| {
                        seen += l.starts_with("qack ") as usize;
                        if at_forget {
                            l == "forgetting"
                        } else {
                            seen == kill_after(round) / 2 + 1
                        }
                    },
                    &what,
                    &child_err,
                )
            }
        };
        child.kill().unwrap();
        child.wait().unwrap();
        kills_by_mode[m as usize] += 1;
        // The reader ends at end of file: with the lines read before the kill, every line the child
        // printed, in order.
        for line in before_kill.into_iter().chain(rx.iter()) {
            if let Some(n) = line.strip_prefix("ack ") {
                acked_p = acked_p.max(n.parse().unwrap());
            } else if let Some(n) = line.strip_prefix("qack ") {
                acked_q = acked_q.max(n.parse().unwrap());
                (forget_began, forgot) = (false, false);
            } else if line == "forgetting" {
                forget_began = true;
            } else if line == "forgot" {
                forgot = true;
            }
        }

        let h = open(dir.path(), keys).unwrap();
        if sealed {
            // A kill after the forget destroyed q's key and before its files went leaves a log no
            // key opens: refused, never read as damage; forgetting again clears it, as an app would.
            if let Err(e) = h.list("q") {
                assert!(
                    forget_began && matches!(e, navigen::Error::Mismatch(_)),
                    "{what}: q unreadable without a forget: {e}"
                );
                h.forget("q").unwrap();
            }
        }
        for profile in ["p", "q"] {
            let rec = h.recover(profile).unwrap();
            assert_eq!(
                rec.damaged_bytes, 0,
                "{what}: damage in the middle of {profile}'s log"
            );
        }
        // "p": nothing acknowledged lost at the top, no holes, at least the newest CAP retained.
        let p = h.list("p").unwrap();
        if let Some((lo, hi)) = check_run(&p, &format!("{what}, p")) {
            assert!(
                hi >= acked_p,
                "{what}: p holds up to {hi}, {acked_p} acknowledged"
            );
            assert!(
                lo <= (hi + 1 - CAP as i64).max(0),
                "{what}: p kept {lo}..={hi}, fewer than the newest {CAP}"
            );
        } else {
            assert_eq!(acked_p, -1, "{what}: p lost every acknowledged event");
        }
        // "q": gone once a forget was acknowledged; otherwise whole up to what was acknowledged,
        // or gone because a forget began after the last acknowledged append.
        let q = h.list("q").unwrap();
        match check_run(&q, &format!("{what}, q")) {
            Some((_, hi)) => {
                assert!(!forgot, "{what}: q survived an acknowledged forget");
                assert!(
                    hi >= acked_q,
                    "{what}: q holds up to {hi}, {acked_q} acknowledged"
                );
            }
            None => assert!(
                acked_q == -1 || forget_began,
                "{what}: q lost acknowledged events without a forget"
            ),
        }
        if q.is_empty() {
            // The next forget round starts q afresh; acknowledgements before it are void.
            acked_q = -1;
        }
    }
    let expected: usize = (0..rounds)
        .filter(|&r| mode(r) == Mode::Append)
        .map(kill_after)
        .sum();
    assert!(
        acked_p + 1 >= expected as i64,
        "the children acknowledged {} events of p, fewer than the {expected} waited for",
        acked_p + 1
    );
    // One line for docs/: the harness's own count, not a claim.
    println!(
        "kill harness{}: {rounds} kills (append {}, open/recovery {}, forget {}), {} events of p acknowledged, 0 lost, 0 corrupt",
        if sealed { " (encrypted)" } else { "" },
        kills_by_mode[0],
        kills_by_mode[1],
        kills_by_mode[2],
        acked_p + 1
    );
}
