//! The trainer's endpoint teacher against a real OpenAI-compatible server on the loopback address:
//! `navigen serve` (this package's binary) over SmolLM2-135M-Instruct, started and killed by the test.
//! Retries (503 with Retry-After), the API key, schema-constrained answers and concurrent requests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use navigen::prompt::teacher::{self as tp, ItemText};
use navigen_train::teach::backend::{EndpointConfig, EndpointTeacher, Sampling, Teacher};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str], key: Option<&str>) -> Server {
    let model = navigen_train::assets::SMOLLM2
        .ensure()
        .unwrap()
        .join(navigen_train::assets::SMOLLM2.members[0].1);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_navigen"));
    cmd.args(["--threads", "2", "serve", "--port", "0", "--model"])
        .arg(model)
        .args(extra)
        .stdout(Stdio::piped());
    match key {
        Some(k) => cmd.env("NAVIGEN_SERVE_KEY", k),
        None => cmd.env_remove("NAVIGEN_SERVE_KEY"),
    };
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, url }
}

fn config(url: &str, key_env: &str) -> EndpointConfig {
    EndpointConfig {
        url: url.to_string(),
        model: "SmolLM2".into(),
        key_env: key_env.into(),
        timeout: Duration::from_secs(600),
        attempts: 4,
        backoff: Duration::from_millis(10),
        concurrency: 3,
    }
}

fn prompt() -> tp::TeacherPrompt {
    let h = vec![
        ItemText {
            title: "The Aristocats (1970)".into(),
            terms: vec!["cats".into(), "animation".into(), "family".into()],
        },
        ItemText {
            title: "Babe (1995)".into(),
            terms: vec!["pig".into(), "farm".into(), "family".into()],
        },
    ];
    tp::judge(
        &h,
        &["cats".into(), "family".into()],
        "A watercolour of a kitten asleep in a barn.",
    )
}

const GREEDY: Sampling = Sampling {
    temperature: 0.0,
    seed: 1,
    max_tokens: 64,
};

#[test]
fn endpoint_teacher_retries_and_gets_schema_answers() {
    // The first two requests get 503: the client retries and the third attempt answers.
    let s = serve(&["--fail-first", "2"], None);
    let t = EndpointTeacher::new(config(&s.url, "NAVIGEN_TEST_UNSET_KEY"));
    let raw = t.complete(&prompt(), GREEDY).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw.text).unwrap();
    for k in ["consistency", "novelty", "aesthetic", "executability"] {
        let n = v[k]
            .as_i64()
            .unwrap_or_else(|| panic!("{k} missing in {}", raw.text));
        assert!((0..=10).contains(&n), "{}", raw.text);
    }
    assert!(raw.tokens_in > 50 && raw.tokens_out > 0, "{raw:?}");
    // Greedy answers are the server's model's, the same twice.
    assert_eq!(t.complete(&prompt(), GREEDY).unwrap().text, raw.text);

    // Concurrent requests (the teach stage's workers) all get answers.
    let answers: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let t = &t;
                sc.spawn(move || {
                    // Room for the schema's largest answer (10 terms of at most 40 characters):
                    // a cut answer is the budget's doing, not the server's.
                    t.complete(
                        &tp::compress_tid(&format!("Toy Story {i} (1995), Animation|Children")),
                        Sampling {
                            max_tokens: 320,
                            ..GREEDY
                        },
                    )
                    .unwrap()
                    .text
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in answers {
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        let terms = v["terms"].as_array().unwrap();
        assert!(!terms.is_empty() && terms.len() <= 10, "{a}");
    }
}

#[test]
fn endpoint_teacher_sends_the_key_and_fails_fast_without_it() {
    let s = serve(&[], Some("sekret"));
    std::env::set_var("NAVIGEN_TEST_TEACHER_KEY", "sekret");
    let ok = EndpointTeacher::new(config(&s.url, "NAVIGEN_TEST_TEACHER_KEY"));
    ok.complete(&prompt(), GREEDY).unwrap();
    let no = EndpointTeacher::new(config(&s.url, "NAVIGEN_TEST_UNSET_KEY"));
    let e = no.complete(&prompt(), GREEDY).unwrap_err().to_string();
    assert!(e.contains("HTTP 401"), "{e}");
    // Not retried: a 401 is not transient (the retry path reports its attempts).
    assert!(!e.contains("attempts"), "{e}");
    // A server that is gone: every attempt fails, and the error says so.
    let url = s.url.clone();
    drop(s);
    let gone = EndpointTeacher::new(config(&url, "NAVIGEN_TEST_TEACHER_KEY"));
    let e = gone.complete(&prompt(), GREEDY).unwrap_err().to_string();
    assert!(e.contains("4 attempts failed"), "{e}");
}
