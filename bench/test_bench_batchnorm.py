"""pytest-benchmark suite for batch norm: ``pytest bench/test_bench_batchnorm.py --benchmark-only``.

C, Numba and NumPy run side by side in one group per case (PyTorch's ``native_batch_norm`` too
when it is installed), and every timed call's answer is checked against the NumPy reference
afterwards, so a fast wrong kernel fails instead of winning. Threads: all cores for every pool.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import normax
from normax import _batchnorm_numpy as ref

CASES = {
    "8192x2048-NC": ((8192, 2048), 1),
    "32x64x56x56-NCHW": ((32, 64, 56, 56), 1),
    "32x56x56x64-NHWC": ((32, 56, 56, 64), -1),
    "32x64-NC": ((32, 64), 1),
}
BACKENDS = normax.available_backends()
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture(scope="module", autouse=True)
def all_cores():
    previous = normax.get_num_threads()
    normax.set_num_threads(THREADS)
    yield
    normax.set_num_threads(previous)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """Inputs of one case and the reference answers for them."""
    shape, axis = CASES[request.param]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32) * 2 + 1
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    ax = axis % x.ndim
    y_ref, mean, invstd = ref.train_by_axis(x, ax, gamma, beta, None, None, 0.1, 1e-5, None)
    dx_ref = ref.backward_by_axis(dy, x, ax, mean, invstd, gamma, None)[0]
    return request.param, x, axis, gamma, beta, dy, y_ref, dx_ref


def _use(backend):
    if backend not in BACKENDS:
        pytest.skip(f"backend {backend} not available")
    normax.set_backend(backend)


def _check(actual, expected):
    # normwise: float32 kernels against the float64-accumulating reference
    err = np.linalg.norm((actual - expected).ravel()) / np.linalg.norm(expected.ravel())
    assert err < 1e-5, err


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_train_forward(benchmark, case, backend):
    name, x, axis, gamma, beta, _, y_ref, _ = case
    _use(backend)
    c = x.shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    out = np.empty_like(x)
    benchmark.group = f"batch_norm_train {name}"
    y, _ = benchmark(normax.batch_norm_train, x, gamma, beta, rm, rv, axis=axis, out=out)
    _check(y, y_ref)


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_backward(benchmark, case, backend):
    name, x, axis, gamma, beta, dy, _, dx_ref = case
    _use(backend)
    _, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    out = np.empty_like(x)
    benchmark.group = f"batch_norm_backward {name}"
    dx, _, _ = benchmark(normax.batch_norm_backward, dy, cache, out=out)
    _check(dx, dx_ref)


def _torch(x, axis):
    torch = pytest.importorskip("torch")
    if axis % x.ndim != 1:
        pytest.skip("torch.native_batch_norm takes the channel axis at 1")
    torch.set_num_threads(THREADS)
    return torch


def test_train_forward_torch(benchmark, case):
    name, x, axis, gamma, beta, _, y_ref, _ = case
    torch = _torch(x, axis)
    tx, tg, tb = torch.from_numpy(x), torch.from_numpy(gamma), torch.from_numpy(beta)
    c = x.shape[axis]
    trm, trv = torch.zeros(c), torch.ones(c)
    benchmark.group = f"batch_norm_train {name}"
    y, _, _ = benchmark(torch.ops.aten.native_batch_norm, tx, tg, tb, trm, trv, True, 0.1, 1e-5)
    _check(y.numpy(), y_ref)


def test_backward_torch(benchmark, case):
    name, x, axis, gamma, beta, dy, _, dx_ref = case
    torch = _torch(x, axis)
    tx, tg, tb = torch.from_numpy(x), torch.from_numpy(gamma), torch.from_numpy(beta)
    c = x.shape[axis]
    trm, trv = torch.zeros(c), torch.ones(c)
    _, mean, invstd = torch.ops.aten.native_batch_norm(tx, tg, tb, trm, trv, True, 0.1, 1e-5)
    benchmark.group = f"batch_norm_backward {name}"
    dx, _, _ = benchmark(
        torch.ops.aten.native_batch_norm_backward,
        torch.from_numpy(dy),
        tx,
        tg,
        trm,
        trv,
        mean,
        invstd,
        True,
        1e-5,
        [True, True, True],
    )
    _check(dx.numpy(), dx_ref)
