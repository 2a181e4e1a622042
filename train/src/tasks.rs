//! Supervision for the four tasks, built from the catalog and the splits with the shared prompt module
//! (`navigen::prompt`), so the device sees exactly the prompts the model was trained on.
//!
//! Reasoning and cid2ins targets come from an [`InstructionTeacher`]. The shipped [`OfflineTeacher`] writes
//! them from templates (target TID + history terms); the LLM teacher with evolutionary search
//! (docs/method.md section 4) implements the same trait.

use navigen::format::Item;
use navigen::prompt::{self, Mode, Task};
use navigen::{Catalog, Cid};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::sequences::{Example, TrainSequence};

/// One supervised example: the prompt (no loss) and the answer (loss).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub task: Task,
    pub prompt: String,
    pub answer: String,
}

/// What an item looks like to a teacher.
#[derive(Clone, Debug)]
pub struct ItemView {
    pub title: String,
    pub tid: Vec<String>,
}

impl From<Item<'_>> for ItemView {
    fn from(it: Item<'_>) -> Self {
        ItemView {
            title: it.title.to_string(),
            tid: it.tid_vec(),
        }
    }
}

/// Reasoning and instruction for one (history, target) pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Supervision {
    /// First-person reasoning that ends on the target's direction.
    pub reasoning: String,
    pub target_tid: Vec<String>,
    pub instruction: String,
}

/// Writes reasoning and creation instructions. An LLM teacher implements this too.
pub trait InstructionTeacher: Send + Sync {
    fn name(&self) -> &str;
    fn supervise(&self, history: &[ItemView], target: &ItemView) -> Supervision;
    /// Short reasoning for the identifier tasks in think mode.
    fn reason_next(&self, history: &[ItemView], target: &ItemView) -> String {
        self.supervise(history, target).reasoning
    }
}

