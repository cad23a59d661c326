"""Softmax, log-softmax and softmax cross-entropy on every backend against the NumPy reference.

The reference is the NumPy backend run on a float64 copy of the input; it is itself checked
against finite differences (test_softmax_grad.py) and PyTorch (test_softmax_torch.py).
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import normax

# Same per-dtype tolerances as conftest.TOL (test modules cannot import conftest under
# --import-mode=importlib).
TOL = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-5},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-12},
}

DTYPES = [np.float32, np.float64]

# name -> (shape, axis, non-contiguous view?)
LAYOUTS = {
    "nc": ((6, 37), -1),
    "nc-small": ((5, 3), -1),
    "nchw": ((2, 5, 3, 4), 1),
    "cm": ((7, 40), 0),
    "nhwc": ((2, 3, 4, 20), -1),
}

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": -100},
    "ignore-in-range": {"ignore_index": 2},
    "smooth": {"label_smoothing": 0.1},
    "all": {"weight": True, "ignore_index": -100, "label_smoothing": 0.2},
    "probs": {"probs": True},
    "probs-weight-smooth": {"probs": True, "weight": True, "label_smoothing": 0.3},
}


def make_logits(rng, shape, dtype, *, noncontig=False, scale=3.0):
    z = rng.standard_normal(shape) * scale
    if noncontig:  # a strided view of the same values
        big = np.zeros((*shape[:-1], 2 * shape[-1]))
        big[..., ::2] = z
        return big.astype(dtype)[..., ::2]
    return z.astype(dtype)


def make_target(rng, z, axis, opts):
    c = z.shape[axis]
    if opts.get("probs"):
        q = rng.random(z.shape) + 0.05
        return (q / q.sum(axis=axis, keepdims=True)).astype(z.dtype)
    rest = tuple(s for k, s in enumerate(z.shape) if k != axis % z.ndim)
    y = rng.integers(0, c, size=rest)
    if "ignore_index" in opts:
        y.reshape(-1)[::3] = opts["ignore_index"]
    return y


def xent_kwargs(rng, c, opts):
    kw = {k: v for k, v in opts.items() if k in ("ignore_index", "label_smoothing")}
    if opts.get("weight"):
        kw["weight"] = rng.random(c) + 0.25
    return kw


def reference(fn, *arrays, **kw):
    """``fn`` on the NumPy backend with float arrays promoted to float64."""
    previous = normax.get_backend()
    normax.set_backend("numpy")
    try:
        args = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
        return fn(*args, **kw)
    finally:
        normax.set_backend(previous)


def assert_close(actual, expected, dtype, scale=1.0):
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [*LAYOUTS, "noncontig"])
@pytest.mark.parametrize("fn", [normax.softmax, normax.log_softmax])
def test_forward_matches_reference(backend, rng, fn, layout, dtype):
    shape, axis = LAYOUTS.get(layout, ((9, 21), -1))
    z = make_logits(rng, shape, dtype, noncontig=layout == "noncontig")
    got = fn(z, axis)
    assert got.dtype == z.dtype and got.shape == z.shape and got.flags.c_contiguous
    assert_close(got, reference(fn, z, axis=axis), dtype, scale=10.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [*LAYOUTS, "noncontig"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", OPTIONS)
def test_xent_matches_reference(backend, rng, option, reduction, layout, dtype):
    shape, axis = LAYOUTS.get(layout, ((9, 21), -1))
    opts = OPTIONS[option]
    z = make_logits(rng, shape, dtype, noncontig=layout == "noncontig")
    target = make_target(rng, z, axis, opts)
    kw = xent_kwargs(rng, z.shape[axis], opts)
    loss, dz = normax.softmax_cross_entropy(z, target, axis=axis, reduction=reduction, **kw)
    ref_loss, ref_dz = reference(
        normax.softmax_cross_entropy, z, target, axis=axis, reduction=reduction, **kw
    )
    assert dz.dtype == z.dtype and dz.shape == z.shape
    if reduction == "none":
        assert loss.dtype == z.dtype and loss.shape == ref_loss.shape
        assert_close(loss, ref_loss, dtype, scale=10.0)
    else:
        assert type(loss) is float
        assert_close(loss, ref_loss, dtype, scale=10.0)
    assert_close(dz, ref_dz, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nc", "nchw", "cm", "noncontig"])
@pytest.mark.parametrize("log", [False, True])
def test_backward_matches_reference(backend, rng, log, layout, dtype):
    shape, axis = LAYOUTS.get(layout, ((9, 21), -1))
    z = make_logits(rng, shape, dtype, noncontig=layout == "noncontig")
    g = rng.standard_normal(shape).astype(dtype)
    fwd, bwd = (
        (normax.log_softmax, normax.log_softmax_backward)
        if log
        else (normax.softmax, normax.softmax_backward)
    )
    y = reference(fwd, z, axis=axis).astype(dtype)
    got = bwd(g, y, axis)
    assert got.dtype == z.dtype
    assert_close(got, reference(bwd, g, y, axis=axis), dtype, scale=10.0)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((3, 300, 40), 1), ((2, 3000, 20), 1), ((1, 17, 700), 1), ((300, 200), -1), ((70, 1000), 0)],
)
def test_threaded_and_blocked_paths(backend, rng, shape, axis):
    """Inputs large enough for several threads and several column blocks."""
    z = make_logits(rng, shape, np.float32)
    w = rng.random(z.shape[axis]) + 0.5
    for opts, kw in (
        ({}, {}),
        ({"ignore_index": -1}, {"weight": w, "ignore_index": -1, "label_smoothing": 0.05}),
    ):
        y = make_target(rng, z, axis, opts)
        loss, dz = normax.softmax_cross_entropy(z, y, axis=axis, **kw)
        ref_loss, ref_dz = reference(normax.softmax_cross_entropy, z, y, axis=axis, **kw)
        assert_close(loss, ref_loss, np.float32)
        assert_close(dz, ref_dz, np.float32)
    assert_close(normax.log_softmax(z, axis), reference(normax.log_softmax, z, axis=axis),
                 np.float32, scale=10.0)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_receives_result(backend, rng, dtype):
    z = make_logits(rng, (4, 6), dtype)
    out = np.empty_like(z)
    assert normax.softmax(z, out=out) is out
    assert normax.log_softmax_backward(z, z, out=out) is out
    _loss, dz = normax.softmax_cross_entropy(z, np.arange(4), out=out)
    assert dz is out
    np.testing.assert_array_equal(out, normax.softmax_cross_entropy(z, np.arange(4))[1])


@pytest.mark.parametrize(
    "tdtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64]
)
def test_any_integer_label_dtype(backend, rng, tdtype):
    z = make_logits(rng, (5, 7), np.float64)
    y = np.array([0, 6, 3, 2, 1])
    expected = normax.softmax_cross_entropy(z, y, reduction="none")
    got = normax.softmax_cross_entropy(z, y.astype(tdtype), reduction="none")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_one_hot_probabilities_equal_labels(backend, rng):
    """The course-notes layout: (C, m) logits with a one-hot Y equals integer labels."""
    z = make_logits(rng, (10, 64), np.float64)
    y = rng.integers(0, 10, 64)
    onehot = np.eye(10)[:, y]
    a = normax.softmax_cross_entropy(z, onehot, axis=0)
    b = normax.softmax_cross_entropy(z, y, axis=0)
    assert math.isclose(a[0], b[0], rel_tol=1e-13)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero(backend, rng, reduction):
    """Deliberate difference from torch: all-ignored "mean" is 0.0 with a zero gradient."""
    z = make_logits(rng, (4, 5), np.float32)
    loss, dz = normax.softmax_cross_entropy(
        z, np.full(4, -100), ignore_index=-100, reduction=reduction
    )
    assert np.all(loss == 0.0)
    assert not dz.any()


def test_single_class(backend):
    loss, dz = normax.softmax_cross_entropy(np.array([[3.0], [-2.0]]), np.array([0, 0]))
    assert loss == 0.0 and not dz.any()
    np.testing.assert_array_equal(normax.softmax(np.array([[3.0], [-2.0]])), [[1.0], [1.0]])


@pytest.mark.skipif("c" not in normax.available_backends(), reason="needs the C extension")
@pytest.mark.parametrize("n", [1, 15, 16, 33])
@pytest.mark.parametrize("kw", [{}, {"ignore_index": -1, "reduction": "none"},
                                {"label_smoothing": 0.3, "reduction": "sum"}])  # fmt: skip
def test_fast_path_equals_checked_path(rng, n, kw):
    """The compiled front door (common calls) and the checker give identical results,
    including the grouped kernel for few classes (groups of 16 rows, padded)."""
    checker = importlib.import_module("normax._softmax_check")
    previous = normax.get_backend()
    normax.set_backend("c")
    try:
        for c in (3, 10, 40):
            z = make_logits(rng, (n, c), np.float32)
            y = rng.integers(0, c, n)
            y[::4] = -1 if "ignore_index" in kw else y[::4]
            fast = normax.softmax_cross_entropy(z, y, **kw)
            checked = checker.softmax_cross_entropy(z, y, **kw)
            np.testing.assert_array_equal(fast[0], checked[0])
            np.testing.assert_array_equal(fast[1], checked[1])
            ref = reference(normax.softmax_cross_entropy, z, y, **kw)
            assert_close(fast[0], ref[0], np.float32, scale=10.0)
            assert_close(fast[1], ref[1], np.float32)
    finally:
        normax.set_backend(previous)


def test_fast_path_declines_unusual_arguments(rng):
    """Arguments the fast path does not take still work (or fail) through the checked path."""
    z = make_logits(rng, (4, 5), np.float64)
    y = np.array([0, 1, 2, 3])
    base = normax.softmax_cross_entropy(z, y)
    for kw in ({"axis": np.int64(-1)}, {"label_smoothing": 0}, {"ignore_index": np.int8(-1)},
               {"weight": np.ones(5)}):  # fmt: skip
        got = normax.softmax_cross_entropy(z, y, **kw)
        assert got[0] == base[0]
        np.testing.assert_array_equal(got[1], base[1])
    buf = np.zeros(40)
    with pytest.raises(ValueError, match="out overlaps target"):
        normax.softmax_cross_entropy(z, buf[:4].view(np.int64), out=buf[:20].reshape(4, 5))


def test_docstring_examples_run():
    import doctest

    module = importlib.import_module("normax.softmax")
    assert doctest.testmod(module).failed == 0
