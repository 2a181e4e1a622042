#!/usr/bin/env bash
# The test command: sets up a fresh machine, checks formatting and lints (gates: any rustfmt diff or
# clippy warning fails), checks that the trainer's `cuda` feature compiles, then runs every test of
# the workspace.
# Real assets (MovieLens-100k, all-MiniLM-L6-v2, SmolLM2) are fetched into ~/.cache/navigen on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NAVIGEN_NO_PROGRESS=1
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy -D warnings" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo check --features cuda (CUDA 13.0 from PyPI wheels, no GPU needed: scripts/cuda-toolkit.sh)" >&2
# The CUDA trainer is built only where a GPU is; this keeps it compiling everywhere. Same target
# folder as the rest: cargo keeps the artefacts of each feature set apart. The first run compiles
# candle's kernels with nvcc and builds llama.cpp once more (one package's features unify differently
# from the workspace's); later runs reuse both.
(eval "$(bash scripts/cuda-toolkit.sh)" &&
  cargo check -q -p navigen-train --features cuda --locked)
echo "== cargo test" >&2
cargo test --workspace --locked "$@"
