"""Shared fixtures of the pytest-benchmark suites: ``pytest bench/ --benchmark-only``.

Each suite (bench/test_bench_<family>.py) times the C, Numba and NumPy backends side by side in one
``benchmark.group`` per case and asserts every answer against the NumPy reference, so a fast
wrong kernel fails instead of winning. Shapes can be taken from the ``normax bench`` case tables
(``normax.bench.cases_batchnorm.LAYOUTS`` and friends) so both report the same cases.

Fixtures
--------
backend
    Parametrized over ``normax.available_backends()``; selects it and restores the previous one.
reference
    ``reference(fn, *args, **kwargs)``: the result of ``fn`` on the NumPy reference backend.
assert_close
    ``assert_close(actual, expected, dtype=None)``: arrays, scalars or tuples of them, within
    the normwise tolerance ``normax bench`` uses between contenders for ``dtype`` (default: the
    loosest float dtype among the expected arrays).
rng
    A seeded ``numpy.random.Generator``.
torch
    PyTorch, or the test is skipped (it is never required).
threads (session, autouse)
    Every thread pool (normax, Numba, PyTorch, NumPy's BLAS) held to all usable cores, as in
    ``normax bench``.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax.bench.cases import TOLERANCE, as_arrays, relative_error
from normax.bench.machine import held_threads, import_torch, usable_cores


@pytest.fixture(scope="session", autouse=True)
def threads():
    n = usable_cores()
    with held_threads(n, import_torch()):
        yield n


@pytest.fixture(params=normax.available_backends())
def backend(request):
    previous = normax.get_backend()
    normax.set_backend(request.param)
    yield request.param
    normax.set_backend(previous)


@pytest.fixture
def reference():
    def run(fn, *args, **kwargs):
        previous = normax.get_backend()
        normax.set_backend("numpy")
        try:
            return fn(*args, **kwargs)
        finally:
            normax.set_backend(previous)

    return run


@pytest.fixture
def assert_close():
    def check(actual, expected, dtype=None):
        expected_arrays = as_arrays(expected)
        if dtype is None:  # the loosest float dtype among the expected arrays
            kinds = {e.dtype for e in _leaves(expected) if isinstance(e, np.ndarray)}
            dtype = np.float32 if np.dtype(np.float32) in kinds else np.float64
        tol = TOLERANCE[np.dtype(dtype).name]
        err = relative_error(as_arrays(actual), expected_arrays)
        assert err <= tol, f"normwise relative error {err:.3g} > {tol:.3g}"

    return check


def _leaves(out):
    if isinstance(out, (tuple, list)):
        for item in out:
            yield from _leaves(item)
    elif out is not None:
        yield out


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")
