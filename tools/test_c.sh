#!/usr/bin/env bash
# Build csrc/ and the C test driver (tests/c/test_kernels.c) with every compiler given, and run
# it; cross-compiled aarch64 builds run under qemu-user.
#
#   tools/test_c.sh                 gcc, clang, gcc without OpenMP, gcc run on an emulated
#                                   Haswell (AVX2 + F16C, no AVX-512) and on the SSE2-only qemu64
#                                   CPU, aarch64-linux-gnu-gcc, and clang for aarch64 without
#                                   OpenMP (no aarch64 libomp on Debian)
#   tools/test_c.sh gcc clang ...   only these (a name containing "aarch64" runs under qemu)
#
# Debian packages: gcc, clang, libomp-dev (clang's OpenMP), gcc-aarch64-linux-gnu, qemu-user.
# Warnings are errors: the kernels must compile cleanly on every target.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-std=gnu11 -O2 -fno-math-errno -fno-trapping-math -Wall -Wextra -Wshadow -Werror -Icsrc)

# One build per distinct compiler and flags: gcc, gcc-haswell and gcc-sse2 run the same binary
# (the emulated CPUs pick other SIMD clones at load time), so it is compiled once.
declare -A built=()
run() {  # run <label> <compiler> <extra flags...>
  local label=$1 cc=$2
  shift 2
  local key="$cc $*" bin
  printf '\n--- %s: %s\n' "$label" "$("$cc" --version | head -1)"
  if [ -n "${built[$key]:-}" ]; then
    bin=${built[$key]}
    echo "(the binary built for ${bin##*/})"
  else
    bin=$out/$label
    # each file in a compiler process of its own, side by side (softmax.c and softmax_half.c
    # take most of the time), then one link; a failed compile fails its wait (set -e)
    mkdir "$bin.o"
    local objs=() pids=() src obj pid
    for src in csrc/*.c tests/c/test_kernels.c; do
      obj=$bin.o/$(basename "${src%.c}").o
      objs+=("$obj")
      "$cc" "${flags[@]}" "$@" -c "$src" -o "$obj" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    "$cc" "${flags[@]}" "$@" "${objs[@]}" -o "$bin" -lm -ldl
    built[$key]=$bin
  fi
  case $label in
    *aarch64*) OMP_NUM_THREADS=2 qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" ;;
    # Older x86-64 CPUs, emulated: the run-time dispatch then takes the AVX2/F16C code
    # (Haswell) or the SSE2 baseline (qemu64), which this machine's own CPU never runs.
    # qemu's notes on CPU features it does not emulate (TSX, x2APIC, ...) are dropped.
    *-haswell) OMP_NUM_THREADS=2 qemu-x86_64 -cpu Haswell "$bin" 2> >(grep -v "TCG doesn't support" >&2) ;;
    *-sse2) OMP_NUM_THREADS=2 qemu-x86_64 -cpu qemu64 "$bin" 2> >(grep -v "TCG doesn't support" >&2) ;;
    *) OMP_NUM_THREADS=2 "$bin" ;;
  esac
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gcc clang gcc-serial gcc-haswell gcc-sse2 aarch64-linux-gnu-gcc
  clang-aarch64-serial)
for t in "${targets[@]}"; do
  case $t in
    gcc-serial) run gcc-serial gcc -Wno-unknown-pragmas ;;
    gcc-haswell | gcc-sse2) run "$t" gcc -fopenmp ;;
    clang-aarch64-serial) run "$t" clang --target=aarch64-linux-gnu -Wno-unknown-pragmas ;;
    clang*) run "$t" "$t" -fopenmp=libomp ;;
    *) run "$t" "$t" -fopenmp ;;
  esac
done
echo "tools/test_c.sh: all builds passed"
