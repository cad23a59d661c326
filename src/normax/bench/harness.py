"""Run the cases: select them, check every contender against the reference, time, derive figures."""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import normax

from .._backend import BACKENDS  # what --backend may name, in order of preference
from . import cases_batchnorm, cases_optim, cases_softmax, cases_tune, isolate, machine
from .cases import (
    DTYPES,
    HALF_DTYPES,
    HALF_SIZES,
    SIZES,
    BuildContext,
    Case,
    as_arrays,
    missing_packages,
    missing_requirements,
    relative_error,
)
from .compare import DEFAULT_THRESHOLD
from .machine import (
    Bandwidth,
    CopyProbe,
    environment_notes,
    held_threads,
    import_torch,
    last_level_cache_bytes,
    load_average,
    machine_info,
    threads_in_use,
    usable_cores,
    versions,
)
from .timing import TimingPolicy, measure

SCHEMA = "normax-bench/1"
# The one registry of cases: each family's module defines its kernels, shapes, layouts, dtypes,
# contenders, reference and tolerance once. ``cases()`` is what `normax bench` and the
# pytest-benchmark suites in bench/ time; ``comparison_cases()`` (the tiny shapes and edge
# shapes) is what the test suite checks every contender on.
REGISTRY = {
    "batch_norm": cases_batchnorm,
    "softmax": cases_softmax,
    "optim": cases_optim,
    "tune": cases_tune,
}
FAMILIES = {name: module.cases for name, module in REGISTRY.items()}
QUICK_POLICY = TimingPolicy(min_time=0.05, sample_time=0.002, min_samples=5, max_time=0.15)
FULL_POLICY = TimingPolicy(min_time=0.3, sample_time=0.01, min_samples=9, max_time=1.5)


@dataclass
class Config:
    """What to run. The defaults are ``normax bench --quick`` on every core."""

    full: bool = False
    threads: int = 0  # 0: every usable core
    families: tuple[str, ...] | None = None
    sizes: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    use_torch: bool = True
    policy: TimingPolicy | None = None
    probe_bytes: int | None = None  # default: default_probe_bytes()
    progress: bool | None = None  # None: a bar when standard error is a terminal
    seed: int = 0
    command: list[str] = field(default_factory=list)
    # Which cases are also timed with each contender in a process of its own: "sample", "all"
    # or "none" (see normax.bench.isolate.sample).
    isolate: str = "none"
    # Called with (record, index, total) as each case finishes, e.g. to print its line.
    on_case: Callable[[dict, int, int], None] | None = field(default=None, repr=False)

    def resolved_policy(self) -> TimingPolicy:
        return self.policy or (FULL_POLICY if self.full else QUICK_POLICY)

    def resolved_threads(self) -> int:
        return self.threads or usable_cores()


def plan(config: Config) -> list[Case]:
    """The cases ``config`` selects, family by family."""
    for name, allowed, known in (
        ("family", config.families, FAMILIES),
        ("size", config.sizes, SIZES),
        ("dtype", config.dtypes, DTYPES),
    ):
        bad = sorted(set(allowed or ()) - set(known))
        if bad:
            raise ValueError(f"unknown {name} {bad[0]!r}; choose from {', '.join(known)}")
    selected = _select(config, quick_only=not (config.full or config.sizes))
    if not selected:
        raise ValueError(_nothing_selected(config))
    return selected


def _select(config: Config, quick_only: bool) -> list[Case]:
    selected = []
    for family, make_cases in FAMILIES.items():
        if config.families and family not in config.families:
            continue
        for case in make_cases():
            if config.sizes and case.size not in config.sizes:
                continue
            if config.dtypes and case.dtype not in config.dtypes:
                continue
            if case.quick or not quick_only:
                selected.append(case)
    return selected


def _nothing_selected(config: Config) -> str:
    """Why a selection is empty, in words: every filter given, and the likely cause."""
    filters = (("family", config.families), ("size", config.sizes), ("dtype", config.dtypes))
    given = [" ".join(f"--{name} {v}" for v in values) for name, values in filters if values]
    text = f"no case matches {' '.join(given) or 'this selection'}"
    half = set(config.dtypes or ()) & set(HALF_DTYPES)
    if half and config.sizes and not set(config.sizes) & set(HALF_SIZES):
        text += f" ({', '.join(sorted(half))} cases exist for the {' and '.join(HALF_SIZES)} sizes)"
    elif not (config.full or config.sizes) and _select(config, quick_only=False):
        text += " in the --quick selection; add --full or --size"
    return text


