#!/usr/bin/env bash
# Checks include/navigen.h against the ABI navigen released under its ABI version: the header's
# declarations (types, struct layouts, enum values, function signatures) are dumped with Debian's
# abi-compliance-checker (header-only mode, GCC) and compared with abi/navigen-<version>.dump, the
# dump of that version as released. Additions pass; any binary or source incompatibility fails, with
# the report's path.
#
#   scripts/abi-check.sh [--header H] [--bless] [--work DIR]
#
#   --header  the header to check (default include/navigen.h)
#   --bless   write abi/navigen-<version>.dump from the header: only when releasing a new ABI version
#             (after bumping NAVIGEN_ABI_VERSION), never to silence a failure
#   --work    where dumps, logs and reports go (default: a temporary folder, kept on failure)
#
# A changed NAVIGEN_ABI_VERSION without its dump fails too: a bump is a release of a new ABI, and its
# baseline is blessed with it. Dumps are made with the GCC of Debian bookworm (12); another compiler
# may add noise to the comparison.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
header="$repo/include/navigen.h"
bless=0
work=""
while [ $# -gt 0 ]; do
  case "$1" in
  --header) header="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
  --bless) bless=1; shift ;;
  --work) work="$2"; shift 2 ;;
  -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "abi-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
say() { echo "abi-check: $*" >&2; }
command -v abi-compliance-checker >/dev/null 2>&1 ||
  { say "abi-compliance-checker is missing (scripts/setup.sh installs it)"; exit 1; }
version=$(sed -n 's/^#define NAVIGEN_ABI_VERSION \([0-9][0-9]*\).*/\1/p' "$header")
[ -n "$version" ] || { say "no NAVIGEN_ABI_VERSION in $header"; exit 1; }
baseline="$repo/abi/navigen-$version.dump"

keep=1
if [ -z "$work" ]; then
  work="$(mktemp -d)"
  keep=0
fi
mkdir -p "$work"
cd "$work"
printf '<version>%s</version>\n<headers>%s</headers>\n' "$version-current" "$header" >current.xml
abi-compliance-checker -lib navigen -dump current.xml -dump-path current.dump -headers-only >dump.log 2>&1 ||
  { say "dumping $header failed:"; tail -n 20 dump.log >&2; exit 1; }

if [ $bless -eq 1 ]; then
  mkdir -p "$repo/abi"
  # The dump names the version it was made for; the baseline is that version as released.
  sed "s/'LibraryVersion' => '$version-current'/'LibraryVersion' => '$version'/" current.dump >"$baseline"
  say "wrote $baseline"
  [ $keep -eq 1 ] || rm -rf "$work"
  exit 0
fi
[ -e "$baseline" ] || {
  say "no baseline $baseline for NAVIGEN_ABI_VERSION $version: a new ABI version is released with its"
  say "dump (scripts/abi-check.sh --bless)"
  exit 1
}
if abi-compliance-checker -lib navigen -old "$baseline" -new current.dump -headers-only >compare.log 2>&1; then
  grep -E "^Total (binary|source) compatibility problems" compare.log >&2 || true
  [ $keep -eq 1 ] || rm -rf "$work"
  exit 0
fi
say "include/navigen.h breaks ABI $version:"
grep -E "compatibility|Report:" compare.log >&2 || tail -n 20 compare.log >&2
say "the report (HTML) and logs are in $work; either undo the change or bump NAVIGEN_ABI_VERSION"
exit 1
