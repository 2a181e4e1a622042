#!/usr/bin/env bash
# Installs the C library for desktop C/C++ users: include/navigen.h, libnavigen.a and libnavigen.so
# (libnavigen.dylib on macOS), and a pkg-config file, under PREFIX.
#
#   scripts/install.sh --prefix PREFIX [--from LIBDIR] [--release]
#
# Builds navigen-ffi first (release with --release) unless --from names a folder that already holds
# the built libraries (target/<profile>). Then:
#   export PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
#   cc app.c $(pkg-config --cflags --libs navigen) -Wl,-rpath,PREFIX/lib                    # shared
#   cc app.c $(pkg-config --cflags navigen) PREFIX/lib/libnavigen.a \
#      $(pkg-config --variable=static_libs navigen)                                          # static
# The static library holds llama.cpp (C++, OpenMP in the default build): `static_libs` (also
# Libs.private) names the C++ and OpenMP runtimes it needs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="" from="" profile=debug release=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift ;;
    --from) from="$2"; shift ;;
    --release) profile=release; release=(--release) ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$prefix" ] || { echo "--prefix is required" >&2; exit 2; }
if [ -z "$from" ]; then
  (cd "$root" && cargo build -p navigen-ffi "${release[@]}" >&2)
  from="${CARGO_TARGET_DIR:-$root/target}/$profile"
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
abi="$(sed -n 's/^#define NAVIGEN_ABI_VERSION \([0-9]*\)/\1/p' "$root/include/navigen.h")"
shared=libnavigen.so
[ "$(uname)" = Darwin ] && shared=libnavigen.dylib
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
install -m 644 "$root/include/navigen.h" "$prefix/include/navigen.h"
install -m 644 "$from/libnavigen.a" "$prefix/lib/libnavigen.a"
install -m 755 "$from/$shared" "$prefix/lib/$shared"
private="-lstdc++ -lm -lpthread -ldl"
# The default build links llama.cpp's OpenMP runtime (GNU's on Linux).
# (grep without -q reads all of nm's output: with pipefail an early exit would fail the pipe.)
if nm "$prefix/lib/libnavigen.a" 2>/dev/null | grep ' U GOMP_' >/dev/null; then
  private="$private -lgomp"
fi
cat > "$prefix/lib/pkgconfig/navigen.pc" <<PC
prefix=$prefix
includedir=\${prefix}/include
libdir=\${prefix}/lib
static_libs=$private

Name: navigen
Description: On-device next-item prediction and creation instructions (C ABI $abi)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lnavigen
Libs.private: $private
PC
echo "installed navigen $version (C ABI $abi) under $prefix" >&2
