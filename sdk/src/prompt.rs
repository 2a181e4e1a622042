//! The one home of prompt templates and task formats. The trainer builds its supervision with these
//! functions and the device builds its prompts with the same ones, so what is trained is what runs.
//!
//! Chat format: ChatML (`<|im_start|>role\n...<|im_end|>\n`), which SmolLM2 and Qwen3 both use.
//! Every answer is one JSON object, optionally preceded by `<think>\n...\n</think>\n\n`.

use serde::{Deserialize, Serialize};

use crate::cid::{cid_begin_lit, cid_end_lit, Cid};
pub use crate::format::catalog::{MAX_TID_TERMS, MAX_TID_TERM_CHARS};

pub mod teacher;

/// Version of the prompt and answer formats in this module. Bump it whenever a template changes: a
/// bundle records the version it was trained with and the runtime refuses a mismatch.
pub const PROMPT_VERSION: u32 = 2;
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
    /// History CIDs -> next CID: the next-item format ([`prompt_next`]), trained on whole sequences.
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
        // cid2cid has no JSON answer: see `prompt_next`.
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

/// cid2cid, the device's next-item format: this prompt, then the items as bare code tokens
/// ([`items_text`]: one token per level, no markers, no separators), and the model continues with the
/// next item's codes. A user's training sequence is this prompt followed by their items, so one causal
/// pass puts a loss on every item (as SASRec trains), and the device's prompt (the same prompt and the
/// last `max_history` items) is a prefix of such a sequence.
///
/// It is short and has no system turn: it is repeated in every training window, where its tokens carry
/// no loss.
pub fn prompt_next() -> String {
    format!("{IM_START}user\n{NEXT_USER}{IM_END}\n{IM_START}assistant\n")
}

/// The user turn of [`prompt_next`].
pub const NEXT_USER: &str = "Items this person engaged with, oldest first, then the next ones.";

/// Items as the next-item format writes them: each item's code tokens, in order, nothing between.
pub fn items_text(items: &[Cid]) -> String {
    items.iter().map(Cid::codes_text).collect()
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
        r#"{{"type":"object","properties":{{"target_tid":{{"type":"array","items":{{"type":"string","minLength":1,"maxLength":{MAX_TID_TERM_CHARS}}},"maxItems":{MAX_TID_TERMS}}},"target_ins":{{"type":"string"}}}},"required":["target_tid","target_ins"],"additionalProperties":false}}"#
    )
}

