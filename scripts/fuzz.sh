#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (navigen's readers; issue 14) and reports what ran.
#
#   scripts/fuzz.sh [--runs N] [--seconds S] [TARGET...]
#
# Each target (all of `cargo fuzz list` by default) runs N executions (default 1,000,000) or for S
# seconds, starting from the committed seeds (fuzz/seeds/TARGET) and the corpus kept from earlier runs
# ($NAVIGEN_CACHE/fuzz-corpus/TARGET). Needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly; cargo install cargo-fuzz`). Prints one JSON line per target
# (executions, seconds, crashes) and writes them to $NAVIGEN_CACHE/fuzz-last-run.jsonl; a crash keeps
# its input in fuzz/artifacts/TARGET and the script exits 1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs=1000000 secs=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift ;;
    --seconds) secs="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
cache="${NAVIGEN_CACHE:-$HOME/.cache/navigen}"
export CARGO_TARGET_DIR="$cache/fuzz-target"
cargo +nightly fuzz build >&2
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
limit=(-runs="$runs")
[ -n "$secs" ] && limit=(-max_total_time="$secs")
report="$cache/fuzz-last-run.jsonl"
: > "$report"
failed=0
for t in "${targets[@]}"; do
  corpus="$cache/fuzz-corpus/$t"
  mkdir -p "$corpus"
  log="$(mktemp)"
  start=$(date +%s)
  status=ok
  # -rss_limit_mb: a reader must not balloon on a small input; -timeout: nor spin on one.
  seeds=()
  [ -d seeds/"$t" ] && seeds=(seeds/"$t")
  cargo +nightly fuzz run "$t" "$corpus" "${seeds[@]}" -- "${limit[@]}" -print_final_stats=1 \
    -rss_limit_mb=2048 -timeout=10 > "$log" 2>&1 || status=crash
  secs_taken=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(ls artifacts/"$t" 2>/dev/null | wc -l)
  line="{\"target\": \"$t\", \"executions\": ${execs:-0}, \"seconds\": $secs_taken, \"status\": \"$status\", \"artifacts\": $crashes, \"corpus\": $(ls "$corpus" | wc -l)}"
  echo "$line" | tee -a "$report"
  if [ "$status" != ok ]; then
    failed=1
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
exit $failed
