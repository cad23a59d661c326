"""Timing: warm-up, calibrated samples, round-robin over contenders, median and spread.

Every contender of a case is timed by exactly the same procedure (see the package docstring):

1. warm-up: the first call (JIT compilation, first-touch page faults, the agreement check) is
   made by the caller and never timed;
2. calibration, which is also the rest of the warm-up (its timings are discarded): the number of
   calls per sample grows until one sample takes at least ``sample_time``, so that per-call
   overhead of a few microseconds is measured over many calls and the resolution of
   :func:`time.perf_counter` does not matter;
3. samples are taken round-robin, one sample per contender per round, so that a slow drift of the
   machine (other processes, frequency changes) affects every contender alike; each contender
   keeps sampling until it has at least ``min_samples`` samples covering ``min_time`` seconds,
   or ``max_time`` seconds when that comes first (but never fewer than 3 samples);
4. the result is the median time per call with the quartiles of the samples; the garbage
   collector is off while timing. The minor page faults of the process during the samples are
   counted too, per call: a contender whose every call writes memory its allocator has just taken
   from the system pays one per page it touches first, and that is part of its time.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

try:
    import resource
except ImportError:  # no getrusage (Windows): faults are not counted there
    resource = None


@dataclass(frozen=True)
class TimingPolicy:
    """How long to time each contender.

    Attributes
    ----------
    min_time : float
        Seconds of samples (after warm-up) each contender collects at least.
    sample_time : float
        Target duration of one sample; tiny calls are repeated within a sample to reach it.
    min_samples : int
        Samples collected at least, when ``max_time`` allows.
    max_time : float
        Sampling stops once this much time is spent (with at least 3 samples), so that a slow
        reference does not dominate the run.
    """

    min_time: float = 0.1
    sample_time: float = 0.005
    min_samples: int = 7
    max_time: float = 0.5

    def __post_init__(self):
        for name in ("min_time", "sample_time", "max_time"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.min_samples < 3:
            raise ValueError(f"min_samples must be at least 3, got {self.min_samples!r}")


@dataclass
class Stats:
    """Per-call times of one contender: median, quartiles, fastest, and how they were taken."""

    median: float
    q1: float
    q3: float
    best: float
    samples: int
    calls_per_sample: int
    total_time: float
    per_call: tuple[float, ...] = ()
    faults_per_call: float | None = None  # minor page faults; None where they are not counted

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 means the middle half is within 5%)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else math.nan

    def to_dict(self) -> dict:
        return {
            "median_s": self.median,
            "q1_s": self.q1,
            "q3_s": self.q3,
            "best_s": self.best,
            "spread": self.spread,
            "samples": self.samples,
            "calls_per_sample": self.calls_per_sample,
            "total_time_s": self.total_time,
            # Every sample, so that a later run can be compared with this one (--compare).
            "samples_s": list(self.per_call),
            "faults_per_call": self.faults_per_call,
        }


def summarize(per_call: Sequence[float], calls_per_sample: int, faults: int | None = None) -> Stats:
    """Median, quartiles and best of per-call sample times; ``faults`` is the count of minor page
    faults over all the samples (None when not counted)."""
    a = np.asarray(per_call, dtype=np.float64)
    if a.size == 0:
        raise ValueError("summarize needs at least one sample")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Stats(
        median=float(med),
        q1=float(q1),
        q3=float(q3),
        best=float(a.min()),
        samples=int(a.size),
        calls_per_sample=int(calls_per_sample),
        total_time=float(a.sum() * calls_per_sample),
        per_call=tuple(float(v) for v in a),
        faults_per_call=None if faults is None else faults / (a.size * calls_per_sample),
    )


def minor_faults() -> int | None:
    """Minor page faults of this process so far, every thread's; None where not counted. Most
    are first touches of pages the process was given but had not used yet."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_calls(fn: Callable[[], object], number: int) -> float:
    """Seconds taken by ``number`` back-to-back calls of ``fn``."""
    clock = time.perf_counter
    t0 = clock()
    for _ in range(number):
        fn()
    return clock() - t0


def calibrate(fn: Callable[[], object], sample_time: float, max_number: int = 1 << 20) -> int:
    """Calls per sample so that one sample lasts at least ``sample_time`` seconds."""
    number = 1
    while number < max_number:
        elapsed = time_calls(fn, number)
        if elapsed >= 4 * sample_time:
            break
        if elapsed >= sample_time:
            # Near the target, one interruption (a page fault, the scheduler) could have made
            # a fast call look slow: time again and keep the lower estimate.
            elapsed = min(elapsed, time_calls(fn, number))
            if elapsed >= sample_time:
                break
        # Jump close to the target, but at most 10x at a time: the first calls can be slow.
        guess = number * sample_time / max(elapsed, 1e-9) * 1.1
        number = int(min(max(2 * number, guess), 10 * number, max_number))
    return number


@dataclass
class _Slot:
    fn: Callable[[], object]
    before: Callable[[], object] | None
    number: int = 1
    per_call: list[float] = field(default_factory=list)
    spent: float = 0.0
    faults: int = 0

    def done(self, policy: TimingPolicy) -> bool:
        n = len(self.per_call)
        if n >= 3 and self.spent >= policy.max_time:
            return True
        return n >= policy.min_samples and self.spent >= policy.min_time


def measure(
    fns: Sequence[Callable[[], object]],
    policy: TimingPolicy,
    before: Sequence[Callable[[], object] | None] | None = None,
) -> list[Stats]:
    """Time several contenders round-robin with the same procedure.

    Parameters
    ----------
    fns : sequence of callables
        The contenders; each call does the whole job once. Each must have been called once
        already (compiled, checked); calibration then warms it further, untimed.
    policy : TimingPolicy
        Time budget.
    before : sequence of callables or None, optional
        Per contender, called (untimed) before each of its samples, e.g. to select a backend.

    Returns
    -------
    list of Stats
        Per-call statistics, in the order of ``fns``.
    """
    before = list(before) if before is not None else [None] * len(fns)
    slots = [_Slot(fn, pre) for fn, pre in zip(fns, before, strict=True)]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for slot in slots:
            if slot.before is not None:
                slot.before()
            slot.number = calibrate(slot.fn, policy.sample_time)
        while not all(slot.done(policy) for slot in slots):
            for slot in slots:
                if slot.done(policy):
                    continue
                if slot.before is not None:
                    slot.before()
                first = minor_faults()
                elapsed = time_calls(slot.fn, slot.number)
                if first is not None:
                    slot.faults += minor_faults() - first
                slot.spent += elapsed
                slot.per_call.append(elapsed / slot.number)
    finally:
        if gc_was_enabled:
            gc.enable()
    counted = resource is not None
    return [summarize(s.per_call, s.number, s.faults if counted else None) for s in slots]
