"""The fused update kernels: C, Numba and NumPy agree on every optimizer, dtype and size."""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax.optim import _reference
from normax.optim._check import KERNELS
from normax.optim._kinds import (
    ADAM,
    AMSGRAD,
    CENTERED,
    FIRST,
    HYPER,
    MOMENTUM,
    NESTEROV,
    RMSPROP,
    SGD,
    AdamHyper,
    MomentumHyper,
    RMSpropHyper,
    SGDHyper,
)

from .conftest import TOL

# (kind, flags, hyper, which state lists are passed)
CASES = {
    "sgd": (SGD, 0, SGDHyper(0.1, 0.0, 0.0, 1.0), (False, False, False)),
    "sgd-l2-momentum": (SGD, 0, SGDHyper(0.1, 0.01, 0.9, 0.7), (True, False, False)),
    "sgd-nesterov-first": (
        SGD,
        NESTEROV | FIRST,
        SGDHyper(0.1, 0.0, 0.9, 1.0),
        (True, False, False),
    ),
    "momentum": (MOMENTUM, 0, MomentumHyper(0.05, 0.9, 0.1), (True, False, False)),
    "rmsprop": (RMSPROP, 0, RMSpropHyper(0.01, 0.0, 0.99, 0.01, 1e-8, 0.0), (True, False, False)),
    "rmsprop-centered-momentum-l2": (
        RMSPROP,
        CENTERED,
        RMSpropHyper(0.01, 0.1, 0.3, 0.7, 1e-6, 0.9),
        (True, True, True),
    ),
    "adam": (
        ADAM,
        0,
        AdamHyper(0.01, 0.0, 1.0, 0.1, 0.999, 0.001, 1e-8, 0.03),
        (True, True, False),
    ),
    "adamw-amsgrad-large-w": (
        ADAM,
        AMSGRAD,
        AdamHyper(0.02, 0.0, 0.999, 0.7, 0.5, 0.5, 1e-8, 0.8),
        (True, True, True),
    ),
    "adam-l2": (
        ADAM,
        0,
        AdamHyper(0.01, 0.05, 1.0, 0.1, 0.99, 0.01, 1e-8, 0.2),
        (True, True, False),
    ),
}

# empty, single, odd, large enough (> 2**15 elements in total) to run on several threads, and
# arrays that straddle the kernel's 2**16-element work chunks
SIZES = [[0, 1, 7, 33], [100_003], [5] * 40 + [70_001, 3], [65_535, 2, 65_536, 0, 1]]


def _problem(rng, sizes, dtype, used):
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    # state as after some training: square averages >= 1 > squared gradient averages
    scale = [lambda x: 1 + np.abs(x), lambda x: 0.3 * x, np.abs]
    states = [
        [f(rng.standard_normal(n)).astype(dtype) for n in sizes] if u else None
        for u, f in zip(used, scale, strict=True)
    ]
    return params, grads, states


def _copy(lists):
    return [None if x is None else [a.copy() for a in x] for x in lists]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", SIZES, ids=["small", "one-large", "many", "chunk-edges"])
@pytest.mark.parametrize("case", list(CASES))
def test_backends_agree_with_reference(case, sizes, dtype, backend, rng):
    kind, flags, hyper, used = CASES[case]
    params, grads, states = _problem(rng, sizes, dtype, used)
    ref_p, ref_s = _copy([params])[0], _copy(states)
    grads_before = _copy([grads])[0]
    for _ in range(3):
        _reference.step(kind, flags, hyper, ref_p, grads, *ref_s)
        KERNELS[backend].step(kind, flags, hyper, params, grads, *states)
    tol = TOL[np.dtype(dtype)]
    for a, b in zip(params, ref_p, strict=True):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, **tol)
    for sa, sb in zip(states, ref_s, strict=True):
        for a, b in zip(sa or [], sb or [], strict=True):
            np.testing.assert_allclose(a, b, **tol)
    for g, g0 in zip(grads, grads_before, strict=True):
        np.testing.assert_array_equal(g, g0)  # gradients are read only


def test_nan_gradient_propagates_to_that_element_only(backend):
    p = np.ones(10)
    g = np.full(10, 0.5)
    g[3] = np.nan
    opt = normax.optim.Adam([p], lr=0.1, amsgrad=True)
    opt.step([g])
    opt.step([np.full(10, 0.5)])
    assert np.isnan(p[3]) and np.isfinite(np.delete(p, 3)).all()


def test_zero_over_zero_is_nan_on_every_backend(backend):
    # RMSprop with eps=0 and a zero gradient divides 0 by 0: NaN like C and torch, no exception
    p = np.ones(3)
    optim_ = normax.optim.RMSprop([p], lr=0.1, eps=0.0)
    optim_.step([np.zeros(3)])
    assert np.isnan(p).all()


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def _calls(draw):
    kind = draw(st.sampled_from([SGD, MOMENTUM, RMSPROP, ADAM]))
    unit = st.floats(0.0, 0.999)
    h = [draw(st.floats(0.0, 0.5)), draw(st.sampled_from([0.0, 0.01, 0.3]))]
    h += [draw(unit) for _ in range(4)] + [draw(st.floats(1e-8, 1e-3)), draw(st.floats(0.1, 1))]
    used = [kind != SGD or draw(st.booleans()), False, False]
    flags = 0
    if kind == SGD and used[0]:  # NESTEROV and FIRST act on the momentum buffer
        flags = draw(st.sampled_from([0, NESTEROV, FIRST, NESTEROV | FIRST]))
    elif kind == RMSPROP:
        used[1], used[2] = draw(st.booleans()), draw(st.booleans())
        flags = CENTERED if used[1] else 0
        h[3] = 1.0 - h[2]  # w = 1 - alpha, as the optimizer passes it
    elif kind == ADAM:
        used[1], used[2] = True, draw(st.booleans())
        flags = AMSGRAD if used[2] else 0
        h[2] = draw(st.sampled_from([1.0, 0.99]))  # decoupled decay factor
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return kind, flags, HYPER[kind](*h[: len(HYPER[kind]._fields)]), used, sizes, dtype


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(call=_calls(), seed=st.integers(0, 2**32 - 1))
def test_every_backend_matches_reference_on_random_calls(call, seed):
    kind, flags, hyper, used, sizes, dtype = call
    rng = np.random.default_rng(seed)
    for name in normax.available_backends():
        params, grads, states = _problem(rng, sizes, dtype, used)
        ref_p, ref_s = _copy([params])[0], _copy(states)
        _reference.step(kind, flags, hyper, ref_p, grads, *ref_s)
        KERNELS[name].step(kind, flags, hyper, params, grads, *states)
        for a, b in zip(params, ref_p, strict=True):
            np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)], err_msg=name)
