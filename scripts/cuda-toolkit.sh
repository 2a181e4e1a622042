#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit from NVIDIA's wheels on PyPI into ~/.cache/navigen/cuda-13.0.88 and
# prints the environment that `cargo build -p navigen-train --features cuda` needs. No GPU, driver or
# root is needed; the same toolkit serves a GPU machine.
#
#   eval "$(scripts/cuda-toolkit.sh)"            # compile: nvcc, headers (cargo check / build scripts)
#   eval "$(scripts/cuda-toolkit.sh --libs)"     # also link: cuBLAS, cuRAND, NVRTC, a libcuda stub
#
# Why these wheels and this version:
# - nvidia-cuda-nvcc (CUDA 13) holds a working nvcc, cudafe++ and ptxas; cicc and libdevice come from
#   nvidia-nvvm, the crt headers from nvidia-cuda-crt, cuda_runtime.h / cuda.h from
#   nvidia-cuda-runtime, and libcu++ (<nv/target>, which cuda_fp16.h includes) from nvidia-cuda-cccl.
#   The CUDA 12 nvcc wheel holds only ptxas.
# - 13.0, not the newest (13.5): candle's kernels travel as PTX that the driver compiles when they load,
#   and a driver only reads the PTX of its own CUDA release or older. 13.0 is what the R580 drivers
#   run (the GPU machines lent here have 580.159), and cudarc 0.19.10 (candle 0.11.1's) knows 13.0..13.4.
#   CUDARC_CUDA_VERSION names it for cudarc's build script instead of asking nvcc.
# - No wheel holds libcuda (it comes with the driver). cudarc links it dynamically, so --libs builds a
#   link stub from cuda.h's own declarations (lib/stubs/libcuda.so, soname libcuda.so.1, the way the
#   toolkit's stubs work): at run time the driver's libcuda.so.1 is found instead. lib/stubs is on
#   LIBRARY_PATH (the linker) and never on LD_LIBRARY_PATH (the loader).
# - CUDA_COMPUTE_CAP: candle-kernels compiles for it (nvidia-smi is asked when present; 90 otherwise,
#   the H100/H200 class; set it to build for another GPU).
# Every wheel is checked against the sha256 below (pip --require-hashes).
set -euo pipefail

VERSION=13.0.88
CACHE="${NAVIGEN_CACHE:-$HOME/.cache/navigen}"
ROOT="$CACHE/cuda-$VERSION"
libs=0
[ "${1:-}" = "--libs" ] && libs=1

say() { echo "cuda-toolkit: $*" >&2; }

compile_wheels='
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
'
link_wheels='
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.0.2.14 --hash=sha256:0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
'

# Downloads the wheels of one set (pip checks the hashes) and unpacks their nvidia/cu13 trees into ROOT.
install_set() {
  local name=$1 list=$2
  [ -f "$ROOT/.complete-$name" ] && return 0
  local work
  work=$(mktemp -d)
  printf '%s\n' "$list" | sed '/^$/d' > "$work/requirements.txt"
  say "downloading the $name wheels (CUDA $VERSION) into $ROOT"
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    -r "$work/requirements.txt" -d "$work/wheels" >&2
  mkdir -p "$ROOT"
  python3 - "$work/wheels" "$ROOT" <<'EOF'
import pathlib, sys, zipfile
wheels, root = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for w in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(w) as z:
        for info in z.infolist():
            parts = pathlib.PurePosixPath(info.filename).parts
            if len(parts) < 3 or parts[:2] != ("nvidia", "cu13") or info.is_dir():
                continue
            dest = root.joinpath(*parts[2:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(info))
            mode = (info.external_attr >> 16) & 0o777
            dest.chmod(mode or 0o644)
EOF
  rm -rf "$work"
  touch "$ROOT/.complete-$name"
}

install_set compile "$compile_wheels"
"$ROOT/bin/nvcc" --version >/dev/null || { say "nvcc from the wheels does not run"; exit 1; }

if [ "$libs" = 1 ]; then
  install_set link "$link_wheels"
  # The linker wants the unversioned names; the wheels carry only the sonames.
  for so in "$ROOT"/lib/lib*.so.*; do
    base="${so%%.so.*}.so"
    [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
  done
  if [ ! -f "$ROOT/lib/stubs/libcuda.so" ]; then
    mkdir -p "$ROOT/lib/stubs"
    work=$(mktemp -d)
    echo '#include <cuda.h>' > "$work/decl.c"
    # Every driver function cuda.h declares, under the names its macros give them (cuCtxCreate_v4 ...).
    gcc -E -I "$ROOT/include" "$work/decl.c" | tr '\n' ' ' \
      | grep -oE 'CUresult +(__attribute__\(\(visibility\("default"\)\)\) +)?cu[A-Za-z0-9_]+ *\(' \
      | grep -oE 'cu[A-Za-z0-9_]+ *\($' | tr -d ' (' | sort -u \
      | sed 's/.*/int &(void) { return 999; \/* CUDA_ERROR_UNKNOWN: a stub, never loaded *\/ }/' > "$work/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so" "$work/stub.c"
    say "libcuda link stub: $(wc -l < "$work/stub.c") driver functions"
    rm -rf "$work"
  fi
fi

cap="${CUDA_COMPUTE_CAP:-}"
if [ -z "$cap" ] && command -v nvidia-smi >/dev/null 2>&1; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '.') || cap=""
fi
cap="${cap:-90}"

echo "export CUDA_ROOT='$ROOT' CUDA_PATH='$ROOT' CUDA_HOME='$ROOT'"
echo "export PATH='$ROOT/bin':\"\$PATH\""
echo "export CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=$cap"
if [ "$libs" = 1 ]; then
  echo "export LIBRARY_PATH='$ROOT/lib:$ROOT/lib/stubs'\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
  echo "export LD_LIBRARY_PATH='$ROOT/lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
fi
