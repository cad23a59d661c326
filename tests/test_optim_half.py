"""Mixed precision in the optimizers: half gradients, float32 master weights, half copies.

A float16 or bfloat16 gradient is widened to float32 exactly, so a step with it must equal, to
the last bit, the float32 step with the widened gradient; the half copy must equal the updated
float32 weights rounded once to nearest even. Both hold on every backend, through the fused
record and through every optimizer; PyTorch (float32 params stepped with the widened gradients,
then ``.to(half)``) is the independent oracle. Bad half arguments raise the same error on every
backend and every door, before anything is written.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax.optim import _check, _reference
from normax.optim._kinds import (
    ADAM,
    AMSGRAD,
    CENTERED,
    FIRST,
    MOMENTUM,
    NESTEROV,
    RMSPROP,
    SGD,
    AdamHyper,
    MomentumHyper,
    RMSpropHyper,
    SGDHyper,
)

from .conftest import assert_half_close, half_dtypes

HALF = half_dtypes()
# sizes across the C kernel's conversion tiles (1024) and work chunks (65536), and an empty one;
# 70001 + 1025 elements also make the step run on several threads
SIZES = (1, 1023, 1025, 0, 70001)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32)


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Identical values, NaN for NaN (payloads aside) and the sign of zero included."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan, err_msg=what)
    np.testing.assert_array_equal(_bits(got)[~nan], _bits(want)[~nan], err_msg=what)


# ---- the fused record --------------------------------------------------------------------------

ADAM_H = AdamHyper(0.01, 0.0, 1.0, 0.1, 0.999, 0.001, 1e-8, 0.03)

# (kind, flags, hyper, which state slots are given)
RECORDS = {
    "sgd": (SGD, 0, SGDHyper(0.1, 0.0, 0.0, 1.0), (0, 0, 0)),
    "sgd wd": (SGD, 0, SGDHyper(0.1, 0.01, 0.0, 1.0), (0, 0, 0)),
    "sgd momentum first": (SGD, FIRST, SGDHyper(0.1, 0.0, 0.9, 1.0), (1, 0, 0)),
    "sgd nesterov wd": (SGD, NESTEROV, SGDHyper(0.1, 0.01, 0.9, 1.0), (1, 0, 0)),
    "momentum": (MOMENTUM, 0, MomentumHyper(0.1, 0.9, 0.1), (1, 0, 0)),
    "rmsprop": (RMSPROP, 0, RMSpropHyper(0.01, 0.0, 0.99, 0.01, 1e-8, 0.0), (1, 0, 0)),
    "rmsprop centered momentum wd": (
        RMSPROP,
        CENTERED,
        RMSpropHyper(0.01, 0.1, 0.3, 0.7, 1e-8, 0.9),
        (1, 1, 1),
    ),
    "adam": (ADAM, 0, ADAM_H, (1, 1, 0)),
    "adam l2 amsgrad": (ADAM, AMSGRAD, ADAM_H._replace(weight_decay=0.1), (1, 1, 1)),
    "adamw large beta1 weight": (
        ADAM,
        0,
        ADAM_H._replace(decay=0.999, one_minus_beta1=0.7),
        (1, 1, 0),
    ),
}


def _record(name, rng, grad_dtype, half_dtype, sizes=SIZES):
    """A fused call (kind, flags, hyper, params, grads, s0, s1, s2, half) of float32 params."""
    kind, flags, hyper, given = RECORDS[name]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(grad_dtype) for n in sizes]
    states = [
        [np.abs(rng.standard_normal(n)).astype(np.float32) for n in sizes] if g else None
        for g in given
    ]
    half = None if half_dtype is None else [np.zeros(n, half_dtype) for n in sizes]
    return (kind, flags, hyper, params, grads, *states, half)


def _copy(call):
    return tuple([a.copy() for a in x] if isinstance(x, list) else x for x in call)


def _expected(call):
    """The float32 reference step on the widened gradients, and the half copies of its result."""
    kind, flags, hyper, params, grads, s0, s1, s2, half = _copy(call)
    _reference.step(kind, flags, hyper, params, [g.astype(np.float32) for g in grads], s0, s1, s2)
    with np.errstate(over="ignore"):  # beyond the half range: infinity
        copies = (
            None if half is None else [p.astype(h.dtype) for p, h in zip(params, half, strict=True)]
        )
    return (params, s0, s1, s2, copies)


def _check_result(call, expected):
    _, _, _, params, _, s0, s1, s2, half = call
    for what, got, want in zip(
        ("params", "s0", "s1", "s2", "half"), (params, s0, s1, s2, half), expected, strict=True
    ):
        assert (got is None) == (want is None)
        for k, (a, b) in enumerate(zip(got or (), want or (), strict=True)):
            assert_same_bits(a, b, f"{what}[{k}]")


@pytest.mark.parametrize("half_dtype", [None, *HALF])
@pytest.mark.parametrize("grad_dtype", HALF)
@pytest.mark.parametrize("name", list(RECORDS))
def test_half_gradients_step_as_their_float32_widening(name, grad_dtype, half_dtype, backend, rng):
    call = _record(name, rng, grad_dtype, half_dtype)
    expected = _expected(call)
    normax.optim._base.fused_step(*call)
    _check_result(call, expected)


@pytest.mark.parametrize("half_dtype", HALF)
@pytest.mark.parametrize("name", ["sgd momentum first", "adam l2 amsgrad", "rmsprop"])
def test_half_copy_of_a_float32_step_is_the_weights_rounded_once(name, half_dtype, backend, rng):
    call = _record(name, rng, np.float32, half_dtype)
    expected = _expected(call)
    normax.optim._base.fused_step(*call)
    _check_result(call, expected)


def _specials(dtype) -> np.ndarray:
    """Infinities, NaN, zeros of both signs, subnormals, the largest finite half, and ties."""
    finfo = np.finfo(np.float16) if dtype == np.float16 else None
    tiny = float(np.float16(2**-24)) if finfo is not None else 1e-40
    big = 65504.0 if finfo is not None else 3e38
    values = [np.inf, -np.inf, np.nan, 0.0, -0.0, tiny, -tiny, 3 * tiny, big, -big, 1.0, -0.5]
    return np.array(values * 100, np.float32).astype(dtype)


@pytest.mark.parametrize("half_dtype", [None, *HALF])
@pytest.mark.parametrize("grad_dtype", HALF)
@pytest.mark.parametrize("name", ["sgd momentum first", "rmsprop centered momentum wd", "adam"])
def test_nonfinite_and_subnormal_gradients_behave_as_in_float32(
    name, grad_dtype, half_dtype, backend, rng
):
    call = list(_record(name, rng, grad_dtype, half_dtype, sizes=(1200,)))
    call[4] = [_specials(grad_dtype)]
    expected = _expected(call)
    normax.optim._base.fused_step(*call)
    _check_result(call, expected)
    assert np.isnan(call[3][0]).any() and np.isinf(call[4][0].astype(np.float32)).any()


@pytest.mark.parametrize("half_dtype", HALF)
@pytest.mark.parametrize("grad_dtype", HALF)
def test_large_arrays_convert_as_small_ones(grad_dtype, half_dtype, backend, rng):
    """Arrays past the parallel threshold (the Numba backend then widens the gradients and rounds
    the half copy with its parallel conversion kernels): the same bits, special values
    included, beside a small array of the same call."""
    call = list(_record("adam", rng, grad_dtype, half_dtype, sizes=(3, 1 << 16)))
    call[4][1][:1200] = _specials(grad_dtype)
    call[3][1][1200:1300] = np.finfo(np.float32).max  # the copy overflows to infinity
    expected = _expected(call)
    normax.optim._base.fused_step(*call)
    _check_result(call, expected)
    copy = call[8][1].astype(np.float32)
    assert np.isnan(copy[:1200]).any() and np.isinf(copy[1200:1300]).all()


@pytest.mark.parametrize("half_dtype", HALF)
def test_half_copy_rounds_to_nearest_even_and_overflows_to_infinity(half_dtype, backend):
    # params chosen so that the SGD step (lr = 1, g = 0) leaves them as they are: the copy is
    # then exactly the rounding of these float32 values
    # machine epsilon and smallest normal of the format (np.finfo does not know bfloat16)
    eps, tiny = (2.0**-10, 2.0**-14) if half_dtype == np.float16 else (2.0**-7, 2.0**-126)
    values = np.array(
        [
            1 + eps / 2,
            1 + 1.5 * eps,
            1 + eps / 2 + 2**-20,
            float(np.finfo(np.float32).max),  # rounds to infinity in both formats
            tiny / 3,
            -0.0,
            np.nan,
        ],
        np.float32,
    )
    p, half = values.copy(), np.zeros(values.size, half_dtype)
    normax.optim._base.fused_step(
        SGD, 0, SGDHyper(1.0, 0.0, 0.0, 1.0), [p], [np.zeros_like(p)], half=[half]
    )
    with np.errstate(over="ignore"):
        assert_same_bits(half, values.astype(half_dtype))
    assert half[0] == 1 and half[1] == 1 + 2 * eps and half[2] == 1 + eps
    assert np.isinf(half[3].astype(np.float32)) and np.signbit(half[5])


# ---- the optimizers ----------------------------------------------------------------------------

SHAPES = {"w": (33, 40), "b": (40,), "big": (300, 250)}  # 'big' runs on several threads

OPTIMIZERS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Momentum", dict(lr=0.05, beta=0.9, bias_correction=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02)),
]
OPT_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)]


def _params(rng):
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


@pytest.mark.parametrize("half_dtype", [None, *HALF])
@pytest.mark.parametrize("grad_dtype", HALF)
@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPT_IDS)
def test_optimizer_with_half_gradients_matches_the_float32_run(
    case, grad_dtype, half_dtype, backend, rng
):
    name, opts = case
    ours, ref = _params(rng), _params(rng)
    ref = {k: v.copy() for k, v in ours.items()}
    opt = getattr(normax.optim, name)(ours, **opts)
    ref_opt = getattr(normax.optim, name)(ref, **opts)
    copies = None if half_dtype is None else {k: np.zeros(s, half_dtype) for k, s in SHAPES.items()}
    for _ in range(4):
        grads = {
            k: (rng.standard_normal(s) + ours[k]).astype(grad_dtype) for k, s in SHAPES.items()
        }
        opt.step(grads, half_params=copies)
        ref_opt.step({k: g.astype(np.float32) for k, g in grads.items()})
        for k in SHAPES:
            assert_same_bits(ours[k], ref[k], k)
            if copies is not None:
                assert_same_bits(copies[k], ref[k].astype(half_dtype), f"copy of {k}")
    for k, st in enumerate(opt.state):
        assert all(a.dtype == np.float32 for a in st.values()), k


def test_mixed_gradient_dtypes_in_one_group(backend, rng):
    # one fused call per dtype combination; the result is that of the widened float32 step
    dtypes = [np.float32, *(p.values[0] for p in HALF if not p.marks)]
    params = [rng.standard_normal(1000 + k).astype(np.float32) for k in range(6)]
    ref = [p.copy() for p in params]
    grads = [
        rng.standard_normal(p.size).astype(dtypes[k % len(dtypes)]) for k, p in enumerate(params)
    ]
    copies = [np.zeros(p.size, dtypes[-1 - k % (len(dtypes) - 1)]) for k, p in enumerate(params)]
    normax.optim.Adam(params, lr=0.1).step(grads, half_params=copies)
    normax.optim.Adam(ref, lr=0.1).step([g.astype(np.float32) for g in grads])
    for p, r, c in zip(params, ref, copies, strict=True):
        assert_same_bits(p, r)
        assert_same_bits(c, r.astype(c.dtype))


def test_parameter_groups_take_half_params_like_grads(backend, rng):
    a, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    opt = normax.optim.SGD([{"params": [a]}, {"params": {"b": b}, "lr": 0.5}], lr=0.1)
    ha, hb = np.zeros(5, np.float16), np.zeros(7, np.float16)
    opt.step(
        [[np.ones(5, np.float16)], {"b": np.ones(7, np.float16)}], half_params=[[ha], {"b": hb}]
    )
    assert_same_bits(ha, a.astype(np.float16))
    assert_same_bits(hb, b.astype(np.float16))


def _tensor(a: np.ndarray, torch):
    """A torch tensor with the values of a float16 / bfloat16 / float32 array."""
    if a.dtype == np.float32 or a.dtype == np.float16:
        return torch.from_numpy(a.copy())
    return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)


TORCH_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adam", dict(lr=0.02, amsgrad=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1)),
]


@pytest.mark.parametrize("half_dtype", HALF)
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_float32_master_weights(case, half_dtype, backend, rng):
    torch = pytest.importorskip("torch")
    name, opts = case
    ours = _params(rng)
    tparams = [torch.tensor(p, requires_grad=True) for p in ours.values()]
    opt = getattr(normax.optim, name)(ours, **opts)
    theirs = getattr(torch.optim, name)(tparams, foreach=False, **opts)
    tdtype = torch.float16 if half_dtype == np.float16 else torch.bfloat16
    copies = {k: np.zeros(s, half_dtype) for k, s in SHAPES.items()}
    for step in range(10):
        grads = {
            k: (rng.standard_normal(s) + ours[k]).astype(half_dtype) for k, s in SHAPES.items()
        }
        for t, g in zip(tparams, grads.values(), strict=True):
            t.grad = _tensor(g, torch).float()  # torch steps float32 with the widened gradient
        opt.step(grads, half_params=copies)
        theirs.step()
        for (k, p), t in zip(ours.items(), tparams, strict=True):
            want = t.detach()
            np.testing.assert_allclose(p, want.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{step} {k}")
            # torch's half copy, back as a NumPy array of our half dtype
            twant = want.to(tdtype).view(torch.int16).numpy().view(np.uint16).view(half_dtype)
            assert_half_close(copies[k], twant.astype(np.float64), half_dtype, f"{step} {k}")


# ---- errors ------------------------------------------------------------------------------------


def _adam(n=3, grad=np.float16, half=np.float16, param=np.float32, **changes):
    """A valid mixed-precision Adam record with ``changes``."""
    sizes = [4 + k for k in range(n)]
    call = dict(
        kind=ADAM,
        flags=0,
        hyper=ADAM_H,
        params=[np.full(s, 0.5, param) for s in sizes],
        grads=[np.full(s, 0.25, grad) for s in sizes],
        s0=[np.zeros(s, param) for s in sizes],
        s1=[np.zeros(s, param) for s in sizes],
        s2=None,
        half=None if half is None else [np.zeros(s, half) for s in sizes],
    )
    call.update(changes)
    return tuple(call.values())


def _with(call, slot: int, k: int, array):
    call = list(call)
    call[slot] = list(call[slot])
    call[slot][k] = array
    return tuple(call)


def _overlap(slot: int):
    """half[1] is a float16 view of the memory of list ``slot``'s array 1."""
    call = _adam()
    host = call[slot][1]
    return _with(call, 8, 1, host.view(np.uint8)[: 2 * 5].view(np.float16))


