//! `navigen-train eval`: quality measured through the shipped runtime (the bundle on llama.cpp, as the
//! device runs it), with the most-popular and zero-shot baselines on the same users in the same run.
//!
//! Next item: Recall@K and NDCG@K (1/log2(rank+1)) on the test split, every test user by default, one
//! beam width for every K, with the items the user already has excluded (the headline, as RecBole
//! ranks) and kept. Instructions: JSON parse rate,
//! target-TID precision/recall/F1 against the held-out item's TID, and relevance = cosine between the
//! instruction's embedding and the mean of the history's and the target's caption embeddings
//! (all-MiniLM-L6-v2 on llama.cpp: the bundle's own `embedder.gguf`, the model the codebooks were built with).
//! The metrics themselves are [`crate::score`]'s.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use std::collections::{HashMap, HashSet};

use crate::data::sequences::{self, Example, TrainSequence};
use crate::score::{self, Ranks};
use crate::teach::backend::Teacher;
use crate::teach::{self, ask::Asker, search, search::SearchConfig};
use navigen::bundle::Manifest;
use navigen::embedding::TextEmbedder;
use navigen::engine::{Engine, InstructionOptions, PredictOptions};

pub const KS: [usize; 5] = [1, 5, 10, 20, 40];

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub data: PathBuf,
    pub bundle: PathBuf,
    pub zero_shot: Option<PathBuf>,
    pub out: PathBuf,
    /// Test users for next-item metrics (0 = all).
    pub users: usize,
    /// Test users for instruction metrics.
    pub instruction_users: usize,
    /// Beam width of next-item search, the same for every K.
    pub beams: usize,
    /// `InstructionOptions::no_repeat_ngram` of the instructions measured.
    pub no_repeat_ngram: u32,
}

/// Recall@K and NDCG@K for every K in [`KS`].
fn rank_metrics(ranks: &Ranks, out: &mut Map<String, Value>) {
    for k in KS {
        out.insert(format!("recall@{k}"), json!(ranks.recall_at(k)));
        out.insert(format!("ndcg@{k}"), json!(ranks.ndcg_at(k)));
    }
}

