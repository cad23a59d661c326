"""The Numba batch-norm backend's two drivers: when each channel is one run (outer == 1, the
(C, m) layout) the passes go channel group by channel group, and must give the bits of the
pass-by-pass driver every other layout takes."""

import numpy as np
import pytest

from .conftest import half_dtypes

bn = pytest.importorskip("normax._batchnorm_numba")
from normax import _dtypes  # noqa: E402
from normax._half_numba import view  # noqa: E402

# (C, inner): one part, two parts (over 2**15 elements), and runs long enough that a group
# holds a few channels, so both threads' ranges end in a partial group.
_RECORDS = [(6, 33), (40, 1000), (9, 40000)]
_DTYPES = [pytest.param(np.dtype(t), id=np.dtype(t).name) for t in (np.float32, np.float64)]


def _pass_by_pass(x3, dy3, gamma, beta, rm, rv, cd):
    """Train and backward through the passes one after the other (_stats, _train_finish,
    _affine; _grad, _grad_finish, _dx), as the driver runs every layout but outer == 1."""
    _, c, _ = x3.shape
    parts = bn._parts(x3)
    mean, invstd, k = np.empty(c), np.empty(c), np.empty((4, c), cd)
    y3 = np.empty_like(x3)
    acc = np.zeros((parts, 2 * c))
    bn._stats(x3, acc)
    bn._train_finish(x3, acc, gamma, beta, rm, rv, True, 0.1, 1e-5, mean, invstd, k, 0, c)
    bn._affine(x3, k, y3, parts)
    kb = np.empty((5, c), cd)
    kb[0] = mean
    kb[1] = mean - kb[0].astype(np.float64)
    dx3, dg, db = np.empty_like(x3), np.empty(c, cd), np.empty(c, cd)
    acc = np.zeros((parts, 2 * c))
    bn._grad(dy3, x3, mean, kb, acc)
    bn._grad_finish(dy3, x3, acc, mean, invstd, gamma, dg, db, kb, 0, c)
    bn._dx(dy3, x3, kb, dx3, parts)
    return dict(y=y3, mean=mean, invstd=invstd, rm=rm, rv=rv, dx=dx3, dg=dg, db=db)


@pytest.mark.parametrize("record", _RECORDS, ids=str)
@pytest.mark.parametrize("dtype", _DTYPES + half_dtypes())
def test_channel_groups_give_the_pass_by_pass_bits(record, dtype):
    c, inner = record
    rng = np.random.default_rng(c)
    cd = _dtypes.compute_dtype(dtype)
    x = (rng.standard_normal((c, inner)) * 3 + 1).astype(dtype)
    dy = rng.standard_normal((c, inner)).astype(dtype)
    x[0, 5] = np.inf  # a channel of NaN statistics stays in its channel on both paths
    gamma = rng.standard_normal(c).astype(cd)
    beta = rng.standard_normal(c).astype(cd)
    rm0, rv0 = rng.standard_normal(c).astype(cd), rng.random(c).astype(cd) + 0.5

    x3, dy3 = view(x).reshape(1, c, inner), view(dy).reshape(1, c, inner)
    with np.errstate(all="ignore"):
        want = _pass_by_pass(x3, dy3, gamma, beta, rm0.copy(), rv0.copy(), cd)
        y, mean, invstd = np.empty_like(x), np.empty(c), np.empty(c)
        rm, rv = rm0.copy(), rv0.copy()
        bn.train(x, 1, c, inner, gamma, beta, rm, rv, 0.1, 1e-5, y, mean, invstd)
        dx, dg, db = np.empty_like(x), np.empty(c, cd), np.empty(c, cd)
        bn.backward(dy, x, 1, c, inner, mean, invstd, gamma, dx, dg, db)
    got = dict(y=view(y), mean=mean, invstd=invstd, rm=rm, rv=rv, dx=view(dx), dg=dg, db=db)
    for name, w in want.items():
        g = got[name].reshape(w.shape)
        assert g.dtype == w.dtype and np.array_equal(g.view(np.uint8), w.view(np.uint8)), name