def _readonly_half():
    a = np.zeros(5, np.float16)
    a.flags.writeable = False
    return _with(_adam(), 8, 1, a)


_SHARED = np.zeros(20, np.float16)


def _unaligned_half():
    a = np.zeros(11, np.uint8)[1:].view(np.float16)
    return _with(_adam(), 8, 0, a[:4])


HOSTILE = {
    "half grads for float64 params": _adam(param=np.float64, half=None),
    "float32 grads for float64 params": _adam(grad=np.float32, param=np.float64, half=None),
    "float32 grad among half grads": _with(_adam(), 4, 1, np.zeros(5, np.float32)),
    "half grad among float32 grads": _with(_adam(grad=np.float32), 4, 2, np.zeros(6, np.float16)),
    "int16 grads": _adam(grad=np.int16),
    "half not a list": (*_adam()[:-1], np.zeros(4, np.float16)),
    "half too short": (*_adam()[:-1], [np.zeros(4, np.float16)]),
    "half holds None": _with(_adam(), 8, 0, None),
    "half holds a list": _with(_adam(), 8, 0, [0.0] * 4),
    "half float32": _adam(half=np.float32),
    "half int16": _adam(half=np.int16),
    "half uint16 view": _with(_adam(), 8, 2, np.zeros(6, np.uint16)),
    "half wrong size": _with(_adam(), 8, 1, np.zeros(4, np.float16)),
    "half of float64 params": _adam(param=np.float64, grad=np.float64),
    "half read-only": _readonly_half(),
    "half strided": _with(_adam(), 8, 1, np.zeros(10, np.float16)[::2]),
    "half byte-swapped": _with(_adam(), 8, 1, np.zeros(5, ">f2")),
    "half unaligned": _unaligned_half(),
    "half shares a parameter": _overlap(3),
    "half shares a state": _overlap(6),
    "half shares a gradient": _overlap(4),
    "half repeated": (*_adam()[:-1], [_SHARED[:4], _SHARED[2:7], np.zeros(6, np.float16)]),
}
try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    pass
else:
    HOSTILE["grads of two half dtypes"] = _with(_adam(), 4, 1, np.zeros(5, ml_dtypes.bfloat16))
    HOSTILE["half of two dtypes"] = _with(_adam(), 8, 2, np.zeros(6, ml_dtypes.bfloat16))