/// Instruction metrics of one engine over the given examples: the same users, options and judge
/// for every engine compared.
fn instruction_metrics(
    e: &Engine,
    examples: &[Example],
    embedder: &TextEmbedder,
    opts: &InstructionOptions,
    judge: Option<&Asker<'_>>,
) -> Result<Value> {
    let cat = e.catalog();
    let (mut parsed, mut p_sum, mut r_sum, mut f_sum) = (0usize, 0.0, 0.0, 0.0);
    // Relevance: to the mean of history and target captions (the headline), and to each alone.
    let (mut rel, mut rel_target, mut rel_history) = (0.0, 0.0, 0.0);
    let (mut judged, mut judge_failed) = (0usize, 0usize);
    let mut scores_sum = [0.0f64; 5];
    let mut instructions: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let bar = crate::progress::bar(examples.len() as u64, "instructions");
    for ex in examples {
        let refs: Vec<&str> = ex.history.iter().map(String::as_str).collect();
        let ins = e.generate_instruction(&refs, opts, &mut |_| true)?;
        let target = cat
            .find_id(&ex.target)
            .and_then(|i| cat.item(i))
            .context("test target not in the catalog")?;
        let gold = target.tid_vec();
        if ins.parsed {
            parsed += 1;
        }
        let (p, r, f) = score::tid_prf(&ins.target_tid, &gold);
        p_sum += p;
        r_sum += r;
        f_sum += f;
        let said = !ins.target_ins.trim().is_empty();
        let mut row_scores = None;
        if said {
            instructions.push(ins.target_ins.clone());
            let mut texts: Vec<String> = ex
                .history
                .iter()
                .filter_map(|id| cat.find_id(id).and_then(|i| cat.item(i)))
                .map(|it| it.text.to_string())
                .collect();
            texts.push(target.text.to_string());
            texts.push(ins.target_ins.clone());
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let v = embedder.embed_many(&refs, &mut |_| ())?;
            let (ins_v, ctx) = v.split_last().expect("at least the instruction");
            let (target_v, history_v) = ctx.split_last().expect("at least the target");
            rel += score::relevance(ins_v, ctx) as f64;
            rel_target += score::cosine(ins_v, target_v) as f64;
            if !history_v.is_empty() {
                rel_history += score::relevance(ins_v, history_v) as f64;
            }
            if let Some(j) = judge {
                let history = teach::item_texts(cat, &ex.history);
                match search::judge_scores(j, &history, &gold, &ins.target_ins) {
                    Some(s) => {
                        // No leak penalty here: naming the held-out item's terms is the model
                        // predicting well, not a supervision leak.
                        let o = search::overall(&s, false, &SearchConfig::default());
                        for (acc, v) in scores_sum.iter_mut().zip([
                            s.consistency,
                            s.novelty,
                            s.aesthetic,
                            s.executability,
                            o,
                        ]) {
                            *acc += v.clamp(-10.0, 10.0);
                        }
                        judged += 1;
                        row_scores = Some(o);
                    }
                    None => judge_failed += 1,
                }
            }
        } else if judge.is_some() {
            // Nothing to judge: scored 0, as an unparsed answer counts 0 in the relevance means.
            judged += 1;
        }
        if samples.len() < 3 {
            samples.push(json!({"history_tail": ex.history.iter().rev().take(3).collect::<Vec<_>>(), "target": ex.target, "target_tid": gold, "predicted_tid": ins.target_tid, "instruction": ins.target_ins, "judge_overall": row_scores}));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = examples.len().max(1) as f64;
    let texts: Vec<&str> = instructions.iter().map(String::as_str).collect();
    let words: Vec<usize> = texts.iter().map(|t| score::words(t).len()).collect();
    let judge_json = judge.map(|j| {
        let m = |i: usize| scores_sum[i] / judged.max(1) as f64;
        json!({
            "judge": j.identity(),
            "judged": judged,
            "judge_failed": judge_failed,
            "consistency": m(0), "novelty": m(1), "aesthetic": m(2), "executability": m(3),
            "overall": m(4),
            "weights": SearchConfig::default().weights,
        })
    });
    Ok(json!({
        "users": examples.len(),
        "parse_rate": parsed as f64 / n,
        "tid_precision": p_sum / n,
        "tid_recall": r_sum / n,
        "tid_f1": f_sum / n,
        // Means over users; an answer without an instruction counts 0.
        "relevance": rel / n,
        "relevance_target": rel_target / n,
        "relevance_history": rel_history / n,
        "instruction_words": if words.is_empty() { 0.0 } else { words.iter().sum::<usize>() as f64 / words.len() as f64 },
        "distinct_1": score::distinct_n(&texts, 1),
        "distinct_2": score::distinct_n(&texts, 2),
        "judge": judge_json,
        "samples": samples,
    }))
}

/// Next-item ranks of the model and of most-popular on the same users, with and without the items
/// the user already has.
pub struct NextItemRanks {
    pub model: Ranks,
    pub popular: Ranks,
    pub model_with_history: Ranks,
    pub popular_with_history: Ranks,
    pub users: usize,
    pub seconds: f64,
}

/// Every test user's full history (training items and the validation target), oldest first: the
/// prompt takes its last `max_history` items and exclusion uses all of it.
pub fn full_histories(data: &std::path::Path) -> Result<HashMap<String, Vec<String>>> {
    let train: Vec<TrainSequence> = sequences::read_jsonl(&data.join(sequences::TRAIN_FILE))?;
    let valid: Vec<Example> = sequences::read_jsonl(&data.join(sequences::VALID_FILE))?;
    let mut by_user: HashMap<String, Vec<String>> =
        train.into_iter().map(|t| (t.user, t.items)).collect();
    for v in valid {
        by_user.entry(v.user).or_default().push(v.target);
    }
    Ok(by_user)
}

/// Ranks of the bundle (through the runtime, `beams` wide) and of most-popular on `users`.
pub fn next_item_ranks(
    e: &Engine,
    users: &[Example],
    full: &HashMap<String, Vec<String>>,
    beams: usize,
) -> Result<NextItemRanks> {
    let cat = e.catalog();
    let mut by_pop: Vec<(u32, String)> = cat
        .items()
        .map(|it| (it.popularity, it.id.to_string()))
        .collect();
    by_pop.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let k_max = *KS.iter().max().expect("ks");
    let mut r = NextItemRanks {
        model: Ranks::default(),
        popular: Ranks::default(),
        model_with_history: Ranks::default(),
        popular_with_history: Ranks::default(),
        users: users.len(),
        seconds: 0.0,
    };
    let bar = crate::progress::bar(users.len() as u64, "next item");
    let t = std::time::Instant::now();
    for ex in users {
        let history = full.get(&ex.user).unwrap_or(&ex.history);
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        let seen: HashSet<&str> = refs.iter().copied().collect();
        // Exclusion acts on the last level only, so both lists come from one call: every final
        // candidate, then the top of it with and without the items the user has.
        let (all, _) = e.predict(
            &refs,
            &PredictOptions {
                k: navigen::engine::MAX_K,
                beams,
                exclude_history: false,
            },
        )?;
        let hit = |p: &navigen::engine::Prediction| p.id == ex.target;
        r.model_with_history
            .push(score::rank_of(all.iter().take(k_max), hit));
        r.model.push(score::rank_of(
            all.iter()
                .filter(|p| !seen.contains(p.id.as_str()))
                .take(k_max),
            hit,
        ));
        let pop_hit = |p: &(u32, String)| p.1 == ex.target;
        r.popular_with_history
            .push(score::rank_of(by_pop.iter().take(k_max), pop_hit));
        r.popular.push(score::rank_of(
            by_pop
                .iter()
                .filter(|(_, id)| !seen.contains(id.as_str()))
                .take(k_max),
            pop_hit,
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    r.seconds = t.elapsed().as_secs_f64();
    Ok(r)
}

/// Recall@K and NDCG@K of ranks as a JSON object.
pub fn rank_json(ranks: &Ranks) -> Value {
    let mut m = Map::new();
    rank_metrics(ranks, &mut m);
    Value::Object(m)
}

/// Runs the evaluation; `judge` (a model that did not write the supervision, where one is at hand)
/// scores every instruction of the bundle and of the zero-shot baseline alike. Its answers are cached
/// beside `o.out`, so a rerun asks nothing twice.
pub fn eval(o: &EvalOptions, judge: Option<&dyn Teacher>) -> Result<Value> {
    let test: Vec<Example> = sequences::read_jsonl(&o.data.join(sequences::TEST_FILE))?;
    let users: Vec<Example> = if o.users == 0 {
        test.clone()
    } else {
        test.iter().take(o.users).cloned().collect()
    };
    let e = Engine::open(&o.bundle, crate::engine_params())?;
    let full = full_histories(&o.data)?;
    let ranks = next_item_ranks(&e, &users, &full, o.beams)?;
    let predict_s = ranks.seconds;
    // Instructions.
    let emb_entry = e
        .manifest()
        .embedder
        .as_ref()
        .context("the bundle has no embedder.gguf (re-export it with this trainer)")?;
    let embedder = TextEmbedder::open(&Manifest::path(e.dir(), emb_entry), crate::thread_count())?;
    let ins_users: Vec<Example> = test.iter().take(o.instruction_users).cloned().collect();
    let opts = InstructionOptions {
        no_repeat_ngram: o.no_repeat_ngram,
        ..Default::default()
    };
    let judge = match judge {
        Some(j) => {
            let name = o.out.file_name().unwrap_or_default().to_string_lossy();
            Some(Asker::open(
                j,
                &o.out.with_file_name(format!("{name}.judge-answers.jsonl")),
            )?)
        }
        None => None,
    };
    let instruction = instruction_metrics(&e, &ins_users, &embedder, &opts, judge.as_ref())?;
    // The same users, budgets, guard and judge as the bundle.
    let zero_shot = match &o.zero_shot {
        Some(z) => {
            let ze = Engine::open(z, crate::engine_params())?;
            instruction_metrics(&ze, &ins_users, &embedder, &opts, judge.as_ref())?
        }
        None => Value::Null,
    };
    let report = json!({
        "test_users": users.len(),
        "bundle": o.bundle,
        // Items the user already has are excluded (RecBole's full ranking does the same); the
        // `_with_history` figures keep them.
        "next_item": rank_json(&ranks.model),
        "next_item_with_history": rank_json(&ranks.model_with_history),
        "next_item_seconds_per_user": predict_s / users.len().max(1) as f64,
        "beams": o.beams,
        "baselines": {"most_popular": rank_json(&ranks.popular), "most_popular_with_history": rank_json(&ranks.popular_with_history), "zero_shot": zero_shot},
        "instruction": instruction,
        "relevance_embedder": crate::embed::EMBEDDER_NAME,
        "judge_counts": judge.as_ref().map(|j| j.counts()),
    });
    navigen::format::write_atomic(&o.out, &serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}
