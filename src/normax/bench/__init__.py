"""``normax bench``: every normax kernel against NumPy and PyTorch CPU, on this machine.

What runs
---------
Batch norm (training forward, inference forward, backward) in the (N, C), NCHW, NHWC and (C, m)
layouts; softmax, log-softmax and the fused softmax cross-entropy with the class axis last and
first; the fused Adam and SGD-with-momentum updates; and the per-trial overhead of a tuning study
in SQLite and in memory. Shapes go from tiny (per-call overhead) to larger than the last-level
cache (memory bandwidth), in float32 and float64, and on the medium and large shapes in float16
and bfloat16 (half-precision storage, float32 arithmetic; bfloat16 cases need ml_dtypes and are
skipped with a note without it). ``--quick`` (the default) runs a selection that
covers every kernel and layout (1-3 minutes on two busy cores); ``--full`` runs every shape
(15-20 minutes). Each case prints its line as it finishes; Ctrl-C keeps what finished.

Contenders are every available normax backend (``c``, ``numba`` and ``numpy``, the NumPy
reference that is the baseline of "vs NumPy") and PyTorch CPU when it is installed. A kernel
family whose public function is missing from this installation is skipped with a note.

Correctness first
-----------------
Before timing, each contender is set up and called once; its result is compared with the NumPy
reference's by the normwise relative error ``max|a - b| / max|b|`` per output (tolerance 1e-4 in
float32, where PyTorch accumulates in float32, 1e-9 in float64, and two units in the last place
in float16 and bfloat16, 2**-9 and 2**-6). A contender that disagrees
or raises is reported as FAILED, is not timed, and makes the command exit with status 1.

Timing method
-------------
The same for every contender, with :func:`time.perf_counter` and the garbage collector off:

1. warm-up: the checked first call (which includes any JIT compilation) and one more call are
   not timed;
2. calibration: the calls per sample double until a sample lasts at least ``sample_time``, so a
   call of a few microseconds is timed over hundreds of calls and the Python loop around it costs
   a few tens of nanoseconds per call, the same for every contender;
3. sampling: contenders take turns, one sample each per round, so that drift on a shared machine
   hits them alike, until each has ``min_samples`` samples and ``min_time`` seconds of them (or
   ``max_time`` seconds, with at least 3 samples, for slow references);
4. the figure is the median time per call; the spread is the interquartile range of the samples
   over the median.

A sample of cases (``--isolate``) is also timed with each contender alone in a fresh process
(:mod:`normax.bench.isolate`); where it is faster alone beyond the noise, the others disturbed
it and the isolated figure is kept. Every sample is written to the JSON, so that ``--compare``
can judge a later run against this one with the noise of both (:mod:`normax.bench.compare`).

Derived figures: speed-up = the baseline's median over this median (below 1 is shown with ▼ for a
normax backend); effective GB/s = the kernel's minimum bytes moved (batch-norm forward 3 x bytes(x),
inference 2 x, backward 5 x; softmax and log-softmax 2 x, their backward 3 x (read g and p, write
dz); cross-entropy with its gradient 3 x bytes(logits); Adam 7 x bytes(params): read p, g, m, v and
write p, m, v; SGD with momentum 5 x) over the median; roofline = that over the bandwidth of a
copy larger than the cache (:mod:`normax.bench.machine`): for a case whose data is larger than the
cache, that copy is timed in turn with its contenders and its median taken (the bandwidth of the
same minutes); for the others, the best of the run's probe before and after the cases. The
cache counted on is what the system reports, at most the compiled kernels' cap (32 MiB): a virtual
machine that reports its whole socket's cache shares it with every other core. A case whose data
fits in that is marked (* in the tables): the memory roofline does not bind it. A float16 or
bfloat16 case also times the leading normax backend on the same call in float32 in its own rounds
(the record's ``float32_in_turn``): the half-precision summary's speed-up over float32 is a ratio
of the same minutes, as the one over PyTorch is.

Threads: ``--threads N`` (default: every usable core) holds normax, Numba, PyTorch and NumPy's
BLAS/OpenMP pools (via threadpoolctl) to N threads for the whole run, or refuses (exit status 2)
when a pool cannot take N.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys

from .._backend import BACKENDS
from .cases import DTYPES, SIZES
from .compare import DEFAULT_THRESHOLD
from .harness import FAMILIES, SCHEMA, Config, plan, run_benchmarks
from .report import case_line, check_results, plot, render

# Measured on two shared cores (load average 2-4), isolation sample included; see the README.
QUICK_DURATION = "1-3 min"
FULL_DURATION = "15-20 min"

__all__ = [
    "FAMILIES",
    "SCHEMA",
    "Config",
    "add_arguments",
    "check_results",
    "main",
    "plan",
    "render",
    "run",
    "run_benchmarks",
]


_FLAG = {"action": "store_true"}
_EACH = {"action": "append"}
# option -> argparse keywords; the list of `normax bench` options after --quick / --full
OPTIONS = {
    "--threads": {"type": int, "default": 0, "metavar": "N",
                  "help": "threads for normax, NumPy's BLAS and torch (default: all cores)"},
    "--json": {"metavar": "FILE", "help": "write every figure to a JSON file"},
    "--plot": {"metavar": "FILE", "help": "write speed-up bars to a PNG (matplotlib)"},
    "--markdown": {**_FLAG, "help": "print Markdown tables"},
    "--compact": {**_FLAG, "help": "one line per case (every median, then the C backend's)"},
    "--from-json": {"metavar": "FILE",
                    "help": "do not run: print the tables of a results file (and its plot, "
                            "with --plot)"},
    "--family": {**_EACH, "choices": list(FAMILIES), "help": "only this family (repeatable)"},
    "--size": {**_EACH, "choices": list(SIZES),
               "help": "only this size class, quick or not (repeatable)"},
    "--dtype": {**_EACH, "choices": list(DTYPES), "help": "only this dtype (repeatable)"},
    "--backend": {**_EACH, "choices": list(BACKENDS),
                  "help": "only this normax backend (repeatable; numpy always runs)"},
    "--no-torch": {**_FLAG, "help": "leave PyTorch out"},
    "--min-time": {"type": float, "metavar": "S",
                   "help": "seconds of samples per contender (default 0.05 quick, 0.3 full)"},
    "--probe-mib": {"type": int, "metavar": "MIB",
                    "help": "bandwidth probe array size (default: 4 x the usable last-level "
                            "cache, at most 32 MiB of it, at least 64 MiB and at least the "
                            "reported cache)"},
    "--no-progress": {**_FLAG, "help": "no progress bar (each case's line is still printed)"},
    "--isolate": {"choices": ["sample", "all", "none"], "default": "sample",
                  "help": "cases also timed with each contender alone in a fresh process: a "
                          "sample (default: per family, the first tiny and medium case), all "
                          "or none; where a contender is faster alone beyond the noise, the "
                          "isolated figure is kept"},
    "--compare": {"nargs": "+", "metavar": "FILE",
                  "help": "BASE.json [NEW.json]: per case and contender, new/base with a "
                          "verdict (faster / slower / same); without NEW.json, run now (with "
                          "the other options) and compare; exit 1 on a normax regression"},
    "--normalize": {**_FLAG,
                    "help": "with --compare: divide the new figures by the machine's drift "
                            "between the runs (the median ratio of PyTorch's figures, else of "
                            "the copies timed with the large cases, else of the probes' copy "
                            "bandwidth), for runs under different load"},
    "--no-control": {**_FLAG,
                     "help": "with --compare: judge each figure by its own runs only, not also "
                             "against how far PyTorch's figures moved between the runs"},
    "--threshold": {"type": float, "default": 100 * DEFAULT_THRESHOLD, "metavar": "PCT",
                    "help": "with --compare: smallest change reported, in percent "
                            "(default %(default)g)"},
    "--check": {"metavar": "FILE",
                "help": "do not run: check that a results file is complete and that every "
                        "contender agreed (exit 1 if not)"},
    "--allow-skipped": {**_FLAG, "help": "with --check: accept cases skipped for lack of a kernel"},
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``normax bench``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", **_FLAG, help=f"every kernel and layout, {QUICK_DURATION} (default)"
    )
    mode.add_argument("--full", **_FLAG, help=f"every shape and dtype, {FULL_DURATION}")
    for option, keywords in OPTIONS.items():
        parser.add_argument(option, **keywords)


def _config(args: argparse.Namespace, argv: list[str]) -> Config:
    from .harness import FULL_POLICY, QUICK_POLICY
    from .machine import reserve_numba_threads
    from .timing import TimingPolicy

    policy = None
    if args.min_time is not None:
        base = FULL_POLICY if args.full else QUICK_POLICY
        policy = TimingPolicy(
            min_time=args.min_time,
            sample_time=min(base.sample_time, args.min_time / 5),
            min_samples=base.min_samples,
            max_time=max(args.min_time, base.max_time * args.min_time / base.min_time),
        )
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.probe_mib is not None and args.probe_mib <= 0:
        raise ValueError(f"--probe-mib must be a positive number of MiB, got {args.probe_mib}")
    # Before anything imports Numba: its pool size is fixed then (see reserve_numba_threads).
    reserve_numba_threads(args.threads)
    return Config(
        full=args.full,
        threads=args.threads,
        families=_tuple(args.family),
        sizes=_tuple(args.size),
        dtypes=_tuple(args.dtype),
        backends=_tuple(args.backend),
        use_torch=not args.no_torch,
        policy=policy,
        probe_bytes=args.probe_mib << 20 if args.probe_mib else None,
        progress=False if args.no_progress else None,
        command=["normax", "bench", *argv],
        isolate=args.isolate,
        on_case=_print_case,
    )


def _print_case(record: dict, index: int, total: int) -> None:
    """Each case's line as it finishes (through tqdm when its bar is on, so they do not mix)."""
    line = case_line(record, index, total)
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
    else:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()


