"""Batch-norm gradients by finite differences, property tests, and PyTorch as an oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import normax
from normax import _batchnorm_numpy as ref

# Small shapes for every layout: each needs 2 * size forward calls.
FD_LAYOUTS = {
    "NC": ((5, 3), 1),
    "NCHW": ((3, 2, 2, 3), 1),
    "NHWC": ((2, 3, 2, 2), -1),
    "C,m": ((3, 6), 0),
    "middle": ((2, 3, 2, 2), 2),
    "N=2": ((2, 4), 1),
}


def _loss(x, gamma, beta, w, axis):
    y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    return float(np.sum(y * w)), cache


def _numeric_grad(f, a, h=1e-6):
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * h)
    return g


@pytest.mark.parametrize("layout", FD_LAYOUTS)
def test_backward_is_the_gradient(backend, layout):
    shape, axis = FD_LAYOUTS[layout]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * 1.5 + 0.3
    c = shape[axis]
    gamma, beta = rng.standard_normal(c) + 1.0, rng.standard_normal(c)
    w = rng.standard_normal(shape)  # loss = sum(w * y), so dy = w

    def f():
        return _loss(x, gamma, beta, w, axis)[0]

    _, cache = _loss(x, gamma, beta, w, axis)
    dx, dgamma, dbeta = normax.batch_norm_backward(w, cache)
    np.testing.assert_allclose(dx, _numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, _numeric_grad(f, gamma), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, _numeric_grad(f, beta), rtol=1e-5, atol=1e-7)


# ---- hypothesis ----------------------------------------------------------------------------


@st.composite
def batches(draw):
    ndim = draw(st.integers(2, 4))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    other = (axis + 1) % ndim  # training needs 2 values per channel: widen another axis
    shape[other] = max(shape[other], 2)
    shape = tuple(shape)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    center = draw(st.sampled_from([0.0, 1e3, -3e4]))
    elements = st.floats(-100, 100, allow_nan=False, width=32)
    x = draw(hnp.arrays(dtype, shape, elements=elements)) + dtype(center)
    return x, axis


@settings(max_examples=60, deadline=None)
@given(batches())
def test_backends_agree_with_reference(case):
    x, axis = case
    c = x.shape[axis]
    gamma = np.linspace(0.5, 2.0, c).astype(x.dtype)
    beta = np.linspace(-1.0, 1.0, c).astype(x.dtype)
    dy = np.cos(np.arange(x.size)).reshape(x.shape).astype(x.dtype)
    y_ref, mean, invstd = ref.train_by_axis(
        np.ascontiguousarray(x), axis % x.ndim, gamma, beta, None, None, 0.1, 1e-3, None
    )
    dx_ref, _, _ = ref.backward_by_axis(
        dy, np.ascontiguousarray(x), axis % x.ndim, mean, invstd, gamma, None
    )
    # scale tolerances by invstd: a near-constant channel magnifies input rounding
    tol = (1e-4 if x.dtype == np.float32 else 1e-9) * max(1.0, float(invstd.max()))
    previous = normax.get_backend()
    try:
        for name in normax.available_backends():
            normax.set_backend(name)
            y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis, eps=1e-3)
            dx, _, _ = normax.batch_norm_backward(dy, cache)
            np.testing.assert_allclose(y, y_ref, atol=tol, rtol=tol, err_msg=name)
            np.testing.assert_allclose(
                dx, dx_ref, atol=tol * float(invstd.max()), rtol=tol, err_msg=name
            )
    finally:
        normax.set_backend(previous)


@settings(max_examples=40, deadline=None)
@given(batches())
def test_normalized_output_has_zero_mean_unit_variance(case):
    x, axis = case
    c = x.shape[axis]
    y, _ = normax.batch_norm_train(x, None, None, axis=axis, eps=1e-12)
    xs = np.moveaxis(x.astype(np.float64), axis, 0).reshape(c, -1)
    ys = np.moveaxis(y.astype(np.float64), axis, 0).reshape(c, -1)
    ok = xs.var(axis=1) > 1e-2  # channels with a spread well above rounding and eps
    tol = 1e-3 if x.dtype == np.float32 else 1e-9
    assert np.all(np.abs(ys[ok].mean(axis=1)) < tol)
    assert np.all(np.abs(ys[ok].var(axis=1) - 1.0) < tol)


# ---- PyTorch as an oracle ------------------------------------------------------------------

TORCH_LAYOUTS = {"NC": ((16, 7), 1), "NCL": ((4, 5, 9), 1), "NCHW": ((3, 4, 5, 6), 1)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", TORCH_LAYOUTS)
def test_matches_torch(backend, layout, dtype):
    torch = pytest.importorskip("torch")
    shape, axis = TORCH_LAYOUTS[layout]
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    c = shape[axis]
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    tx = torch.tensor(x, requires_grad=True)
    tg, tb = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    trm, trv = torch.zeros(c, dtype=tx.dtype), torch.ones(c, dtype=tx.dtype)
    for step in range(3):  # running statistics over several steps
        y, cache = normax.batch_norm_train(x + step, gamma, beta, rm, rv, momentum=0.2)
        ty = torch.nn.functional.batch_norm(
            tx + step, trm, trv, tg, tb, training=True, momentum=0.2, eps=1e-5
        )
    ty.backward(torch.tensor(dy))
    dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(rm, trm.numpy(), **tol)
    np.testing.assert_allclose(rv, trv.numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), **tol)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), **tol)
    yi = normax.batch_norm_infer(x, gamma, beta, rm, rv)
    tyi = torch.nn.functional.batch_norm(
        torch.tensor(x), trm, trv, tg.detach(), tb.detach(), training=False, eps=1e-5
    )
    np.testing.assert_allclose(yi, tyi.numpy(), **tol)