/// Terms of a history by frequency (recent items break ties), most frequent first.
pub fn history_terms(history: &[ItemView], n: usize) -> Vec<String> {
    let mut counts: Vec<(String, usize, usize)> = Vec::new();
    for (pos, it) in history.iter().enumerate() {
        for t in &it.tid {
            match counts.iter_mut().find(|c| c.0 == *t) {
                Some(c) => {
                    c.1 += 1;
                    c.2 = pos;
                }
                None => counts.push((t.clone(), 1, pos)),
            }
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
    counts.into_iter().take(n).map(|c| c.0).collect()
}

fn join_and(terms: &[String]) -> String {
    match terms.len() {
        0 => String::new(),
        1 => terms[0].clone(),
        n => format!("{} and {}", terms[..n - 1].join(", "), terms[n - 1]),
    }
}

/// Deterministic template teacher.
#[derive(Clone, Debug, Default)]
pub struct OfflineTeacher;

const MEDIA: [&str; 4] = [
    "a cinematic key-art image",
    "a short video scene",
    "a painterly illustration",
    "a poster-style image",
];
const STYLES: [&str; 4] = [
    "dramatic lighting and a clear focal subject",
    "soft natural light, shallow depth of field",
    "bold colours and strong composition",
    "moody atmosphere with rich textures",
];

fn pick<'a>(options: &'a [&'a str], key: &str) -> &'a str {
    let h = key
        .bytes()
        .fold(2166136261u32, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    options[h as usize % options.len()]
}

impl InstructionTeacher for OfflineTeacher {
    fn name(&self) -> &str {
        "offline-template-v1"
    }

    fn supervise(&self, history: &[ItemView], target: &ItemView) -> Supervision {
        let top = history_terms(history, 3);
        let recent: Vec<String> = history
            .iter()
            .rev()
            .take(2)
            .flat_map(|i| i.tid.iter().take(1).cloned())
            .collect();
        let head: Vec<String> = target.tid.iter().take(2).cloned().collect();
        let detail: Vec<String> = target.tid.iter().skip(2).take(3).cloned().collect();
        let reasoning = format!(
            "I see {} items. The history leans toward {}{}. I expect the next one to be {}{}.",
            history.len(),
            if top.is_empty() {
                "varied things".to_string()
            } else {
                join_and(&top)
            },
            if recent.is_empty() {
                String::new()
            } else {
                format!(", and the latest ones are {}", join_and(&recent))
            },
            if head.is_empty() {
                "something related".to_string()
            } else {
                join_and(&head)
            },
            if detail.is_empty() {
                String::new()
            } else {
                format!(", with {}", join_and(&detail))
            },
        );
        let medium = pick(&MEDIA, &target.title);
        let style = pick(&STYLES, &format!("{}{}", target.title, history.len()));
        let subject = if head.is_empty() {
            "a scene".to_string()
        } else {
            format!("a {} scene", join_and(&head))
        };
        let echo: Vec<String> = top
            .iter()
            .filter(|t| !head.contains(t))
            .take(2)
            .cloned()
            .collect();
        let mut instruction = format!("Create {medium} of {subject}");
        if !detail.is_empty() {
            instruction.push_str(&format!(" featuring {}", join_and(&detail)));
        }
        if !echo.is_empty() {
            instruction.push_str(&format!(
                ", with a hint of {} from the viewer's taste",
                join_and(&echo)
            ));
        }
        instruction.push_str(&format!("; {style}; no text or logos."));
        Supervision {
            reasoning,
            target_tid: target.tid.clone(),
            instruction,
        }
    }
}

/// Options of the task mix.
#[derive(Clone, Debug)]
pub struct MixOptions {
    pub stage: u8,
    pub max_history: usize,
    /// Sliding windows sampled per user for cid2cid (and cid2ins in stage 2).
    pub windows_per_user: usize,
    pub seed: u64,
}

fn cids(cat: &Catalog, ids: &[String]) -> Option<Vec<Cid>> {
    ids.iter()
        .map(|id| cat.find_id(id).and_then(|i| cat.item(i)).map(|it| it.cid))
        .collect()
}

fn views(cat: &Catalog, ids: &[String]) -> Vec<ItemView> {
    ids.iter()
        .filter_map(|id| cat.find_id(id).and_then(|i| cat.item(i)))
        .map(ItemView::from)
        .collect()
}

/// Examples for one (history, target) pair: cid2cid, plus cid2ins in stage 2.
fn sequence_examples(
    cat: &Catalog,
    ex: &Example,
    stage: u8,
    teacher: &dyn InstructionTeacher,
    think_next: bool,
    out: &mut Vec<SftExample>,
) {
    let (Some(h), Some(t)) = (
        cids(cat, &ex.history),
        cat.find_id(&ex.target).and_then(|i| cat.item(i)),
    ) else {
        return;
    };
    if h.is_empty() {
        return;
    }
    let hv = views(cat, &ex.history);
    let tv = ItemView::from(t);
    let json = prompt::answer_json_cid(&t.cid);
    if stage >= 2 && think_next {
        let r = teacher.reason_next(&hv, &tv);
        out.push(SftExample {
            task: Task::Cid2Cid,
            prompt: prompt::prompt_cid2cid(&h, Mode::Think),
            answer: prompt::answer_text(Some(&r), &json),
        });
    } else {
        out.push(SftExample {
            task: Task::Cid2Cid,
            prompt: prompt::prompt_cid2cid(&h, Mode::Direct),
            answer: prompt::answer_text(None, &json),
        });
    }
    if stage >= 2 {
        let s = teacher.supervise(&hv, &tv);
        out.push(SftExample {
            task: Task::Cid2Ins,
            prompt: prompt::prompt_cid2ins(&h, Mode::Think),
            answer: prompt::answer_text(
                Some(&s.reasoning),
                &prompt::answer_json_ins(&s.target_tid, &s.instruction),
            ),
        });
    }
}

/// Item examples (cid2tid, tid2cid) for every catalog item.
fn item_examples(cat: &Catalog, stage: u8, out: &mut Vec<SftExample>) {
    for it in cat.items() {
        let tid = it.tid_vec();
        if stage >= 2 {
            let r1 = format!("I recall this item: {}.", it.title);
            out.push(SftExample {
                task: Task::Cid2Tid,
                prompt: prompt::prompt_cid2tid(&it.cid, Mode::Think),
                answer: prompt::answer_text(Some(&r1), &prompt::answer_json_tid(&tid)),
            });
            let r2 = format!("These terms describe {}.", it.title);
            out.push(SftExample {
                task: Task::Tid2Cid,
                prompt: prompt::prompt_tid2cid(&tid, Mode::Think),
                answer: prompt::answer_text(Some(&r2), &prompt::answer_json_cid(&it.cid)),
            });
        } else {
            out.push(SftExample {
                task: Task::Cid2Tid,
                prompt: prompt::prompt_cid2tid(&it.cid, Mode::Direct),
                answer: prompt::answer_text(None, &prompt::answer_json_tid(&tid)),
            });
            out.push(SftExample {
                task: Task::Tid2Cid,
                prompt: prompt::prompt_tid2cid(&tid, Mode::Direct),
                answer: prompt::answer_text(None, &prompt::answer_json_cid(&it.cid)),
            });
        }
    }
}

/// Training examples of a stage: every item's cid2tid/tid2cid and sampled history windows. In stage 2,
/// half of the cid2cid examples think first and half answer directly (the device's constrained
/// next-item decoding uses the direct form).
pub fn training_examples(
    cat: &Catalog,
    train: &[TrainSequence],
    opts: &MixOptions,
    teacher: &dyn InstructionTeacher,
) -> Vec<SftExample> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(opts.seed);
    let mut out = Vec::new();
    item_examples(cat, opts.stage, &mut out);
    for seq in train {
        let mut windows: Vec<Example> = seq.examples(opts.max_history).collect();
        windows.shuffle(&mut rng);
        for ex in windows.iter().take(opts.windows_per_user) {
            let think = rng.gen_bool(0.5);
            sequence_examples(cat, ex, opts.stage, teacher, think, &mut out);
        }
    }
    out.shuffle(&mut rng);
    out
}

/// Validation examples from the validation split (one per user, up to `limit` users).
pub fn validation_examples(
    cat: &Catalog,
    valid: &[Example],
    stage: u8,
    teacher: &dyn InstructionTeacher,
    limit: usize,
) -> Vec<SftExample> {
    let mut out = Vec::new();
    for (i, ex) in valid.iter().take(limit).enumerate() {
        sequence_examples(cat, ex, stage, teacher, i % 2 == 0, &mut out);
    }
    out
}

/// Text the tiny preset's tokenizer is trained on (`model::preset`): every prompt and answer shape, without CID tokens (those are
/// atomic added tokens and must not shape the merges).
pub fn tiny_tokenizer_corpus(cat: &Catalog) -> Vec<String> {
    let strip = |s: &str| -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(p) = rest.find("<|cid_begin|>") {
            out.push_str(&rest[..p]);
            match rest[p..].find("<|cid_end|>") {
                Some(e) => rest = &rest[p + e + "<|cid_end|>".len()..],
                None => {
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    };
    let mut texts = Vec::new();
    let any = cat.item(0).map(|i| i.cid);
    for it in cat.items() {
        texts.push(it.text.to_string());
        texts.push(prompt::answer_json_tid(&it.tid_vec()));
    }
    if let Some(c) = any {
        for mode in [Mode::Direct, Mode::Think] {
            texts.push(strip(&prompt::prompt_cid2cid(&[c], mode)));
            texts.push(strip(&prompt::prompt_cid2ins(&[c], mode)));
            texts.push(strip(&prompt::prompt_cid2tid(&c, mode)));
            texts.push(strip(&prompt::prompt_tid2cid(&["term"], mode)));
        }
    }
    // Reasoning and instruction text of the offline teacher, on a sample of items.
    let views: Vec<ItemView> = cat.items().take(400).map(ItemView::from).collect();
    for w in views.windows(4) {
        let s = OfflineTeacher.supervise(&w[..3], &w[3]);
        texts.push(prompt::think_answer(
            &s.reasoning,
            &prompt::answer_json_ins(&s.target_tid, &s.instruction),
        ));
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(title: &str, tid: &[&str]) -> ItemView {
        ItemView {
            title: title.into(),
            tid: tid.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn offline_teacher_is_deterministic_and_grounded() {
        let h = vec![
            v("A", &["drama", "1990s"]),
            v("B", &["drama", "war"]),
            v("C", &["comedy"]),
        ];
        let t = v("Target", &["thriller", "crime", "1990s", "heist"]);
        let a = OfflineTeacher.supervise(&h, &t);
        assert_eq!(a, OfflineTeacher.supervise(&h, &t));
        assert!(
            a.reasoning
                .starts_with("I see 3 items. The history leans toward drama"),
            "{}",
            a.reasoning
        );
        assert!(a.reasoning.contains("thriller and crime"));
        assert!(
            a.instruction.contains("thriller and crime scene"),
            "{}",
            a.instruction
        );
        assert_eq!(a.target_tid, t.tid);
        assert_eq!(history_terms(&h, 2), vec!["drama", "comedy"]);
    }
}
