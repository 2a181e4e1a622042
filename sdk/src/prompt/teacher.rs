//! Prompts of the trainer's teacher (docs/method.md section 4): the step-1 reasoning, the founders of
//! the instruction search, the judge, crossover and mutation, the first-person distillation, and TID
//! compression. They live here, beside the device's prompts, so that one module holds every text a
//! model is shown; the device never sends them. Every answer is one JSON object of the schema given
//! beside its prompt (a grammar locally, a `response_format` on an endpoint).

use super::MAX_TID_TERMS;

/// Version of the teacher prompts and schemas. Bump it when a text changes: it is part of the key of
/// every cached teacher answer, so a change is never answered from an old cache.
pub const TEACHER_PROMPT_VERSION: u32 = 3;

/// The most recent items a teacher prompt shows. A 135M teacher loses the thread in a 20-item list;
/// the device's model still reads the whole history.
pub const TEACHER_HISTORY_ITEMS: usize = 10;

/// An item as the teacher reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemText {
    pub title: String,
    pub terms: Vec<String>,
}

/// A prompt: system text, user text, and the JSON schema the answer must follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeacherPrompt {
    /// What is asked, for reports and cache keys ("reason", "founder", "judge", ...).
    pub role: &'static str,
    pub system: String,
    pub user: String,
    pub schema: String,
    /// Bytes at the start of `user` that the other prompts of one window share (the history and the
    /// target's terms, [`context`] and a blank line): a local teacher decodes them apart and keeps them
    /// between requests (`ChatOptions::shared_prefix`). 0: nothing shared.
    pub shared: usize,
}

/// The founders' temperaments: name and what the instruction should do.
pub const FOUNDER_STYLES: [(&str, &str); 3] = [
    (
        "conservative",
        "Stay close to what the history shows: a faithful, concrete scene.",
    ),
    (
        "balanced",
        "Keep the person's taste, and add one fresh visual idea.",
    ),
    (
        "exploratory",
        "Take a bolder creative angle that still fits what the person is heading towards.",
    ),
];

const SYSTEM: &str = "You help an app write creation instructions for an image or video generator, from what a person \
recently engaged with. You answer with one JSON object only.";

fn history_lines(history: &[ItemText]) -> String {
    let mut s = String::new();
    let recent = &history[history.len().saturating_sub(TEACHER_HISTORY_ITEMS)..];
    for (i, it) in recent.iter().enumerate() {
        s.push_str(&format!("{}. {}", i + 1, it.title));
        if !it.terms.is_empty() {
            s.push_str(&format!(" ({})", it.terms.join(", ")));
        }
        s.push('\n');
    }
    s
}

fn terms(t: &[String]) -> String {
    serde_json::to_string(t).expect("strings serialise")
}

fn object_schema(fields: &[(&str, &str)]) -> String {
    let props: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).expect("string")))
        .collect();
    let req: Vec<String> = fields
        .iter()
        .map(|(k, _)| serde_json::to_string(k).expect("string"))
        .collect();
    format!(
        r#"{{"type":"object","properties":{{{}}},"required":[{}],"additionalProperties":false}}"#,
        props.join(","),
        req.join(",")
    )
}

