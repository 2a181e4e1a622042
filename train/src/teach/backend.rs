//! Teachers that answer a prompt: a local instruct GGUF on navigen's llama.cpp runtime, and any
//! OpenAI-compatible chat endpoint. Both constrain the answer to the prompt's JSON schema (a grammar
//! locally, `response_format` on an endpoint); [`super::ask`] validates, retries and caches.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use navigen::chat::{ChatOptions, ChatSession, Message};
use navigen::prompt::teacher::TeacherPrompt;

/// A raw answer and what it cost.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Raw {
    pub text: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

/// How one request is sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub seed: u64,
    pub max_tokens: u32,
}

/// Something that answers teacher prompts.
pub trait Teacher: Send + Sync {
    /// What makes its answers what they are (backend, model, its fingerprint): part of every cache
    /// key, so that another model is never answered from this one's cache.
    fn identity(&self) -> String;
    /// Several requests at once are fine (an endpoint's concurrency limit); a local model runs one.
    fn concurrency(&self) -> usize;
    fn complete(&self, p: &TeacherPrompt, s: Sampling) -> Result<Raw>;
}

/// An instruct GGUF by path, on navigen's llama.cpp runtime. One thread owns the model and a
/// [`ChatSession`], so that consecutive prompts of one window (the founders, the judge's eight
/// scorings of a group) reuse the KV cache of the system prompt and history they share.
pub struct LocalTeacher {
    path: PathBuf,
    fingerprint: String,
    jobs: Mutex<mpsc::Sender<Job>>,
}

type Job = (
    Vec<Message>,
    ChatOptions,
    mpsc::Sender<navigen::Result<navigen::chat::Reply>>,
);

impl LocalTeacher {
    pub fn open(path: &Path, threads: u32) -> Result<Self> {
        let model = navigen::llm::Model::load(path, 0)
            .with_context(|| format!("loading the teacher {}", path.display()))?;
        // The file's size and first MiB identify it cheaply (a full sha256 of a large teacher on every
        // start would cost more than many answers).
        let meta = std::fs::metadata(path)?;
        let mut head = vec![0u8; (1 << 20).min(meta.len() as usize)];
        use std::io::Read;
        std::fs::File::open(path)?.read_exact(&mut head)?;
        let fingerprint = format!("{}:{}", meta.len(), super::ask::sha256_hex(&head));
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("navigen-teacher".into())
            .spawn(move || {
                let mut session = ChatSession::new(&model);
                // Ends when the teacher (the only sender) is dropped.
                for (messages, mut opts, answer) in rx {
                    opts.threads = threads;
                    let _ = answer.send(session.chat(&messages, &opts));
                }
            })?;
        Ok(LocalTeacher {
            path: path.to_path_buf(),
            fingerprint,
            jobs: Mutex::new(tx),
        })
    }
}

impl Teacher for LocalTeacher {
    fn identity(&self) -> String {
        format!(
            "local:{}:{}",
            self.path.file_name().unwrap_or_default().to_string_lossy(),
            self.fingerprint
        )
    }
    fn concurrency(&self) -> usize {
        1
    }
    fn complete(&self, p: &TeacherPrompt, s: Sampling) -> Result<Raw> {
        let (tx, rx) = mpsc::channel();
        let job = (
            vec![
                Message::new("system", p.system.clone()),
                Message::new("user", p.user.clone()),
            ],
            ChatOptions {
                max_tokens: s.max_tokens,
                temperature: s.temperature,
                seed: s.seed as u32,
                json_schema: Some(p.schema.clone()),
                shared_prefix: p.shared,
                ..Default::default()
            },
            tx,
        );
        let gone = || anyhow::anyhow!("the local teacher's thread has stopped");
        self.jobs
            .lock()
            .map_err(|_| gone())?
            .send(job)
            .map_err(|_| gone())?;
        let reply = rx.recv().map_err(|_| gone())??;
        Ok(Raw {
            text: reply.text,
            tokens_in: reply.prompt_tokens as u64,
            tokens_out: reply.completion_tokens as u64,
        })
    }
}

