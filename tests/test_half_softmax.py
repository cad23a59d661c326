"""float16 and bfloat16 softmax, log-softmax and cross-entropy on every backend.

Half precision is a storage type: each backend computes in float32 (sums in float64) and rounds
every result once to the input's dtype, so every result must lie within one half-precision ulp
(``HALF_TOL``) of the float64 computation on the upcast input. The reduced loss is a Python
float, as for float32.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax

from .conftest import BACKENDS, HALF_TOL, assert_half_close, half_dtypes

HALF = half_dtypes()

# name -> (shape, class axis): the four layouts of the (outer, C, inner) view, and the sizes
# that take other kernel paths (rows longer than a conversion tile, few-class rows grouped,
# several column blocks, long classes-first columns).
LAYOUTS = {
    "nc": ((37, 10), -1),
    "nc-wide": ((5, 1500), -1),
    "nc-few": ((100, 7), -1),
    "nchw": ((3, 6, 5, 4), 1),
    "nhwc": ((2, 3, 4, 6), -1),
    "cm": ((10, 300), 0),
    "cm-long": ((1200, 40), 0),
}


def _logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _labels(rng, shape, axis):
    ax = axis % len(shape)
    return rng.integers(0, shape[ax], size=shape[:ax] + shape[ax + 1 :])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_forward_matches_float64(backend, rng, dtype, layout, log):
    shape, axis = LAYOUTS[layout]
    z = _logits(rng, shape, dtype)
    fn = normax.log_softmax if log else normax.softmax
    got = fn(z, axis)
    assert_half_close(got, fn(_f64(z), axis), dtype, f"{layout} log={log}")
    out = np.full_like(z, np.nan)
    assert fn(z, axis, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint16), got.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_matches_float64(backend, rng, dtype, layout, log):
    shape, axis = LAYOUTS[layout]
    z = _logits(rng, shape, np.float64)
    y = (normax.log_softmax if log else normax.softmax)(z, axis).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    fn = normax.log_softmax_backward if log else normax.softmax_backward
    got = fn(g, y, axis)
    assert_half_close(got, fn(_f64(g), _f64(y), axis), dtype, f"{layout} log={log}")


XENT_OPTIONS = {
    "plain": {},
    "weighted": {"weight": "w"},
    "ignore": {"ignore_index": -100},
    "smoothing": {"label_smoothing": 0.2},
}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", XENT_OPTIONS)
def test_xent_labels_match_float64(backend, rng, dtype, layout, reduction, option):
    shape, axis = LAYOUTS[layout]
    z = _logits(rng, shape, dtype)
    y = _labels(rng, shape, axis)
    kw = dict(XENT_OPTIONS[option], reduction=reduction)
    if "weight" in kw:
        kw["weight"] = rng.random(shape[axis]) + 0.5
    if "ignore_index" in kw:
        y.reshape(-1)[::4] = -100
    loss, dz = normax.softmax_cross_entropy(z, y, axis=axis, **kw)
    ref_loss, ref_dz = normax.softmax_cross_entropy(_f64(z), y, axis=axis, **kw)
    assert_half_close(dz, ref_dz, dtype, "dz")
    if reduction == "none":
        assert_half_close(loss, ref_loss, dtype, "loss")
    else:
        # a Python float, as for float32: summed in float64 from float32 per-example losses
        assert type(loss) is float
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("target_dtype", ["same", "float32", "float64"])
def test_xent_probs_match_float64(backend, rng, dtype, layout, target_dtype):
    """Probability targets of any float dtype are converted to z's dtype."""
    shape, axis = LAYOUTS[layout]
    z = _logits(rng, shape, dtype)
    q = rng.random(shape)
    q = (q / q.sum(axis=axis, keepdims=True)).astype(
        dtype if target_dtype == "same" else target_dtype
    )
    loss, dz = normax.softmax_cross_entropy(z, q, axis=axis, reduction="none")
    q_half = _f64(q.astype(dtype))  # what the kernel sees
    ref_loss, ref_dz = normax.softmax_cross_entropy(_f64(z), q_half, axis=axis, reduction="none")
    assert_half_close(dz, ref_dz, dtype, "dz")
    assert_half_close(loss, ref_loss, dtype, "loss")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", ["nc", "nc-wide", "nchw", "cm-long"])
