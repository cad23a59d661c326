"""Semantics the one contract settles, on every backend, checked against PyTorch when installed.

Before the front doors, backends disagreed here (or normax differed from PyTorch): eps=0 in
training, zero-size inputs, a 0-d softmax, an empty cross-entropy batch, float64 batch norm of
values near 1e300, cross-entropy weights whose sum overflows, a running buffer aliasing gamma.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax


def _torch():
    return pytest.importorskip("torch")


# ---- batch norm --------------------------------------------------------------------------------


def test_eps_zero_refused_in_training(backend):
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"^eps must be positive during training, got 0\.0$"):
        normax.batch_norm_train(x, None, None, eps=0.0)
    y = normax.batch_norm_infer(x, None, None, np.zeros(3), np.ones(3), eps=0.0)
    np.testing.assert_array_equal(y, x)


def test_eps_zero_refused_by_torch_too():
    torch = _torch()
    with pytest.raises(ValueError, match="eps must be positive during training"):
        torch.nn.functional.batch_norm(torch.ones(4, 3), None, None, training=True, eps=0.0)


@pytest.mark.parametrize("shape, axis", [((0, 3), 1), ((0, 3, 5), 1), ((4, 3, 0), 1),
                                         ((0, 3), -1), ((3, 0), 0)])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_empty_batch(backend, shape, axis, dtype):
    x = np.ones(shape, dtype)
    c = shape[axis]
    gamma, beta = np.full(c, 2.0, dtype), np.full(c, 0.5, dtype)
    rm, rv = np.full(c, 3.0, dtype), np.full(c, 4.0, dtype)
    y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(rm, 3.0)  # running statistics untouched
    np.testing.assert_array_equal(rv, 4.0)
    dx, dgamma, dbeta = normax.batch_norm_backward(np.ones_like(x), cache)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dgamma, np.zeros(c, dtype))
    np.testing.assert_array_equal(dbeta, np.zeros(c, dtype))
    assert normax.batch_norm_infer(x, gamma, beta, rm, rv, axis=axis).shape == x.shape


def test_batch_norm_no_channels(backend):
    x = np.ones((4, 0), np.float32)
    y, cache = normax.batch_norm_train(x, None, None)
    assert y.shape == (4, 0) and cache.mean.shape == (0,)
    assert normax.batch_norm_backward(np.ones_like(x), cache)[0].shape == (4, 0)


def test_batch_norm_empty_batch_as_torch():
    torch = _torch()
    x = np.ones((0, 3), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    tg = torch.ones(3, requires_grad=True)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tg, torch.zeros(3), training=True)
    ty.sum().backward()
    y, cache = normax.batch_norm_train(x, np.ones(3, np.float32), np.zeros(3, np.float32), rm, rv)
    _, dgamma, _ = normax.batch_norm_backward(np.ones_like(x), cache)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(rm, trm.numpy())
    np.testing.assert_array_equal(rv, trv.numpy())
    np.testing.assert_array_equal(dgamma, tg.grad.numpy())


def test_batch_norm_overflowing_squares_same_everywhere(backend):
    """float64 values near 1e300: the squares overflow, the variance is inf, y is 0 (C and
    NumPy gave 0, Numba NaN)."""
    x = np.array([[1e300, 5.0], [-1e300, 6.0], [1e300, 7.0], [-1e300, 8.0]])
    y, cache = normax.batch_norm_train(x, None, None)
    np.testing.assert_array_equal(y[:, 0], 0.0)
    assert cache.invstd[0] == 0.0 and np.isfinite(y).all()


@pytest.mark.parametrize("buffer", ["running_mean", "running_var"])
@pytest.mark.parametrize("param", ["gamma", "beta"])
def test_running_buffer_aliasing_a_parameter_refused(backend, buffer, param):
    x = np.random.default_rng(0).normal(size=(8, 3))
    args = {"gamma": np.ones(3), "beta": np.zeros(3),
            "running_mean": np.zeros(3), "running_var": np.ones(3)}  # fmt: skip
    args[buffer] = args[param]
    before = args[param].copy()
    with pytest.raises(ValueError, match=f"^{buffer} overlaps {param}; pass a separate array$"):
        normax.batch_norm_train(x, **args)
    np.testing.assert_array_equal(args[param], before)


# ---- softmax and cross-entropy -----------------------------------------------------------------


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, axis", [((0, 3), -1), ((3, 0), -1), ((2, 0, 4), 1), ((0,), 0)])
def test_softmax_empty(backend, fn, shape, axis):
    z = np.ones(shape, np.float32)
    p = getattr(normax, fn)(z, axis=axis)
    assert p.shape == z.shape and p.dtype == z.dtype
    assert getattr(normax, f"{fn}_backward")(p, p, axis=axis).shape == z.shape


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_0d(backend, axis):
    z = np.array(2.5, np.float32)
    p, lp = normax.softmax(z, axis=axis), normax.log_softmax(z, axis=axis)
    assert p.shape == () and p.dtype == np.float32 and p == 1.0
    assert lp.shape == () and lp == 0.0
    assert normax.softmax_backward(np.array(3.0, np.float32), p, axis=axis) == 0.0
    assert normax.log_softmax_backward(np.array(3.0, np.float32), lp, axis=axis) == 0.0


def test_softmax_empty_and_0d_as_torch():
    torch = _torch()
    for z, dim in ((np.ones((0, 3)), 1), (np.ones((3, 0)), 1), (np.array(2.5), 0)):
        for ours, theirs in ((normax.softmax, torch.softmax), (normax.log_softmax,
                                                               torch.log_softmax)):
            t = theirs(torch.from_numpy(z), dim).numpy()
            got = ours(z, axis=dim)
            assert got.shape == t.shape
            np.testing.assert_array_equal(got, t)


@pytest.mark.parametrize("target", ["labels", "probs"])
def test_cross_entropy_empty_batch(backend, target):
    z = np.ones((0, 4), np.float32)
    t = np.zeros(0, np.int64) if target == "labels" else np.ones((0, 4), np.float32)
    for reduction, want in (("mean", 0.0), ("sum", 0.0)):
        loss, dz = normax.softmax_cross_entropy(z, t, reduction=reduction)
        assert loss == want and type(loss) is float and dz.shape == z.shape
    loss, dz = normax.softmax_cross_entropy(z, t, reduction="none")
    assert loss.shape == (0,) and loss.dtype == np.float32


def test_cross_entropy_empty_batch_as_torch():
    """"sum" equals PyTorch; "mean" is 0.0 where PyTorch gives NaN (the documented
    all-ignored rule)."""
    torch = _torch()
    tz, tt = torch.ones(0, 4), torch.zeros(0, dtype=torch.long)
    assert torch.nn.functional.cross_entropy(tz, tt, reduction="sum").item() == 0.0
    assert np.isnan(torch.nn.functional.cross_entropy(tz, tt).item())
    assert normax.softmax_cross_entropy(np.ones((0, 4)), np.zeros(0, int))[0] == 0.0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_weight_sum_overflow_same_everywhere(backend, smoothing):
    """Weights whose sum overflows: the weighted mean is that of the scaled weights (C gave a
    zero gradient, Numba and NumPy NaN)."""
    z = np.random.default_rng(0).normal(size=(4, 3))
    labels = np.array([0, 1, 2, 0])
    loss, dz = normax.softmax_cross_entropy(z, labels, weight=np.full(3, 1e308),
                                            label_smoothing=smoothing)
    ref_loss, ref_dz = normax.softmax_cross_entropy(z, labels, label_smoothing=smoothing)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-14)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-13, atol=1e-16)