/// The text that closes a cid2ins answer cut short (by the token budget, or an end of generation the
/// grammar did not expect) into a complete JSON object with both fields: an open string is closed (an
/// open escape completed), an open term list is closed, a missing field gets an empty value. Empty for
/// an answer that is already complete. The device appends it, so every answer parses.
pub fn close_ins_answer(partial: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum Last {
        Start,
        Open,
        Comma,
        Colon,
        Key,
        Value,
    }
    const FIELDS: [(&str, &str); 2] = [("target_tid", "[]"), ("target_ins", "\"\"")];
    let mut stack: Vec<char> = Vec::new();
    let mut last = Last::Start;
    let mut keys: Vec<String> = Vec::new();
    // Inside a string: is it a key, its text so far, and its escape: after '\\' (`Some("")`), or
    // after "\\u" and the hex digits so far (`Some("u..")`).
    struct Str {
        key: bool,
        text: String,
        esc: Option<String>,
        /// A `\\uD800`-`\\uDBFF` escape was the last thing: its low half must follow.
        high: bool,
    }
    let is_high =
        |hex: &str| u32::from_str_radix(hex, 16).is_ok_and(|v| (0xD800..0xDC00).contains(&v));
    let mut string: Option<Str> = None;
    for c in partial.chars() {
        if let Some(st) = &mut string {
            match &mut st.esc {
                Some(e) if e.is_empty() => {
                    if c == 'u' {
                        e.push('u');
                    } else {
                        st.esc = None;
                        st.high = false;
                    }
                }
                Some(e) => {
                    e.push(c);
                    if e.len() == 5 {
                        st.high = is_high(&e[1..]);
                        st.esc = None;
                    }
                }
                None if c == '\\' => st.esc = Some(String::new()),
                None if c == '"' => {
                    if st.key {
                        keys.push(std::mem::take(&mut st.text));
                        last = Last::Key;
                    } else {
                        last = Last::Value;
                    }
                    string = None;
                }
                None => {
                    st.text.push(c);
                    st.high = false;
                }
            }
            continue;
        }
        match c {
            '{' | '[' => {
                stack.push(c);
                last = Last::Open;
            }
            '}' | ']' => {
                stack.pop();
                last = Last::Value;
            }
            ':' => last = Last::Colon,
            ',' => last = Last::Comma,
            '"' => {
                let key = stack.last() == Some(&'{') && matches!(last, Last::Open | Last::Comma);
                string = Some(Str {
                    key,
                    text: String::new(),
                    esc: None,
                    high: false,
                });
            }
            c if c.is_whitespace() => {}
            _ => last = Last::Value,
        }
    }
    let mut out = String::new();
    if last == Last::Start && string.is_none() {
        out.push('{');
        stack.push('{');
        last = Last::Open;
    }
    if let Some(st) = string {
        // Complete an open escape; a high surrogate gets a low half (JSON has no lone halves).
        let (low, high) = ("dc00", "\\udc00");
        match st.esc.as_deref() {
            Some("") if st.high => out.push_str(&format!("u{low}")),
            Some("") => out.push('\\'),
            Some(e) => {
                let have = &e[1..];
                let hex = if st.high && have.len() <= 1 {
                    low.to_string()
                } else {
                    format!("{have}{}", &"0000"[have.len()..])
                };
                out.push_str(&hex[have.len()..]);
                if is_high(&hex) {
                    out.push_str(high);
                }
            }
            None if st.high => out.push_str(high),
            None => {}
        }
        out.push('"');
        if st.key {
            keys.push(st.text);
            last = Last::Key;
        } else {
            last = Last::Value;
        }
    }
    let default_of = |key: Option<&String>| {
        FIELDS
            .iter()
            .find(|(k, _)| Some(&k.to_string()) == key)
            .map_or("\"\"", |(_, d)| d)
    };
    while let Some(top) = stack.pop() {
        if top == '[' {
            out.push_str(if last == Last::Comma { "\"\"]" } else { "]" });
            last = Last::Value;
            continue;
        }
        match last {
            Last::Key => {
                out.push(':');
                out.push_str(default_of(keys.last()));
                last = Last::Value;
            }
            Last::Colon => {
                out.push_str(default_of(keys.last()));
                last = Last::Value;
            }
            _ => {}
        }
        if stack.is_empty() {
            for (k, d) in FIELDS {
                if !keys.iter().any(|have| have == k) {
                    if last == Last::Value {
                        out.push(',');
                    }
                    out.push_str(&format!("\"{k}\":{d}"));
                    last = Last::Value;
                }
            }
        } else if last == Last::Comma {
            out.push_str("\"\":\"\"");
        }
        out.push('}');
        last = Last::Value;
    }
    out
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
        let p = prompt_cid2ins(&[c, c], Mode::Think);
        assert!(p.starts_with("<|im_start|>system\n"));
        assert!(p.ends_with("<|im_start|>assistant\n"));
        assert!(p.contains("[<|cid_begin|><s_a_1><s_b_2><s_c_3><|cid_end|>,<|cid_begin|>"));
        let n = prompt_next();
        assert!(n.ends_with("<|im_start|>assistant\n"));
        let d = Cid::new(&[4, 0, 7]).unwrap();
        assert_eq!(
            items_text(&[c, d]),
            "<s_a_1><s_b_2><s_c_3><s_a_4><s_b_0><s_c_7>"
        );
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

    #[test]
    fn every_cut_of_an_answer_closes_into_valid_json() {
        let full = answer_json_ins(
            &["cats", "a \"q\" \\ x", "caf\u{e9}"],
            "Paint a cat \\ dog, \"soft\" \u{1F408}.",
        );
        let spaced = answer_json_ins(&["cats", "dogs"], "Paint cats.")
            .replace(',', " ,\n ")
            .replace(':', " : ");
        let escaped =
            "{\"target_tid\":[\"a\\u00e9\"],\"target_ins\":\"x\\u0041\\n\\ud83d\\ude00!\"}"
                .to_string();
        for text in [full, spaced, escaped] {
            assert_eq!(close_ins_answer(&text), "", "{text}");
            let cuts: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for i in cuts {
                let cut = &text[..i];
                let done = format!("{cut}{}", close_ins_answer(cut));
                let v: serde_json::Value = serde_json::from_str(&done)
                    .unwrap_or_else(|e| panic!("{cut:?} closed as {done:?}: {e}"));
                assert!(v["target_tid"].is_array(), "{done}");
                assert!(v["target_ins"].is_string(), "{done}");
                let (_, a) = parse_answer(&done);
                assert!(a.is_some_and(|a| a.target_tid.is_some() && a.target_ins.is_some()));
            }
        }
        assert_eq!(
            close_ins_answer("\n\n"),
            "{\"target_tid\":[],\"target_ins\":\"\"}"
        );
    }

    /// The texts built from the shared constants are the texts models were trained on (prompt format 2).
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
            answer_format(Task::Tid2Cid),
            r#"{"target_cid":"<|cid_begin|>...<|cid_end|>"}"#
        );
        assert_eq!(
            prompt_next(),
            "<|im_start|>user\nItems this person engaged with, oldest first, then the next ones.<|im_end|>\n\
<|im_start|>assistant\n"
        );
        assert_eq!(
            ins_answer_schema(),
            r#"{"type":"object","properties":{"target_tid":{"type":"array","items":{"type":"string","minLength":1,"maxLength":40},"maxItems":10},"target_ins":{"type":"string"}},"required":["target_tid","target_ins"],"additionalProperties":false}"#
        );
        assert!(prompt_cid2tid(&Cid::new(&[1, 2, 3]).unwrap(), Mode::Direct)
            .contains("Describe this item with at most 10 short terms, most important first."));
        let v: serde_json::Value = serde_json::from_str(&ins_answer_schema()).unwrap();
        assert_eq!(v["properties"]["target_tid"]["maxItems"], MAX_TID_TERMS);
    }
}
