"""Numerical behaviour of the softmax family: extreme logits, NaN / inf isolation, float32
accuracy, gradients by central finite differences and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import normax

XENT = normax.softmax_cross_entropy


def on_backends(fn):
    """``{backend: fn()}`` over every available backend."""
    previous = normax.get_backend()
    try:
        results = {}
        for name in normax.available_backends():
            normax.set_backend(name)
            results[name] = fn()
        return results
    finally:
        normax.set_backend(previous)


def test_tie_of_huge_float32_logits_keeps_log2(backend):
    z = np.array([[3e29, 3e29], [1e30, 1e30]], dtype=np.float32)
    np.testing.assert_allclose(normax.log_softmax(z), -math.log(2.0), rtol=1e-7)
    np.testing.assert_array_equal(normax.softmax(z), 0.5)
    loss, dz = XENT(z, np.array([0, 1]))
    assert math.isclose(loss, math.log(2.0), rel_tol=1e-7)
    np.testing.assert_allclose(dz, [[-0.25, 0.25], [0.25, -0.25]], rtol=1e-7)


@pytest.mark.parametrize(("dtype", "big"), [(np.float32, 1e30), (np.float64, 1e300)])
def test_huge_logits_are_finite_and_exact(backend, dtype, big):
    z = np.array([[big, -big, big / 2], [-big, -big, big]], dtype=dtype)
    lp = normax.log_softmax(z)
    np.testing.assert_array_equal(lp, z - z.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(normax.softmax(z), [[1, 0, 0], [0, 0, 1]])
    loss, dz = XENT(z, np.array([1, 2]), reduction="none")
    np.testing.assert_array_equal(loss, np.array([z[0, 0] - z[0, 1], 0.0], dtype=dtype))
    np.testing.assert_array_equal(dz, [[1, -1, 0], [0, 0, 0]])
    loss, dz = XENT(z, np.array([1, 2]), axis=-1, label_smoothing=0.1)
    assert math.isfinite(loss) and np.isfinite(dz).all()


def test_dominating_class_keeps_its_tiny_loss(backend):
    z = np.array([[100.0, 0.0], [0.0, 100.0]])
    tiny = math.exp(-100.0)
    loss, dz = XENT(z, np.array([0, 1]), reduction="none")
    np.testing.assert_allclose(loss, tiny, rtol=1e-14)
    np.testing.assert_allclose(dz, [[-tiny, tiny], [tiny, -tiny]], rtol=1e-14)
    np.testing.assert_allclose(
        normax.log_softmax(z), [[-tiny, -100.0], [-100.0, -tiny]], rtol=1e-14
    )
    # The same with the class axis first (column-block kernel).
    loss, dz = XENT(np.ascontiguousarray(z.T), np.array([0, 1]), axis=0, reduction="sum")
    assert math.isclose(loss, 2 * tiny, rel_tol=1e-14)


@pytest.mark.parametrize(("shape", "axis"), [((64, 300), -1), ((4, 30, 50), 1), ((200, 40), 0)])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1, "weight": "w"}])
def test_float32_agrees_with_float64(backend, rng, shape, axis, kw):
    z64 = rng.standard_normal(shape) * 8
    z32 = z64.astype(np.float32)
    c = shape[axis]
    y = rng.integers(0, c, size=tuple(s for k, s in enumerate(shape) if k != axis % len(shape)))
    if kw.get("weight"):
        kw = {**kw, "weight": rng.random(c) + 0.5}
    for red in ("sum", "none"):
        l32, d32 = XENT(z32, y, axis=axis, reduction=red, **kw)
        l64, d64 = XENT(z32.astype(np.float64), y, axis=axis, reduction=red, **kw)
        np.testing.assert_allclose(l32, l64, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=1e-7)
    for fn in (normax.softmax, normax.log_softmax):
        np.testing.assert_allclose(fn(z32, axis), fn(z32.astype(np.float64), axis), rtol=1e-5,
                                   atol=1e-7)  # fmt: skip


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [-1, 0])
def test_nan_or_inf_poisons_only_its_row(backend, rng, bad, dtype, axis):
    z = rng.standard_normal((5, 40)).astype(dtype)
    z[2, 7] = bad
    z[3, 1] = -np.inf  # -inf is a legitimate logit: probability 0
    if axis == 0:
        z = np.ascontiguousarray(z.T)
    y = np.arange(5) % 3
    examples = lambda a: a if axis == -1 else a.T  # noqa: E731
    for fn in (normax.softmax, normax.log_softmax):
        out = examples(fn(z, axis))
        assert np.isnan(out[2]).all()
        assert not np.isnan(np.delete(out, 2, axis=0)).any()
    loss, dz = XENT(z, y, axis=axis, reduction="none")
    assert np.isnan(loss[2]) and np.isfinite(np.delete(loss, 2)).all()
    dz = examples(dz)
    assert np.isnan(dz[2]).all() and np.isfinite(np.delete(dz, 2, axis=0)).all()
    assert examples(normax.softmax(z, axis))[3, 1] == 0.0
    assert math.isnan(XENT(z, y, axis=axis)[0])


# ------------------------------------------------------------------ finite differences

FD_CASES = {
    "nc": ((3, 5), -1),
    "nchw": ((2, 3, 2, 2), 1),
    "cm": ((4, 3), 0),
}
FD_OPTIONS = [
    {},
    {"weight": [0.5, 1.0, 2.0], "ignore_index": 1, "label_smoothing": 0.2},
    {"probs": True, "weight": [0.5, 1.0, 2.0], "label_smoothing": 0.3},
]


def central_difference(f, z, h=1e-6):
    g = np.empty_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (f(zp) - f(zm)) / (2 * h)
    return g


@pytest.mark.parametrize("layout", FD_CASES)
@pytest.mark.parametrize("opts", FD_OPTIONS, ids=["plain", "weight-ignore-smooth", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_xent_gradient_by_finite_differences(backend, rng, layout, opts, reduction):
    shape, axis = FD_CASES[layout]
    z = rng.standard_normal(shape)
    c = shape[axis]
    kw = {k: v for k, v in opts.items() if k != "probs"}
    if "weight" in kw:
        kw["weight"] = np.resize(kw["weight"], c)
    if opts.get("probs"):
        q = rng.random(shape)
        target = q / q.sum(axis=axis, keepdims=True)
    else:
        target = rng.integers(0, c, size=tuple(s for k, s in enumerate(shape) if k != axis % 2))
        if "ignore_index" in kw:
            target.reshape(-1)[0] = kw["ignore_index"]
    total = lambda zz: float(np.sum(XENT(zz, target, axis=axis, reduction=reduction, **kw)[0]))  # noqa: E731
    _, dz = XENT(z, target, axis=axis, reduction=reduction, **kw)
    np.testing.assert_allclose(dz, central_difference(total, z), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("layout", FD_CASES)
@pytest.mark.parametrize("log", [False, True])
def test_backward_by_finite_differences(backend, rng, layout, log):
    shape, axis = FD_CASES[layout]
    z, g = rng.standard_normal(shape), rng.standard_normal(shape)
    fwd = normax.log_softmax if log else normax.softmax
    bwd = normax.log_softmax_backward if log else normax.softmax_backward
    numeric = central_difference(lambda zz: float(np.sum(g * fwd(zz, axis))), z)
    np.testing.assert_allclose(bwd(g, fwd(z, axis), axis), numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ hypothesis properties

# Multiples of 1/64 below 1e4: adding a small integer shift is exact in float32 too.
logit_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
    elements=st.integers(-640_000, 640_000).map(lambda k: k / 64),
)


@settings(max_examples=60, deadline=None)
@given(z=logit_arrays, data=st.data())
def test_softmax_properties(z, data):
    axis = data.draw(st.integers(-z.ndim, z.ndim - 1), label="axis")
    shift = z.dtype.type(data.draw(st.integers(-64, 64), label="shift"))
    tol = 2e-6 if z.dtype == np.float32 else 1e-13

    def run():
        return normax.softmax(z, axis), normax.softmax(z + shift, axis), normax.log_softmax(z, axis)

    for name, (p, shifted, lp) in on_backends(run).items():
        np.testing.assert_allclose(p.sum(axis=axis, dtype=np.float64), 1.0, rtol=tol, err_msg=name)
        np.testing.assert_allclose(shifted, p, rtol=tol * 10, atol=tol, err_msg=name)
        finite = p > np.finfo(z.dtype).tiny
        np.testing.assert_allclose(
            lp[finite], np.log(p[finite]), rtol=tol * 10, atol=tol * 10, err_msg=name
        )
        assert (lp <= 0).all(), name


@pytest.mark.parametrize("c", [1, 2, 7, 10, 16])
@pytest.mark.parametrize("n", [1, 15, 16, 33])
@pytest.mark.parametrize("ignore", [False, True])
def test_plain_small_rows_equal_unit_weights_bit_for_bit(c_backend, rng, c, n, ignore):
    """Few-class float32 rows with plain integer labels run a group kernel of their own; with
    weights of exactly 1 the general kernel runs the same arithmetic, so both give the same bits
    (ties, a dominating class and huge logits included)."""
    z = (rng.standard_normal((n, c)) * 30).astype(np.float32)
    z[0] = 3e29  # a row of ties near the float32 maximum
    if c > 1:
        z[n // 2, 0] = 200.0  # a dominating class
    y = rng.integers(0, c, n)
    kw = {"reduction": "sum", "ignore_index": int(y[-1])} if ignore else {"reduction": "sum"}
    loss, dz = XENT(z, y, **kw)
    loss_w, dz_w = XENT(z, y, weight=np.ones(c), **kw)
    np.testing.assert_array_equal(dz, dz_w)
    assert loss == loss_w
    per, _ = XENT(z, y, **{**kw, "reduction": "none"})
    per_w, _ = XENT(z, y, weight=np.ones(c), **{**kw, "reduction": "none"})
    np.testing.assert_array_equal(per, per_w)


@pytest.mark.parametrize("c", [13, 40, 77, 300])
@pytest.mark.parametrize("fn", [normax.softmax, normax.log_softmax], ids=["softmax", "log"])
def test_results_do_not_depend_on_where_out_lies(backend, rng, c, fn):
    """The same rows give the same bits whether ``out`` is a separate array or lies just after
    the input in one buffer (a few vectors or less apart): a vectorized loop that writes while
    it sums may run in a different order when its output is that close behind its input."""
    z = (rng.standard_normal((3, c)) * 3).astype(np.float32)
    want = fn(z, axis=-1).view(np.uint32)
    buf = np.zeros(2 * z.size + 64, np.float32)
    for start in (0, 3):
        zb = buf[start : start + z.size].reshape(z.shape)
        zb[...] = z
        for gap in (0, 1, 5, 16, 33):
            at = start + z.size + gap
            out = buf[at : at + z.size].reshape(z.shape)
            fn(zb, axis=-1, out=out)
            np.testing.assert_array_equal(out.view(np.uint32), want, f"start {start} gap {gap}")
