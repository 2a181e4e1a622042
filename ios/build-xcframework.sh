#!/usr/bin/env bash
# Builds navigen.xcframework for iOS: libnavigen.a (navigen-ffi's staticlib, Metal on, OpenMP off:
# iOS has no OpenMP runtime) for the device (aarch64-apple-ios) and the simulator (aarch64 and x86_64,
# joined with lipo), each with include/navigen.h and a module map naming the Clang module CNavigen, as
# the Swift package (bindings/swift) imports it. The result goes to bindings/swift/Frameworks/, where
# bindings/swift/Package.swift picks it up as a binary target.
#
#   ios/build-xcframework.sh [--debug] [--out DIR]
#
# Needs macOS with Xcode (xcodebuild, lipo, the iOS SDKs) and the rustup targets
# (`rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios`).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
profile=release
out="$repo/bindings/swift/Frameworks"
while [ $# -gt 0 ]; do
  case "$1" in
  --debug) profile=debug; shift ;;
  --out) out="$2"; shift 2 ;;
  -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "build-xcframework.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
say() { echo "build-xcframework: $*" >&2; }
command -v xcodebuild >/dev/null 2>&1 || { say "needs Xcode (xcodebuild) on macOS"; exit 1; }

device=aarch64-apple-ios
sims=(aarch64-apple-ios-sim x86_64-apple-ios)
flags=(--no-default-features --features metal)
[ "$profile" = release ] && flags+=(--release)
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
for t in "$device" "${sims[@]}"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  say "cargo build -p navigen-ffi --target $t ${flags[*]}"
  (cd "$repo" && cargo build -p navigen-ffi --target "$t" "${flags[@]}")
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Headers with the module map the Swift package imports (module CNavigen), as on Linux.
mkdir -p "$work/headers"
cp "$repo/include/navigen.h" "$work/headers/"
cat >"$work/headers/module.modulemap" <<'MAP'
module CNavigen {
    header "navigen.h"
    link "c++"
    export *
}
MAP
mkdir -p "$work/sim"
lipo -create "$target_dir/${sims[0]}/$profile/libnavigen.a" "$target_dir/${sims[1]}/$profile/libnavigen.a" \
  -output "$work/sim/libnavigen.a"

rm -rf "$out/navigen.xcframework"
mkdir -p "$out"
xcodebuild -create-xcframework \
  -library "$target_dir/$device/$profile/libnavigen.a" -headers "$work/headers" \
  -library "$work/sim/libnavigen.a" -headers "$work/headers" \
  -output "$out/navigen.xcframework"
say "wrote $out/navigen.xcframework"
