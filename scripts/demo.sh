#!/usr/bin/env bash
# The main job on the embedded default, end to end on a fresh machine: fetch the assets, prepare
# MovieLens-100k (CIDs, TIDs, codebooks, catalog, splits), train the tiny preset (stage 1, stage 2),
# export the bundle, build the zero-shot SmolLM2 bundle, and show a real held-out user: the last five
# titles, the top-5 predicted next titles, the generated instruction and the zero-shot one beside it;
# then the bundle's Recall@10 beside most-popular's over every test user, through the runtime.
# Outputs go to runs/demo (override with the first argument). Training length: DEMO_EPOCHS1 (stage 1,
# default 2 epochs; DEMO_STEPS1 caps its steps) and DEMO_STEPS2 (stage 2, default 80 steps): about 15
# minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/demo}"
e1="${DEMO_EPOCHS1:-2}"
s2="${DEMO_STEPS2:-80}"
steps1=(); [ -n "${DEMO_STEPS1:-}" ] && steps1=(--max-steps "$DEMO_STEPS1")
mkdir -p "$out"
echo "== building (first run only takes a while)" >&2
cargo build -q -p navigen-train -p navigen-cli
train=target/debug/navigen-train
nav=target/debug/navigen
[ -n "${CARGO_TARGET_DIR:-}" ] && train="$CARGO_TARGET_DIR/debug/navigen-train" && nav="$CARGO_TARGET_DIR/debug/navigen"
echo "== assets" >&2
"$train" assets ml-100k all-MiniLM-L6-v2 SmolLM2-135M-Instruct
echo "== prepare ml-100k" >&2
"$train" prepare --dataset ml-100k --out "$out/data"
echo "== stage 1 (the tiny preset from scratch: every training item a next-item target; $e1 epochs)" >&2
"$train" sft --data "$out/data" --run "$out/run" --preset tiny --stage 1 --epochs "$e1" "${steps1[@]}" --eval-every 100 --save-every 100 --val-users 300 > "$out/stage1.json"
echo "== stage 2 (adds reasoning and instructions; $s2 steps)" >&2
"$train" sft --data "$out/data" --run "$out/run" --stage 2 --max-steps "$s2" --eval-every 40 --save-every 40 --val-users 300 > "$out/stage2.json"
echo "== export (verified against llama.cpp)" >&2
"$train" export --run "$out/run" --out "$out/bundle" --dtype f16
"$train" bundle-zero-shot --data "$out/data" --out "$out/zero-shot"
echo "== demo" >&2
"$nav" demo --bundle "$out/bundle" --zero-shot "$out/zero-shot" --data "$out/data"
echo "== measured over every test user, through the runtime (the user's own items excluded)" >&2
"$train" eval --data "$out/data" --bundle "$out/bundle" --out "$out/eval.json" --instruction-users 20
echo "(training curves: $out/run/loss.png, metrics: $out/run/metrics.jsonl)" >&2