def comparison_cases() -> list[Case]:
    """Every family's comparison cases (the test suite's), in registry order."""
    return [case for module in REGISTRY.values() for case in module.comparison_cases()]


def check_contenders(case: Case, ctx: BuildContext) -> list[dict]:
    """Build ``case``, call each contender once and compare it with the reference.

    Returns one entry per contender with ``agree``, ``error`` and ``max_rel_error``, and, for
    those that ran, the timed callable under ``"_fn"`` (with its backend under ``"backend"``).
    This is the check `normax bench` makes before timing and the test suite makes on its own.
    """
    entries = [_first_call(c) for c in case.build(ctx)]
    _check_agreement(case, entries)
    return entries


def contender_backends(config: Config) -> tuple[str, ...]:
    """normax backends to run; the NumPy reference is always among them (the baseline)."""
    available = normax.available_backends()
    wanted = config.backends or available
    bad = sorted(set(wanted) - set(BACKENDS))
    if bad:
        raise ValueError(f"unknown backend {bad[0]!r}; choose from {', '.join(available)}")
    return tuple(b for b in available if b in wanted or b == "numpy")


def run_benchmarks(config: Config, cases: Sequence[Case] | None = None) -> dict:
    """Run the benchmark and return the results document (the ``--json`` content)."""
    started, load_before = time.perf_counter(), load_average()
    cases = plan(config) if cases is None else list(cases)
    torch = import_torch(config.use_torch)
    run = {
        "backends": contender_backends(config),
        "threads": config.resolved_threads(),
        "policy": config.resolved_policy(),
        "default_backend": normax.get_backend(),
        "torch": torch,
    }
    records: list[dict] = []
    threads = run["threads"]
    holds_numba = "numba" in run["backends"]
    with (
        held_threads(threads, torch, holds_numba),
        tempfile.TemporaryDirectory(prefix="normax-bench-") as tmp,
    ):
        try:
            run["threads_in_use"] = threads_in_use(torch)
            probe = CopyProbe(config.probe_bytes or default_probe_bytes(), threads)
            first = probe.bandwidth()
            run["interrupted"] = _run_cases(cases, config, run, tmp, records, probe)
            if not run["interrupted"]:
                # Probed before and after the cases; on a shared machine the better one is the
                # limit.
                first = first.best_with(probe.bandwidth())
            run["bandwidth"] = first
            del probe  # its two arrays are the largest the run holds
        finally:
            normax.set_backend(run["default_backend"])
    add_roofline(records, run["bandwidth"])
    run["elapsed"] = time.perf_counter() - started
    run["load_average"] = {"start": load_before, "end": load_average()}
    return _document(config, records, run)


def _run_cases(
    cases, config: Config, run: dict, tmpdir: str, records: list[dict], probe: CopyProbe
) -> bool:
    """Run ``cases`` into ``records``; True when Ctrl-C stopped the run (what finished stays)."""
    ctx = BuildContext(run["backends"], run["torch"], seed=config.seed, tmpdir=tmpdir)
    isolated = isolate.sample(cases, config.isolate)
    run["isolation"] = {
        "mode": config.isolate,
        "cases": sorted(isolated),
        "rule": "where a contender alone is faster than in turn beyond the noise (ratio beyond "
        f"{1 + DEFAULT_THRESHOLD:g} and interquartile ranges disjoint), the isolated figure is "
        "its figure; slower alone is the load changing, and the in-turn figure stays",
    }
    try:
        for i, case in enumerate(_progress(cases, config.progress)):
            alone = run["threads"] if case.id in isolated else None
            records.append(run_case(case, ctx, run["policy"], isolate_threads=alone, probe=probe))
            if config.on_case is not None:
                config.on_case(records[-1], i + 1, len(cases))
    except KeyboardInterrupt:
        return True
    return False


