#!/usr/bin/env bash
# Proves that the README's two commands work on a new machine with no step done by hand.
#
# Builds a minimal Debian root (`debootstrap --variant=minbase bookworm`), gives it what a new machine
# of this kind comes with and nothing of the project's (the host's Rust toolchain; the package
# clients' configuration and trust: apt sources and settings, pip and npm configuration and their
# environment variables, the CA certificates under /usr/local/share/ca-certificates), puts a clean
# clone of the committed tree in it (HEAD: commit first), mounts proc and sys, binds /dev, and runs
# exactly `bash scripts/demo.sh` and then `bash scripts/test.sh` there, printing the wall time of each
# and failing loudly on the first error. Caches start empty inside the root (~/.cache, ~/.cargo).
#
# Two roots:
#   minbase  the bare minbase root
#   devbox   minbase plus what a typical development machine has: llvm-14 (which brings libclang-cpp14
#            but not libclang: the trap that once made setup.sh skip libclang-dev), git, curl, g++,
#            nodejs
#
#   sudo scripts/fresh-machine-check.sh [--root minbase|devbox|both] [--keep] [--workdir DIR]
#
# Needs root (debootstrap, mount, chroot) and debootstrap (installed with apt-get if missing). Each run
# takes the better part of an hour per root on 2 cores (cold cargo build of llama.cpp and candle,
# the demo, the test suite). Logs: WORKDIR/<root>.log; the times are appended to WORKDIR/times.txt.
# Everything it mounted is unmounted on exit, also on failure or Ctrl-C; the roots are removed unless
# --keep.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

which_root=both
keep=0
workdir=""
while [ $# -gt 0 ]; do
  case "$1" in
  --root) which_root="$2"; shift 2 ;;
  --keep) keep=1; shift ;;
  --workdir) workdir="$2"; shift 2 ;;
  -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
  *) echo "fresh-machine-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$which_root" in
minbase) roots=(minbase) ;;
devbox) roots=(devbox) ;;
both) roots=(minbase devbox) ;;
*) echo "fresh-machine-check: --root is minbase, devbox or both" >&2; exit 2 ;;
esac

say() { echo "fresh-machine-check: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, mount, chroot): run it with sudo"
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null || die "cannot install debootstrap"
fi
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
[ -x "$cargo_bin/cargo" ] && [ -d "$rustup_home/toolchains" ] ||
  die "the host's Rust toolchain (rustup) was not found in $cargo_bin and $rustup_home"
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
  say "note: uncommitted changes are NOT checked; the clone holds HEAD $(git -C "$repo" rev-parse --short HEAD)"

if [ -z "$workdir" ]; then
  workdir="$(mktemp -d /var/tmp/navigen-fresh.XXXXXX)"
fi
mkdir -p "$workdir"
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror="${mirror:-http://deb.debian.org/debian}"

# Mounts made so far, newest last; unmounted in reverse on any exit.
mounted=()
current_root=""
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[$i]}" 2>/dev/null || umount -R -l "${mounted[$i]}" 2>/dev/null ||
      say "could not unmount ${mounted[$i]}"
  done
  mounted=()
  if [ $keep -eq 0 ] && [ -n "$current_root" ] && [ -d "$current_root" ]; then
    # Never delete through a mount that is still there (/dev of the host, say).
    if grep -q " $current_root/" /proc/mounts; then
      say "left $current_root in place: something is still mounted under it"
    else
      rm -rf --one-file-system "$current_root"
    fi
  fi
  current_root=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The environment a new machine's shell has: package clients' settings and trust, no project state.
# Written into the root as a file of quoted exports that every command sources.
machine_env() {
  local v
  for v in $(compgen -e); do
    case "$v" in
    PIP_* | NPM_CONFIG_* | npm_config_* | SSL_CERT_* | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE | NODE_EXTRA_CA_CERTS | \
      GIT_SSL_CAINFO | CARGO_HTTP_CAINFO | RUSTUP_AUTO_INSTALL | http_proxy | https_proxy | no_proxy | \
      HTTP_PROXY | HTTPS_PROXY | NO_PROXY)
      printf 'export %s=%q\n' "$v" "${!v}"
      ;;
    esac
  done
}