/// A string of bounded length: a small teacher otherwise runs on to its token budget.
fn text(max: usize) -> String {
    format!(r#"{{"type":"string","minLength":1,"maxLength":{max}}}"#)
}

fn candidate_schema() -> String {
    object_schema(&[("prompt", &text(400)), ("reasoning", &text(300))])
}

fn context(history: &[ItemText], target_tid: &[String]) -> String {
    format!(
        "Recent history, oldest first:\n{}\nWhat they engaged with next is described by: {}\n",
        history_lines(history),
        terms(target_tid)
    )
}

/// The length of what every prompt about one window starts with: [`context`] and the blank line after it.
fn shared(history: &[ItemText], target_tid: &[String]) -> usize {
    context(history, target_tid).len() + 1
}

/// How a written answer is described. No worked example: SmolLM2-135M copied one verbatim in 45 of 50
/// answers (prompt version 2, docs/benchmarks.md), and no placeholder text it could copy either.
const WRITTEN: &str = "Answer with JSON: \"prompt\" holds the instruction itself, what the picture or clip shows \
(subject, setting, light, medium), not a request to write one; \"reasoning\" one sentence on why it fits.";

const NO_LEAK: &str = "Point at what these terms mean without quoting any of them.";

/// Step 1: why the history leads where it does, without naming the target.
pub fn reason(history: &[ItemText], target_tid: &[String]) -> TeacherPrompt {
    TeacherPrompt {
        role: "reason",
        shared: shared(history, target_tid),
        system: SYSTEM.into(),
        user: format!(
            "{}\nIn two or three sentences, explain from the history what this person is likely to want next. \
             {NO_LEAK}\nAnswer with JSON whose \"reasoning\" field holds your explanation.",
            context(history, target_tid)
        ),
        schema: object_schema(&[("reasoning", &text(600))]),
    }
}

/// A founder of the search, in one of the [`FOUNDER_STYLES`].
pub fn founder(
    history: &[ItemText],
    target_tid: &[String],
    reasoning: &str,
    style: (&str, &str),
) -> TeacherPrompt {
    TeacherPrompt {
        role: "founder",
        shared: shared(history, target_tid),
        system: SYSTEM.into(),
        user: format!(
            "{}\nWhy: {reasoning}\n\nWrite one creation instruction (one or two sentences: subject, scene, style) for an \
             image or video generator that shows what this person wants next. Approach: {} {NO_LEAK}\n\
             {WRITTEN}",
            context(history, target_tid),
            style.1
        ),
        schema: candidate_schema(),
    }
}

/// The judge: four scores from 0 to 10.
pub fn judge(history: &[ItemText], target_tid: &[String], instruction: &str) -> TeacherPrompt {
    let score = r#"{"type":"integer","minimum":0,"maximum":10}"#;
    TeacherPrompt {
        role: "judge",
        shared: shared(history, target_tid),
        system: SYSTEM.into(),
        user: format!(
            "{}\nInstruction to judge: {}\n\nScore it from 0 to 10 on: consistency (it shows what the terms describe \
             and fits the history), novelty (fresh rather than generic), aesthetic (vivid and visually appealing), \
             executability (a generator can render it as written). Use the whole scale: 0 is useless, 10 is excellent.",
            context(history, target_tid),
            serde_json::to_string(instruction).expect("string")
        ),
        schema: object_schema(&[
            ("consistency", score),
            ("novelty", score),
            ("aesthetic", score),
            ("executability", score),
        ]),
    }
}

/// Crossover: the best instruction's hold on the target with the runner-up's visual expressiveness.
pub fn crossover(
    history: &[ItemText],
    target_tid: &[String],
    elite: &str,
    mate: &str,
) -> TeacherPrompt {
    TeacherPrompt {
        role: "crossover",
        shared: shared(history, target_tid),
        system: SYSTEM.into(),
        user: format!(
            "{}\nInstruction A: {elite}\nInstruction B: {mate}\n\nWrite one new instruction that keeps what A shows \
             and takes the visual expressiveness of B. {NO_LEAK}\n{WRITTEN}",
            context(history, target_tid)
        ),
        schema: candidate_schema(),
    }
}

/// Mutation: a controlled change that keeps the core.
pub fn mutation(history: &[ItemText], target_tid: &[String], elite: &str) -> TeacherPrompt {
    TeacherPrompt {
        role: "mutation",
        shared: shared(history, target_tid),
        system: SYSTEM.into(),
        user: format!(
            "{}\nInstruction: {elite}\n\nChange one thing (the setting, the light, the camera or the medium) and keep \
             what it shows. {NO_LEAK}\n{WRITTEN}",
            context(history, target_tid)
        ),
        schema: candidate_schema(),
    }
}

/// Step 3: one first-person paragraph from the history, the step-1 reasoning and how the instruction
/// was reached (`trajectory`: the instructions tried, in order, best last), in plain words.
pub fn distil(
    history: &[ItemText],
    target_tid: &[String],
    reasoning: &str,
    trajectory: &[String],
) -> TeacherPrompt {
    let tried: String = trajectory
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}. {t}\n", i + 1))
        .collect();
    TeacherPrompt {
        role: "distil",
        shared: shared(history, target_tid),
        system: SYSTEM.into(),
        user: format!(
            "{}\nWhy: {reasoning}\nIdeas considered, the chosen one last:\n{tried}\nWrite one short paragraph in the \
             first person (\"I ...\"), as if thinking it through yourself: what the history shows, where it is \
             heading, and what the final instruction should show. Plain words; do not mention lists, scores or \
             steps. End on what comes next. {NO_LEAK}\nAnswer with JSON whose \"reasoning\" field holds the paragraph.",
            context(history, target_tid)
        ),
        schema: object_schema(&[("reasoning", &text(700))]),
    }
}

