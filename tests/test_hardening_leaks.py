"""Repeated kernel calls, good and bad, do not grow memory or leak references.

Three instruments, because each sees a different kind of leak:

- tracemalloc sees every Python object and every NumPy data buffer: a binding that forgets a
  ``Py_DECREF`` on a result, a shape tuple or an error path shows up as traced bytes growing
  with the number of calls.
- ``sys.getrefcount`` of the inputs, the ``out`` buffers and the dtype objects: a reference
  taken and never returned keeps an array (or a descriptor) alive forever.
- process RSS from /proc/self/statm over thousands of calls on inputs with many channels: C
  scratch memory (malloc in csrc/) is invisible to tracemalloc, but a per-call leak of even one
  per-channel buffer adds tens of megabytes there.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import normax

_spec = importlib.util.spec_from_file_location(
    "normax_hardening_cases", Path(__file__).with_name("hardening_cases.py"))
cases = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(cases, "BUILDERS"):
    _spec.loader.exec_module(cases)

BUILDERS = cases.available()
SMALL = (16, 7, 3)  # (N, C, inner): both code paths of the (outer, C, inner) view
DTYPES = [np.float32, np.float64]


def _traced_growth(fn, calls: int) -> int:
    """Smallest traced-bytes gain over three windows of ``calls`` calls of ``fn``.

    The first calls fill caches that then stay (Numba's dispatch, NumPy's small-buffer cache,
    strings interned by an error message), and freed blocks are reused in no fixed order, so a
    single window can gain a few kilobytes by chance. A leak gains in every window, in
    proportion to the number of calls: the minimum over windows keeps it and drops the noise.
    """
    for _ in range(10):
        fn()
    # Everything alive now moves to the collector's permanent generation: each gc.collect()
    # below then walks only what the windows allocate. After the rest of the suite (PyTorch,
    # Numba, Dask and Matplotlib modules, compiled kernels) a full collection walks millions of
    # objects, and six of them per case cost more than the calls measured.
    gc.collect()
    gc.freeze()
    tracemalloc.start()
    try:
        gains = []
        for _ in range(3):
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(calls):
                fn()
            gc.collect()
            gains.append(tracemalloc.get_traced_memory()[0] - base)
        return min(gains)
    finally:
        tracemalloc.stop()
        gc.unfreeze()


def _raises(fn):
    """``fn`` wrapped to require the documented exception and swallow it."""

    def call():
        try:
            fn()
        except (TypeError, ValueError):
            return
        raise AssertionError("expected TypeError or ValueError")

    return call


# A leaked object is at least 16 bytes: over CALLS calls that is 16 * CALLS bytes, twice LIMIT.
CALLS = 250
LIMIT = 8 * CALLS
ERROR_CALLS = 1000


@pytest.mark.parametrize("build", BUILDERS, ids=cases.ids(BUILDERS))
@pytest.mark.parametrize(("dtype", "with_out"), [(np.float32, False), (np.float64, True)],
                         ids=["float32-alloc", "float64-out"])
def test_no_traced_growth(backend, build, dtype, with_out):
    case = build(np.random.default_rng(1), dtype, SMALL)
    out = case.new_out() if with_out else None
    grown = _traced_growth(lambda: case.run(out), CALLS)
    assert grown < LIMIT, f"{case.name}: {grown} bytes more traced after {CALLS} more calls"


def test_error_paths_no_traced_growth():
    # The checks run before dispatch, the same for every backend: the default backend (C when
    # built) also covers the errors the binding raises itself.
    # One dtype: the checks that raise are the same Python and binding code for both.
    bad = cases.bad_calls(np.random.default_rng(2), np.float64, SMALL)
    for label, fn in bad:
        # Raising formats a message: CPython and NumPy keep a bounded set of its strings
        # (dtype names) alive, several kilobytes whatever the number of calls. Longer windows
        # and a floor for that: a leak of one object per call is still >= 24 * ERROR_CALLS.
        grown = _traced_growth(_raises(fn), ERROR_CALLS)
        assert grown < 8192 + 8 * ERROR_CALLS, \
            f"{label}: {grown} bytes more traced after {ERROR_CALLS} failing calls"


@pytest.mark.parametrize("build", BUILDERS, ids=cases.ids(BUILDERS))
@pytest.mark.parametrize("with_out", [False, True], ids=["alloc", "out"])
def test_refcounts_unchanged(backend, build, with_out):
    # Only arrays: the builtin dtype singletons cannot be checked, NumPy itself adds a reference
    # to float64's on every np.empty(shape) without a dtype (seen with NumPy 2.4 on Python 3.11).
    case = build(np.random.default_rng(3), np.float32, SMALL)
    out = case.new_out() if with_out else None
    arrays = {**case.inputs, **(out or {})}
    case.run(out)
    gc.collect()
    before = {name: sys.getrefcount(a) for name, a in arrays.items()}
    for _ in range(CALLS):
        case.run(out)
    gc.collect()
    after = {name: sys.getrefcount(a) for name, a in arrays.items()}
    assert after == before, f"{case.name}: reference counts changed over {CALLS} calls"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Many channels: a leaked per-channel buffer (C doubles) is 128 KiB per call, 37.5 MiB over 300.
WIDE = (2, 16384, 1)
ROUNDS = 300


def _rss_growth(fn, rounds: int) -> int:
    """RSS bytes gained over ``rounds`` calls of ``fn`` after 50 warm-up calls, C backend."""
    previous = normax.get_backend()
    normax.set_backend("c")
    try:
        for _ in range(50):
            fn()
        gc.collect()
        base = _rss()
        for _ in range(rounds):
            fn()
        gc.collect()
        return _rss() - base
    finally:
        normax.set_backend(previous)


needs_c_and_proc = pytest.mark.skipif(
    "c" not in normax.available_backends() or not Path("/proc/self/statm").exists()
    or "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="needs the C extension and /proc (Linux); meaningless under AddressSanitizer, "
    "whose quarantine keeps freed memory resident")


@needs_c_and_proc
@pytest.mark.parametrize("build", BUILDERS, ids=cases.ids(BUILDERS))
def test_rss_stable(build):
    case = build(np.random.default_rng(4), np.float32, WIDE)
    out = case.new_out()

    def both():
        case.run(None)
        case.run(out)

    grown = _rss_growth(both, ROUNDS)
    assert grown < 16 * 2**20, f"{case.name}: RSS grew by {grown / 2**20:.1f} MiB in " \
        f"{2 * ROUNDS} calls"


@needs_c_and_proc
def test_rss_stable_error_paths():
    bad = cases.bad_calls(np.random.default_rng(5), np.float32, WIDE)
    fns = [_raises(fn) for _, fn in bad]

    def all_bad():
        for fn in fns:
            fn()

    grown = _rss_growth(all_bad, ROUNDS)
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB in {ROUNDS} rounds of errors"