def default_probe_bytes(llc: int | None = None, reported: int | None = None) -> int:
    """Bandwidth probe array size: four times the usable last-level cache ``llc`` (by default
    :func:`last_level_cache_bytes`, capped as the kernels cap it), at least 64 MiB, so that the
    copy streams from memory; and at least the cache the system reports (``reported``, by
    default :func:`machine.reported_cache_bytes`).

    The last rule keeps the copy's method that of the kernels: glibc's memcpy (behind
    ``np.copyto``) switches to non-temporal stores, as the large batch-norm outputs use, only
    past three quarters of the reported cache. Where a virtual machine reports its socket's
    480 MiB, a 128 MiB or 256 MiB probe copied with ordinary stores, paying a read for
    ownership of the destination, and read 25-27 GB/s where 512 MiB and 1 GiB read 43-46 GB/s
    (three interleaved rounds, one process): every roofline came out about 1.7x too high.
    """
    llc = last_level_cache_bytes() if llc is None else llc
    reported = machine.reported_cache_bytes() if reported is None else reported
    return max(4 * llc, 64 << 20, reported)


def _progress(cases: Sequence[Case], enabled: bool | None) -> Iterable[Case]:
    try:
        from tqdm import tqdm
    except ImportError:
        return cases
    bar = tqdm(
        cases,
        desc="normax bench",
        unit="case",
        file=sys.stderr,
        disable=_disabled(enabled),
        dynamic_ncols=True,
        leave=False,
    )
    return _labelled(bar)


def _disabled(enabled: bool | None) -> bool | None:
    return None if enabled is None else not enabled  # tqdm: None disables on non-terminals


def _labelled(bar):
    for case in bar:
        bar.set_postfix_str(case.id, refresh=False)
        yield case


def run_case(
    case: Case,
    ctx: BuildContext,
    policy: TimingPolicy,
    isolate_threads: int | None = None,
    probe: CopyProbe | None = None,
) -> dict:
    """Check and time one case; returns its record (status ok, skipped or error).

    With ``isolate_threads``, every timed contender is also timed alone in a fresh process with
    that many threads (:mod:`normax.bench.isolate`). With ``probe``, a case whose data does not
    fit in the last-level cache has the probe's copies timed in turn with its contenders, and
    its record's ``"copy_in_turn"`` is the faster copy's bandwidth in those same rounds (the
    roofline :func:`add_roofline` divides by). A half-precision case also times the leading
    normax backend on the same call in float32 in its rounds (:func:`float32_twin`), as its
    record's ``"float32_in_turn"``: the half-precision speed-up is a ratio of the same minutes.
    """
    started = time.perf_counter()
    record = _case_header(case)
    in_turn = probe if probe is not None and needs_copy_in_turn(record) else None
    _check_and_time(case, ctx, policy, record, isolate_threads, in_turn)
    record["elapsed_s"] = time.perf_counter() - started
    return record


def needs_copy_in_turn(record: dict) -> bool:
    """Whether a case's roofline is a copy timed in turn with it: its data is larger than the
    last-level cache, so the memory bandwidth of the minutes it runs in is its limit."""
    return record["in_cache"] is False and bool(record["min_bytes"])


def _check_and_time(
    case: Case,
    ctx: BuildContext,
    policy: TimingPolicy,
    record: dict,
    isolate_threads: int | None,
    probe: CopyProbe | None,
) -> None:
    missing = missing_requirements(case.requires)
    if missing:
        names = ", ".join(f"normax.{m}" for m in missing)
        record.update(status="skipped", note=f"{names} not available in this installation")
        return
    packages = missing_packages(case.packages)
    if packages:
        record.update(
            status="skipped", note=f"needs {', '.join(packages)} (pip install {' '.join(packages)})"
        )
        return
    try:
        entries = check_contenders(case, ctx)
    except Exception as exc:  # a broken case must not end the whole run
        record.update(status="error", note=f"set-up failed: {type(exc).__name__}: {exc}")
        return
    timed = [e for e in entries if e["agree"]]
    copies = probe.copies if probe is not None and timed else {}
    twin = _twin_contender(case, ctx, timed, record)
    extra = ([twin] if twin else []) + [(None, fn) for fn in copies.values()]
    fns = [e.pop("_fn") for e in timed] + [fn for _backend, fn in extra]
    before = [_selector(e["backend"]) for e in timed] + [_selector(b) for b, _fn in extra]
    try:
        stats = measure(fns, policy, before=before)
    except Exception as exc:
        record.update(status="error", note=f"timing failed: {type(exc).__name__}: {exc}")
        stats = []
    if stats:
        stats, extra_stats = stats[: len(timed)], stats[len(timed) :]
        if twin:
            st = _per_unit(extra_stats.pop(0).to_dict(), case.per_call)
            record["float32_in_turn"] = {"name": twin[0], **st}
        if copies:
            copy_stats = dict(zip(copies, extra_stats, strict=True))
            record["copy_in_turn"] = _copy_in_turn(copy_stats, probe)
    for entry, st in zip(timed, stats, strict=False):
        entry.update(_per_unit(st.to_dict(), case.per_call), method=isolate.METHOD_IN_PROCESS)
    if isolate_threads is not None and stats:
        _isolate(case, timed, policy, isolate_threads, ctx.seed)
    for entry in entries:
        entry.pop("_fn", None)
        entry.pop("_out", None)
    _derive(case, entries)
    record["contenders"] = entries


