#!/usr/bin/env bash
# Build normax's compiled modules with AddressSanitizer + UndefinedBehaviorSanitizer into a virtual
# environment and run the test suite against it. Any sanitizer report fails the run.
#
#   tools/sanitize.sh [-v VENV] [-n] [-- PYTEST_ARGS...]
#
#   -v VENV  environment to use (created if missing; default: a temporary one, removed after)
#   -n       do not (re)install, reuse the build already in VENV
#   PYTEST_ARGS default to the whole suite without slow tests: `tests -q -m "not slow"`
#
# Run from anywhere; the checkout is the parent of this script's folder. Environment knobs:
#   NORMAX_SAN_SYSTEM_SITE=1  create the venv with --system-site-packages (faster by hand)
#   PYTHON                    interpreter for the venv (default python3)
#
# Notes on the runtime setup:
# - The ASan runtime must be the first library loaded, so it is LD_PRELOADed into python
#   (found with `gcc -print-file-name=libasan.so`, the runtime the build linked against),
#   followed by libstdc++ (see below).
# - PYTHONMALLOC=malloc routes CPython's small-object allocations through malloc, so ASan puts
#   redzones around Python objects and NumPy's small arrays too.
# - detect_leaks=0: CPython does not free everything at exit, so LeakSanitizer would report
#   thousands of interpreter allocations; leaks are tested by tests/test_hardening_leaks.py and
#   tools/valgrind_memcheck.py instead.
# - allocator_may_return_null=1: a huge request (tests ask for absurd sizes on purpose) gives
#   MemoryError as in a normal build instead of an ASan abort.
# - Reports: a sanitizer aborts the process it finds an error in. pytest runs with
#   --capture=sys so that a report written to file descriptor 2 reaches the console instead of
#   dying with pytest's captured output; ASan also writes each report to a file under log_path
#   (UBSan ignores log_path here), so a report from a child process whose stderr a test
#   swallowed still fails the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="" reinstall=1
while getopts "v:n" opt; do
  case $opt in
    v) venv=$OPTARG ;;
    n) reinstall=0 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ ${1:-} == "--" ]] && shift
pytest_args=("$@")
((${#pytest_args[@]})) || pytest_args=("$root/tests" -q -m "not slow")

scratch=$(mktemp -d)
cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT
if [[ -z $venv ]]; then
  venv="$scratch/venv"
fi
if [[ ! -x $venv/bin/python ]]; then
  site=()
  [[ ${NORMAX_SAN_SYSTEM_SITE:-0} == 1 ]] && site=(--system-site-packages)
  "${PYTHON:-python3}" -m venv "${site[@]}" "$venv"
fi

if ((reinstall)); then
  # A build dir of its own (kept in the venv for quick rebuilds): the Release build in build/
  # must not be reused. pip always rebuilds and reinstalls a project given as a directory.
  NORMAX_SANITIZE=ON "$venv/bin/pip" install -q -C build-dir="$venv/build-asan" "$root[test]"
fi

libasan=$(gcc -print-file-name=libasan.so)
[[ -f $libasan ]] || { echo "sanitize: no ASan runtime found ($libasan)" >&2; exit 1; }
# libstdc++ preloaded too: ASan intercepts __cxa_throw and must find the real one when it starts,
# or the first C++ exception of a module loaded later (matplotlib's ft2font) aborts the process.
libstdcxx=$(gcc -print-file-name=libstdc++.so)
[[ -f $libstdcxx ]] && libasan="$libasan:$libstdcxx"
# find_spec("normax") locates the package without importing it (importing needs the preload).
# Every compiled module (the Cython front doors and the kernels linked into them) must be
# instrumented.
mapfile -t sos < <("$venv/bin/python" -c 'import glob, importlib.util as u, os
print(*glob.glob(os.path.join(os.path.dirname(u.find_spec("normax").origin), "*.so")), sep="\n")')
((${#sos[@]})) || { echo "sanitize: no compiled normax modules found" >&2; exit 1; }
for so in "${sos[@]}"; do
  # grep without -q reads all of nm's output: an early exit would fail the pipe (pipefail).
  if ! nm -D "$so" | grep __asan_report >/dev/null; then
    echo "sanitize: $so is not instrumented (built without NORMAX_SANITIZE=ON?)" >&2
    exit 1
  fi
done
so="${sos[*]}"
echo "sanitize: testing $so with $libasan"

logs="$scratch/reports"
mkdir -p "$logs"
status=0
(
  cd "$scratch"
  export LD_PRELOAD="$libasan${LD_PRELOAD:+:$LD_PRELOAD}"
  export PYTHONMALLOC=malloc
  export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:log_path=$logs/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  "$venv/bin/python" -m pytest -p no:cacheprovider --capture=sys "${pytest_args[@]}"
) || status=$?

shopt -s nullglob
reports=("$logs"/*)
if ((${#reports[@]})); then
  echo "sanitize: ${#reports[@]} sanitizer report(s):" >&2
  for f in "${reports[@]}"; do
    echo "--- $f" >&2
    head -n 60 "$f" >&2
  done
  exit 1
fi
echo "sanitize: no ASan report files (pytest exit status $status)"
exit "$status"