def test_nonfinite_rows_stay_local(backend, rng, dtype, layout):
    """NaN or +inf in a row makes that row NaN and no other; -inf is a zero probability."""
    shape, axis = LAYOUTS[layout]
    z = np.moveaxis(_logits(rng, shape, dtype), axis, -1).copy()  # classes last, then back
    flat = z.reshape(-1, z.shape[-1])
    flat[0, 1], flat[1, 0], flat[2, 2] = np.nan, np.inf, -np.inf
    z = np.moveaxis(z, -1, axis)
    got = np.moveaxis(normax.softmax(np.ascontiguousarray(z), axis), axis, -1)
    got = got.reshape(-1, z.shape[axis])
    assert np.isnan(got[:2].astype(np.float32)).all()
    assert got[2, 2] == 0 and np.isfinite(got[2:].astype(np.float32)).all()
    ref = np.moveaxis(normax.softmax(_f64(np.ascontiguousarray(z)), axis), axis, -1)
    assert_half_close(got[2:], ref.reshape(-1, z.shape[axis])[2:], dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_subnormal_logits_and_results_survive(backend, dtype):
    """Subnormal inputs are read as they are; float16 probabilities below 2**-14 stay subnormal
    (rounded once, never flushed to zero)."""
    tiny = 2.0**-24 if dtype == np.float16 else 2.0**-133  # the smallest subnormals
    z = np.array([[0.0, tiny, -tiny, 0.0]], dtype)
    assert z[0, 1] != 0
    assert_half_close(normax.softmax(z), np.full((1, 4), 0.25), dtype)
    if dtype == np.float16:
        z = np.array([[0.0, -12.0]], dtype)  # p = 6.1e-6: a float16 subnormal
        p = normax.softmax(z)
        want = np.float16(np.exp(-12.0) / (1 + np.exp(-12.0)))
        assert p[0, 1] == want and p[0, 1] < np.finfo(np.float16).tiny


@pytest.mark.parametrize("dtype", HALF)
def test_half_output_overflow_is_inf(backend, dtype):
    """A float32 loss beyond the half range rounds to inf (float16 tops out at 65504)."""
    z = np.array([[32768.0, -32768.0]], dtype)
    loss, dz = normax.softmax_cross_entropy(z, np.array([1]), reduction="none")
    if dtype == np.float16:
        assert np.isinf(loss[0])
    else:
        assert loss[0] == 65536.0
    assert_half_close(dz, np.array([[1.0, -1.0]]), dtype)


def test_reduced_loss_of_float32_stays_float(rng):
    loss, _ = normax.softmax_cross_entropy(
        rng.standard_normal((4, 3)).astype(np.float32), np.array([0, 1, 2, 0])
    )
    assert type(loss) is float


# ---- errors: the same on every backend -------------------------------------------------------


def _err(call):
    try:
        call()
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("dtype", HALF)
def test_error_parity(dtype):
    z = np.zeros((3, 4), dtype)
    other = np.float32 if dtype == np.float16 else np.float16
    calls = {
        "out-dtype": lambda: normax.softmax(z, out=np.zeros((3, 4), np.float32)),
        "g-dtype": lambda: normax.softmax_backward(z.astype(other), z),
        "xent-out": lambda: normax.softmax_cross_entropy(
            z, np.zeros(3, int), out=np.zeros((3, 4), other)
        ),
        "label": lambda: normax.softmax_cross_entropy(z, np.array([0, 4, 1])),
    }
    previous = normax.get_backend()
    try:
        for name, call in calls.items():
            seen = {}
            for b in BACKENDS:
                normax.set_backend(b)
                seen[b] = _err(call)
            assert seen[BACKENDS[0]] is not None, name
            assert len(set(seen.values())) == 1, (name, seen)
    finally:
        normax.set_backend(previous)


@pytest.mark.skipif("c" not in BACKENDS, reason="needs the C extension")
@pytest.mark.parametrize("dtype", HALF)
def test_c_column_rechecks_half_records(dtype):
    """A direct call of the C kernels with a mismatched half record raises, never crashes."""
    from normax import _softmax_ext as ext

    z = np.zeros((3, 4), dtype)
    other = np.float16 if dtype != np.float16 else np.float32
    with pytest.raises(ValueError, match="out must be"):
        ext.forward(z, np.zeros((3, 4), other), 3, 4, 1, False)
    with pytest.raises(ValueError, match="out must be"):
        ext.forward(z, np.zeros((3, 3), dtype), 3, 4, 1, False)
    with pytest.raises(ValueError, match="y must be"):
        ext.backward(z, np.zeros((3, 4), other), np.zeros_like(z), 3, 4, 1, True)
    with pytest.raises(ValueError, match="loss must be"):
        ext.xent(
            z,
            3,
            4,
            1,
            np.zeros(3, np.int64),
            None,
            None,
            0.0,
            1.0,
            np.zeros_like(z),
            np.zeros(3, np.float32),
        )
    with pytest.raises(ValueError, match="target must be"):
        ext.xent(
            z, 3, 4, 1, np.zeros((3, 4), np.float32), None, None, 0.0, 1.0, np.zeros_like(z), None
        )
    with pytest.raises(TypeError, match="z must be"):
        ext.forward(z.view(np.int16), np.zeros_like(z), 3, 4, 1, False)


@pytest.mark.skipif("c" not in BACKENDS, reason="needs the C extension")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, *HALF])
@pytest.mark.parametrize("view", [(2, 3, 0), (0, 3, 1), (0, 3, 5)])
def test_c_column_empty_views_compute_nothing(dtype, view):
    """A direct call with an empty (outer, C, inner) view returns without touching memory (an
    empty inner axis used to divide by zero sizing the column blocks)."""
    from normax import _softmax_ext as ext

    z = np.zeros(view, dtype)
    out = np.zeros_like(z)
    labels = np.zeros(view[0] * view[2], np.int64)
    for log in (False, True):
        ext.forward(z, out, *view, log)
        ext.backward(z, z, out, *view, log)
    assert ext.xent(z, *view, labels, None, None, 0.0, 1.0, out, None) == 0.0


