#!/usr/bin/env bash
# The main job on the embedded default: fetch the assets and prepare MovieLens-100k
# (CIDs, TIDs, codebooks, catalog, splits), then print a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/ml-100k}"
cargo run -q -p navigen-train -- assets ml-100k all-MiniLM-L6-v2
cargo run -q -p navigen-train -- prepare --dataset ml-100k --out "$out"
cargo run -q -p navigen-train -- inspect "$out/catalog.nvct"
