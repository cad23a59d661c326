"""Batch norm on every backend against the NumPy reference, by layout, dtype and shape."""

from __future__ import annotations

import gc
import itertools
import pickle
import sys

import numpy as np
import pytest

import normax
from normax import _batchnorm_numpy as ref
from normax.batchnorm import BatchNormCache

from .conftest import same_bits_on_one_and_two_threads

DTYPES = [np.float32, np.float64]

# Per-dtype tolerances against the float64 reference (the values of conftest.TOL, which
# --import-mode=importlib does not let a test module import).
TOL = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-5},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-12},
}

# (shape, axis): odd sizes, N=2, C=1, a large C (heap scratch), the four named layouts, a middle
# axis, and shapes above the parallel threshold for both inner loops (rows, wide rows, long and
# short runs).
LAYOUTS = {
    "NC-odd": ((7, 5), 1),
    "N=2": ((2, 3), 1),
    "C=1": ((9, 1), 1),
    "large-C": ((3, 1100), 1),
    "NCHW": ((4, 3, 5, 7), 1),
    "NHWC": ((4, 5, 7, 3), -1),
    "C,m": ((6, 11), 0),
    "middle": ((3, 4, 5, 2), 2),
    "rows-parallel": ((97, 400), 1),
    "wide-rows-parallel": ((37, 1300), 1),  # rows past NMX_WIDE_ROW_BYTES go by tiles
    "runs-parallel": ((5, 16, 500), 1),
    "short-runs-parallel": ((16, 48, 7, 7), 1),
}


def make(shape, axis, dtype, rng, *, loc=0.5, scale=2.0):
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    c = shape[axis]
    gamma = (rng.standard_normal(c) + 1.0).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    return x, gamma, beta


def reference_train(x, axis, gamma, beta, momentum=0.1, eps=1e-5):
    """Reference output, statistics and one running-statistics step from (0, 1)."""
    xc = np.ascontiguousarray(x)
    c = x.shape[axis]
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    y, mean, invstd = ref.train_by_axis(xc, axis % x.ndim, gamma, beta, rm, rv, momentum, eps, None)
    return y, mean, invstd, rm, rv


