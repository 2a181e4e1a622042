//! The one home of prompt templates and task formats. The trainer builds its supervision with these
//! functions and the device builds its prompts with the same ones, so what is trained is what runs.
//!
//! Chat format: ChatML (`<|im_start|>role\n...<|im_end|>\n`), which SmolLM2 and Qwen3 both use.
//! Every answer is one JSON object, optionally preceded by `<think>\n...\n</think>\n\n`.

use serde::{Deserialize, Serialize};

use crate::cid::{cid_begin_lit, cid_end_lit, Cid};
pub use crate::format::catalog::MAX_TID_TERMS;

/// Version of the prompt and answer formats in this module. Bump it whenever a template changes: a
/// bundle records the version it was trained with and the runtime refuses a mismatch.
pub const PROMPT_VERSION: u32 = 1;
/// Most history items a prompt carries by default: `prepare --max-history` sets it per dataset, the
/// trainer uses what prepare recorded, and a bundle records it for the device
/// ([`crate::bundle::Manifest::max_history`]).
pub const MAX_HISTORY: usize = 20;

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
// The reasoning markers' text exists once, as literal macros, so that the wrapper texts below are
// built from them.
macro_rules! think_start_lit {
    () => {
        "<think>"
    };
}
macro_rules! think_end_lit {
    () => {
        "</think>"
    };
}
pub const THINK_START: &str = think_start_lit!();
pub const THINK_END: &str = think_end_lit!();
/// What opens an answer in think mode (the device forces it after the prompt).
pub const BEFORE_THINK: &str = concat!(think_start_lit!(), "\n");
/// After the reasoning block, the answer starts with this (used to force phase two of generation).
pub const AFTER_THINK: &str = concat!("\n", think_end_lit!(), "\n\n");
/// Special tokens every navigen model has (CID tokens come from the catalog).
pub const CHAT_SPECIAL_TOKENS: [&str; 2] = [IM_START, IM_END];
/// Reasoning markers: atomic tokens, not special (they are ordinary text to the chat template).
pub const THINK_TOKENS: [&str; 2] = [THINK_START, THINK_END];
/// The chat template stored in exported GGUF files (Jinja, for tools that render it).
pub const CHAT_TEMPLATE_JINJA: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub const SYSTEM: &str = concat!(
    "You are navigen. You read a person's history of items, written as identifiers ",
    cid_begin_lit!(),
    "...",
    cid_end_lit!(),
    ", and answer with one JSON object."
);

/// What is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One CID -> its TID.
    Cid2Tid,
    /// A TID -> the CID it describes.
    Tid2Cid,
    /// History CIDs -> next CID.
    Cid2Cid,
    /// History CIDs -> target TID and a creation instruction.
    Cid2Ins,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Cid2Tid, Task::Tid2Cid, Task::Cid2Cid, Task::Cid2Ins];
    pub fn name(self) -> &'static str {
        match self {
            Task::Cid2Tid => "cid2tid",
            Task::Tid2Cid => "tid2cid",
            Task::Cid2Cid => "cid2cid",
            Task::Cid2Ins => "cid2ins",
        }
    }
}

/// Whether the answer starts with a reasoning block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// JSON only (stage 1, and constrained next-item decoding on the device).
    Direct,
    /// `<think>` reasoning, then JSON (stage 2 and RL).
    Think,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| json_str(s.as_ref())).collect();
    format!("[{}]", parts.join(","))
}

fn answer_format(task: Task) -> &'static str {
    match task {
        Task::Cid2Tid => r#"{"target_tid":["term",...]}"#,
        Task::Tid2Cid | Task::Cid2Cid => concat!(
            r#"{"target_cid":""#,
            cid_begin_lit!(),
            "...",
            cid_end_lit!(),
            r#""}"#
        ),
        Task::Cid2Ins => r#"{"target_tid":["term",...],"target_ins":"instruction"}"#,
    }
}

fn mode_line(task: Task, mode: Mode) -> String {
    match mode {
        Mode::Direct => format!("Answer with JSON only: {}", answer_format(task)),
        Mode::Think => format!(
            "Think inside <think></think> first, then answer with JSON: {}",
            answer_format(task)
        ),
    }
}

