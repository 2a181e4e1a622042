#!/usr/bin/env bash
# Runs the C ABI's thread test under ThreadSanitizer (issue 14), with everything instrumented:
# navigen and the Rust standard library (nightly, -Zsanitizer=thread -Zbuild-std), llama.cpp/ggml
# (-fsanitize=thread through CFLAGS/CXXFLAGS; built without OpenMP, whose runtime TSan cannot see)
# and the C program. The program (sdk/ffi/tests/c/threads.c) shares one engine between 8 threads
# calling predict, streamed instruct, register and cancel while another thread appends to, reads
# and exports a history. Any TSan report fails the run.
#
#   scripts/sanitizers.sh [BUNDLE_DIR]
#
# Without BUNDLE_DIR it trains and exports a small bundle on ml-100k first (the regular build).
# The ASan/UBSan runs of the C programs are inside the test command (sdk/ffi/tests/c_abi.rs); this
# one is opt-in because it rebuilds std and llama.cpp instrumented (about 15 minutes on 2 cores;
# kept in $NAVIGEN_CACHE/target-tsan). Needs: rustup's nightly with rust-src, gcc, cmake.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${NAVIGEN_CACHE:-$HOME/.cache/navigen}"
host="$(rustc -vV | sed -n 's/^host: //p')"
work="$cache/work/tsan"
mkdir -p "$work"
rustup +nightly component add rust-src >&2

bundle="${1:-}"
if [ -z "$bundle" ]; then
  bundle="$work/bundle"
  if [ ! -f "$bundle/bundle.json" ]; then
    echo "== training a small bundle (ml-100k, tiny preset, 40 steps)" >&2
    (cd "$root" && cargo run -q -p navigen-train -- prepare --dataset ml-100k --out "$work/data" >&2 &&
      cargo run -q -p navigen-train -- sft --data "$work/data" --run "$work/run" --preset tiny \
        --stage 1 --max-steps 40 >&2 &&
      cargo run -q -p navigen-train -- export --run "$work/run" --out "$bundle" >&2)
  fi
fi
items=()
if [ -f "$work/data/test.jsonl" ]; then
  mapfile -t items < <(head -1 "$work/data/test.jsonl" | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["history"][-20:]))')
else
  items=(1 2 3 4 5)
fi

echo "== building libnavigen.a with ThreadSanitizer (nightly, build-std)" >&2
tsan=(-fsanitize=thread -g -O1)
(cd "$root" &&
  CFLAGS="${tsan[*]}" CXXFLAGS="${tsan[*]}" \
  RUSTFLAGS="-Zsanitizer=thread -Cforce-frame-pointers=yes" \
  CARGO_TARGET_DIR="$cache/target-tsan" \
  cargo +nightly build -Zbuild-std --target "$host" -p navigen-ffi --no-default-features >&2)
lib="$cache/target-tsan/$host/debug/libnavigen.a"
# The Rust side calls compiler-rt's TSan runtime as rustc ships it; link that one (not gcc's libtsan)
# so the C, C++ and Rust parts share one runtime.
rt="$(rustc +nightly --print sysroot)/lib/rustlib/$host/lib/librustc-nightly_rt.tsan.a"
exe="$work/threads_tsan"
gcc -std=c99 -Wall -Wextra -Werror "${tsan[@]}" -pthread -I "$root/include" -c \
  "$root/sdk/ffi/tests/c/threads.c" -o "$work/threads.o"
g++ "$work/threads.o" "$lib" -Wl,--whole-archive "$rt" -Wl,--no-whole-archive \
  -pthread -ldl -lm -lrt -o "$exe"

# A positive control first: a plain data race, linked the same way, must be reported.
printf '%s\n' '#include <pthread.h>' 'static int x;' \
  'static void *f(void *a) { (void)a; x++; return 0; }' \
  'int main(void) { pthread_t t[2]; int i; for (i = 0; i < 2; i++) pthread_create(&t[i], 0, f, 0);' \
  '  for (i = 0; i < 2; i++) pthread_join(t[i], 0); return 0; }' > "$work/race.c"
gcc "${tsan[@]}" -c "$work/race.c" -o "$work/race.o"
g++ "$work/race.o" -Wl,--whole-archive "$rt" -Wl,--no-whole-archive -pthread -ldl -lm -lrt -o "$work/race"
if TSAN_OPTIONS="exitcode=66" "$work/race" 2>/dev/null; then
  echo "ThreadSanitizer did not report a planted data race: the runtime is not active" >&2
  exit 1
fi
echo "== positive control: the planted race was reported" >&2

echo "== running 8 threads on one engine with a history writer under TSan" >&2
rm -rf "$work/history"
log="$work/tsan.log"
set +e
TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$work/tsan-report" \
  "$exe" "$bundle" "$work/history" "${items[@]}" > "$log" 2>&1
status=$?
set -e
cat "$log"
reports=$(cat "$work"/tsan-report.* 2>/dev/null | grep -c "WARNING: ThreadSanitizer" || true)
echo "{\"sanitizer\": \"thread\", \"exit\": $status, \"reports\": $reports}"
if [ "$status" -ne 0 ] || [ "$reports" -ne 0 ]; then
  cat "$work"/tsan-report.* 2>/dev/null | head -120 >&2
  exit 1
fi
rm -f "$work"/tsan-report.*
