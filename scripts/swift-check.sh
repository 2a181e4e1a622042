#!/usr/bin/env bash
# Runs the Swift package's tests (bindings/swift, `swift test`) on Linux, against this checkout's
# libnavigen and a real bundle. Swift 6 is not in Debian bookworm: the tests run in a Debian trixie
# root (debootstrap, about 3 GB, cached) that has Debian's swiftlang.
#
#   sudo scripts/swift-check.sh --lib DIR --bundle DIR --history JSON [--root DIR]
#
#   --lib      the folder holding libnavigen.so (target/<profile>)
#   --bundle   a bundle folder (the test `cargo test -p navigen-ffi --test bindings -- --ignored swift`
#              trains one and calls this script)
#   --history  a JSON array of item ids of that bundle's catalog
#   --root     where the trixie root is kept (default ~/.cache/navigen/swift/root)
#
# Needs root (debootstrap, mount, chroot). The package, header, library and bundle are copied into
# the root; proc and /dev are mounted for the run and unmounted on exit, also on failure.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
lib="" bundle="" history="" root="${NAVIGEN_CACHE:-$HOME/.cache/navigen}/swift/root"
while [ $# -gt 0 ]; do
  case "$1" in
  --lib) lib="$2"; shift 2 ;;
  --bundle) bundle="$2"; shift 2 ;;
  --history) history="$2"; shift 2 ;;
  --root) root="$2"; shift 2 ;;
  -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "swift-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
say() { echo "swift-check: $*" >&2; }
[ -n "$lib" ] && [ -n "$bundle" ] && [ -n "$history" ] || { sed -n '2,16p' "$0" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { say "needs root (debootstrap, mount, chroot)"; exit 1; }
[ -e "$lib/libnavigen.so" ] || { say "no libnavigen.so in $lib"; exit 1; }
[ -e "$bundle/bundle.json" ] || { say "no bundle in $bundle"; exit 1; }

# The root, built once: minbase trixie, Swift, and what swiftc links with.
stamp="$root/.navigen-swift-root"
if [ ! -e "$stamp" ]; then
  command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  rm -rf "$root"
  mkdir -p "$(dirname "$root")"
  say "debootstrap --variant=minbase trixie $root"
  debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >"$root.log" 2>&1 ||
    { say "debootstrap failed; see $root.log"; exit 1; }
  say "installing swiftlang in the root"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    swiftlang libc6-dev libstdc++-14-dev libgcc-14-dev binutils >>"$root.log" 2>&1 ||
    { say "apt-get install swiftlang failed; see $root.log"; exit 1; }
  touch "$stamp"
fi

cleanup() {
  for m in "$root/dev" "$root/proc"; do
    if mountpoint -q "$m"; then umount "$m" || umount -l "$m"; fi
  done
}
trap cleanup EXIT INT TERM
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"

# A fresh copy of what the package reads: the header (the module map points at ../../../../include)
# and the package itself (its .build is kept between runs).
w="$root/work"
mkdir -p "$w/navigen/bindings/swift" "$w/lib"
rm -rf "$w/navigen/include" "$w/bundle" "$w/navigen/bindings/swift/Sources" "$w/navigen/bindings/swift/Tests"
cp -r "$repo/include" "$w/navigen/include"
cp -r "$repo/bindings/swift/Package.swift" "$repo/bindings/swift/Sources" "$repo/bindings/swift/Tests" "$w/navigen/bindings/swift/"
cp "$lib/libnavigen.so" "$w/lib/"
cp -r "$bundle" "$w/bundle"

say "swift test (bindings/swift)"
chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
  NAVIGEN_TEST_BUNDLE=/work/bundle NAVIGEN_TEST_HISTORY="$history" \
  bash -c 'cd /work/navigen/bindings/swift && swift --version 2>&1 | head -n1 &&
    swift test -Xlinker -L/work/lib -Xlinker -rpath -Xlinker /work/lib'
