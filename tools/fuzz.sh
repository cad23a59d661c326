#!/usr/bin/env bash
# Long fuzz run by hand: thousands of fresh hypothesis examples per kernel against every backend.
#
#   tools/fuzz.sh [EXAMPLES_PER_KERNEL] [-- PYTEST_ARGS...]
#
# EXAMPLES_PER_KERNEL defaults to "long" (4000, see tests/test_fuzz_kernels.py). Runs against the
# normax installed in the current Python (build it first: pip install .), from outside the source
# tree. Prints hypothesis' statistics and the number of calls per kernel; a failure prints the
# falsifying example, and hypothesis keeps it in .hypothesis/ (in the current folder) so the next
# run tries it first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
budget=long
if [[ $# -gt 0 && $1 != "--" ]]; then budget=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
NORMAX_FUZZ=$budget exec "${PYTHON:-python}" -m pytest "$root/tests/test_fuzz_kernels.py" \
  -s -q -p no:cacheprovider --hypothesis-show-statistics "$@"
