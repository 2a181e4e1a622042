//! The instruction search of docs/method.md section 4 for one (history, target): step-1 reasoning,
//! founders, rounds of judge + elite/crossover/mutation, a final rescoring, and the first-person
//! distillation of how the winner was reached. Every teacher call goes through [`Asker`] (cached).

use navigen::prompt::teacher::{self as tp, ItemText, FOUNDER_STYLES};
use serde::{Deserialize, Serialize};

use super::ask::Asker;
use super::backend::Sampling;

/// Rounds, population, weights and penalties (defaults: the reference's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    pub rounds: usize,
    /// Founders, and the population each round keeps (elite, crossover, then mutations).
    pub population: usize,
    /// Weights of consistency, novelty, aesthetic, executability in the overall score.
    pub weights: [f64; 4],
    /// Overall minus `low_penalty` when consistency or executability is below `low_below`.
    pub low_below: f64,
    pub low_penalty: f64,
    /// A target term in the instruction: consistency, executability and overall lose these.
    pub leak_consistency: f64,
    pub leak_executability: f64,
    pub leak_overall: f64,
    /// Sampling of the writing roles (the judge is greedy).
    pub temperature: f32,
    pub max_tokens: u32,
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            rounds: 1,
            population: 3,
            weights: [0.35, 0.20, 0.25, 0.20],
            low_below: 5.0,
            low_penalty: 1.0,
            leak_consistency: 2.5,
            leak_executability: 2.0,
            leak_overall: 0.5,
            temperature: 0.7,
            max_tokens: 200,
            seed: 0,
        }
    }
}

/// The judge's four scores, as it gave them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub consistency: f64,
    pub novelty: f64,
    pub aesthetic: f64,
    pub executability: f64,
}

/// One instruction of the search, judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub prompt: String,
    pub reasoning: String,
    /// "conservative" / "balanced" / "exploratory", "crossover", "mutation", or "fallback".
    pub origin: String,
    pub round: usize,
    /// `None` when the judge gave no valid answer (scored 0 overall).
    pub scores: Option<Scores>,
    pub leak: bool,
    pub overall: f64,
}

/// What the search found for one pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Searched {
    /// Step 1.
    pub reasoning: String,
    /// Every candidate in the order it was made (founders first), with its latest scores.
    pub candidates: Vec<Candidate>,
    /// Index of the winner in `candidates`.
    pub winner: usize,
    /// Step 3: first person, ends on the target's direction.
    pub distilled: String,
    /// Steps that fell back (no valid teacher answer): "reason", "founder", "judge", "distil"...
    pub fallbacks: Vec<String>,
}

#[derive(Deserialize)]
struct Reasoning {
    reasoning: String,
}

#[derive(Deserialize)]
struct Written {
    prompt: String,
    reasoning: String,
}

/// Whether `text` contains one of `terms` as whole words (case-insensitive).
pub fn leaks(text: &str, terms: &[String]) -> bool {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    terms.iter().any(|t| {
        let tw: Vec<String> = t
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        !tw.is_empty() && words.windows(tw.len()).any(|w| w == tw.as_slice())
    })
}

/// The weighted overall with the low-score and leak penalties (docs/method.md section 4).
pub fn overall(s: &Scores, leak: bool, c: &SearchConfig) -> f64 {
    let clamp = |v: f64| v.clamp(0.0, 10.0);
    let (mut con, mut exe) = (clamp(s.consistency), clamp(s.executability));
    if leak {
        con = (con - c.leak_consistency).max(0.0);
        exe = (exe - c.leak_executability).max(0.0);
    }
    let w = c.weights;
    let mut o = w[0] * con + w[1] * clamp(s.novelty) + w[2] * clamp(s.aesthetic) + w[3] * exe;
    if con < c.low_below || exe < c.low_below {
        o -= c.low_penalty;
    }
    if leak {
        o -= c.leak_overall;
    }
    o
}

/// Whether a written text says something: at least `min_words` words, and not a loop (a small
/// model's failure: the same words over and over until the budget ends).
pub fn usable(text: &str, min_words: usize) -> bool {
    let words = crate::score::words(text);
    let distinct: std::collections::HashSet<&String> = words.iter().collect();
    words.len() >= min_words && distinct.len() * 2 >= words.len()
}