def _tuple(values):
    return tuple(values) if values else None


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run ``normax bench`` with parsed ``args``.

    Exit status: 0 when every contender agreed (and, with ``--compare``, nothing of normax got
    slower), 1 otherwise, 2 for a usage error, 130 when interrupted (what finished is shown and
    written).
    """
    if args.check:
        return _not_for("--check", args, {"check", "allow_skipped"}) or _check_file(
            args.check, args.allow_skipped
        )
    if args.from_json:
        return _not_for("--from-json", args, {"from_json", "markdown", "compact", "plot"}) or (
            _show_file(args)
        )
    try:
        base = _compare_base(args)
        if base is not None and len(args.compare) == 2:
            return _compare_files(base, args)
        config = _config(args, sys.argv[1:] if argv is None else argv)
        _check_outputs(args)  # fail now, not after minutes of measuring
        doc = run_benchmarks(config)
    except ValueError as exc:
        print(f"normax bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnormax bench: interrupted; nothing written", file=sys.stderr)
        return 130
    try:
        return _report(doc, args, base)
    except KeyboardInterrupt:  # while writing: _write_json leaves no half-written file
        print("\nnormax bench: interrupted while writing the results", file=sys.stderr)
        return 130


def _not_for(mode: str, args: argparse.Namespace, allowed: set[str]) -> int:
    """2 with a message naming the first option given that ``mode`` (which runs nothing) would
    otherwise ignore, else 0."""
    for option, keywords in {"--quick": _FLAG, "--full": _FLAG, **OPTIONS}.items():
        dest = option[2:].replace("-", "_")
        default = keywords.get("default", False if keywords.get("action") == "store_true" else None)
        if dest not in allowed and getattr(args, dest) != default:
            print(
                f"normax bench: {option} does not apply to {mode}, which runs nothing",
                file=sys.stderr,
            )
            return 2
    return 0


def _show_file(args: argparse.Namespace) -> int:
    """--from-json: the tables of a saved run, and its plot with --plot."""
    try:
        _check_outputs(args)
    except ValueError as exc:
        print(f"normax bench: {exc}", file=sys.stderr)
        return 2
    doc = _load(args.from_json)
    if doc is None:
        return 1
    print(render(doc, markdown=args.markdown, compact=args.compact))
    if args.plot:
        try:
            written = plot(doc, args.plot)
        except ValueError as exc:  # a file with no kernel case to draw
            print(f"normax bench: --plot: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(f"plot: {path}")
    return 0


def _write_json(doc: dict, path: str) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    tmp = f"{path}.partial"
    try:
        with open(tmp, "w") as fh:
            json.dump(_plain(doc), fh, indent=1, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _report(doc: dict, args: argparse.Namespace, base: dict | None) -> int:
    """Print the tables, write the files and (with --compare) compare; the exit status."""
    print(render(doc, markdown=args.markdown, compact=args.compact))
    if args.json:
        _write_json(doc, args.json)
    if args.plot and any(r["status"] == "ok" for r in doc["cases"]):
        for path in plot(doc, args.plot):
            print(f"plot: {path}")
    if doc["interrupted"]:
        print(
            f"normax bench: interrupted; {len(doc['cases'])} cases finished and are shown"
            + (f" and written to {args.json}" if args.json else ""),
            file=sys.stderr,
        )
        return 130
    failed = any(r["status"] == "error" for r in doc["cases"]) or not doc["all_agree"]
    status = 1 if failed else 0
    if base is not None:
        status = max(status, _show_comparison(base, doc, args.compare[0], "this run", args))
    return status


def _compare_base(args: argparse.Namespace) -> dict | None:
    if not args.compare:
        return None
    if len(args.compare) > 2:
        raise ValueError(f"--compare takes BASE.json [NEW.json], got {len(args.compare)} files")
    if not (args.threshold >= 0 and math.isfinite(args.threshold)):
        raise ValueError(f"--threshold must be a percentage >= 0, got {args.threshold}")
    base = _load(args.compare[0])
    if base is None:
        raise ValueError(f"--compare: cannot read the base {args.compare[0]!r}")
    return base


def _compare_files(base: dict, args: argparse.Namespace) -> int:
    new = _load(args.compare[1])
    if new is None:
        return 2
    return _show_comparison(base, new, args.compare[0], args.compare[1], args)


def _show_comparison(base: dict, new: dict, base_name: str, new_name: str, args) -> int:
    """Print the comparison; 1 when a normax figure got slower, else 0."""
    from .compare import compare, render_comparison

    for name, doc in ((base_name, base), (new_name, new)):
        if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
            print(f"normax bench --compare: {name} is not a results file", file=sys.stderr)
            return 2
    result = compare(
        base, new, args.threshold / 100, normalize=args.normalize, control=not args.no_control
    )
    print(render_comparison(result, base_name, new_name))
    return 1 if result["regressions"] else 0


def _check_outputs(args: argparse.Namespace) -> None:
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"{option}: directory of {path!r} does not exist")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'normax[plot]'")


def _plain(value):
    """``value`` with NumPy scalars as Python numbers, non-finite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _load(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"normax bench: cannot read {path}: {exc}", file=sys.stderr)
        return None


def _check_file(path: str, allow_skipped: bool) -> int:
    doc = _load(path)
    if doc is None:
        return 1
    problems = check_results(doc, allow_skipped=allow_skipped)
    for p in problems:
        print(f"normax bench --check: {p}", file=sys.stderr)
    if not problems:
        n = sum(1 for r in doc["cases"] if r["status"] == "ok")
        print(f"{path}: complete, {n} cases, every contender agreed")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m normax.bench``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m normax.bench", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)
