//! Asking a teacher: every answer is cached on disk under a hash of the teacher, the prompt version,
//! the prompt and the sampling, appended and synced as soon as it arrives. A run killed at any point
//! resumes without asking anything twice, and a rerun with the same inputs asks nothing. Answers are
//! parsed into the type the prompt asks for; a bad answer is retried with another seed, then given up
//! (the caller falls back, and the report counts it).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use navigen::prompt::teacher::{TeacherPrompt, TEACHER_PROMPT_VERSION};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::backend::{Raw, Sampling, Teacher};

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Counters of one run (reported in `teach.json`).
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq)]
pub struct Counts {
    /// Requests sent to the teacher in this run.
    pub requests: u64,
    /// Answers found in the cache.
    pub cache_hits: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Requests that failed (transport, or the backend's error), and answers that did not parse.
    pub failures: u64,
    pub invalid: u64,
    /// Questions given up after every attempt: the caller fell back.
    pub fallbacks: u64,
    /// Requests per role.
    pub by_role: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    role: String,
    #[serde(flatten)]
    raw: Raw,
}

/// A teacher with its on-disk answer cache.
pub struct Asker<'t> {
    teacher: &'t dyn Teacher,
    identity: String,
    cache: Mutex<(HashMap<String, Raw>, File)>,
    counts: Mutex<Counts>,
    /// Attempts per question (each with its own seed).
    pub attempts: u32,
    /// Tests: after this many requests, say so on stdout and wait forever (to be killed; 0 = never).
    pub pause_after: u64,
    sent: AtomicU64,
}

impl<'t> Asker<'t> {
    /// Opens (or creates) the cache at `path`. A torn last line (a kill mid-write) is cut off.
    pub fn open(teacher: &'t dyn Teacher, path: &Path) -> Result<Self> {
        let mut map = HashMap::new();
        if path.exists() {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut good = 0u64;
            for line in BufReader::new(f).split(b'\n') {
                let line = line?;
                match serde_json::from_slice::<Line>(&line) {
                    Ok(l) => {
                        good += line.len() as u64 + 1;
                        map.insert(l.key, l.raw);
                    }
                    Err(_) => break,
                }
            }
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(good)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Asker {
            identity: teacher.identity(),
            teacher,
            cache: Mutex::new((map, file)),
            counts: Mutex::new(Counts::default()),
            attempts: 3,
            pause_after: 0,
            sent: AtomicU64::new(0),
        })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    fn key(&self, p: &TeacherPrompt, s: Sampling) -> String {
        let text = serde_json::json!([
            self.identity,
            TEACHER_PROMPT_VERSION,
            p.role,
            p.system,
            p.user,
            p.schema,
            s.temperature,
            s.seed,
            s.max_tokens
        ]);
        sha256_hex(text.to_string().as_bytes())
    }

    /// The raw answer, from the cache or the teacher (then cached).
    pub fn raw(&self, p: &TeacherPrompt, s: Sampling) -> Result<Raw> {
        let key = self.key(p, s);
        if let Some(r) = self.cache.lock().unwrap().0.get(&key) {
            self.counts.lock().unwrap().cache_hits += 1;
            return Ok(r.clone());
        }
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if self.pause_after > 0 && n > self.pause_after {
            // A known point for a test to `kill -9` the process at, whatever the machine's speed.
            println!("teach: paused after {} requests", self.pause_after);
            loop {
                std::thread::park();
            }
        }
        {
            let mut c = self.counts.lock().unwrap();
            c.requests += 1;
            *c.by_role.entry(p.role.to_string()).or_default() += 1;
        }
        let raw = match self.teacher.complete(p, s) {
            Ok(r) => r,
            Err(e) => {
                self.counts.lock().unwrap().failures += 1;
                return Err(e);
            }
        };
        {
            let mut c = self.counts.lock().unwrap();
            c.tokens_in += raw.tokens_in;
            c.tokens_out += raw.tokens_out;
        }
        let mut g = self.cache.lock().unwrap();
        let mut line = serde_json::to_vec(&Line {
            key: key.clone(),
            role: p.role.to_string(),
            raw: raw.clone(),
        })?;
        line.push(b'\n');
        g.1.write_all(&line)?;
        g.1.sync_data()?;
        g.0.insert(key, raw.clone());
        Ok(raw)
    }

    /// The answer parsed as `T`, trying `attempts` seeds; `None` when none gives a valid answer
    /// (counted as a fallback). `valid` rejects answers that parse but say nothing usable.
    pub fn ask<T: DeserializeOwned>(
        &self,
        p: &TeacherPrompt,
        s: Sampling,
        valid: impl Fn(&T) -> bool,
    ) -> Option<T> {
        for a in 0..self.attempts.max(1) as u64 {
            let s = Sampling {
                seed: s.seed.wrapping_add(a * 7919),
                // A greedy answer that failed fails again: later attempts sample.
                temperature: if a > 0 {
                    s.temperature.max(0.7)
                } else {
                    s.temperature
                },
                ..s
            };
            match self.raw(p, s) {
                Ok(raw) => match serde_json::from_str::<T>(raw.text.trim()) {
                    Ok(v) if valid(&v) => return Some(v),
                    _ => self.counts.lock().unwrap().invalid += 1,
                },
                Err(e) => {
                    eprintln!("teach: {} request failed: {e:#}", p.role);
                }
            }
        }
        self.counts.lock().unwrap().fallbacks += 1;
        None
    }
}
