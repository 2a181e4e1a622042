#!/usr/bin/env bash
# Builds the navigen wheel with the C library inside it.
#   bindings/python/build_wheel.sh LIBRARY OUT_DIR
# LIBRARY: the shared library from `cargo build -p navigen-ffi` (target/<profile>/libnavigen.so, or
# .dylib / navigen.dll). The wheel (py3-none-<platform>) is written to OUT_DIR; pip fetches the build
# backend (setuptools, wheel) into its cache the first time.
set -euo pipefail
lib="$1" out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/pyproject.toml" "$here/setup.py" "$here/README.md" "$here/navigen" "$work/"
rm -rf "$work/navigen/__pycache__"
cp "$lib" "$work/navigen/"
mkdir -p "$out"
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out" "$work" >&2
ls "$out"/navigen-*.whl
