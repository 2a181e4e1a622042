#!/usr/bin/env bash
# The test command: sets up a fresh machine, then runs every test of the workspace.
# Real assets (MovieLens-100k, all-MiniLM-L6-v2, SmolLM2) are fetched into ~/.cache/navigen on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NAVIGEN_NO_PROGRESS=1
cargo test --workspace --locked "$@"
