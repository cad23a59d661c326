"""Time one contender of one case in a process of its own, as pyperf does.

In one process, contenders take turns (:func:`normax.bench.timing.measure`), so whatever one
leaves in the caches, the branch predictors or the allocator is what the next one starts from: a
small PyTorch call right after a 64 MiB sweep costs ~100 us more than alone. Batching calls per
sample hides most of that, but only a measurement without the others proves it. For a sample of
cases, :func:`time_isolated` starts a fresh interpreter per contender
(``python -m normax.bench.isolate``) that builds the same case with the same seed, checks
nothing, and times that contender alone with the same :class:`~normax.bench.timing.TimingPolicy`
and thread count; :func:`reconcile` then keeps whichever figure is trustworthy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict

from .._backend import BACKENDS
from .timing import TimingPolicy

MARKER = "normax-bench-isolated: "
METHOD_IN_PROCESS = "in-process, contenders in turn"
METHOD_ISOLATED = "isolated: this contender alone in a fresh process"
# A child imports normax (and torch, or loads Numba's cache) before it times anything.
TIMEOUT_S = 600


def sample(cases: list, mode: str) -> set[str]:
    """Ids of the cases to time in isolation as well: ``"none"``, ``"all"`` or ``"sample"``.

    The sample is, per family, the first tiny case (per-call overhead: the most sensitive to what
    the previous contender left in the caches) and the first medium one (data that fits in the
    last-level cache, which a contender taking its turn in between can evict). The tuning family
    is left out: its contenders are both normax, and each trial commits to SQLite.
    """
    if mode == "none":
        return set()
    if mode == "all":
        return {c.id for c in cases}
    chosen: dict[tuple[str, str], str] = {}
    for case in cases:
        if case.family != "tune" and case.size in ("tiny", "medium"):
            chosen.setdefault((case.family, case.size), case.id)
    return set(chosen.values())


def time_isolated(
    case_id: str, contender: str, threads: int, policy: TimingPolicy, seed: int = 0
) -> dict:
    """Per-call statistics of ``contender`` on ``case_id``, timed alone in a fresh process.

    Raises
    ------
    RuntimeError
        When the child fails; the message carries the last line of its standard error.
    """
    request = {
        "case": case_id,
        "contender": contender,
        "threads": threads,
        "policy": asdict(policy),
        "seed": seed,
    }
    cmd = [sys.executable, "-m", "normax.bench.isolate", json.dumps(request)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    raise RuntimeError(f"isolated run of {contender} failed: {last}")


def reconcile(entry: dict, isolated: dict, threshold: float) -> None:
    """Record ``isolated`` beside the in-process figures of ``entry``; keep the trustworthy one.

    Where the contender alone is faster beyond the noise (the :func:`normax.bench.compare.verdict`
    rule), the other contenders disturbed it: the isolated figures become the entry's figures and
    the in-process ones are kept under ``"in_process"``. Where it is slower beyond the noise,
    nothing that ran beside it can be the cause (it ran alone): that is the machine's load
    changing between the two measurements, so the in-process figure, taken in turn with the
    others under the same load, stays, and ``"isolation_note"`` says so.
    """
    from .compare import verdict

    figures = {k: entry[k] for k in isolated if k in entry}
    alone = verdict(figures, isolated, threshold)
    entry["isolated"] = isolated
    entry["isolated_vs_in_process"] = isolated["median_s"] / entry["median_s"]
    if alone == "faster":
        entry["in_process"] = figures
        entry.update(isolated)
    elif alone == "slower":
        entry["isolation_note"] = "slower alone beyond the noise: the load changed, kept in turn"
    entry["method"] = METHOD_ISOLATED if alone == "faster" else METHOD_IN_PROCESS


def _child(request: dict) -> dict:
    """Build the case in this fresh process and time the one contender (the child's work)."""
    from . import harness
    from .cases import BuildContext
    from .machine import held_threads, import_torch, reserve_numba_threads
    from .timing import measure

    name, threads = request["contender"], request["threads"]
    reserve_numba_threads(threads)
    case = next(c for f in harness.FAMILIES.values() for c in f() if c.id == request["case"])
    torch = import_torch(name == "torch")
    backends = (name,) if name in BACKENDS else ()
    with held_threads(threads, torch, numba=name == "numba"), tempfile.TemporaryDirectory() as tmp:
        ctx = BuildContext(backends, torch, seed=request["seed"], tmpdir=tmp)
        contender = next(c for c in case.build(ctx) if c.name == name)
        entry = harness._first_call(contender)
        if entry["error"] is not None:
            raise RuntimeError(entry["error"])
        (stats,) = measure(
            [entry["_fn"]],
            TimingPolicy(**request["policy"]),
            before=[harness._selector(entry["backend"])],
        )
    return harness._per_unit(stats.to_dict(), case.per_call)


def main(argv: list[str]) -> int:
    """``python -m normax.bench.isolate REQUEST_JSON``: print one marked line of statistics."""
    try:
        stats = _child(json.loads(argv[0]))
    except KeyboardInterrupt:  # the parent was interrupted too; it reports
        return 130
    print(MARKER + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    # Quiet exit on Ctrl-C even during the imports above.
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        os._exit(130)
