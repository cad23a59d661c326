"""Run the cases: select them, check every contender against the reference, time, derive figures."""

from __future__ import annotations

import datetime
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import normax

from . import cases_batchnorm, cases_optim, cases_softmax, cases_tune
from .cases import (
    DTYPES,
    SIZES,
    BuildContext,
    Case,
    as_arrays,
    missing_requirements,
    relative_error,
)
from .machine import (
    Bandwidth,
    environment_notes,
    held_threads,
    import_torch,
    last_level_cache_bytes,
    load_average,
    machine_info,
    probe_bandwidth,
    usable_cores,
    versions,
)
from .timing import TimingPolicy, measure

SCHEMA = "normax-bench/1"
FAMILIES = {
    "batch_norm": cases_batchnorm.cases,
    "softmax": cases_softmax.cases,
    "optim": cases_optim.cases,
    "tune": cases_tune.cases,
}
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
    probe_bytes: int | None = None  # default: 4 x the last-level cache, at least 64 MiB
    progress: bool | None = None  # None: a bar when standard error is a terminal
    seed: int = 0
    command: list[str] = field(default_factory=list)

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
    selected = []
    for family, make_cases in FAMILIES.items():
        if config.families and family not in config.families:
            continue
        for case in make_cases():
            if config.sizes and case.size not in config.sizes:
                continue
            if config.dtypes and case.dtype not in config.dtypes:
                continue
            if config.full or config.sizes or case.quick:
                selected.append(case)
    return selected


def contender_backends(config: Config) -> tuple[str, ...]:
    """normax backends to run; the NumPy reference is always among them (the baseline)."""
    available = normax.available_backends()
    wanted = config.backends or available
    bad = sorted(set(wanted) - set(normax._backend.BACKENDS))
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
    records = []
    threads = run["threads"]
    with held_threads(threads, torch), tempfile.TemporaryDirectory(prefix="normax-bench-") as tmp:
        try:
            probe_bytes = config.probe_bytes or _default_probe_bytes()
            first = probe_bandwidth(probe_bytes, threads)
            ctx = BuildContext(run["backends"], torch, seed=config.seed, tmpdir=tmp)
            for case in _progress(cases, config.progress):
                records.append(run_case(case, ctx, run["policy"]))
            # Probed before and after the cases; on a shared machine the better one is the limit.
            run["bandwidth"] = first.best_with(probe_bandwidth(probe_bytes, threads))
        finally:
            normax.set_backend(run["default_backend"])
    add_roofline(records, run["bandwidth"])
    run["elapsed"] = time.perf_counter() - started
    run["load_average"] = {"start": load_before, "end": load_average()}
    return _document(config, records, run)


def _default_probe_bytes() -> int:
    return max(4 * last_level_cache_bytes(), 64 << 20)


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


def run_case(case: Case, ctx: BuildContext, policy: TimingPolicy) -> dict:
    """Check and time one case; returns its record (status ok, skipped or error)."""
    started = time.perf_counter()
    record = _case_header(case)
    _check_and_time(case, ctx, policy, record)
    record["elapsed_s"] = time.perf_counter() - started
    return record


def _check_and_time(case: Case, ctx: BuildContext, policy: TimingPolicy, record: dict) -> None:
    missing = missing_requirements(case.requires)
    if missing:
        names = ", ".join(f"normax.{m}" for m in missing)
        record.update(status="skipped", note=f"{names} not available in this installation")
        return
    try:
        contenders = case.build(ctx)
        entries = [_first_call(c) for c in contenders]
    except Exception as exc:  # a broken case must not end the whole run
        record.update(status="error", note=f"set-up failed: {type(exc).__name__}: {exc}")
        return
    _check_agreement(case, entries)
    timed = [e for e in entries if e["agree"]]
    try:
        stats = measure(
            [e.pop("_fn") for e in timed], policy, before=[_selector(e["backend"]) for e in timed]
        )
    except Exception as exc:
        record.update(status="error", note=f"timing failed: {type(exc).__name__}: {exc}")
        stats = []
    for entry, st in zip(timed, stats, strict=False):
        entry.update(_per_unit(st.to_dict(), case.per_call))
    for entry in entries:
        entry.pop("_fn", None)
        entry.pop("_out", None)
    _derive(case, entries)
    record["contenders"] = entries


def _case_header(case: Case) -> dict:
    llc = last_level_cache_bytes()
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
        "in_cache": None if case.footprint is None else case.footprint <= llc,
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
    return {k: (v / per_call if k.endswith("_s") else v) for k, v in stats.items()}


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
    of it."""
    for r in records:
        r["roofline_s"] = r["min_bytes"] / bandwidth.copy if r["min_bytes"] else None
        for e in r["contenders"]:
            gbs = e.get("gbs")
            e["roofline"] = gbs * 1e9 / bandwidth.copy if gbs else None


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
        "backends": list(run["backends"]),
        "default_backend": run["default_backend"],
        "torch": run["torch"] is not None,
        "timing": {
            **asdict(run["policy"]),
            "clock": "time.perf_counter",
            "statistic": "median",
            "spread": "interquartile range / median",
        },
        "bandwidth": run["bandwidth"].to_dict(),
        "cases": records,
        "skipped": [{"id": r["id"], "note": r["note"]} for r in records if r["status"] != "ok"],
        "all_agree": agree and not any(r["status"] == "error" for r in records),
        "elapsed_s": run["elapsed"],
    }
