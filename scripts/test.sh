#!/usr/bin/env bash
# The test command: sets up a fresh machine, checks formatting and lints (gates: any rustfmt diff or
# clippy warning fails), then runs every test of the workspace.
# Real assets (MovieLens-100k, all-MiniLM-L6-v2, SmolLM2) are fetched into ~/.cache/navigen on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NAVIGEN_NO_PROGRESS=1
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy -D warnings" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --locked "$@"