def float32_twin(case: Case) -> Case | None:
    """The float32 case of the same call (family, kernel, layout, shape) as the half-precision
    ``case``; None for other dtypes or where the family has no such case."""
    if case.dtype not in HALF_DTYPES or case.family not in REGISTRY:
        return None
    same = (case.kernel, case.layout, tuple(case.shape), "float32")
    found = (c for c in REGISTRY[case.family].cases() if _call_of(c) == same)
    return next(found, None)


def _call_of(case: Case) -> tuple:
    return case.kernel, case.layout, tuple(case.shape), case.dtype


def _twin_contender(case: Case, ctx: BuildContext, timed: list[dict], record: dict):
    """``(backend, fn)``: the leading normax backend among ``timed`` (C, else Numba, else
    NumPy) set up on the float32 twin of a half-precision case, called once; None where there
    is no twin or it could not be set up (said in the record's ``"float32_in_turn_error"``)."""
    twin = float32_twin(case)
    lead = next((b for b in BACKENDS if any(e["backend"] == b for e in timed)), None)
    if twin is None or lead is None:
        return None
    contender = next((c for c in twin.build(ctx) if c.backend == lead), None)
    entry = _first_call(contender) if contender is not None else {"error": f"no {lead} contender"}
    if entry["error"] is not None:
        record["float32_in_turn_error"] = entry["error"]
        return None
    return lead, entry["_fn"]


def _copy_in_turn(stats: dict, probe: CopyProbe) -> dict:
    """The faster copy of ``probe`` by its median, the statistic of the contenders beside it."""
    method = min(stats, key=lambda name: stats[name].median)
    st = stats[method]
    return {
        "copy_gbs": 2 * probe.nbytes / st.median / 1e9,  # one read and one write per byte
        "best_gbs": 2 * probe.nbytes / st.best / 1e9,  # its fastest sample
        "method": method,
        "array_bytes": probe.nbytes,
        "median_s": st.median,
        "spread": st.spread,
        "samples": st.samples,
    }


def _isolate(case: Case, timed: list[dict], policy: TimingPolicy, threads: int, seed: int):
    """Time each contender alone too; keep the isolated figure where the two disagree."""
    for entry in timed:
        try:
            alone = isolate.time_isolated(case.id, entry["name"], threads, policy, seed)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            entry["isolated_error"] = str(exc)
            continue
        isolate.reconcile(entry, alone, DEFAULT_THRESHOLD)


def fits_in_cache(footprint: int | None, llc: int | None = None) -> bool | None:
    """Whether ``footprint`` bytes of data fit in the usable last-level cache ``llc`` (by default
    :func:`last_level_cache_bytes`, capped), so that the memory roofline does not bind; None
    when the case has no footprint."""
    if footprint is None:
        return None
    return footprint <= (last_level_cache_bytes() if llc is None else llc)


def _case_header(case: Case) -> dict:
    return {
        "id": case.id,
        "family": case.family,
        "kernel": case.kernel,
        "layout": case.layout,
        "shape": list(case.shape),
        "dtype": case.dtype,
        "size": case.size,
        "min_bytes": case.min_bytes,
        "footprint_bytes": case.footprint,
        "in_cache": fits_in_cache(case.footprint),
        "unit": case.unit,
        "per_call": case.per_call,
        "reference": case.reference,
        "tolerance": case.tol,
        "status": "ok",
        "note": "",
        "contenders": [],
    }


def _selector(backend: str | None):
    return None if backend is None else (lambda: normax.set_backend(backend))


def _first_call(contender) -> dict:
    """Set up a contender and call it once (warm-up, JIT compile) to get the result to check."""
    entry = {
        "name": contender.name,
        "backend": contender.backend,
        "error": None,
        "agree": False,
        "max_rel_error": None,
        "_fn": None,
        "_out": None,
    }
    try:
        if contender.backend is not None:
            normax.set_backend(contender.backend)
        fn = contender.make()
        t0 = time.perf_counter()
        out = fn()
        # The first call includes JIT compilation (or loading it from Numba's cache).
        entry["first_call_s"] = time.perf_counter() - t0
        entry["_out"] = as_arrays(out)
        entry["_fn"] = fn
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
    return entry


