#!/usr/bin/env python3
"""Run every C kernel under valgrind memcheck and check that the run is clean.

    python tools/valgrind_memcheck.py [--python PYTHON] [--log FILE]

The workload (``--workload``, run inside valgrind) calls each kernel of the installed normax
with the C backend on small float32 and float64 inputs, allocating and into ``out=``, once on
an input large enough for the OpenMP path, and every bad call of tests/hardening_cases.py
(error paths). Runs with PYTHONMALLOC=malloc (so valgrind sees CPython's small objects too), the
CPython suppression file when the system has one, and a full leak check.

Fails (exit 1) when valgrind reports any invalid read/write, use of uninitialised values or
invalid free with a normax frame in its stack, or any "definitely lost" block allocated under a
normax frame; prints the totals of the whole process as well (CPython and NumPy included).
Takes a few minutes: valgrind runs the interpreter about 30x slower.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPRESSIONS = ["/usr/lib/valgrind/python3.supp", "/usr/lib/valgrind/python.supp"]
# A frame in the extension: its file when built without symbols, its sources when with.
NORMAX_FRAME = re.compile(r"normax/_(core|ext)\w*\.|_(core|ext)(_\w+)?\.(c|pyx|pxd)\b"
                          r"|\b(batchnorm|softmax|optim|threads)(_impl)?\.[ch]\b")
ERROR_KINDS = ("Invalid read", "Invalid write", "Conditional jump or move depends on uninit",
               "Use of uninitialised value", "Invalid free", "Mismatched free",
               "Syscall param", "Source and destination overlap")


def workload() -> None:
    import numpy as np

    import normax

    spec = importlib.util.spec_from_file_location("normax_hardening_cases",
                                                  ROOT / "tests" / "hardening_cases.py")
    cases = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cases
    spec.loader.exec_module(cases)
    normax.set_backend("c")
    rng = np.random.default_rng(0)
    names = []
    for build in cases.available():
        for dtype, shape in ((np.float32, (5, 3, 2)), (np.float64, (4, 7, 1)),
                             (np.float32, (64, 32, 24))):
            case = build(rng, dtype, shape)
            case.run(None)
            case.run(case.new_out())
        names.append(build.__name__)
    errors = 0
    for _, fn in cases.bad_calls(rng, np.float64, (4, 5, 3)):
        try:
            fn()
        except (TypeError, ValueError):
            errors += 1
    print(f"workload: {len(names)} kernels ({', '.join(names)}), {errors} error paths")


def parse(log: str) -> dict:
    """Counts from a valgrind log: error kinds (all, and with a normax frame), leaks."""
    blocks = re.split(r"\n==\d+== \n", log)
    counts = {kind: [0, 0] for kind in ERROR_KINDS}
    normax_lost = 0
    for block in blocks:
        ours = NORMAX_FRAME.search(block) is not None
        for kind in ERROR_KINDS:
            if kind in block:
                counts[kind][0] += 1
                counts[kind][1] += ours
        if "definitely lost in loss record" in block and ours:
            size = re.search(r"([\d,]+) (?:\([^)]*\) )?bytes in", block)
            normax_lost += int(size.group(1).replace(",", "")) if size else 0
    lost = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", log)
    summary = re.search(r"ERROR SUMMARY: ([\d,]+) errors", log)
    return {
        "errors": counts,
        "definitely_lost": lost.group(0) if lost else "definitely lost: 0 bytes",
        "normax_definitely_lost": normax_lost,
        "error_summary": int(summary.group(1).replace(",", "")) if summary else -1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--python", default=sys.executable, help="interpreter with normax")
    parser.add_argument("--log", help="keep valgrind's log in this file")
    args = parser.parse_args()
    if args.workload:
        workload()
        return 0
    log = Path(args.log) if args.log else Path(tempfile.mkstemp(suffix=".valgrind")[1])
    cmd = ["valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite",
           "--num-callers=40", f"--log-file={log}"]
    cmd += [f"--suppressions={s}" for s in SUPPRESSIONS if os.path.exists(s)]
    cmd += [args.python, str(Path(__file__).resolve()), "--workload"]
    # Valgrind runs threads one at a time: libgomp's spinning would only burn time.
    env = dict(os.environ, PYTHONMALLOC="malloc", NORMAX_BACKEND="c", GOMP_SPINCOUNT="0",
               OMP_NUM_THREADS="2")
    run = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir())
    text = log.read_text()
    result = parse(text)
    print(f"valgrind exit {run.returncode}; log: {log}")
    print(f"ERROR SUMMARY (whole process, leak records included): "
          f"{result['error_summary']} errors")
    for kind, (total, ours) in result["errors"].items():
        if total:
            print(f"  {kind}: {total} (with a normax frame: {ours})")
    print(f"  {result['definitely_lost']} (whole process); "
          f"under a normax frame: {result['normax_definitely_lost']} bytes")
    dirty = any(ours for _, ours in result["errors"].values()) or result["normax_definitely_lost"]
    print("memcheck: " + ("FAILED" if dirty or run.returncode else "clean for normax"))
    return 1 if dirty or run.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
