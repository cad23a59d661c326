"""The Numba softmax kernels at the edges of their chunks: partial sums in the input dtype over
256 entries of a row or 16 classes of a column block, column blocks that end mid-vector, ties
of the maximum in different chunks. Checked against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import normax

from .conftest import HALF_TOL, TOL, softmax_pair

pytestmark = pytest.mark.skipif(
    "numba" not in normax.available_backends(), reason="needs the Numba backend"
)

XENT = normax.softmax_cross_entropy
DTYPES = [np.float32, np.float64]
# (shape, axis): rows of 255 / 256 / 257 / 600 classes; classes first with 15 / 16 / 17 / 40
# classes and inner sizes that end a block mid-vector (and 300 > one block of columns).
SHAPES = [((3, 255), -1), ((2, 256), -1), ((3, 257), -1), ((2, 600), -1),
          ((15, 7), 0), ((16, 33), 0), ((17, 300), 0), ((2, 40, 19), 1)]  # fmt: skip


def _both(fn):
    """fn() on the Numba backend and on the NumPy reference."""
    previous = normax.get_backend()
    try:
        out = {}
        for name in ("numba", "numpy"):
            normax.set_backend(name)
            out[name] = fn()
        return out["numba"], out["numpy"]
    finally:
        normax.set_backend(previous)


def _labels(rng, shape, axis):
    c = shape[axis]
    rest = tuple(s for k, s in enumerate(shape) if k != axis % len(shape))
    y = rng.integers(0, c, size=rest)
    y.reshape(-1)[::5] = -100  # every fifth example ignored
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
def test_activations_match_the_reference(rng, dtype, shape, axis):
    z = (4 * rng.standard_normal(shape)).astype(dtype)
    for fn in (normax.softmax, normax.log_softmax):
        got, ref = _both(lambda fn=fn: fn(z, axis=axis))
        np.testing.assert_allclose(got, ref, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize(
    "opts",
    [{}, {"label_smoothing": 0.1, "weight": True}, {"probs": True},
     {"probs": True, "label_smoothing": 0.2}],
    ids=["labels", "smoothing-weight", "probs", "probs-smoothing"],
)  # fmt: skip
def test_cross_entropy_matches_the_reference(rng, dtype, shape, axis, opts):
    z = (4 * rng.standard_normal(shape)).astype(dtype)
    kw = {k: v for k, v in opts.items() if k == "label_smoothing"}
    if opts.get("weight"):
        kw["weight"] = rng.random(shape[axis]) + 0.5
    if opts.get("probs"):
        target = rng.random(shape).astype(dtype)
        target /= target.sum(axis=axis, keepdims=True)
    else:
        target = _labels(rng, shape, axis)
        kw["ignore_index"] = -100
    (lg, dg), (lr, dr) = _both(lambda: XENT(z, target, axis=axis, reduction="none", **kw))
    np.testing.assert_allclose(lg, lr, **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(dg, dr, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0])
def test_ties_in_different_chunks_are_counted_exactly(dtype, axis):
    # Five ties of the maximum, in four different 256-entry chunks of a row (and 16-class
    # chunks of a block); every other entry is 200 below, so exp of it is negligible.
    c = 1000
    row = np.full(c, -200.0)
    ties = [0, 255, 256, 511, 700]
    row[ties] = 3.0
    z = np.stack([row, row]).astype(dtype)
    if axis == 0:
        z = np.ascontiguousarray(z.T)
    previous = normax.get_backend()
    normax.set_backend("numba")
    try:
        p = normax.softmax(z, axis=axis)
        lp = normax.log_softmax(z, axis=axis)
    finally:
        normax.set_backend(previous)
    pt = p[ties] if axis == 0 else p[:, ties]
    lpt = lp[ties] if axis == 0 else lp[:, ties]
    np.testing.assert_array_equal(pt, dtype(1 / 5))
    np.testing.assert_allclose(lpt, -np.log(5.0), rtol=np.finfo(dtype).eps)


# Classes-first blocks are streamed when fewer columns than a kernel's minimum fit the L2 budget
# (float32 tiles for the half dtypes): 256 columns a block, every class row read from memory in
# every pass (300 columns: 256 + 44). The minimum is 64 columns for softmax and log-softmax
# (more than 2048 float32 / 1024 float64 classes stream), 128 for the backwards (1024 / 512)
# and 16 for cross-entropy (8192 / 4096), as in the C kernels. Each list straddles its threshold.
STREAMED = {
    "forward": [(np.float32, 2048), (np.float32, 2049), (np.float64, 1025), (np.float16, 2049)],
    "backward": [(np.float32, 1024), (np.float32, 1025), (np.float64, 513), (np.float16, 1025)],
    "xent": [(np.float32, 8192), (np.float32, 8193), (np.float64, 4097), (np.float16, 8193)],
}


def _assert_streamed(fn, dtype, *arrays):
    """fn(*arrays) on Numba against the reference; in float16, also bit for bit the float32
    kernel's results on the widened arrays, rounded once."""
    got, want = _both(lambda: fn(*arrays))
    tol = HALF_TOL["float16"] if dtype == np.float16 else TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), **tol)
    if dtype == np.float16:
        wide, _ = _both(lambda: fn(*(a.astype(np.float32) for a in arrays)))
        np.testing.assert_array_equal(got, wide.astype(dtype))


