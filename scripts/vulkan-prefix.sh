#!/usr/bin/env bash
# Prepares what a Vulkan build of llama.cpp needs on Debian 12 and prints the environment to build with.
#
# - From the system's own suite: glslc (shader compiler), mesa-vulkan-drivers (lavapipe, a CPU Vulkan
#   device for correctness tests), libvulkan1 (the loader).
# - Debian 12's Vulkan headers (1.3.239) are too old for ggml-vulkan, so libvulkan-dev and spirv-headers
#   come from Debian 13 (trixie), downloaded with apt into a private list folder and unpacked with
#   `dpkg -x` into ~/.cache/navigen/vulkan-prefix: nothing of Debian 13 is installed system-wide.
#
#   eval "$(scripts/vulkan-prefix.sh)"     # exports CXXFLAGS, CMAKE_PREFIX_PATH, LIBRARY_PATH, GGML_VK_VISIBLE_DEVICES
set -euo pipefail

CACHE="${NAVIGEN_CACHE:-$HOME/.cache/navigen}"
PREFIX="$CACHE/vulkan-prefix"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

missing=()
for p in glslc mesa-vulkan-drivers libvulkan1; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "vulkan-prefix: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

if [ ! -f "$PREFIX/usr/include/vulkan/vulkan.hpp" ] || [ ! -d "$PREFIX/usr/include/spirv" ]; then
  work=$(mktemp -d)
  mkdir -p "$work/lists/partial" "$work/debs"
  echo "deb http://deb.debian.org/debian trixie main" > "$work/trixie.list"
  apt_opts=(-o "Dir::Etc::SourceList=$work/trixie.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$work/lists")
  echo "vulkan-prefix: fetching libvulkan-dev and spirv-headers from Debian 13" >&2
  apt-get "${apt_opts[@]}" update -qq >&2
  (cd "$work/debs" && apt-get "${apt_opts[@]}" download libvulkan-dev spirv-headers >&2)
  mkdir -p "$PREFIX"
  for d in "$work"/debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
  rm -rf "$work"
fi
# Link against the system's loader (Debian 13's needs a newer glibc); its ABI is stable.
lib="$PREFIX/usr/lib/x86_64-linux-gnu"
mkdir -p "$lib"
rm -f "$lib/libvulkan.so.1"*
ln -sf "$(ls /usr/lib/x86_64-linux-gnu/libvulkan.so.1 | head -1)" "$lib/libvulkan.so"

echo "export CXXFLAGS=\"-I$PREFIX/usr/include\""
echo "export CMAKE_PREFIX_PATH=\"$PREFIX/usr\""
# The link step needs libvulkan.so (the -dev symlink); at run time the system's libvulkan.so.1 loads.
echo "export LIBRARY_PATH=\"$PREFIX/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}\""
# ggml skips CPU-type Vulkan devices (lavapipe) unless they are named.
echo "export GGML_VK_VISIBLE_DEVICES=0"
