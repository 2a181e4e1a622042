#!/usr/bin/env bash
# Opt-in Vulkan test: builds llama.cpp with Vulkan (Debian 13 headers from scripts/vulkan-prefix.sh,
# a separate llama.cpp build of several minutes) and checks on Mesa's lavapipe that greedy tokens equal
# the CPU's (tests/tests/vulkan.rs). Not part of scripts/test.sh: it needs apt and a long build.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/vulkan-prefix.sh)"
exec cargo test --locked -p navigen-tests --features vulkan --test vulkan -- --nocapture