/// Whether a written instruction describes a scene: usable, and not the task said back ("write an
/// instruction that ...": most of SmolLM2-135M's answers to prompt version 1).
pub fn describes_a_scene(prompt: &str) -> bool {
    let meta = ["instruction", "instructions", "prompt", "json", "generator"];
    usable(prompt, 5)
        && !crate::score::words(prompt)
            .iter()
            .any(|w| meta.contains(&w.as_str()))
}

/// How the judge is sampled, in the search and in `eval`: greedy, one budget.
pub const JUDGE_SAMPLING: Sampling = Sampling {
    temperature: 0.0,
    seed: 0,
    max_tokens: 64,
};

/// The judge's four scores of one instruction for a (history, target) pair; `None` when it gave no
/// valid answer (counted by the asker as a fallback).
pub fn judge_scores(
    judge_by: &Asker<'_>,
    history: &[ItemText],
    target_tid: &[String],
    instruction: &str,
) -> Option<Scores> {
    judge_by.ask::<Scores>(
        &tp::judge(history, target_tid, &tidy(instruction)),
        JUDGE_SAMPLING,
        |_| true,
    )
}

/// Sentences as the judge and the device see them: whitespace collapsed.
pub fn tidy(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the search for one pair: `ask` writes, `judge_by` judges (the same teacher or another). `fallback` is the offline template's (reasoning, instruction),
/// used where the teacher gives nothing valid. `key_seed` makes each pair's sampling its own.
pub fn search(
    ask: &Asker<'_>,
    judge_by: &Asker<'_>,
    history: &[ItemText],
    target_tid: &[String],
    fallback: (&str, &str),
    cfg: &SearchConfig,
    key_seed: u64,
) -> Searched {
    let write = |n: u64| Sampling {
        temperature: cfg.temperature,
        seed: cfg.seed ^ key_seed ^ n.wrapping_mul(0x9E37_79B9),
        max_tokens: cfg.max_tokens,
    };
    let mut fallbacks = Vec::new();

    let reasoning = match ask.ask::<Reasoning>(&tp::reason(history, target_tid), write(1), |r| {
        usable(&r.reasoning, 5)
    }) {
        Some(r) => tidy(&r.reasoning),
        None => {
            fallbacks.push("reason".to_string());
            tidy(fallback.0)
        }
    };
    let written = |w: Option<Written>, origin: &str, round: usize, fb: &mut Vec<String>| match w {
        Some(w) => Some(Candidate {
            prompt: tidy(&w.prompt),
            reasoning: tidy(&w.reasoning),
            origin: origin.to_string(),
            round,
            scores: None,
            leak: false,
            overall: 0.0,
        }),
        None => {
            fb.push(origin.to_string());
            None
        }
    };
    let ok = |w: &Written| describes_a_scene(&w.prompt);
    let mut candidates: Vec<Candidate> = Vec::new();
    for i in 0..cfg.population.max(1) {
        let style = FOUNDER_STYLES[i % FOUNDER_STYLES.len()];
        let w = ask.ask(
            &tp::founder(history, target_tid, &reasoning, style),
            write(10 + i as u64),
            ok,
        );
        if let Some(c) = written(w, style.0, 0, &mut fallbacks) {
            candidates.push(c);
        }
    }
    if candidates.is_empty() {
        candidates.push(Candidate {
            prompt: tidy(fallback.1),
            reasoning: String::new(),
            origin: "fallback".into(),
            round: 0,
            scores: None,
            leak: false,
            overall: 0.0,
        });
    }
    // Judging is a pure function of the text (greedy, cached): a candidate judged once keeps its score.
    let judge = |c: &mut Candidate, fb: &mut Vec<String>| {
        let s = judge_scores(judge_by, history, target_tid, &c.prompt);
        c.leak = leaks(&c.prompt, target_tid);
        c.scores = s;
        c.overall = match &s {
            Some(s) => overall(s, c.leak, cfg),
            None => {
                fb.push("judge".to_string());
                0.0
            }
        };
    };
    let mut population: Vec<usize> = (0..candidates.len()).collect();
    for round in 1..=cfg.rounds {
        for &i in &population {
            if candidates[i].scores.is_none() {
                judge(&mut candidates[i], &mut fallbacks);
            }
        }
        population.sort_by(|&a, &b| candidates[b].overall.total_cmp(&candidates[a].overall));
        let elite = population[0];
        let mut next = vec![elite];
        if let Some(&mate) = population.get(1) {
            let w = ask.ask(
                &tp::crossover(
                    history,
                    target_tid,
                    &candidates[elite].prompt,
                    &candidates[mate].prompt,
                ),
                write(100 * round as u64),
                ok,
            );
            if let Some(c) = written(w, "crossover", round, &mut fallbacks) {
                candidates.push(c);
                next.push(candidates.len() - 1);
            }
        }
        let mut m = 0;
        while next.len() < cfg.population.max(1) && m < cfg.population.max(1) {
            let w = ask.ask(
                &tp::mutation(history, target_tid, &candidates[elite].prompt),
                write(100 * round as u64 + 1 + m as u64),
                ok,
            );
            if let Some(c) = written(w, "mutation", round, &mut fallbacks) {
                candidates.push(c);
                next.push(candidates.len() - 1);
            }
            m += 1;
        }
        population = next;
    }
    // Final rescoring of the last population, then the best.
    for &i in &population {
        if candidates[i].scores.is_none() {
            judge(&mut candidates[i], &mut fallbacks);
        }
    }
    let winner = *population
        .iter()
        .max_by(|&&a, &&b| {
            candidates[a]
                .overall
                .total_cmp(&candidates[b].overall)
                .then(b.cmp(&a))
        })
        .expect("a population is never empty");
    let mut trajectory: Vec<String> = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != winner)
        .map(|(_, c)| c.prompt.clone())
        .collect();
    trajectory.push(candidates[winner].prompt.clone());
    let distilled = match ask.ask::<Reasoning>(
        &tp::distil(history, target_tid, &reasoning, &trajectory),
        write(1000),
        |r| {
            let t = r.reasoning.trim_start();
            (t.starts_with("I ") || t.starts_with("I'")) && usable(t, 8)
        },
    ) {
        Some(r) => tidy(&r.reasoning),
        None => {
            fallbacks.push("distil".to_string());
            tidy(fallback.0)
        }
    };
    Searched {
        reasoning,
        candidates,
        winner,
        distilled,
        fallbacks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_weights_and_penalties() {
        let c = SearchConfig::default();
        let s = Scores {
            consistency: 8.0,
            novelty: 6.0,
            aesthetic: 7.0,
            executability: 9.0,
        };
        let plain = 0.35 * 8.0 + 0.20 * 6.0 + 0.25 * 7.0 + 0.20 * 9.0;
        assert!((overall(&s, false, &c) - plain).abs() < 1e-9);
        // Leak: consistency 5.5, executability 7, overall -0.5 more.
        let leaked = 0.35 * 5.5 + 0.20 * 6.0 + 0.25 * 7.0 + 0.20 * 7.0 - 0.5;
        assert!((overall(&s, true, &c) - leaked).abs() < 1e-9);
        let low = Scores {
            consistency: 4.0,
            ..s
        };
        let v = 0.35 * 4.0 + 0.20 * 6.0 + 0.25 * 7.0 + 0.20 * 9.0 - 1.0;
        assert!((overall(&low, false, &c) - v).abs() < 1e-9);
        // Out-of-range scores are clamped.
        let wild = Scores {
            consistency: 99.0,
            novelty: -3.0,
            aesthetic: 10.0,
            executability: 10.0,
        };
        assert!((overall(&wild, false, &c) - (3.5 + 2.5 + 2.0)).abs() < 1e-9);
    }

    #[test]
    fn the_task_said_back_is_not_a_scene() {
        assert!(describes_a_scene(
            "A paper-cut animation of a boy and his dog racing a storm across a wheat field."
        ));
        assert!(!describes_a_scene(
            "Write a 1st-hand creation instruction that describes what you want next."
        ));
        assert!(!describes_a_scene(
            "What is your new prompt for the picture?"
        ));
    }

    #[test]
    fn loops_and_stubs_are_not_usable() {
        assert!(usable(
            "A rainy neon street at night, two detectives under one umbrella.",
            5
        ));
        assert!(!usable("the instruction", 5));
        assert!(!usable(
            "I am writing a movie. I am writing a movie. I am writing a movie.",
            5
        ));
    }

    #[test]
    fn leak_is_whole_words_case_insensitive() {
        let t = vec!["Film-Noir".to_string(), "cat".to_string()];
        assert!(leaks("A film noir alley at night", &t));
        assert!(leaks("One CAT on a roof.", &t));
        assert!(!leaks("A catalogue of noir-ish films", &t));
    }
}