fn history_list(h: &[Cid]) -> String {
    let texts: Vec<String> = h.iter().map(Cid::to_text).collect();
    format!("[{}]", texts.join(","))
}

fn user(task: Task, mode: Mode, body: String) -> String {
    chat_prompt(SYSTEM, &format!("{body}\n{}", mode_line(task, mode)))
}

/// cid2tid: one CID -> its terms.
pub fn prompt_cid2tid(cid: &Cid, mode: Mode) -> String {
    user(
        Task::Cid2Tid,
        mode,
        format!(
            "Item: {cid}\nDescribe this item with at most {MAX_TID_TERMS} short terms, most important first."
        ),
    )
}

/// tid2cid: terms -> the CID they describe.
pub fn prompt_tid2cid<S: AsRef<str>>(tid: &[S], mode: Mode) -> String {
    user(
        Task::Tid2Cid,
        mode,
        format!(
            "Terms: {}\nWhich item do these terms describe?",
            json_list(tid)
        ),
    )
}

/// cid2cid: history -> next CID.
pub fn prompt_cid2cid(history: &[Cid], mode: Mode) -> String {
    user(
        Task::Cid2Cid,
        mode,
        format!(
            "History, oldest first: {}\nPredict the item this person will engage with next.",
            history_list(history)
        ),
    )
}

/// cid2ins: history -> target terms and a creation instruction.
pub fn prompt_cid2ins(history: &[Cid], mode: Mode) -> String {
    user(
        Task::Cid2Ins,
        mode,
        format!(
            "History, oldest first: {}\nPredict what this person will want next and write a creation instruction \
             for an image or video generator that shows it.",
            history_list(history)
        ),
    )
}

/// ChatML up to the start of the assistant's answer: what the model is given.
pub fn chat_prompt(system: &str, user: &str) -> String {
    format!(
        "{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
    )
}

/// The assistant's text: optional reasoning block, the JSON, and the end-of-turn marker.
pub fn answer_text(reasoning: Option<&str>, json: &str) -> String {
    match reasoning {
        Some(r) => format!("{}{IM_END}", think_answer(r, json)),
        None => format!("{json}{IM_END}"),
    }
}

/// A think-mode answer without the end-of-turn marker: the reasoning block, then the JSON.
pub fn think_answer(reasoning: &str, json: &str) -> String {
    format!("{BEFORE_THINK}{}{AFTER_THINK}{json}", reasoning.trim())
}
/// A constrained next-item answer starts with this prefix; the CID tokens and `"}` follow.
pub const CID_ANSWER_PREFIX: &str = "{\"target_cid\":\"";
/// What closes a constrained next-item answer after the CID.
pub const CID_ANSWER_SUFFIX: &str = "\"}";

pub fn answer_json_cid(cid: &Cid) -> String {
    format!("{CID_ANSWER_PREFIX}{cid}{CID_ANSWER_SUFFIX}")
}

pub fn answer_json_tid<S: AsRef<str>>(tid: &[S]) -> String {
    format!("{{\"target_tid\":{}}}", json_list(tid))
}

pub fn answer_json_ins<S: AsRef<str>>(tid: &[S], ins: &str) -> String {
    format!(
        "{{\"target_tid\":{},\"target_ins\":{}}}",
        json_list(tid),
        json_str(ins)
    )
}

/// JSON schema of the cid2ins answer (the device turns it into a grammar).
pub fn ins_answer_schema() -> String {
    format!(
        r#"{{"type":"object","properties":{{"target_tid":{{"type":"array","items":{{"type":"string"}},"maxItems":{MAX_TID_TERMS}}},"target_ins":{{"type":"string"}}}},"required":["target_tid","target_ins"],"additionalProperties":false}}"#
    )
}

/// A parsed answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tid: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ins: Option<String>,
}