def _raw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _outcome(fn, call):
    """(exception type, message) of ``fn(*call)``; nothing written before the error."""
    snapshot = [
        [a.copy() if isinstance(a, np.ndarray) else a for a in x] if isinstance(x, list) else x
        for x in call
    ]
    try:
        fn(*call)
    except (TypeError, ValueError) as exc:
        for x, y in zip(call, snapshot, strict=True):
            if isinstance(x, list):
                for a, b in zip(x, y, strict=True):
                    if isinstance(a, np.ndarray):
                        np.testing.assert_array_equal(_raw(a), _raw(b))
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_half_call_raises_the_same_error_everywhere(name, backend):
    ext = pytest.importorskip("normax._optim_ext")
    call = HOSTILE[name]
    expected = _outcome(_check.normalize, call)
    assert expected is not None, "the checker must refuse this call"
    assert _outcome(ext.fused_step, call) == expected
    assert _outcome(_check.fused_step, call) == expected
    assert _outcome(ext.step, call) == expected  # the C column, called directly


def test_half_error_messages_name_the_argument():
    assert _outcome(_check.normalize, HOSTILE["half grads for float64 params"]) == (
        TypeError,
        "grads[0] has dtype float16: half-precision gradients need float32 params (the "
        "master weights), got float64 params",
    )
    assert _outcome(_check.normalize, HOSTILE["half wrong size"]) == (
        ValueError,
        "half[1] has 4 elements, expected 5 like its parameter",
    )
    assert _outcome(_check.normalize, HOSTILE["half float32"]) == (
        TypeError,
        "half[0] has dtype float32; a half copy is float16 or bfloat16",
    )
    assert _outcome(_check.normalize, HOSTILE["half shares a gradient"]) == (
        ValueError,
        "grads[1] and half[1] share memory; a half copy must be a separate array",
    )


