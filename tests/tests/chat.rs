//! A chat session on SmolLM2-135M-Instruct (the local teacher and judge): a request that starts with
//! the same shared part (system prompt and history) as the previous one reuses its keys and values,
//! and answers exactly as a fresh context does (greedy and sampled, with and without a JSON schema,
//! across a context that has to grow): the reply is a function of the request alone.

use navigen::chat::{ChatOptions, ChatSession, Message};
use navigen::llm::Model;
use navigen::prompt::teacher::{self as tp, ItemText};

fn smollm2() -> Model {
    let a = &navigen_train::assets::SMOLLM2;
    Model::load(&a.ensure().unwrap().join(a.members[0].1), 0).unwrap()
}

fn history(first: usize, n: usize) -> Vec<ItemText> {
    (first..first + n)
        .map(|i| ItemText {
            title: format!("Film number {i} (19{:02})", 50 + i % 50),
            terms: vec!["family".into(), format!("theme {i}"), "animation".into()],
        })
        .collect()
}

#[test]
fn a_session_reuses_the_shared_part_and_answers_as_a_fresh_context() {
    let model = smollm2();
    let target = vec!["cats".to_string(), "family".to_string()];
    let one = history(0, 3);
    let two = history(20, 10);
    let judge = |h: &[ItemText], ins: &str| {
        let p = tp::judge(h, &target, ins);
        let m = vec![
            Message::new("system", p.system.clone()),
            Message::new("user", p.user.clone()),
        ];
        (m, p.shared, p.schema)
    };
    let opts = |shared: usize, schema: &str, temperature: f32, max_tokens: u32| ChatOptions {
        max_tokens,
        temperature,
        seed: 7,
        threads: 2,
        json_schema: (temperature == 0.0).then(|| schema.to_string()),
        shared_prefix: shared,
        ..Default::default()
    };
    // A judge's scorings of one group (one history, other instructions), greedy under the schema and
    // sampled without it; then another history with a budget that needs a larger context, twice;
    // then the first history again.
    let requests = [
        (&one, "A watercolour of a kitten asleep in a barn.", 0.0, 48),
        (&one, "A pig on a farm at dawn, shot on film.", 0.0, 48),
        (&one, "A pig on a farm at dawn, shot on film.", 0.8, 48),
        (&two, "A family of cats in a sunlit kitchen.", 0.0, 560),
        (&two, "Cats in a kitchen, clay animation.", 0.8, 560),
        (&one, "A kitten and a pig, in clay animation.", 0.0, 48),
    ];
    let mut session = ChatSession::new(&model);
    let mut cached = Vec::new();
    for &(h, ins, temperature, max_tokens) in &requests {
        let (m, shared, schema) = judge(h, ins);
        let o = opts(shared, &schema, temperature, max_tokens);
        let fresh = model.chat(&m, &o).unwrap();
        assert_eq!(fresh.cached_tokens, 0);
        let kept = session.chat(&m, &o).unwrap();
        assert_eq!(kept.text, fresh.text, "{m:?}");
        assert_eq!(kept.completion_tokens, fresh.completion_tokens);
        assert_eq!(kept.prompt_tokens, fresh.prompt_tokens);
        cached.push((kept.cached_tokens, kept.prompt_tokens));
    }
    assert_eq!(cached[0].0, 0, "the first request has nothing to reuse");
    // The same history: everything up to the instruction is reused.
    for i in [1, 2, 4] {
        assert!(
            cached[i].0 as f64 > 0.5 * cached[i].1 as f64 && cached[i].0 < cached[i].1,
            "request {i}: {cached:?}"
        );
    }
    assert_eq!(cached[1].0, cached[2].0, "{cached:?}");
    // A larger budget needed a larger context; another history shares no first batch.
    assert_eq!(cached[3].0, 0, "{cached:?}");
    assert_eq!(cached[5].0, 0, "{cached:?}");
    // Without a shared part nothing is split or kept.
    let (m, _, schema) = judge(&one, requests[1].1);
    let plain = opts(0, &schema, 0.0, 48);
    assert_eq!(session.chat(&m, &plain).unwrap().cached_tokens, 0);
    assert_eq!(session.chat(&m, &plain).unwrap().cached_tokens, 0);
}