@pytest.mark.parametrize(("dtype", "c"), STREAMED["forward"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_streamed_blocks_match_the_reference(rng, dtype, c, log):
    """A tie in column 5 and a NaN in column 3."""
    z = (rng.standard_normal((c, 300)) * 3.0).astype(dtype)
    z[:, 5] = z[0, 5]
    z[c // 2, 3] = np.nan
    fwd, _ = softmax_pair(log)
    _assert_streamed(lambda x: fwd(x, axis=0), dtype, z)


@pytest.mark.parametrize(("dtype", "c"), STREAMED["backward"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_of_streamed_blocks_matches_the_reference(rng, dtype, c, log):
    z = (rng.standard_normal((c, 300)) * 3.0).astype(dtype)
    g = rng.standard_normal((c, 300)).astype(dtype)
    fwd, bwd = softmax_pair(log)
    _assert_streamed(lambda a, b: bwd(a, b, axis=0), dtype, g, fwd(z, axis=0))


@pytest.mark.parametrize(("dtype", "c"), STREAMED["xent"])
@pytest.mark.parametrize(
    "opts",
    [{}, {"ignore_index": 2}, {"label_smoothing": 0.1, "weight": True, "ignore_index": 2},
     {"probs": True, "label_smoothing": 0.2, "weight": True}],
    ids=["labels", "ignore", "smoothing-weight-ignore", "probs-smoothing-weight"],
)  # fmt: skip
def test_cross_entropy_of_streamed_blocks_matches_the_reference(rng, dtype, c, opts):
    """Two examples of 300 columns (blocks of 256 + 44), a tie in column 5, a NaN in column 4
    of the first example, every third column ignored where the options say so. Losses and
    gradients against the reference; in float16 both are the float32 kernel's on the widened
    input, rounded once."""
    shape = (2, c, 300)
    z = (3.0 * rng.standard_normal(shape)).astype(dtype)
    z[:, :, 5] = z[:, :1, 5]
    z[0, c // 2, 4] = np.nan
    kw = {k: v for k, v in opts.items() if k in ("label_smoothing", "ignore_index")}
    if opts.get("weight"):
        kw["weight"] = rng.random(c) + 0.5
    if opts.get("probs"):
        q = rng.random(shape) + 0.05
        target = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, c, size=(2, 300))
        target[:, ::3] = kw.get("ignore_index", 0)

    def run(z, target):
        return XENT(z, target, axis=1, reduction="none", **kw)

    with np.errstate(invalid="ignore"):
        (lg, dg), (lr, dr) = _both(lambda: run(z, target))
    tol = HALF_TOL["float16"] if dtype == np.float16 else TOL[np.dtype(dtype)]
    for got, want in ((lg, lr), (dg, dr)):
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), **tol)
    assert np.isnan(dg[0, :, 4]).all() and not np.isnan(dg[1]).any()
    if "ignore_index" in kw:
        assert not dg[:, :, ::3].any() and not lg[:, ::3].any()
    if dtype == np.float16:
        wide = target.astype(np.float32) if opts.get("probs") else target
        with np.errstate(invalid="ignore"):
            (lw, dw), _ = _both(lambda: run(z.astype(np.float32), wide))
        np.testing.assert_array_equal(dg, dw.astype(dtype))
        np.testing.assert_array_equal(lg, lw.astype(dtype))


def _c_row_max(z):
    """The C kernel's row_max (csrc/softmax_impl.h), step by step in NumPy: four vector maxima
    seeded with the first vector, single vectors, the overlapping last vector, the lanes folded
    into z[0] in order; v > m keeps m (a NaN never wins)."""

    def keep(v, m):
        return np.where(v > m, v, m)

    lanes, n = 64 // z.itemsize, z.size
    m = z[0]
    if n < lanes:
        for v in z[1:]:
            m = v if v > m else m
        return m
    acc = [z[:lanes]] * 4
    j = lanes
    while j + 4 * lanes <= n:
        acc = [keep(z[j + q * lanes : j + (q + 1) * lanes], acc[q]) for q in range(4)]
        j += 4 * lanes
    while j + lanes <= n:
        acc[0] = keep(z[j : j + lanes], acc[0])
        j += lanes
    m0 = keep(z[n - lanes :], acc[0])
    m1 = keep(acc[2], acc[1])
    m0 = keep(m1, keep(acc[3], m0))
    for v in m0:
        m = v if v > m else m
    return m


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_max_is_the_c_kernels(rng, dtype):
    """The vector maximum of the row kernels picks the C kernel's element, bit for bit: signed
    zeros, infinities and NaN in any lane, every length around the vector and unrolled steps."""
    import numba

    from normax._softmax_numba import _row_max

    row_max = numba.njit(lambda z: _row_max(z))
    lanes = 64 // np.dtype(dtype).itemsize
    for n in [*range(1, 6 * lanes + 3), 1000, 4099]:
        for trial in range(6):
            z = rng.standard_normal(n).astype(dtype)
            if trial == 1:
                z = np.where(rng.random(n) < 0.5, -0.0, 0.0).astype(dtype)
            elif trial >= 2:
                special = [np.nan, np.inf, -np.inf, np.nan][trial - 2]
                z[rng.integers(0, n, size=max(1, n // 50))] = special
            got, want = row_max(z), _c_row_max(z)
            assert np.array(got, dtype).tobytes() == np.array(want, dtype).tobytes(), (n, trial)
            if not np.isnan(z).any():
                assert got == z.max()


_FIRST_COMPILE = """
import sys
import numba
import numpy as np
import normax
from normax import _softmax_numba as S

if sys.argv[1] == "exp":  # the exponentials compiled first, on their own
    S._poly32(np.float32(0.5))
    numba.njit(lambda x: S._exp_any(x) + S._exp_neg(-x))(np.float32(0.5))
normax.set_backend("numba")
z = np.linspace(-30, 30, 5 * 999, dtype=np.float32).reshape(5, 999)
sys.stdout.write(normax.softmax(z).tobytes().hex())
"""


def test_results_do_not_depend_on_what_compiled_first(tmp_path):
    """Each process starts from an empty Numba cache: one compiles the kernels first, the other
    compiles the exponentials on their own before. An exponential compiled inside a kernel once
    took that kernel's fast-math flags, and the other process then got other bits."""
    import os
    import subprocess
    import sys

    out = {}
    for first in ("kernel", "exp"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / first))
        run = subprocess.run(
            [sys.executable, "-c", _FIRST_COMPILE, first], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        out[first] = run.stdout
    assert out["kernel"] == out["exp"]