/// Where an OpenAI-compatible endpoint is and how to talk to it.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Base URL up to `/v1` (e.g. `http://127.0.0.1:8080/v1`).
    pub url: String,
    pub model: String,
    /// The environment variable that holds the API key (none sent when unset or empty).
    pub key_env: String,
    pub timeout: Duration,
    /// Attempts per request on connection errors, 429 and 5xx.
    pub attempts: u32,
    /// First backoff; doubled per attempt (a `Retry-After` header wins).
    pub backoff: Duration,
    pub concurrency: usize,
}

impl EndpointConfig {
    /// The defaults `teach`'s flags also start from: key in `NAVIGEN_TEACHER_KEY`, 120 s per request,
    /// 4 attempts from a 500 ms backoff, one request in flight.
    pub fn new(url: &str, model: &str) -> Self {
        EndpointConfig {
            url: url.to_string(),
            model: model.to_string(),
            key_env: "NAVIGEN_TEACHER_KEY".into(),
            timeout: Duration::from_secs(120),
            attempts: 4,
            backoff: Duration::from_millis(500),
            concurrency: 1,
        }
    }
}

/// An OpenAI-compatible chat endpoint (`POST {url}/chat/completions`).
pub struct EndpointTeacher {
    cfg: EndpointConfig,
    agent: ureq::Agent,
    key: Option<String>,
}

impl EndpointTeacher {
    pub fn new(cfg: EndpointConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let key = std::env::var(&cfg.key_env).ok().filter(|k| !k.is_empty());
        EndpointTeacher { cfg, agent, key }
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.cfg.url.trim_end_matches('/'))
    }
}

/// What went wrong with one HTTP attempt, and whether another attempt may help.
enum Attempt {
    Retry(String, Option<Duration>),
    Fatal(String),
}

impl EndpointTeacher {
    fn attempt(&self, body: &str) -> std::result::Result<Raw, Attempt> {
        let mut req = self
            .agent
            .post(&self.endpoint())
            .header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => return Err(Attempt::Retry(format!("request failed: {e}"), None)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)));
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| Attempt::Retry(format!("reading the response: {e}"), None))?;
        if status == 429 || status >= 500 {
            return Err(Attempt::Retry(
                format!("HTTP {status}: {}", clip(&text)),
                retry_after,
            ));
        }
        if status != 200 {
            return Err(Attempt::Fatal(format!("HTTP {status}: {}", clip(&text))));
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Attempt::Fatal(format!("response is not JSON ({e}): {}", clip(&text))))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                Attempt::Fatal(format!("no choices[0].message.content: {}", clip(&text)))
            })?;
        Ok(Raw {
            text: content.to_string(),
            tokens_in: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            tokens_out: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        })
    }
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

/// The request body: the prompt, sampling and the schema as a strict `response_format`.
pub fn request_body(model: &str, p: &TeacherPrompt, s: Sampling) -> Result<String> {
    let schema: serde_json::Value =
        serde_json::from_str(&p.schema).context("the prompt's schema is not JSON")?;
    Ok(serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": p.system},
            {"role": "user", "content": p.user},
        ],
        "temperature": s.temperature,
        "seed": s.seed,
        "max_tokens": s.max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": p.role, "strict": true, "schema": schema},
        },
    })
    .to_string())
}

impl Teacher for EndpointTeacher {
    fn identity(&self) -> String {
        format!("endpoint:{}:{}", self.cfg.url, self.cfg.model)
    }
    fn concurrency(&self) -> usize {
        self.cfg.concurrency.max(1)
    }
    fn complete(&self, p: &TeacherPrompt, s: Sampling) -> Result<Raw> {
        let body = request_body(&self.cfg.model, p, s)?;
        let mut wait = self.cfg.backoff;
        let mut last = String::new();
        for attempt in 0..self.cfg.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(wait);
                wait = wait.saturating_mul(2);
            }
            match self.attempt(&body) {
                Ok(raw) => return Ok(raw),
                Err(Attempt::Fatal(e)) => bail!("{}: {e}", self.endpoint()),
                Err(Attempt::Retry(e, after)) => {
                    if let Some(a) = after {
                        wait = a;
                    }
                    last = e;
                }
            }
        }
        bail!(
            "{}: {} attempts failed, the last: {last}",
            self.endpoint(),
            self.cfg.attempts.max(1)
        )
    }
}