/// Splits generated text into (reasoning, JSON answer). Tolerates a missing reasoning block and the
/// end-of-turn marker; returns `None` when no JSON object parses.
pub fn parse_answer(text: &str) -> (Option<String>, Option<Answer>) {
    let text = text.trim_end().trim_end_matches(IM_END).trim();
    let (reasoning, rest) = match (text.find(THINK_START), text.find(THINK_END)) {
        (Some(s), Some(e)) if s < e => (
            Some(text[s + THINK_START.len()..e].trim().to_string()),
            &text[e + THINK_END.len()..],
        ),
        (None, Some(e)) => (
            Some(text[..e].trim().to_string()),
            &text[e + THINK_END.len()..],
        ),
        _ => (None, text),
    };
    let rest = rest.trim();
    let answer = rest.find('{').and_then(|start| {
        let mut de = serde_json::Deserializer::from_str(&rest[start..]).into_iter::<Answer>();
        de.next().and_then(Result::ok)
    });
    (reasoning, answer)
}

/// Zero-shot mode: an instruct model without CID tokens sees the history as titles and terms.
pub fn zero_shot_prompt(history: &[(String, Vec<String>)]) -> String {
    let mut lines = String::new();
    for (i, (title, tid)) in history.iter().enumerate() {
        lines.push_str(&format!("{}. {} ({})\n", i + 1, title, tid.join(", ")));
    }
    let user = format!(
        "A person engaged with these items, oldest first:\n{lines}\nGuess what they will want next. Answer with one JSON \
         object with two fields: \"target_tid\", a list of up to {MAX_TID_TERMS} short terms describing that next item, and \
         \"target_ins\", one or two sentences telling an image or video generator what to create for it."
    );
    chat_prompt(
        "You are a helpful assistant that answers with one JSON object.",
        &user,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_answers() {
        let c = Cid::new(&[1, 2, 3]).unwrap();
        let p = prompt_cid2cid(&[c, c], Mode::Direct);
        assert!(p.starts_with("<|im_start|>system\n"));
        assert!(p.ends_with("<|im_start|>assistant\n"));
        assert!(p.contains("[<|cid_begin|><s_a_1><s_b_2><s_c_3><|cid_end|>,<|cid_begin|>"));
        let a = answer_text(Some("I think."), &answer_json_cid(&c));
        assert_eq!(a, "<think>\nI think.\n</think>\n\n{\"target_cid\":\"<|cid_begin|><s_a_1><s_b_2><s_c_3><|cid_end|>\"}<|im_end|>");
        let (r, ans) = parse_answer(&a);
        assert_eq!(r.as_deref(), Some("I think."));
        assert_eq!(
            ans.unwrap().target_cid.as_deref(),
            Some(c.to_text().as_str())
        );
        let ins = answer_json_ins(&["drama", "a \"quote\""], "Paint it.");
        let (_, ans) = parse_answer(&ins);
        let ans = ans.unwrap();
        assert_eq!(ans.target_tid.unwrap(), vec!["drama", "a \"quote\""]);
        assert_eq!(ans.target_ins.as_deref(), Some("Paint it."));
        assert_eq!(parse_answer("no json here").1, None);
    }

    /// The texts built from the shared constants are the texts models were trained on (prompt format 1).
    #[test]
    fn shared_constants_build_the_trained_texts() {
        assert_eq!(
            SYSTEM,
            "You are navigen. You read a person's history of items, written as identifiers \
<|cid_begin|>...<|cid_end|>, and answer with one JSON object."
        );
        assert_eq!(AFTER_THINK, "\n</think>\n\n");
        assert_eq!(BEFORE_THINK, "<think>\n");
        assert_eq!(
            answer_format(Task::Cid2Cid),
            r#"{"target_cid":"<|cid_begin|>...<|cid_end|>"}"#
        );
        assert_eq!(
            ins_answer_schema(),
            r#"{"type":"object","properties":{"target_tid":{"type":"array","items":{"type":"string"},"maxItems":10},"target_ins":{"type":"string"}},"required":["target_tid","target_ins"],"additionalProperties":false}"#
        );
        assert!(prompt_cid2tid(&Cid::new(&[1, 2, 3]).unwrap(), Mode::Direct)
            .contains("Describe this item with at most 10 short terms, most important first."));
        let v: serde_json::Value = serde_json::from_str(&ins_answer_schema()).unwrap();
        assert_eq!(v["properties"]["target_tid"]["maxItems"], MAX_TID_TERMS);
    }
}
