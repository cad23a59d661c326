"""Concurrency: Python threads around the kernels, OpenMP inside them, and fork.

- Many Python threads call the same kernel at once on shared inputs, each writing its own
  outputs (preallocated ``out=`` buffers or freshly allocated ones): every result equals the
  serial one. The C kernels release the GIL, so the calls really overlap, each opening its own
  OpenMP team on inputs large enough to run in parallel.
- A process pool started with ``fork`` after the kernels have run (so the parent's OpenMP pool
  exists) must not deadlock: the C side runs serially in a forked child (csrc/threads.c). Also
  while another thread of the parent is inside a kernel at the moment of the fork.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import normax

from .conftest import half_dtypes

_spec = importlib.util.spec_from_file_location(
    "normax_hardening_cases", Path(__file__).with_name("hardening_cases.py"))
cases = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(cases, "BUILDERS"):
    _spec.loader.exec_module(cases)

BUILDERS = cases.available()
# 64 * 32 * 24 = 49152 elements: above the C kernels' threshold for using OpenMP threads.
SHAPE = (64, 32, 24)
THREADS = 8
ROUNDS = 4
TIMEOUT = 180  # seconds; a deadlock fails the test instead of hanging the suite

# Python >= 3.12 warns on fork() in a process with threads (OpenMP's, or the pool's own).
fork_warning = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")


def assert_same(got, expected, dtype, what: str) -> None:
    """Equal to the serial result up to summation order (OpenMP may combine partial sums in
    another order when the machine is oversubscribed)."""
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    assert len(got) == len(expected), what
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if e is None:
            assert g is None, f"{what}: result {i}"
            continue
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol, err_msg=f"{what}: result {i}")


def _copies(results):
    return tuple(None if r is None else np.array(r, copy=True) for r in results)


@pytest.mark.parametrize("build", BUILDERS, ids=cases.ids(BUILDERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_match_serial(backend, build, dtype):
    case = build(np.random.default_rng(7), dtype, SHAPE)
    expected = _copies(case.run(None))
    inputs_before = {k: v.copy() for k, v in case.inputs.items()}
    start = threading.Barrier(THREADS)
    failures: list[str] = []

    def worker(k: int) -> None:
        out = case.new_out()
        start.wait()
        for r in range(ROUNDS):
            try:
                got = case.run(out if (k + r) % 2 else None)
                assert_same(got, expected, dtype, f"thread {k} round {r}")
            except Exception as exc:  # collected: an assert in a thread would be lost
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a kernel call did not return (deadlock?)"
    assert not failures, failures[:3]
    for name, before in inputs_before.items():
        np.testing.assert_array_equal(case.inputs[name], before, err_msg=f"input {name} changed")


@pytest.mark.parametrize("build", BUILDERS, ids=cases.ids(BUILDERS))
def test_thread_counts_agree(build):
    """1 thread, 2 threads and the default give the same answer."""
    case = build(np.random.default_rng(8), np.float64, SHAPE)
    expected = _copies(case.run(None))
    results = []
    try:
        for n in (1, 2, 0):
            normax.set_num_threads(n)
            results.append((n, case.run(None)))
    finally:
        normax.set_num_threads(0)
    for n, got in results:
        assert_same(got, expected, np.float64, f"set_num_threads({n})")


# ---- the reduced loss: the same bits every time, on any number of threads ---------------------

# Rows and classes-first, each many chunks of work for the kernels' threads (and one shape with
# few-class rows, which the C kernels process in groups).
XENT_SHAPES = [((2048, 300), 1), ((6000, 10), -1), ((16, 100, 384), 1)]


def _xent_sum_bits(z, labels, axis, threads, repeats):
    """The bits of the summed loss of ``repeats`` calls on ``threads`` threads."""
    normax.set_num_threads(threads)
    try:
        return {np.float64(normax.softmax_cross_entropy(z, labels, axis=axis,
                                                        reduction="sum")[0]).hex()
                for _ in range(repeats)}
    finally:
        normax.set_num_threads(0)


@pytest.mark.parametrize(("shape", "axis"), XENT_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, *half_dtypes()])
def test_xent_reduced_loss_is_deterministic(backend, shape, axis, dtype):
    """The summed cross-entropy does not depend on which thread finishes first, nor on how many
    threads there are: the per-chunk partial sums are added in a fixed order."""
    if backend == "numpy":
        pytest.skip("the NumPy reference runs on one thread")
    rng = np.random.default_rng(10)
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = rng.integers(0, shape[axis], size=np.delete(shape, axis % len(shape)))
    seen = {n: _xent_sum_bits(z, labels, axis, n, 40 if n == 2 else 3) for n in (1, 2, 3, 8)}
    assert len(seen[2]) == 1, f"2 threads, 40 calls: {sorted(seen[2])}"
    assert len(set().union(*seen.values())) == 1, seen


# ---- fork ------------------------------------------------------------------------------------

_FORKED: list = []  # the cases a forked child runs: inherited through fork, not pickled


def _child_run(i: int):
    return normax.get_backend(), normax.get_num_threads(), _FORKED[i].run(None)


def _fork_pool_results(n: int):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        try:
            return pool.map_async(_child_run, range(n)).get(timeout=TIMEOUT)
        except multiprocessing.TimeoutError:
            pytest.fail(f"forked pool did not finish in {TIMEOUT} s: deadlock in a child")


@fork_warning
@pytest.mark.skipif(not hasattr(multiprocessing, "get_context") or sys.platform != "linux",
                    reason="fork start method (Linux)")
@pytest.mark.parametrize("busy_parent", [False, True], ids=["idle", "busy-parent"])
def test_fork_pool_after_kernel_calls(backend, busy_parent):
    rng = np.random.default_rng(9)
    _FORKED[:] = [build(rng, np.float32, SHAPE) for build in BUILDERS]
    expected = [_copies(case.run(None)) for case in _FORKED]  # starts the OpenMP pool
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            for case in _FORKED:
                case.run(None)

    spinner = threading.Thread(target=spin)
    if busy_parent:
        spinner.start()  # a kernel may be mid-call (OpenMP team busy) when fork happens
    try:
        results = _fork_pool_results(len(_FORKED))
    finally:
        stop.set()
        if busy_parent:
            spinner.join(TIMEOUT)
        _FORKED.clear()
    for (name, threads, got), want, build in zip(results, expected, BUILDERS, strict=True):
        # Numba's GNU OpenMP layer cannot run in a forked child: normax computes there with
        # the NumPy reference instead (see normax._backend).
        assert name == backend or (backend, name) == ("numba", "numpy")
        if backend == "c":
            assert threads == 1, "C kernels must run serially in a forked child"
        assert_same(got, want, np.float32, f"{build.__name__} in a forked child")