def _unchanged(call, record) -> bool:
    if call[:3] != record[:3]:
        return False
    return all(
        (a is None) == (b is None) and all(x is y for x, y in zip(a or (), b or (), strict=True))
        for a, b in zip(call[3:], record[3:], strict=True)
    )


VALID = {
    "half grads": _adam(half=None),
    "half grads and copies": _adam(),
    "bfloat16 copies of float32 grads": None,  # filled below when ml_dtypes is installed
    "float32 grads, float16 copies": _adam(grad=np.float32),
    "no arrays": _adam(n=0),
    # normalized: the checker returns another record
    "strided half grad": _with(_adam(), 4, 0, np.zeros(8, np.float16)[::2]),
    "byte-swapped half grad": _with(_adam(), 4, 0, np.zeros(4, ">f2")),
    "half grad aliasing a parameter": None,
}
_a = _adam()
VALID["half grad aliasing a parameter"] = _with(_a, 4, 0, _a[3][0].view(np.float16)[:4])
del _a
if "ml_dtypes" in globals():
    VALID["bfloat16 copies of float32 grads"] = _adam(grad=np.float32, half=ml_dtypes.bfloat16)
else:  # pragma: no cover - ml_dtypes is in the test extra
    del VALID["bfloat16 copies of float32 grads"]


