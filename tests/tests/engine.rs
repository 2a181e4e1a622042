//! The device runtime on a bundle the trainer exported in this run: constrained next-item decoding,
//! instruction generation with streaming, cancellation within one decode step, zero-shot mode and
//! refusal of broken bundles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use navigen::engine::{Engine, EngineParams, InstructionOptions, Kind, PredictOptions};
use navigen::Error;
use navigen_tests::{test_histories, trained_bundle, zero_shot, Fixture};

/// Engines use every core: two decoding at once oversubscribe the CPU (llama.cpp slows ~10x), so
/// the tests take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| trained_bundle(20))
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::open(&fixture().bundle, EngineParams::default()).unwrap())
}

#[test]
fn constrained_decoding_only_names_catalog_items() {
    let _turn = turn();
    let e = engine();
    assert_eq!(e.kind(), Kind::Finetuned);
    for (history, _) in test_histories(&fixture().data, 10) {
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        let preds = e.predict_next(&refs, 40, 40).unwrap();
        assert_eq!(preds.len(), 40);
        let mut ids: Vec<&str> = preds.iter().map(|p| p.id.as_str()).collect();
        for p in &preds {
            let idx = e
                .catalog()
                .find_id(&p.id)
                .expect("predicted id is in the catalog");
            assert_eq!(e.catalog().item(idx).unwrap().cid.to_text(), p.cid);
            assert!(p.score <= 0.0 && p.score.is_finite());
        }
        assert!(
            preds.windows(2).all(|w| w[0].score >= w[1].score),
            "scores are sorted"
        );
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40, "predictions are distinct items");
    }
    assert!(matches!(
        e.predict_next(&["no-such-item"], 5, 5),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn beam_width_is_independent_of_k_and_history_can_be_excluded() {
    let _turn = turn();
    let e = engine();
    let opts = |k, beams, exclude_history| PredictOptions {
        k,
        beams,
        exclude_history,
    };
    for (history, _) in test_histories(&fixture().data, 5) {
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        // One width for every K: the top 10 is the first 10 of the top 40.
        let (top10, _) = e.predict(&refs, &opts(10, 20, false)).unwrap();
        let (top40, _) = e.predict(&refs, &opts(40, 20, false)).unwrap();
        assert_eq!(top10.len(), 10);
        assert_eq!(&top40[..10], &top10[..]);
        // 256 beams: as many sequences as llama.cpp holds (seq ids 0..=255).
        let (wide, _) = e.predict(&refs, &opts(256, 256, false)).unwrap();
        assert_eq!(wide.len(), 256);
        let mut ids: Vec<&str> = wide.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 256);
        // Excluding the history leaves the rest of the ranking as it was.
        let (kept, _) = e.predict(&refs, &opts(4096, 20, false)).unwrap();
        let (excl, _) = e.predict(&refs, &opts(40, 20, true)).unwrap();
        let expected: Vec<_> = kept
            .into_iter()
            .filter(|p| !history.contains(&p.id))
            .take(40)
            .collect();
        assert_eq!(excl, expected);
    }
    let h0 = test_histories(&fixture().data, 1).remove(0).0;
    let refs: Vec<&str> = h0.iter().map(String::as_str).collect();
    for bad in [opts(0, 20, false), opts(10, 0, false), opts(10, 257, false)] {
        assert!(matches!(
            e.predict(&refs, &bad),
            Err(Error::InvalidArgument(_))
        ));
    }
}

/// Every answer is one JSON object with both fields, also when the token budget cuts it open: budgets
/// from 1 token up, over many histories, on a barely trained model (its answers wander).
#[test]
fn every_instruction_answer_parses_as_json() {
    let _turn = turn();
    let e = engine();
    let histories = test_histories(&fixture().data, 40);
    for (i, (history, _)) in histories.iter().enumerate() {
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        let opts = InstructionOptions {
            max_think_tokens: 1 + (i as u32 * 7) % 24,
            max_answer_tokens: 1 + (i as u32 * 13) % 72,
            ..Default::default()
        };
        let ins = e.generate_instruction(&refs, &opts, &mut |_| true).unwrap();
        let answer = ins.raw.rsplit("</think>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(answer.trim())
            .unwrap_or_else(|err| panic!("history {i}: {answer:?} is not JSON: {err}"));
        assert!(
            v["target_tid"].is_array() && v["target_ins"].is_string(),
            "{v}"
        );
        assert!(ins.parsed, "history {i}: {}", ins.raw);
    }
}

/// The answer-phase n-gram guard: with the default budgets no term of the raw answer's list repeats
/// more than once (the first term is written after `[`, the others after `, `, so one repeat of the
/// first term is all a trigram guard cannot see); without the guard the tiny model repeats a term
/// until the budget ends.
#[test]
fn instruction_terms_do_not_repeat() {
    let _turn = turn();
    let e = engine();
    let histories = test_histories(&fixture().data, 20);
    for (i, (history, _)) in histories.iter().enumerate() {
        let refs: Vec<&str> = history.iter().map(String::as_str).collect();
        let ins = e
            .generate_instruction(&refs, &InstructionOptions::default(), &mut |_| true)
            .unwrap();
        let answer = ins.raw.rsplit("</think>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
        let terms: Vec<&str> = v["target_tid"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        for t in &terms {
            let n = terms.iter().filter(|u| *u == t).count();
            assert!(n <= 2, "history {i}: {t:?} {n} times in {answer}");
        }
        let mut distinct = ins.target_tid.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ins.target_tid.len(), "{:?}", ins.target_tid);
    }
}

#[test]
fn instruction_streams_the_raw_text() {
    let _turn = turn();
    let e = engine();
    let (history, _) = test_histories(&fixture().data, 1).remove(0);
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    let mut streamed = String::new();
    let opts = InstructionOptions {
        max_think_tokens: 48,
        max_answer_tokens: 64,
        ..Default::default()
    };
    let ins = e
        .generate_instruction(&refs, &opts, &mut |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(streamed, ins.raw);
    assert!(ins.raw.starts_with("<think>"));
    assert!(
        ins.raw.contains("</think>"),
        "the reasoning is closed (forced at the bound): {}",
        ins.raw
    );
    assert!(ins.timings.prompt_tokens > 0 && ins.timings.generated_tokens > 0);
    // The answer after the reasoning is under the JSON grammar: it starts as the schema says.
    let after = ins.raw.split("</think>").nth(1).unwrap();
    assert!(after.starts_with("\n\n{"), "{after:?}");
}

#[test]
fn cancellation_stops_within_one_decode_step() {
    let _turn = turn();
    // Its own engine: a cancel stops every call in flight on an engine, including other tests' calls.
    let own = Engine::open(&fixture().bundle, EngineParams::default()).unwrap();
    let e = &own;
    let (history, _) = test_histories(&fixture().data, 2).remove(1);
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    let pieces = Arc::new(AtomicUsize::new(0));
    let at_cancel = Arc::new(AtomicUsize::new(usize::MAX));
    let opts = InstructionOptions {
        max_think_tokens: 200,
        max_answer_tokens: 100,
        ..Default::default()
    };
    let r = std::thread::scope(|s| {
        let (p, c) = (pieces.clone(), at_cancel.clone());
        let worker = s.spawn(move || {
            e.generate_instruction(&refs, &opts, &mut |_| {
                let n = p.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 5 {
                    // Cancel from another thread, as an app's UI would.
                    let c = c.clone();
                    std::thread::scope(|s2| {
                        s2.spawn(|| {
                            c.store(n, Ordering::SeqCst);
                            e.cancel();
                        });
                    });
                }
                true
            })
        });
        worker.join().unwrap()
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let after = pieces.load(Ordering::SeqCst) - at_cancel.load(Ordering::SeqCst);
    assert!(after <= 1, "{after} pieces after the cancel");
    // The engine works again afterwards.
    let (history, _) = test_histories(&fixture().data, 1).remove(0);
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    assert!(e.predict_next(&refs, 3, 3).is_ok());
}

#[test]
fn zero_shot_mode_writes_instructions_but_cannot_predict() {
    let _turn = turn();
    let z = Engine::open(&zero_shot(fixture()), EngineParams::default()).unwrap();
    assert_eq!(z.kind(), Kind::ZeroShot);
    let (history, _) = test_histories(&fixture().data, 1).remove(0);
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    assert!(matches!(
        z.predict_next(&refs, 5, 5),
        Err(Error::NotSupported(_))
    ));
    let ins = z
        .generate_instruction(
            &refs,
            &InstructionOptions {
                max_answer_tokens: 60,
                ..Default::default()
            },
            &mut |_| true,
        )
        .unwrap();
    assert!(ins.raw.trim_start().starts_with('{'), "{}", ins.raw);
}

#[test]
fn broken_bundles_are_refused_with_clear_errors() {
    let _turn = turn();
    let f = fixture();
    let copy = f.dir.join("broken");
    std::fs::create_dir_all(&copy).unwrap();
    for name in [
        "model.gguf",
        "catalog.nvct",
        "codebooks.nvcb",
        "bundle.json",
    ] {
        std::fs::copy(f.bundle.join(name), copy.join(name)).unwrap();
    }
    // A file the manifest lists is missing: the error names it.
    let err = Engine::open(&copy, EngineParams::default())
        .err()
        .expect("a missing embedder is refused");
    assert!(err.to_string().contains("embedder.gguf"), "{err}");
    std::fs::copy(f.bundle.join("embedder.gguf"), copy.join("embedder.gguf")).unwrap();
    // A flipped byte in the catalog.
    let mut cat = std::fs::read(copy.join("catalog.nvct")).unwrap();
    let mid = cat.len() / 2;
    cat[mid] ^= 0x20;
    std::fs::write(copy.join("catalog.nvct"), &cat).unwrap();
    let err = Engine::open(&copy, EngineParams::default())
        .err()
        .expect("a damaged catalog is refused");
    assert!(matches!(err, Error::Format { .. }), "{err}");
    // A truncated model.
    std::fs::copy(f.bundle.join("catalog.nvct"), copy.join("catalog.nvct")).unwrap();
    let model = std::fs::read(copy.join("model.gguf")).unwrap();
    std::fs::write(copy.join("model.gguf"), &model[..model.len() / 2]).unwrap();
    let err = Engine::open(&copy, EngineParams::default())
        .err()
        .expect("a truncated model is refused");
    assert!(err.to_string().contains("incomplete"), "{err}");
    // 4 KiB of other bytes inside the model, same size: refused before llama.cpp's loader sees it
    // (it used to open, and predictions came back with NaN scores).
    let mut m = model.clone();
    let at = m.len() / 2;
    m[at..at + 4096].iter_mut().for_each(|b| *b ^= 0x5A);
    std::fs::write(copy.join("model.gguf"), &m).unwrap();
    let err = Engine::open(&copy, EngineParams::default())
        .err()
        .expect("a damaged model of the right size is refused");
    assert!(
        matches!(err, Error::Mismatch(_)) && err.to_string().contains("model.gguf"),
        "{err}"
    );
    assert!(Engine::open(&f.dir.join("nowhere"), EngineParams::default()).is_err());
}

#[test]
fn eval_through_the_runtime_writes_every_metric() {
    let _turn = turn();
    let f = fixture();
    let out = f.dir.join("eval.json");
    let opts = navigen_train::eval::EvalOptions {
        data: f.data.clone(),
        bundle: f.bundle.clone(),
        zero_shot: Some(zero_shot(f)),
        out: out.clone(),
        users: 12,
        instruction_users: 1,
        beams: 40,
        no_repeat_ngram: navigen::engine::DEFAULT_NO_REPEAT_NGRAM,
    };
    // A real judge: SmolLM2-135M-Instruct on the SDK's llama.cpp runtime.
    let smollm2 = navigen_train::assets::SMOLLM2
        .ensure()
        .unwrap()
        .join(navigen_train::assets::SMOLLM2.members[0].1);
    let judge = navigen_train::teach::backend::LocalTeacher::open(&smollm2, 2).unwrap();
    let r = navigen_train::eval::eval(&opts, Some(&judge)).unwrap();
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    // Same report on disk (floats compared through their printed form).
    assert_eq!(
        written["next_item"]["recall@40"].as_f64(),
        r["next_item"]["recall@40"]
            .as_f64()
            .map(|v| serde_json::from_str::<f64>(&v.to_string()).unwrap())
    );
    assert_eq!(written["test_users"], r["test_users"]);
    assert_eq!(r["test_users"], 12);
    for k in navigen_train::eval::KS {
        for key in [format!("recall@{k}"), format!("ndcg@{k}")] {
            for section in [&r["next_item"], &r["baselines"]["most_popular"]] {
                let v = section[&key].as_f64().unwrap_or(-1.0);
                assert!((0.0..=1.0).contains(&v), "{key} = {v}");
            }
        }
    }
    // Recall can only grow with K.
    assert!(r["next_item"]["recall@40"].as_f64() >= r["next_item"]["recall@1"].as_f64());
    // The numbers themselves, recomputed here from the files and the runtime: the most-popular list
    // from the catalog's counts, the model's from one predict call per user; both without the
    // items the user already has (training items and the validation target).
    let full = navigen_train::eval::full_histories(&f.data).unwrap();
    let cat = engine().catalog();
    let mut popular: Vec<(u32, &str)> = cat.items().map(|it| (it.popularity, it.id)).collect();
    popular.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let (mut pop_ranks, mut model_ranks) = (Vec::new(), Vec::new());
    let test = std::fs::read_to_string(f.data.join("test.jsonl")).unwrap();
    for line in test.lines().take(12) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let target = row["target"].as_str().unwrap();
        let user_items = &full[row["user"].as_str().unwrap()];
        let unseen = |id: &str| !user_items.iter().any(|h| h == id);
        let rank = |ids: Vec<&str>| ids.iter().position(|id| *id == target).map(|i| i + 1);
        pop_ranks.push(rank(
            popular
                .iter()
                .map(|p| p.1)
                .filter(|id| unseen(id))
                .take(40)
                .collect(),
        ));
        let refs: Vec<&str> = user_items.iter().map(String::as_str).collect();
        let all = PredictOptions {
            k: navigen::engine::MAX_K,
            beams: 40,
            exclude_history: false,
        };
        let (preds, _) = engine().predict(&refs, &all).unwrap();
        model_ranks.push(rank(
            preds
                .iter()
                .map(|p| p.id.as_str())
                .filter(|id| unseen(id))
                .take(40)
                .collect(),
        ));
    }
    for k in navigen_train::eval::KS {
        let recall = |ranks: &[Option<usize>]| {
            ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / ranks.len() as f64
        };
        let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap()).abs() < 1e-9;
        assert!(
            close(
                recall(&pop_ranks),
                &r["baselines"]["most_popular"][format!("recall@{k}")]
            ),
            "most-popular recall@{k}: {pop_ranks:?} vs {}",
            r["baselines"]["most_popular"]
        );
        assert!(
            close(recall(&model_ranks), &r["next_item"][format!("recall@{k}")]),
            "model recall@{k}: {model_ranks:?} vs {}",
            r["next_item"]
        );
    }
    // So that this comparison can fail: on these 12 users most-popular finds some targets.
    assert!(pop_ranks.iter().any(Option::is_some), "{pop_ranks:?}");
    for section in [&r["instruction"], &r["baselines"]["zero_shot"]] {
        for key in [
            "parse_rate",
            "tid_f1",
            "relevance",
            "relevance_target",
            "relevance_history",
            "distinct_1",
            "distinct_2",
        ] {
            let v = section[key].as_f64().unwrap_or(-2.0);
            assert!((-1.0..=1.0).contains(&v), "{key} = {v}");
        }
        // Every instruction user is judged (or counted as a failed judgement), on the 0-10 scale.
        let j = &section["judge"];
        assert_eq!(
            j["judged"].as_u64().unwrap() + j["judge_failed"].as_u64().unwrap(),
            1,
            "{j}"
        );
        let o = j["overall"].as_f64().unwrap();
        assert!((-1.0..=10.0).contains(&o), "{j}");
    }
    // The judge's answers are cached beside the report: a second run asks nothing.
    let again = navigen_train::eval::eval(&opts, Some(&judge)).unwrap();
    assert_eq!(
        again["instruction"]["judge"]["overall"],
        r["instruction"]["judge"]["overall"]
    );
    assert!(out.with_file_name("eval.json.judge-answers.jsonl").exists());
    assert_eq!(
        again["judge_counts"]["requests"], 0,
        "{}",
        again["judge_counts"]
    );
}

/// `register_item` on the device (bundle's embedder on llama.cpp + memory-mapped codebooks) agrees
/// with the trainer. Text-only codebooks: every catalog item's text gets the CID the trainer gave it,
/// except the items the trainer moved to resolve collisions, which find their original code held by the
/// item they collided with. Fused codebooks (the default): the items whose text alone gives their first
/// code are exactly as many as the trainer counted through the same file (prepare.json).
#[test]
fn register_item_reproduces_the_trainers_cids() {
    let _turn = turn();
    let f = fixture();
    let e = engine();
    let report = navigen_train::prepare::read_report(&f.data).unwrap();
    let reassigned = report["reassigned"].as_u64().unwrap() as usize;
    let levels = e.catalog().levels();
    if let Some(same) = report["collab"]["text_only_same_first_code_items"].as_u64() {
        // Fused codebooks: a catalog item's CID also reflects its behaviour, which a text alone cannot
        // carry; the device's text-only path must agree with the trainer's on every item.
        let got = e
            .catalog()
            .items()
            .filter(|item| {
                let r = e.register_item(item.text).unwrap();
                navigen::Cid::parse(&r.cid).unwrap().codes()[0] == item.cid.codes()[0]
            })
            .count();
        assert_eq!(
            got as u64, same,
            "items whose text alone gives their first code"
        );
    } else {
        let mut moved = 0;
        for item in e.catalog().items() {
            let r = e.register_item(item.text).unwrap();
            let holder = r
                .taken_by
                .as_ref()
                .expect("a catalog item's code is always held");
            if holder.id == item.id {
                assert_eq!(r.cid, item.cid.to_text(), "{}", item.title);
            } else {
                moved += 1;
                let got = navigen::Cid::parse(&r.cid).unwrap();
                assert_eq!(
                    got.codes()[..levels - 1],
                    item.cid.codes()[..levels - 1],
                    "{}: a moved item keeps its prefix",
                    item.title
                );
                assert_ne!(r.cid, item.cid.to_text());
            }
            assert!(r.distance.is_finite() && r.distance >= 0.0);
        }
        assert_eq!(
            moved, reassigned,
            "items whose device CID differs = items the trainer moved"
        );
    }

    // A new text: a CID in the codebooks' space, and a free one beside it when taken.
    let r = e.register_item("A quiet documentary about beekeepers in the Swiss Alps, told through one family's year.").unwrap();
    let free = navigen::Cid::parse(r.free_cid.as_deref().expect("a free code exists")).unwrap();
    assert!(
        e.catalog().find_cid(&free).is_none(),
        "free_cid must not be held"
    );
    assert_eq!(
        r.taken_by.is_none(),
        r.free_cid.as_deref() == Some(r.cid.as_str())
    );
    assert!(
        e.register_item("").is_ok(),
        "an empty text still has an embedding"
    );

    // A bundle whose manifest has no embedder cannot register, and says why.
    let copy = f.dir.join("no-embedder");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["model.gguf", "catalog.nvct", "codebooks.nvcb"] {
        std::fs::copy(f.bundle.join(name), copy.join(name)).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.bundle.join("bundle.json")).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("embedder");
    std::fs::write(copy.join("bundle.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let no = Engine::open(&copy, EngineParams::default()).unwrap();
    assert!(matches!(no.register_item("x"), Err(Error::NotSupported(_))));
}
