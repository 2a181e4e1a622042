#!/usr/bin/env bash
# Builds libnavigen.so (navigen-ffi's cdylib) for Android ABIs with cargo-ndk, into OUT/<abi>/.
# llama.cpp inside it is C++ on the NDK's shared STL (libc++_shared.so), which the Gradle module
# packages (ANDROID_STL=c++_shared). Gradle's :navigen:cargoNdk task runs it before every build; run
# it by hand to check a toolchain.
#
#   android/build-rust.sh --out DIR [--abi arm64-v8a] [--abi x86_64] [--api 24] [--debug]
#
# Needs: the Android NDK (ANDROID_NDK_HOME, or ANDROID_HOME/ndk/<version>), cargo-ndk
# (`cargo install cargo-ndk`), the rustup targets (`rustup target add aarch64-linux-android
# x86_64-linux-android`).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="" abis=() api=24 profile=release
while [ $# -gt 0 ]; do
  case "$1" in
  --out) out="$2"; shift 2 ;;
  --abi) abis+=("$2"); shift 2 ;;
  --api) api="$2"; shift 2 ;;
  --debug) profile=debug; shift ;;
  -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "build-rust.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { sed -n '2,11p' "$0" >&2; exit 2; }
[ ${#abis[@]} -gt 0 ] || abis=(arm64-v8a x86_64)
say() { echo "build-rust: $*" >&2; }

ndk="${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}"
if [ -z "$ndk" ] && [ -n "${ANDROID_HOME:-}" ] && [ -d "$ANDROID_HOME/ndk" ]; then
  ndk="$ANDROID_HOME/ndk/$(ls "$ANDROID_HOME/ndk" | sort -V | tail -n1)"
fi
[ -n "$ndk" ] && [ -e "$ndk/build/cmake/android.toolchain.cmake" ] ||
  { say "no Android NDK: set ANDROID_NDK_HOME (or install one with the SDK manager under ANDROID_HOME/ndk)"; exit 1; }
command -v cargo-ndk >/dev/null 2>&1 || { say "cargo-ndk is missing: cargo install cargo-ndk"; exit 1; }

triple_of() {
  case "$1" in
  arm64-v8a) echo aarch64-linux-android ;;
  armeabi-v7a) echo armv7-linux-androideabi ;;
  x86_64) echo x86_64-linux-android ;;
  x86) echo i686-linux-android ;;
  *) say "unknown ABI $1"; exit 2 ;;
  esac
}
targets=()
for abi in "${abis[@]}"; do
  t=$(triple_of "$abi")
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  targets+=(-t "$abi")
done

export ANDROID_NDK_HOME="$ndk"
flags=()
[ "$profile" = release ] && flags+=(--release)
say "cargo ndk ${targets[*]} --platform $api build -p navigen-ffi ${flags[*]}"
(cd "$repo" && cargo ndk "${targets[@]}" --platform "$api" -o "$out" build -p navigen-ffi "${flags[@]}")

for abi in "${abis[@]}"; do
  say "$out/$abi: $(ls "$out/$abi" | tr '\n' ' ')"
done
