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
    /// The supervision of one window of the data, `None` when this teacher has none for it (a
    /// searched sample covers some windows only: the others get no cid2ins example).
    fn for_window(
        &self,
        _ex: &Example,
        history: &[ItemView],
        target: &ItemView,
    ) -> Option<Supervision> {
        Some(self.supervise(history, target))
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
    /// History windows sampled per user for cid2ins (stage 2); next-item training uses every item.
    pub windows_per_user: usize,
    /// Include cid2tid and tid2cid for every item.
    pub item_tasks: bool,
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

/// The cid2ins example of one (history, target) pair (stage 2).
fn instruction_example(
    cat: &Catalog,
    ex: &Example,
    teacher: &dyn InstructionTeacher,
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
    let Some(s) = teacher.for_window(ex, &views(cat, &ex.history), &ItemView::from(t)) else {
        return;
    };
    out.push(SftExample {
        task: Task::Cid2Ins,
        prompt: prompt::prompt_cid2ins(&h, Mode::Think),
        answer: prompt::answer_text(
            Some(&s.reasoning),
            &prompt::answer_json_ins(&s.target_tid, &s.instruction),
        ),
    });
}

/// The (history, target) windows of one user that get a cid2ins example: `n` of them, drawn with a
/// generator of their own per user (seed and user id), so that `teach` finds exactly the pairs that
/// `sft` will ask for, whatever else changes in the mix.
pub fn instruction_windows(
    seq: &TrainSequence,
    max_history: usize,
    n: usize,
    seed: u64,
) -> Vec<Example> {
    let mut windows: Vec<Example> = seq.examples(max_history).collect();
    let user_seed = seq.user.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    windows.shuffle(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(user_seed));
    windows.truncate(n);
    windows
}

/// Windows of one user's items for the next-item format, as (context, targets): windows of
/// `max_history + 1` items; the first has no context and every item of it is a target, each later one
/// takes as targets the items the earlier ones left, with the items before them as context. So every
/// item is a target exactly once, with at most `max_history` items before it (what the device gives)
/// and at least `max_history / 2` (or all the user has).
pub fn next_item_windows<T: Clone>(items: &[T], max_history: usize) -> Vec<(Vec<T>, Vec<T>)> {
    let len = max_history + 1;
    let stride = len - max_history / 2;
    let n = items.len();
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let mut covered = len.min(n);
    out.push((Vec::new(), items[..covered].to_vec()));
    while covered < n {
        let end = (covered + stride).min(n);
        let start = end - len;
        out.push((items[start..covered].to_vec(), items[covered..end].to_vec()));
        covered = end;
    }
    out
}

/// A next-item example: the prompt and the context items (no loss), then the target items.
pub fn next_item_example(context: &[Cid], targets: &[Cid]) -> SftExample {
    SftExample {
        task: Task::Cid2Cid,
        prompt: format!("{}{}", prompt::prompt_next(), prompt::items_text(context)),
        answer: prompt::items_text(targets),
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

/// Training examples of a stage: every item's cid2tid/tid2cid (when `item_tasks`), every training item
/// as a next-item target ([`next_item_windows`]), and in stage 2 cid2ins on sampled history windows.
pub fn training_examples(
    cat: &Catalog,
    train: &[TrainSequence],
    opts: &MixOptions,
    teacher: &dyn InstructionTeacher,
) -> Vec<SftExample> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(opts.seed);
    let mut out = Vec::new();
    if opts.item_tasks {
        item_examples(cat, opts.stage, &mut out);
    }
    for seq in train {
        let Some(items) = cids(cat, &seq.items) else {
            continue;
        };
        for (context, targets) in next_item_windows(&items, opts.max_history) {
            out.push(next_item_example(&context, &targets));
        }
        if opts.stage >= 2 {
            for ex in instruction_windows(seq, opts.max_history, opts.windows_per_user, opts.seed) {
                instruction_example(cat, &ex, teacher, &mut out);
            }
        }
    }
    out.shuffle(&mut rng);
    out
}

/// Validation examples from the validation split (one per user, up to `limit` users): the next item,
/// and in stage 2 the instruction too.
pub fn validation_examples(
    cat: &Catalog,
    valid: &[Example],
    stage: u8,
    teacher: &dyn InstructionTeacher,
    limit: usize,
) -> Vec<SftExample> {
    let mut out = Vec::new();
    for ex in valid.iter().take(limit) {
        if let (Some(h), Some(t)) = (
            cids(cat, &ex.history),
            cids(cat, std::slice::from_ref(&ex.target)),
        ) {
            if !h.is_empty() {
                out.push(next_item_example(&h, &t));
            }
        }
        if stage >= 2 {
            instruction_example(cat, ex, teacher, &mut out);
        }
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
        texts.push(prompt::prompt_next());
        for mode in [Mode::Direct, Mode::Think] {
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
    fn every_item_is_a_target_once_with_bounded_context() {
        for n in [1usize, 2, 5, 20, 21, 22, 33, 100, 257] {
            for h in [1usize, 2, 5, 20, 50] {
                let items: Vec<usize> = (0..n).collect();
                let w = next_item_windows(&items, h);
                let targets: Vec<usize> = w.iter().flat_map(|(_, t)| t.clone()).collect();
                assert_eq!(targets, items, "n {n} h {h}");
                for (c, t) in &w {
                    // Context and targets are contiguous, and no target sees more than h items.
                    let all: Vec<usize> = c.iter().chain(t).copied().collect();
                    assert!(all.windows(2).all(|p| p[1] == p[0] + 1));
                    assert!(all.len() <= h + 1, "n {n} h {h}: {all:?}");
                    // Each target sees at least h/2 earlier items, or all there are.
                    let first = t[0];
                    assert!(c.len() >= (h / 2).min(first), "n {n} h {h}: {c:?} {t:?}");
                }
            }
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