def _check_agreement(case: Case, entries: list[dict]) -> None:
    ref = next((e for e in entries if e["name"] == case.reference and e["error"] is None), None)
    for e in entries:
        if e["error"] is not None:
            continue
        if ref is None:
            e["error"] = f"no result from the reference {case.reference!r} to check against"
            continue
        err = relative_error(e["_out"], ref["_out"])
        e["max_rel_error"] = err
        e["agree"] = err <= case.tol
        if not e["agree"]:
            e["error"] = (
                f"disagrees with {case.reference}: normwise relative error "
                f"{err:.3g} > {case.tol:.3g}"
            )


def _per_unit(stats: dict, per_call: int) -> dict:
    if per_call == 1:
        return stats
    return {k: _scaled(v, per_call) if _per_call_figure(k) else v for k, v in stats.items()}


def _per_call_figure(key: str) -> bool:
    return key.endswith("_s") or key == "faults_per_call"


def _scaled(value, per_call: int):
    if value is None:
        return None
    return [v / per_call for v in value] if isinstance(value, list) else value / per_call


def _derive(case: Case, entries: list[dict]) -> None:
    """Speed-ups over NumPy and PyTorch, and effective GB/s."""
    medians = {e["name"]: e.get("median_s") for e in entries}
    for e in entries:
        t = e.get("median_s")
        for key, other in (("speedup_vs_numpy", "numpy"), ("speedup_vs_torch", "torch")):
            base = medians.get(other)
            e[key] = base / t if (t and base) else None
        e["gbs"] = case.min_bytes / t / 1e9 if (t and case.min_bytes) else None


def add_roofline(records: list[dict], bandwidth: Bandwidth) -> None:
    """Each case's roofline time (minimum bytes over copy bandwidth) and each contender's fraction
    of it (its GB/s over the copy's), with the copy bandwidth it was divided by.

    A case with a copy timed in turn (``"copy_in_turn"``, larger than the cache) is measured
    against that copy: the same rounds, the same statistic (the median). A contender whose figure
    was taken alone in another process (``"in_process"`` holds the replaced one), and every case
    that fits in the cache, is measured against the run's probe (``bandwidth``).
    """
    for r in records:
        in_turn = r.get("copy_in_turn")
        case_copy = in_turn["copy_gbs"] * 1e9 if in_turn else bandwidth.copy
        r["roofline_s"] = r["min_bytes"] / case_copy if r["min_bytes"] else None
        for e in r["contenders"]:
            copy = bandwidth.copy if e.get("in_process") else case_copy
            gbs = e.get("gbs")
            e["roofline"] = gbs * 1e9 / copy if gbs else None
            e["roofline_copy_gbs"] = copy / 1e9 if gbs else None


def _document(config: Config, records: list[dict], run: dict) -> dict:
    ran = [r for r in records if r["status"] == "ok"]
    agree = all(e["agree"] for r in ran for e in r["contenders"])
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": list(config.command),
        "mode": "full" if config.full else "quick",
        "machine": machine_info(),
        "versions": versions(run["torch"]),
        "environment": environment_notes(),
        "load_average": run["load_average"],
        "threads": run["threads"],
        # What each pool reported while the cases ran (--threads is refused if one differs).
        "threads_in_use": run["threads_in_use"],
        "backends": list(run["backends"]),
        "default_backend": run["default_backend"],
        "torch": run["torch"] is not None,
        "timing": {
            **asdict(run["policy"]),
            "clock": "time.perf_counter",
            "statistic": "median",
            "spread": "interquartile range / median",
            "method": "each contender's 'method' says how its figure was taken",
            "faults": "faults_per_call: the process's minor page faults while timing, per call",
            "isolation": run.get("isolation"),
        },
        "bandwidth": run["bandwidth"].to_dict(),
        "cases": records,
        "skipped": [{"id": r["id"], "note": r["note"]} for r in records if r["status"] != "ok"],
        "all_agree": agree and not any(r["status"] == "error" for r in records),
        # Ctrl-C stopped the run: only the cases in "cases" finished.
        "interrupted": run["interrupted"],
        "elapsed_s": run["elapsed"],
    }
