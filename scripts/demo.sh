#!/usr/bin/env bash
# The main job on the embedded default, end to end on a fresh machine: fetch the assets, prepare
# MovieLens-100k (CIDs, TIDs, codebooks, catalog, splits), train the tiny preset (stage 1, stage 2),
# export the bundle, build the zero-shot SmolLM2 bundle, and show a real held-out user: the last five
# titles, the top-5 predicted next titles, the generated instruction and the zero-shot one beside it.
# Outputs go to runs/demo (override with the first argument). Steps: DEMO_STEPS1/DEMO_STEPS2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/demo}"
s1="${DEMO_STEPS1:-150}"
s2="${DEMO_STEPS2:-150}"
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
echo "== stage 1 (new token rows and head; $s1 steps)" >&2
"$train" sft --data "$out/data" --run "$out/run" --preset tiny --stage 1 --max-steps "$s1" --eval-every 50 --save-every 50 > "$out/stage1.json"
echo "== stage 2 (everything, with reasoning and instructions; $s2 steps)" >&2
"$train" sft --data "$out/data" --run "$out/run" --stage 2 --max-steps "$s2" --eval-every 50 --save-every 50 > "$out/stage2.json"
echo "== export (verified against llama.cpp)" >&2
"$train" export --run "$out/run" --out "$out/bundle" --dtype f16
"$train" bundle-zero-shot --data "$out/data" --out "$out/zero-shot"
echo "== demo" >&2
"$nav" demo --bundle "$out/bundle" --zero-shot "$out/zero-shot" --data "$out/data"
echo "(training curves: $out/run/loss.png, metrics: $out/run/metrics.jsonl)" >&2
