"""Half-precision rows of the C backend: bit for bit the float32 kernel, rounded once.

Long rows (inner == 1) are read and written in half storage directly, with the float32 kernel's
arithmetic; shorter rows go through float32 tiles. The same holds for the gradient rows of the
backward. Either way each result must be exactly the float32 kernel's result on the upcast input,
rounded once to the half dtype (NumPy and ml_dtypes round to nearest even). The row lengths
straddle the direct path's threshold (128 classes), the 16-lane vectors and the stack scratch
(4096 floats); some rows hold NaN, infinities, subnormals, tied maxima or only the most negative
finite value.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax

from .conftest import BACKENDS, half_dtypes

pytestmark = pytest.mark.skipif("c" not in BACKENDS, reason="needs the C extension")

HALF = half_dtypes()
LENGTHS = [17, 127, 128, 129, 1000, 1023, 1024, 1025, 4096, 4097]


def _rows(rng, n, dtype):
    """12 rows of n logits; rows 1-6 each hold one kind of special value."""
    # bfloat16 params exist only when ml_dtypes is installed (half_dtypes skips them otherwise)
    finfo = np.finfo(dtype) if dtype == np.float16 else __import__("ml_dtypes").finfo(dtype)
    z = rng.standard_normal((12, n)) * 8.0
    j = rng.integers(0, n, size=12)
    z[1, j[1]] = np.nan
    z[2, j[2]] = np.inf
    z[3, j[3]] = -np.inf
    z[4] = float(finfo.smallest_subnormal) * rng.integers(0, 5, size=n)
    z[5, j[5]] = z[5, -1] = float(finfo.max)  # two tied maxima
    z[6] = -float(finfo.max)
    z = z.astype(dtype)
    assert np.any((z[4] != 0) & (np.abs(z[4]) < finfo.tiny))
    return z


def assert_same_bits(got, want, what):
    """Equal bit patterns, NaN where the reference is NaN (its payload aside)."""
    assert got.dtype == want.dtype, what
    nan = np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan, err_msg=what)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan], what)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_rows_equal_float32_rounded_once(c_backend, rng, dtype, n, log):
    z = _rows(rng, n, dtype)
    fn = normax.log_softmax if log else normax.softmax
    with np.errstate(invalid="ignore", over="ignore"):
        want = fn(z.astype(np.float32), -1).astype(dtype)
    assert_same_bits(fn(z, -1), want, f"n={n}")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_rows_equal_float32_rounded_once(c_backend, rng, dtype, n, log):
    """The gradient rows: the float64 dot of g and y (or the sum of g) over the row, then each
    element, with special values in both g and y."""
    z = _rows(rng, n, dtype)
    fwd, bwd = (
        (normax.log_softmax, normax.log_softmax_backward)
        if log
        else (normax.softmax, normax.softmax_backward)
    )
    with np.errstate(invalid="ignore", over="ignore"):
        y = fwd(z, -1)
    g = _rows(rng, n, dtype)[::-1].copy()  # special values in other rows than y's
    g[9] = y[9]  # a gradient that cancels to leave only rounding
    with np.errstate(invalid="ignore", over="ignore"):
        want = bwd(g.astype(np.float32), y.astype(np.float32), -1).astype(dtype)
        got = bwd(g, y, -1)
    assert_same_bits(got, want, f"n={n}")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_xent_rows_equal_float32_rounded_once(c_backend, rng, dtype, n, weighted):
    z = _rows(rng, n, dtype)
    y = rng.integers(0, n, size=len(z))
    y[1] = np.argmax(np.nan_to_num(z[1].astype(np.float32)))  # the label on the row's maximum
    y[7] = -100  # an ignored row: zero gradient and loss
    kw = {"ignore_index": -100, "reduction": "none"}
    if weighted:
        kw["weight"] = rng.random(n) + 0.5
    loss, dz = normax.softmax_cross_entropy(z, y, **kw)
    with np.errstate(invalid="ignore", over="ignore"):
        want_loss, want_dz = normax.softmax_cross_entropy(z.astype(np.float32), y, **kw)
        want_loss, want_dz = want_loss.astype(dtype), want_dz.astype(dtype)
    assert_same_bits(dz, want_dz, f"dz n={n}")
    assert_same_bits(loss, want_loss, f"loss n={n}")
    assert not np.any(dz[7].view(np.uint16))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(3, 129), (2, 5, 1025), (1, 4097)])
def test_rows_of_views_and_out(c_backend, rng, dtype, shape):
    """Rows inside an (N, H, W, C) array and the out= argument take the same direct path."""
    z = (rng.standard_normal(shape) * 4.0).astype(dtype)
    out = np.full_like(z, np.nan)
    assert normax.softmax(z, -1, out=out) is out
    assert_same_bits(out, normax.softmax(z.astype(np.float32), -1).astype(dtype), str(shape))