run_in() { # root, label, command...: runs in the root with the machine's environment, logs, times
  local root=$1 label=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  say "[$label] $*"
  set +e
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb RUSTUP_HOME=/root/.rustup \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c ". /etc/machine-env; $*" 2>&1 |
    tee -a "$log" | sed -u "s/^/  [$label] /"
  rc=${PIPESTATUS[0]}
  set -e
  local dt=$(($(date +%s) - t0))
  printf '%s  %-8s %-40s %5d s  rc %d\n' "$(date -u +%FT%TZ)" "$label" "$*" "$dt" "$rc" >>"$workdir/times.txt"
  say "[$label] $* took $((dt / 60)) min $((dt % 60)) s (rc $rc)"
  [ "$rc" -eq 0 ] || die "[$label] \`$*\` exited with $rc; log: $log"
}

for name in "${roots[@]}"; do
  root="$workdir/$name"
  log="$workdir/$name.log"
  current_root="$root"
  : >"$log"
  say "[$name] debootstrap --variant=minbase bookworm $root ($mirror)"
  t0=$(date +%s)
  debootstrap --variant=minbase bookworm "$root" "$mirror" >>"$log" 2>&1 || die "debootstrap failed; log: $log"
  say "[$name] root ready in $(($(date +%s) - t0)) s"

  # What a new machine of this kind comes with: the package clients' configuration and trust ...
  cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/"
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/"
  # (bookworm's own sources.list from debootstrap would duplicate the host's deb822 sources)
  [ -f /etc/apt/sources.list.d/debian.sources ] && rm -f "$root/etc/apt/sources.list"
  for f in /etc/apt/apt.conf.d/*; do
    case "$(basename "$f")" in docker-* | 20packagekit | 50appstream) continue ;; esac
    cp "$f" "$root/etc/apt/apt.conf.d/"
  done
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/"
  [ -f /usr/etc/npmrc ] && mkdir -p "$root/usr/etc" && cp /usr/etc/npmrc "$root/usr/etc/"
  [ -f "$HOME/.npmrc" ] && cp "$HOME/.npmrc" "$root/root/"
  [ -d "$HOME/.config/pip" ] && mkdir -p "$root/root/.config" && cp -a "$HOME/.config/pip" "$root/root/.config/"
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  mkdir -p "$root/opt/wheels"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/hosts "$root/etc/hosts"
  # ... and the host's Rust toolchain (read-only; CARGO_HOME's registry and caches start empty).
  # (copied, not bound: nothing the root does can reach the host's toolchain)
  mkdir -p "$root/root/.cargo/bin"
  cp -a "$cargo_bin/." "$root/root/.cargo/bin/"
  cp -a "$rustup_home" "$root/root/.rustup"
  machine_env >"$root/etc/machine-env"
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount -t sysfs -o ro sysfs "$root/sys" && mounted+=("$root/sys")
  mount --rbind /dev "$root/dev" && mounted+=("$root/dev")
  mount --make-rslave "$root/dev"

  # A clean clone of the committed tree, with ../shared beside it as CI has it.
  git clone -q --no-local "$repo" "$root/root/navigen"
  [ -d "$repo/../shared" ] && cp -a "$repo/../shared" "$root/root/shared"

  if [ "$name" = devbox ]; then
    run_in "$root" "$name" "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-14 git curl g++ nodejs >/dev/null"
    chroot "$root" sh -c 'ls /usr/lib/llvm-14/lib/libclang-cpp.so.14 && ! ls /usr/lib/llvm-14/lib/libclang.so 2>/dev/null' >/dev/null ||
      die "[$name] the devbox root does not reproduce the trap (libclang-cpp without libclang)"
  fi

  run_in "$root" "$name" "cd /root/navigen && bash scripts/demo.sh"
  run_in "$root" "$name" "cd /root/navigen && bash scripts/test.sh"
  say "[$name] PASSED"
  cleanup
done
say "all passed: ${roots[*]}; times in $workdir/times.txt"
cat "$workdir/times.txt" >&2