/// TID compression: at most [`MAX_TID_TERMS`] ordered terms from a caption.
pub fn compress_tid(caption: &str) -> TeacherPrompt {
    TeacherPrompt {
        role: "tid",
        shared: 0,
        system: SYSTEM.into(),
        user: format!(
            "Item: {caption}\n\nDescribe it with at most {MAX_TID_TERMS} short English terms, most important first: \
             subject or category, then scene or use, key attributes, style or audience only when essential. No \
             repeats."
        ),
        schema: format!(
            r#"{{"type":"object","properties":{{"terms":{{"type":"array","items":{{"type":"string","minLength":1,"maxLength":{}}},"minItems":1,"maxItems":{MAX_TID_TERMS}}}}},"required":["terms"],"additionalProperties":false}}"#,
            super::MAX_TID_TERM_CHARS
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_json_and_prompts_carry_their_inputs() {
        let h = vec![ItemText {
            title: "The Aristocats (1970)".into(),
            terms: vec!["cats".into(), "animation".into()],
        }];
        let t = vec!["cats".to_string(), "family".to_string()];
        let ps = [
            reason(&h, &t),
            founder(&h, &t, "they like cats", FOUNDER_STYLES[0]),
            judge(&h, &t, "Paint a \"cat\"."),
            crossover(&h, &t, "A", "B"),
            mutation(&h, &t, "A"),
            distil(&h, &t, "r", &["A".into(), "B".into()]),
            compress_tid("The Aristocats (1970), Animation|Children"),
        ];
        for p in &ps {
            let v: serde_json::Value = serde_json::from_str(&p.schema).unwrap();
            assert_eq!(v["type"], "object", "{}", p.role);
            assert!(crate::chat::schema_grammar(&p.schema).is_ok(), "{}", p.role);
        }
        assert!(ps[0]
            .user
            .contains("1. The Aristocats (1970) (cats, animation)"));
        assert!(ps[0].user.contains(r#"["cats","family"]"#));
        assert!(ps[2].user.contains(r#""Paint a \"cat\".""#));
        // The window's prompts start with the same shared part, and it ends where a line does.
        let shared = &ps[0].user[..ps[0].shared];
        assert!(shared.ends_with("\n\n") && shared.contains("The Aristocats"));
        for p in &ps[..6] {
            assert_eq!(&p.user[..p.shared], shared, "{}", p.role);
            assert!(p.user.len() > p.shared, "{}", p.role);
        }
        assert_eq!(ps[6].shared, 0);
    }

    #[test]
    fn prompts_show_the_most_recent_items() {
        let h: Vec<ItemText> = (1..=15)
            .map(|i| ItemText {
                title: format!("Film {i}"),
                terms: vec![],
            })
            .collect();
        let p = reason(&h, &["x".to_string()]);
        assert!(p.user.contains("1. Film 6\n"), "{}", p.user);
        assert!(p.user.contains("10. Film 15\n"), "{}", p.user);
        assert!(!p.user.contains("Film 5\n"), "{}", p.user);
    }
}