@pytest.mark.parametrize("name", list(VALID))
def test_fast_path_takes_exactly_the_half_calls_the_checker_keeps(name, backend, monkeypatch):
    ext = pytest.importorskip("normax._optim_ext")
    call = _copy(VALID[name])
    expected = _expected(call)
    normalized = not _unchanged(call, _check.normalize(*call))
    seen = []
    normalize = _check.normalize
    monkeypatch.setattr(_check, "normalize", lambda *a: seen.append(1) or normalize(*a))
    ext.fused_step(*call)
    assert bool(seen) == normalized
    if name != "half grad aliasing a parameter":  # its gradient changed with the parameter
        _check_result(call, expected)


def _opt(rng, dtype=np.float32):
    params = {"w": rng.standard_normal((3, 4)).astype(dtype), "b": np.zeros(4, dtype)}
    return params, normax.optim.Adam(params, lr=0.1)


OPT_ERRORS = {
    "half grads of float64 params": (
        np.float64,
        lambda p: ({k: np.ones(v.shape, np.float16) for k, v in p.items()}, None),
        TypeError,
        r"grads\['w'\] has dtype float16: half-precision gradients need float32",
    ),
    "half_params of float64 params": (
        np.float64,
        lambda p: (p, {k: np.zeros(v.shape, np.float16) for k, v in p.items()}),
        TypeError,
        r"half_params\['w'\] is a half copy of params\['w'\], which is float64",
    ),
    "half_params float32": (
        np.float32,
        lambda p: (p, {k: np.zeros(v.shape, np.float32) for k, v in p.items()}),
        TypeError,
        r"half_params\['w'\] has dtype float32; a half copy is float16 or bfloat16",
    ),
    "half_params wrong shape": (
        np.float32,
        lambda p: (p, {"w": np.zeros((4, 3), np.float16), "b": np.zeros(4, np.float16)}),
        ValueError,
        r"half_params\['w'\] has shape \(4, 3\), expected \(3, 4\)",
    ),
    "half_params missing a key": (
        np.float32,
        lambda p: (p, {"w": np.zeros((3, 4), np.float16)}),
        ValueError,
        r"half_params keys do not match params: missing \['b'\]",
    ),
    "half_params a list": (
        np.float32,
        lambda p: (p, [np.zeros((3, 4), np.float16), np.zeros(4, np.float16)]),
        TypeError,
        "half_params must be a dict with the keys of params",
    ),
    "half_params read-only": (
        np.float32,
        lambda p: (
            p,
            {"w": np.zeros((3, 4), np.float16), "b": _read_only(np.zeros(4, np.float16))},
        ),
        ValueError,
        r"half_params\['b'\] is read-only",
    ),
    "half_params strided": (
        np.float32,
        lambda p: (p, {"w": np.zeros((3, 8), np.float16)[:, ::2], "b": np.zeros(4, np.float16)}),
        ValueError,
        r"half_params\['w'\] must be C-contiguous",
    ),
    "half_params share a parameter": (
        np.float32,
        lambda p: (
            p,
            {"w": np.zeros((3, 4), np.float16), "b": p["w"].reshape(-1).view(np.float16)[:4]},
        ),
        ValueError,
        r"half_params\['b'\] and params\['w'\] share memory",
    ),
    "half_params share a gradient": (
        np.float32,
        lambda p: _grad_as_copy(p),
        ValueError,
        r"grads\['w'\] and half_params\['w'\] share memory|"
        r"half_params\['w'\] and grads\['w'\] share memory",
    ),
    "half_params share each other": (
        np.float32,
        lambda p: (p, {"w": (s := np.zeros(14, np.float16))[:12].reshape(3, 4), "b": s[10:]}),
        ValueError,
        r"half_params\['w'\] and half_params\['b'\] share memory",
    ),
}


def _read_only(a):
    a.flags.writeable = False
    return a


def _grad_as_copy(p):
    grads = {k: np.ones(v.shape, np.float16) for k, v in p.items()}
    return grads, {"w": grads["w"], "b": np.zeros(4, np.float16)}


@pytest.mark.parametrize("name", list(OPT_ERRORS))
def test_optimizer_refuses_bad_half_arguments_before_writing(name, backend, rng):
    dtype, make, exc, match = OPT_ERRORS[name]
    params, opt = _opt(rng, dtype)
    before = {k: v.copy() for k, v in params.items()}
    grads, half = make(params)
    grads = {k: v.copy() for k, v in grads.items()} if grads is params else grads
    with pytest.raises(exc, match=match):
        opt.step(grads, half_params=half)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert opt.steps == [0] and all(not s for s in opt.state)


def test_half_parameter_is_refused_with_a_hint():
    with pytest.raises(TypeError, match=r"unsupported dtype float16.*half_params"):
        normax.optim.SGD([np.zeros(3, np.float16)])


def test_docstring_examples_run():
    pytest.importorskip("ml_dtypes")
    import doctest

    for module in (normax.optim, normax.optim._base):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0