def assert_close(actual, expected, dtype, scale=1.0):
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_matches_reference(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = make(shape, axis, dtype, rng)
    c = shape[axis]
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis)
    y_ref, mean, invstd, rm_ref, rv_ref = reference_train(x, axis, gamma, beta)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype)
    assert_close(cache.mean, mean, dtype)
    assert_close(cache.invstd, invstd, dtype)
    assert_close(rm, rm_ref, dtype)
    assert_close(rv, rv_ref, dtype)
    assert isinstance(cache, BatchNormCache) and cache.axis == axis % x.ndim


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_matches_reference(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = make(shape, axis, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    _, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache)
    dx_ref, dg_ref, db_ref = ref.backward_by_axis(
        dy, x, axis % x.ndim, cache.mean, cache.invstd, gamma, None
    )
    assert dx.dtype == dgamma.dtype == dbeta.dtype == x.dtype
    n = x.size // shape[axis]
    assert_close(dx, dx_ref, dtype)
    # sums over n values: absolute error grows with sqrt(n) in float32
    assert_close(dgamma, dg_ref, dtype, scale=np.sqrt(n))
    assert_close(dbeta, db_ref, dtype, scale=np.sqrt(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NC-odd", "NCHW", "NHWC", "C,m", "rows-parallel"])
def test_infer_matches_reference(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = make(shape, axis, dtype, rng)
    c = shape[axis]
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    y = normax.batch_norm_infer(x, gamma, beta, rm, rv, axis=axis)
    y_ref = ref.infer_by_axis(x, axis % x.ndim, gamma, beta, rm, rv, 1e-5, None)
    assert y.dtype == x.dtype
    assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NC-odd", "NCHW", "NHWC", "C,m", "rows-parallel"])
def test_no_affine(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, _, _ = make(shape, axis, dtype, rng)
    y, cache = normax.batch_norm_train(x, None, None, axis=axis)
    y_ref, *_ = reference_train(x, axis, None, None)
    assert_close(y, y_ref, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache)
    assert dgamma is None and dbeta is None
    dx_ref, _, _ = ref.backward_by_axis(dy, x, axis % x.ndim, cache.mean, cache.invstd, None, None)
    assert_close(dx, dx_ref, dtype)


def _strided(x):
    """The same values as ``x`` in a non-contiguous view (every other element of a bigger array)."""
    big = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype)
    big[..., ::2] = x
    view = big[..., ::2]
    assert not view.flags.c_contiguous
    return view


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NC-odd", "NCHW", "NHWC", "C,m", "runs-parallel"])
def test_noncontiguous_same_as_contiguous(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = make(shape, axis, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    grads = normax.batch_norm_backward(dy, cache)
    y2, cache2 = normax.batch_norm_train(_strided(x), _strided(gamma[None])[0], beta, axis=axis)
    grads2 = normax.batch_norm_backward(_strided(dy), cache2)
    np.testing.assert_array_equal(y2, y)
    for a, b in zip(grads, grads2, strict=True):
        np.testing.assert_array_equal(a, b)
    c = shape[axis]
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(1, 2, c).astype(dtype)
    np.testing.assert_array_equal(
        normax.batch_norm_infer(_strided(x), gamma, beta, _strided(rm[None])[0], rv, axis=axis),
        normax.batch_norm_infer(x, gamma, beta, rm, rv, axis=axis),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 5), (97, 400), (2, 1100)])
def test_transposed_layout(backend, shape, dtype, rng):
    """(N, C) with axis=1 and its transpose (C, N) with axis=0 are the same normalization."""
    x, gamma, beta = make(shape, 1, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = normax.batch_norm_train(x, gamma, beta, axis=1)
    yt, cache_t = normax.batch_norm_train(x.T, gamma, beta, axis=0)
    assert_close(yt.T, y, dtype)
    dx, dg, db = normax.batch_norm_backward(dy, cache)
    dxt, dgt, dbt = normax.batch_norm_backward(dy.T, cache_t)
    assert_close(dxt.T, dx, dtype)
    assert_close(dgt, dg, dtype, scale=np.sqrt(shape[0]))
    assert_close(dbt, db, dtype, scale=np.sqrt(shape[0]))
    # a Fortran-ordered (N, C) array is a transposed C-ordered one
    yf, _ = normax.batch_norm_train(np.asfortranarray(x), gamma, beta, axis=1)
    np.testing.assert_array_equal(yf, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_arguments(backend, dtype, rng):
    x, gamma, beta = make((6, 4, 3), 1, dtype, rng)
    out = np.empty_like(x)
    y, cache = normax.batch_norm_train(x, gamma, beta, out=out)
    assert y is out
    np.testing.assert_array_equal(out, normax.batch_norm_train(x, gamma, beta)[0])
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx_out = np.empty_like(x)
    dx, dgamma, _ = normax.batch_norm_backward(dy, cache, out=dx_out)
    assert dx is dx_out and dgamma.shape == (4,)
    np.testing.assert_array_equal(dx, normax.batch_norm_backward(dy, cache)[0])
    inf_out = np.empty_like(x)
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    assert normax.batch_norm_infer(x, gamma, beta, rm, rv, out=inf_out) is inf_out


def test_parameters_are_cast_to_input_dtype(backend, rng):
    x, gamma, beta = make((8, 3), 1, np.float32, rng)
    y32, _ = normax.batch_norm_train(x, gamma, beta)
    y64, cache = normax.batch_norm_train(x, gamma.astype(np.float64), [float(b) for b in beta])
    np.testing.assert_array_equal(y64, y32)
    assert cache.gamma.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_mean_does_not_cancel(backend, dtype, rng):
    """A float32 channel with mean 1e4 and std 1 normalizes to within 1e-3 of the exact value."""
    x64 = rng.standard_normal((4096, 3)) + np.array([1e4, -1e4, 3e4])
    x = x64.astype(dtype)
    exact = (x.astype(np.float64) - x.astype(np.float64).mean(0)) / x.astype(np.float64).std(0)
    y, cache = normax.batch_norm_train(x, None, None, eps=1e-15)  # eps > 0 in training
    assert np.abs(y - exact).max() < (1e-3 if dtype == np.float32 else 1e-9)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, _, _ = normax.batch_norm_backward(dy, cache)
    dx_ref, _, _ = ref.backward_by_axis(dy, x, 1, cache.mean, cache.invstd, None, None)
    assert np.abs(dx - dx_ref).max() < (1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("layout", ["NC-odd", "NCHW", "NHWC", "C,m", "runs-parallel"])
def test_nan_and_inf_stay_in_their_channel(backend, layout, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = make(shape, axis, np.float32, rng)
    c = shape[axis]
    bad = np.moveaxis(x, axis, 0)  # a view: bad[k] is channel k
    bad[0].flat[1] = np.nan
    if c > 1:
        bad[c - 1].flat[0] = np.inf
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis)
    dx, dgamma, _ = normax.batch_norm_backward(np.ones_like(x), cache)
    ym, dxm = np.moveaxis(y, axis, 0), np.moveaxis(dx, axis, 0)
    poisoned = [0, c - 1] if c > 1 else [0]
    for k in range(c):
        if k in poisoned:
            assert np.isnan(ym[k]).all() and np.isnan(dxm[k]).all()
            assert np.isnan(rv[k]) and not np.isfinite(rm[k])
        else:
            assert np.isfinite(ym[k]).all() and np.isfinite(dxm[k]).all()
            assert np.isfinite(rm[k]) and np.isfinite(rv[k]) and np.isfinite(dgamma[k])


def test_running_statistics_are_an_exponential_average(backend, rng):
    momentum, steps = 0.3, 5
    rm, rv = np.zeros(4), np.ones(4)
    want_m, want_v = np.zeros(4), np.ones(4)
    for _ in range(steps):
        x = rng.normal(2.0, 3.0, size=(10, 4, 3))
        normax.batch_norm_train(x, None, None, rm, rv, momentum=momentum)
        flat = np.moveaxis(x, 1, 0).reshape(4, -1)
        want_m = (1 - momentum) * want_m + momentum * flat.mean(axis=1)
        want_v = (1 - momentum) * want_v + momentum * flat.var(axis=1, ddof=1)
    np.testing.assert_allclose(rm, want_m, rtol=1e-12)
    np.testing.assert_allclose(rv, want_v, rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_bounds(backend, momentum, rng):
    x = rng.standard_normal((5, 2))
    rm, rv = np.full(2, 7.0), np.full(2, 9.0)
    normax.batch_norm_train(x, None, None, rm, rv, momentum=momentum)
    if momentum == 0.0:
        np.testing.assert_array_equal(rm, [7.0, 7.0])
        np.testing.assert_array_equal(rv, [9.0, 9.0])
    else:
        np.testing.assert_allclose(rm, x.mean(0), rtol=1e-13)
        np.testing.assert_allclose(rv, x.var(0, ddof=1), rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_infer_closed_form(backend, dtype, rng):
    x, gamma, beta = make((5, 3, 4), 1, dtype, rng)
    rm, rv = np.array([0.5, -1.0, 2.0], dtype), np.array([1.0, 4.0, 0.25], dtype)
    eps = 1e-3
    y = normax.batch_norm_infer(x, gamma, beta, rm, rv, eps=eps)
    shape = (1, 3, 1)
    want = gamma.reshape(shape) * (x - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + eps)
    assert_close(y, want + beta.reshape(shape), dtype)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_the_answer_much(backend, threads, rng):
    x, gamma, beta = make((257, 300), 1, np.float64, rng)
    previous = normax.get_num_threads()
    try:
        normax.set_num_threads(threads)
        y, cache = normax.batch_norm_train(x, gamma, beta)
        dx, _, _ = normax.batch_norm_backward(np.ones_like(x), cache)
    finally:
        normax.set_num_threads(0 if previous == normax.get_num_threads() else previous)
    y_ref, *_ = reference_train(x, 1, gamma, beta)
    assert_close(y, y_ref, np.float64)
    assert np.abs(dx).max() < 1e-9


@pytest.mark.parametrize("layout", ["NC-odd", "rows-parallel", "wide-rows-parallel", "NHWC"])
def test_float32_sums_do_not_overflow(backend, layout, rng):
    """float32 values near 1e20 square past float32's range; the sums must still be right."""
    shape, axis = LAYOUTS[layout]
    x = (rng.standard_normal(shape) * 1e20).astype(np.float32)
    dy = (rng.standard_normal(shape) * 1e20).astype(np.float32)
    c = shape[axis]
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    y_ref, *_ = reference_train(x, axis, gamma, beta)
    assert_close(y, y_ref, np.float32)
    dx, dgamma, _ = normax.batch_norm_backward(dy, cache)
    dx_ref, dg_ref, _ = ref.backward_by_axis(dy, x, axis % x.ndim, cache.mean, cache.invstd, gamma)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4 * np.abs(dx_ref).max())
    np.testing.assert_allclose(dgamma, dg_ref, rtol=1e-4)


@pytest.mark.parametrize("case", [((5000, 2048), 1), ((64, 41, 4000), 1)])
def test_outputs_larger_than_the_cache(case, rng):
    """Outputs above the last-level cache go through the streamed path of the C kernels, here
    into an `out` 4 bytes off 16-byte alignment."""
    if "c" not in normax.available_backends():
        pytest.skip("C backend not built")
    shape, axis = case
    x = rng.standard_normal(shape, dtype=np.float32)
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    out = np.empty(x.size + 1, np.float32)[1:].reshape(shape)
    previous = normax.get_backend()
    try:
        normax.set_backend("c")
        y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis, out=out)
        dx, _, _ = normax.batch_norm_backward(dy, cache, out=np.empty_like(x))
        yi = normax.batch_norm_infer(x, gamma, beta, cache.mean, 1 / cache.invstd**2 - 1e-5)
    finally:
        normax.set_backend(previous)
    y_ref, mean, invstd = ref.train_by_axis(x, axis, gamma, beta, None, None, 0.1, 1e-5, None)
    dx_ref, _, _ = ref.backward_by_axis(dy, x, axis, mean, invstd, gamma, None)
    assert_close(y, y_ref, np.float32)
    assert_close(yi, y_ref, np.float32, scale=5)
    assert_close(dx, dx_ref, np.float32)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        # inference streams outputs larger than the whole cache (at most 32 MiB)
        ((139264, 64), np.float32),  # 34 MiB of NHWC-like rows: streamed pieces in row order
        ((227003, 37), np.float32),  # odd channels: a partial vector at the end of every row
        ((2900003, 3), np.float32),  # rows of 12 bytes, sixteen at a time as rows of 192
        ((1450001, 3), np.float64),
        ((69632, 64), np.float64),
        ((4200, 2048), np.float32),  # wide rows: streamed tiles, by strips
        ((130, 64, 1024), np.float32),  # NCHW: whole runs a piece
        ((140, 64, 500), np.float64),  # NCHW: runs shorter than a piece, one a piece
        ((5, 64, 30001), np.float32),  # NCHW: runs longer than a piece, in slices
    ],
)
def test_streamed_inference_has_the_bits_of_small_calls(shape, dtype, rng):
    """Inference is element-wise: a call large enough to be streamed (rows through a buffer, runs
    straight from their loops, whole lines with non-temporal stores, in an order of their own)
    must give every sample the bits the same samples get from a small call, which runs by strips
    (a few rows) or in plain order."""
    if "c" not in normax.available_backends():
        pytest.skip("C backend not built")
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 0.5).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    mean, var = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    n = shape[0]
    previous = normax.get_backend()
    try:
        normax.set_backend("c")
        y = normax.batch_norm_infer(x, gamma, beta, mean, var)
        # every sample once, from calls of 1, 2, 3, ... samples and then a 32nd of the batch
        starts = {*np.cumsum(np.arange(10)).tolist(), *range(45, n, -(-n // 32)), n}
        bounds = sorted(b for b in starts if b <= n)
        for lo, hi in itertools.pairwise(bounds):
            part = normax.batch_norm_infer(x[lo:hi], gamma, beta, mean, var)
            np.testing.assert_array_equal(y[lo:hi], part, err_msg=f"samples {lo}:{hi}")
    finally:
        normax.set_backend(previous)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((130, 64, 1024), np.float32),  # runs of a few lines, two passes, streamed
        ((140, 64, 500), np.float64),  # runs that end inside a line
        ((4, 80, 16384), np.float32),  # 64 KiB runs: resident groups in the training forward
        ((110000, 64), np.float32),  # rows of whole lines: straight from their loops if aligned
        ((40000, 96), np.float64),  # the same in float64 (768-byte rows)
        ((150000, 40), np.float32),  # rows that end inside a line: their shared lines plain
        ((400000, 15), np.float32),  # rows of 60 bytes, sixteen at a time as rows of 960
        ((800003, 5), np.float32),  # rows of 20 bytes, as rows of 320 (and three of their own)
    ],
)
def test_streamed_outputs_have_the_bits_at_any_alignment(c_backend, shape, dtype, rng):
    """Streamed runs and rows write the whole 64-byte lines of their output with non-temporal
    stores and the partial lines with plain ones (or, for rows under 80 bytes that do not start
    every line, through a buffer). Where an output starts moves those boundaries; it must never
    move a bit: training forward, inference and backward into `out` at every element offset
    within a line give the bits of the call that allocates its own (line-aligned) outputs."""
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    mean, var = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    per_line = 64 // np.dtype(dtype).itemsize
    y, cache = normax.batch_norm_train(x, gamma, beta)
    yi = normax.batch_norm_infer(x, gamma, beta, mean, var)
    dx, _, _ = normax.batch_norm_backward(dy, cache)
    base = np.empty(x.size + per_line, dtype)
    for shift in range(per_line):
        out = base[shift : shift + x.size].reshape(shape)
        normax.batch_norm_train(x, gamma, beta, out=out)
        np.testing.assert_array_equal(out, y, err_msg=f"y, {shift} elements in")
        normax.batch_norm_infer(x, gamma, beta, mean, var, out=out)
        np.testing.assert_array_equal(out, yi, err_msg=f"inference, {shift} elements in")
        normax.batch_norm_backward(dy, cache, out=out)
        np.testing.assert_array_equal(out, dx, err_msg=f"dx, {shift} elements in")


# Rows of n channels against the same columns as the first n channels of rows of 1100: pass 1
# reads rows of 256 B (the forward) or 512 B (the backward) to 1 KiB in address order (a block of
# four row by row), other narrow rows as four rows side by side, and rows wider than 4 KiB by
# tiles that go by strips (eight rows in the forward, four in the backward).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [32, 37, 64, 128, 200, 256, 512])
def test_row_sums_have_the_bits_of_wide_rows(channels, dtype, rng):
    """Every way through pass 1's blocks of four rows must add a channel's column with the same
    expressions in the same order: the statistics, parameter gradients and outputs of the narrow
    columns must be the bits they get as part of wide rows, with the same rows on each thread."""
    if "c" not in normax.available_backends():
        pytest.skip("C backend not built")
    rows, wide = 4099, 1100  # one leftover row on each thread's share
    x = (rng.standard_normal((rows, wide)) * 3 + 50).astype(dtype)
    dy = rng.standard_normal((rows, wide)).astype(dtype)
    gamma, beta = rng.standard_normal(wide).astype(dtype), rng.standard_normal(wide).astype(dtype)

    def call(x, dy, gamma, beta):
        c = x.shape[1]
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv)
        return (y, cache.mean, cache.invstd, rm, rv, *normax.batch_norm_backward(dy, cache))

    previous = normax.get_backend()
    try:
        normax.set_backend("c")
        whole = call(x, dy, gamma, beta)
        n = channels
        part = call(x[:, :n].copy(), dy[:, :n].copy(), gamma[:n], beta[:n])
    finally:
        normax.set_backend(previous)
    names = ("y", "mean", "invstd", "running_mean", "running_var", "dx", "dgamma", "dbeta")
    for name, a, b in zip(names, whole, part, strict=True):
        np.testing.assert_array_equal(a[..., :n], b, err_msg=name)


# NCHW shapes that go group by group on any machine: inputs over 16 MiB (past the kernels'
# 32 MiB last-level cache budget), runs of 16 KiB or more (8 KiB would do only past that
# budget), and a channel's runs of dy and x within half of the smallest per-core L2 the
# kernels assume (256 KiB). With larger channels a
# machine with a smaller L2 splits the batch between the threads instead, whose last bits may
# differ, and the test would not test what it says ((3, 37, 20000) float64 did, on a 1 MiB L2).
# Three 16 KiB runs a channel: split in two by threads, a channel's sums would be associated
# differently, so only the groups pass.
@pytest.mark.parametrize(
    "shape, axis, dtype",
    [
        ((3, 400, 4096), 1, np.float32),
        ((37, 120001), 0, np.float32),  # the (C, m) layout: one run per channel, odd length
        ((3, 400, 2048), 1, np.float64),
    ],
)
def test_large_runs_give_the_same_bits_on_any_thread_count(shape, axis, dtype, rng):
    """Past the cache, channels whose runs fit the per-core cache a few at a time are finished
    group by group, each group by one thread: every output, statistic and gradient must be the
    same bits with one thread and with two, and right. One channel holds a NaN and one huge
    values, so the groups' non-finite and far-from-zero sums are covered too."""
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    index = [slice(None)] * x.ndim
    index[axis] = 4
    x[tuple(index)] *= 1e20
    index[axis] = 35
    x[tuple(index)][..., 7] = np.nan
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)

    def call():
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis)
        return (y, cache.mean, cache.invstd, rm, rv, *normax.batch_norm_backward(dy, cache))

    y, mean, invstd, rm, _, dx, dgamma, dbeta = same_bits_on_one_and_two_threads(call)
    finite = np.ones(c, bool)
    finite[35] = False
    assert np.isnan(y.take(35, axis)).all() and np.isnan(mean[35]) and np.isnan(rm[35])
    y_ref, mean_ref, invstd_ref = ref.train_by_axis(
        x, axis, gamma, beta, None, None, 0.1, 1e-5, None
    )
    keep = np.flatnonzero(finite)
    assert_close(y.take(keep, axis), y_ref.take(keep, axis), dtype)
    np.testing.assert_allclose(mean[finite], mean_ref[finite], rtol=1e-12)
    np.testing.assert_allclose(invstd[finite], invstd_ref[finite], rtol=1e-10)
    dx_ref, dg_ref, db_ref = ref.backward_by_axis(dy, x, axis, mean, invstd, gamma, None)
    assert_close(dx.take(keep, axis), dx_ref.take(keep, axis), dtype)
    np.testing.assert_allclose(dbeta, db_ref, rtol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(
        dgamma[finite], dg_ref[finite], rtol=1e-4 if dtype == np.float32 else 1e-10
    )


# Backwards with dy and x over twice the last-level cache (64 MiB at most) whose channel's dy and
# x are too large for a resident group (over half the per-core L2 the kernels assume, at most
# 2 MiB) go by team groups, every thread on each group, when the threads can share the batch
# evenly (at most 1/8 more rows for one) and two groups of a thread's runs fit half the last-level
# cache (8 MiB or more assumed). The first three shapes' channels of 2 MiB and more do on any
# machine: one channel a group, 64 KiB runs (float32, seventeen rows shared nine and eight;
# float64). The last one's 1 MiB channels do where L2 is under 2 MiB (elsewhere they take
# resident groups, same bits too): with eight threads, two channels a group (16 KiB runs, a last
# group of one).
@pytest.mark.parametrize(
    "shape, dtype, many",
    [
        ((16, 40, 16384), np.float32, None),
        ((17, 40, 16384), np.float32, None),
        ((32, 24, 8192), np.float64, None),
        ((32, 81, 4096), np.float32, 8),
    ],
)
def test_team_backward_gives_the_same_bits_on_any_thread_count(shape, dtype, many, rng):
    """A team group's runs are summed apart and added in batch order by every thread, so dx,
    dgamma and dbeta must be the same bits with one thread, with two (and with ``many``), and
    right, including a channel of huge values and one holding a NaN."""
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    x[:, 4] *= 1e20
    x[:, c - 2, 7] = np.nan
    gamma, beta = rng.standard_normal((2, c)).astype(dtype)
    _, cache = normax.batch_norm_train(x, gamma, beta)
    dx, dgamma, dbeta = same_bits_on_one_and_two_threads(
        lambda: normax.batch_norm_backward(dy, cache), also=(many,) if many else ()
    )
    assert np.isnan(dx[:, c - 2]).all() and np.isnan(dgamma[c - 2])
    keep = np.r_[0 : c - 2, c - 1]
    dx_ref, dg_ref, db_ref = ref.backward_by_axis(dy, x, 1, cache.mean, cache.invstd, gamma, None)
    assert_close(dx[:, keep], dx_ref[:, keep], dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(dgamma[keep], dg_ref[keep], rtol=tol)
    np.testing.assert_allclose(dbeta, db_ref, rtol=tol)


@pytest.mark.parametrize("shape, axis", [((32, 64), 1), ((4, 3, 5), -1), ((2, 3, 4, 4), 1)])
def test_fast_path_cache_is_a_plain_named_tuple(backend, shape, axis, rng):
    """The front door fills the cache in place: it must be indistinguishable from one built by
    the named tuple's constructor, and hold (not leak) exactly one reference to each input."""
    x = rng.standard_normal(shape).astype(np.float32)
    gamma = np.ones(x.shape[axis], np.float32)
    before = sys.getrefcount(x), sys.getrefcount(gamma)
    _, cache = normax.batch_norm_train(x, gamma, None, axis=axis)
    assert type(cache) is BatchNormCache and len(cache) == 5
    assert cache == BatchNormCache(*cache) and pickle.loads(pickle.dumps(cache))._fields
    assert cache.x is x and cache.gamma is gamma
    assert type(cache.axis) is int and cache.axis == axis % x.ndim
    assert gc.is_tracked(cache)
    with pytest.raises(TypeError, match="unhashable"):  # no stale cached hash (3.14 caches it)
        hash(cache)
    assert (sys.getrefcount(x), sys.getrefcount(gamma)) == (before[0] + 1, before[1] + 1)
    del cache
    assert (sys.getrefcount(x), sys.getrefcount(gamma)) == before
