//! `navigen serve`: an OpenAI-compatible chat endpoint over any instruct GGUF on navigen's llama.cpp
//! runtime ([`navigen::chat`]), on the loopback address by default. It serves a teacher to
//! `navigen-train teach --teacher-url` (and to any tool that speaks the protocol) without a second
//! copy of the model per process.
//!
//! Routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (non-streaming; `messages`
//! with string contents, `temperature`, `top_p`, `seed`, `max_tokens`/`max_completion_tokens`, and
//! `response_format` of type `json_schema` or `json_object`, enforced by a grammar). Requests are
//! answered one at a time: one model call already uses every core.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use navigen::chat::{ChatOptions, Finish, Message};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

#[derive(clap::Args)]
pub struct ServeOptions {
    /// An instruct GGUF.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 = a free port (printed on the first line of stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// CPU threads (the global --threads).
    #[arg(skip)]
    pub threads: u32,
    /// Most tokens one answer may have, whatever a request asks.
    #[arg(long, default_value_t = 2048)]
    max_tokens_limit: u32,
    /// Environment variable holding the key clients must send as `Authorization: Bearer KEY`
    /// (no check when unset or empty).
    #[arg(long, default_value = "NAVIGEN_SERVE_KEY")]
    key_env: String,
    /// Tests of clients' retries: answer the first N chat requests with 503 and `Retry-After: 0`.
    #[arg(long, default_value_t = 0, hide = true)]
    fail_first: u32,
}

fn reply(req: Request, status: u16, body: &Value, extra: &[(&str, &str)]) {
    let mut r = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(
            Header::from_bytes("Content-Type", "application/json").expect("a valid header"),
        );
    for (k, v) in extra {
        r = r.with_header(Header::from_bytes(*k, *v).expect("a valid header"));
    }
    // A client that went away is not the server's error.
    let _ = req.respond(r);
}

fn error(req: Request, status: u16, kind: &str, message: &str) {
    reply(
        req,
        status,
        &json!({"error": {"message": message, "type": kind}}),
        &[],
    );
}

/// The chat request as [`navigen::chat`] takes it, or what is wrong with it.
fn parse(body: &Value, limit: u32) -> std::result::Result<(Vec<Message>, ChatOptions), String> {
    let msgs = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or("\"messages\" must be a non-empty array")?;
    let mut messages = Vec::new();
    for m in msgs {
        let role = m["role"].as_str().ok_or("every message needs a \"role\"")?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!("unsupported role {role:?}"));
        }
        let content = m["content"]
            .as_str()
            .ok_or("message contents must be strings")?;
        messages.push(Message::new(role, content));
    }
    if body["stream"].as_bool() == Some(true) {
        return Err("\"stream\": true is not supported by this server".into());
    }
    let max = body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64())
        .unwrap_or(512)
        .clamp(1, limit as u64) as u32;
    let json_schema = match body["response_format"]["type"].as_str() {
        None | Some("text") => None,
        Some("json_object") => Some(r#"{"type":"object"}"#.to_string()),
        Some("json_schema") => {
            let s = &body["response_format"]["json_schema"]["schema"];
            if !s.is_object() {
                return Err("response_format.json_schema.schema must be an object".into());
            }
            Some(s.to_string())
        }
        Some(t) => return Err(format!("unsupported response_format type {t:?}")),
    };
    let temperature = body["temperature"].as_f64().unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err("\"temperature\" must be in 0..=2".into());
    }
    Ok((
        messages,
        ChatOptions {
            max_tokens: max,
            temperature: temperature as f32,
            top_p: body["top_p"].as_f64().unwrap_or(1.0).clamp(0.0, 1.0) as f32,
            seed: body["seed"].as_u64().unwrap_or(0) as u32,
            threads: 0,
            json_schema,
            // The API has no way to say which part of a prompt is shared: each request is decoded
            // whole (a reused prefix would change answers: navigen::chat::ChatSession).
            shared_prefix: 0,
        },
    ))
}

pub fn run(o: ServeOptions) -> Result<()> {
    let model = navigen::llm::Model::load(&o.model, 0)?;
    let name = o
        .model
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let server = Server::http((o.host.as_str(), o.port))
        .map_err(|e| anyhow::anyhow!("listening on {}:{}: {e}", o.host, o.port))?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("the server has no IP address")?;
    println!("listening on http://{addr}/v1");
    let key = std::env::var(&o.key_env).ok().filter(|k| !k.is_empty());
    let mut to_fail = o.fail_first;
    for mut req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        match (req.method(), path.as_str()) {
            (Method::Get, "/health") => reply(req, 200, &json!({"status": "ok"}), &[]),
            (Method::Get, "/v1/models") => reply(
                req,
                200,
                &json!({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "navigen"}]}),
                &[],
            ),
            (Method::Post, "/v1/chat/completions") => {
                if let Some(k) = &key {
                    let sent = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.as_str().to_string());
                    if sent.as_deref() != Some(format!("Bearer {k}").as_str()) {
                        error(req, 401, "authentication_error", "missing or wrong API key");
                        continue;
                    }
                }
                if to_fail > 0 {
                    to_fail -= 1;
                    reply(
                        req,
                        503,
                        &json!({"error": {"message": "busy (--fail-first)", "type": "server_error"}}),
                        &[("Retry-After", "0")],
                    );
                    continue;
                }
                let mut text = String::new();
                if let Err(e) = req.as_reader().take(16 << 20).read_to_string(&mut text) {
                    error(
                        req,
                        400,
                        "invalid_request_error",
                        &format!("reading the body: {e}"),
                    );
                    continue;
                }
                let body: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        error(
                            req,
                            400,
                            "invalid_request_error",
                            &format!("the body is not JSON: {e}"),
                        );
                        continue;
                    }
                };
                let (messages, mut opts) = match parse(&body, o.max_tokens_limit) {
                    Ok(p) => p,
                    Err(e) => {
                        error(req, 400, "invalid_request_error", &e);
                        continue;
                    }
                };
                opts.threads = o.threads;
                match model.chat(&messages, &opts) {
                    Ok(r) => {
                        let created = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        reply(
                            req,
                            200,
                            &json!({
                                "id": format!("chatcmpl-{created}"),
                                "object": "chat.completion",
                                "created": created,
                                "model": name,
                                "choices": [{
                                    "index": 0,
                                    "message": {"role": "assistant", "content": r.text},
                                    "finish_reason": match r.finish { Finish::Stop => "stop", Finish::Length => "length" },
                                }],
                                "usage": {
                                    "prompt_tokens": r.prompt_tokens,
                                    "completion_tokens": r.completion_tokens,
                                    "total_tokens": r.prompt_tokens + r.completion_tokens,
                                },
                            }),
                            &[],
                        );
                    }
                    Err(e) => error(req, 500, "server_error", &e.to_string()),
                }
            }
            _ => error(req, 404, "not_found", &format!("no route {path}")),
        }
    }
    Ok(())
}
