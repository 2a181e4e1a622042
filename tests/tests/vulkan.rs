//! The Vulkan backend against the CPU on the same bundle: greedy tokens (next-item beams and a whole
//! instruction, grammar phase included) must be identical with every layer and with two layers
//! offloaded. Runs on Mesa's lavapipe (a CPU Vulkan device, ~100x slower than the CPU backend, so only
//! for correctness). Built only with `--features vulkan`: `scripts/test-vulkan.sh`.

use navigen::engine::{Engine, EngineParams, InstructionOptions};
use navigen_tests::{test_histories, trained_bundle};

#[test]
fn vulkan_gives_the_cpus_greedy_tokens() {
    let devices = navigen::llm::devices().unwrap();
    assert!(
        devices.iter().any(|d| d.backend == "Vulkan"),
        "no Vulkan device in {devices:?}: lavapipe needs GGML_VK_VISIBLE_DEVICES=0"
    );
    eprintln!("llama.cpp devices: {devices:?}");
    let f = trained_bundle(20);
    let cpu = Engine::open(&f.bundle, EngineParams::default()).unwrap();
    let histories = test_histories(&f.data, 2);
    let opts = InstructionOptions {
        max_think_tokens: 24,
        max_answer_tokens: 48,
        ..Default::default()
    };
    let expected: Vec<(Vec<String>, String)> = histories
        .iter()
        .map(|(h, _)| {
            let refs: Vec<&str> = h.iter().map(String::as_str).collect();
            let ids = cpu
                .predict_next(&refs, 10, 10)
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect();
            let raw = cpu
                .generate_instruction(&refs, &opts, &mut |_| true)
                .unwrap()
                .raw;
            (ids, raw)
        })
        .collect();
    drop(cpu);
    for gpu_layers in [99, 2] {
        // op_offload off: with lavapipe, offloading the CPU layers' big batches would only slow it down.
        let gpu = Engine::open(
            &f.bundle,
            EngineParams {
                gpu_layers,
                op_offload: false,
                ..Default::default()
            },
        )
        .unwrap();
        for ((h, _), (ids, raw)) in histories.iter().zip(&expected) {
            let refs: Vec<&str> = h.iter().map(String::as_str).collect();
            let got: Vec<String> = gpu
                .predict_next(&refs, 10, 10)
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect();
            assert_eq!(
                &got, ids,
                "next items differ on Vulkan with {gpu_layers} layers"
            );
            let text = gpu
                .generate_instruction(&refs, &opts, &mut |_| true)
                .unwrap()
                .raw;
            assert_eq!(
                &text, raw,
                "instruction differs on Vulkan with {gpu_layers} layers"
            );
        }
    }
}