# ---- PyTorch as an oracle: its CPU half kernels also compute in float32 ----------------------

HALF_TORCH = {"float16": "float16", "bfloat16": "bfloat16"}


def _to_torch(torch, a):
    return torch.from_numpy(a.view(np.uint16).copy()).view(getattr(torch, a.dtype.name))


def _from_torch(t, dtype):
    return t.detach().contiguous().view(__import__("torch").int16).numpy().view(dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", ["nc", "nchw", "cm"])
def test_matches_torch(backend, rng, dtype, layout):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape, axis = LAYOUTS[layout]
    ax = axis % len(shape)
    z = _logits(rng, shape, dtype)
    y = _labels(rng, shape, axis)
    for fn, tfn in ((normax.softmax, torch.softmax), (normax.log_softmax, torch.log_softmax)):
        want = _f64(_from_torch(tfn(_to_torch(torch, z), ax), dtype))
        assert_half_close(fn(z, axis), want, dtype, fn.__name__)
    zt = _to_torch(torch, np.moveaxis(z, ax, 1).copy()).requires_grad_(True)
    loss_t = F.cross_entropy(zt, torch.from_numpy(y), reduction="mean")
    loss_t.backward()
    loss, dz = normax.softmax_cross_entropy(z, y, axis=axis)
    assert loss_t.dtype == getattr(torch, dtype.name)
    # torch rounds its per-example losses and their mean to z's dtype; normax returns the
    # float64 mean: two units in the last place of the half loss apart at most
    tol = 2 * HALF_TOL[dtype.name]["rtol"]
    np.testing.assert_allclose(loss, float(loss_t.detach()), rtol=tol, atol=tol)
    want_dz = np.moveaxis(_from_torch(zt.grad, dtype), 1, ax)
    assert_half_close(dz, _f64(want_dz), dtype, "dz")
