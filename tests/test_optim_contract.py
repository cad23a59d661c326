"""The one contract of the fused optimizer step (normax.optim._check) and its compiled door.

Every hostile call raises the same exception type and message on every backend, through the
compiled front door, through its C entry point called directly, and through the pure-Python
door; the compiled door runs exactly the calls the checker returns unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax.optim import _check, _kinds
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

ext = pytest.importorskip("normax._optim_ext")

SGD_H = SGDHyper(lr=0.1, weight_decay=0.0, momentum=0.9, one_minus_dampening=1.0)
ADAM_H = AdamHyper(0.01, 0.0, 1.0, 0.1, 0.999, 0.001, 1e-8, 0.03)


def _arrays(n=3, size=4, dtype=np.float64):
    return [np.full(size + k, 0.5, dtype) for k in range(n)]


def _adam(**changes):
    """A valid Adam call (kind, flags, hyper, params, grads, s0, s1, s2) with ``changes``."""
    call = dict(
        kind=ADAM,
        flags=0,
        hyper=ADAM_H,
        params=_arrays(),
        grads=_arrays(),
        s0=_arrays(),
        s1=_arrays(),
        s2=None,
    )
    call.update(changes)
    return tuple(call.values())


def _sgd(**changes):
    call = dict(
        kind=SGD, flags=0, hyper=SGD_H, params=_arrays(), grads=_arrays(), s0=None, s1=None, s2=None
    )
    call.update(changes)
    return tuple(call.values())


def _unaligned(n: int) -> np.ndarray:
    """A C-contiguous float64 array whose data is not 8-byte aligned."""
    a = np.zeros(8 * n + 1, np.uint8)[1:].view(np.float64)
    assert a.flags.c_contiguous and not a.flags.aligned
    return a


def _read_only():
    a = _arrays()
    a[1].flags.writeable = False
    return a


def _swapped():
    a = _arrays()
    a[2] = a[2].astype(a[2].dtype.newbyteorder())
    return a


def _shared_state():
    call = list(_adam())
    call[5][1] = call[3][1]  # s0[1] is params[1]
    return tuple(call)


def _overlapping_params():
    base = np.zeros(10)
    return _sgd(params=[base[:6], base[4:]], grads=[np.zeros(6), np.zeros(6)])


HOSTILE = {
    "kind unknown": _adam(kind=42),
    "kind negative": _adam(kind=-1),
    "kind huge": _adam(kind=2**100),
    "kind float": _adam(kind=3.0),
    "kind bool": _adam(kind=True),
    "kind str": _adam(kind="3"),
    "flags negative": _adam(flags=-1),
    "flags huge": _adam(flags=2**70),
    "flags forged": _adam(flags=16),
    "flags of another kind": _adam(flags=NESTEROV),
    "flags None": _adam(flags=None),
    "hyper unnamed tuple": _adam(hyper=tuple(ADAM_H)),
    "hyper of another kind": _adam(hyper=SGD_H),
    "hyper forged length": _adam(hyper=tuple.__new__(AdamHyper, (0.1,))),
    "hyper forged length 20": _adam(hyper=tuple.__new__(AdamHyper, (0.1,) * 20)),
    "hyper str": _adam(hyper=ADAM_H._replace(eps="1e-8")),
    "hyper None": _adam(hyper=ADAM_H._replace(eps=None)),
    "hyper huge int": _adam(hyper=ADAM_H._replace(eps=10**400)),
    "params None": _adam(params=None),
    "params array": _adam(params=np.zeros(3)),
    "params generator": _adam(params=(a for a in _arrays())),
    "params holds an int": _adam(params=[1, 2, 3]),
    "params holds None": _adam(params=[np.zeros(4), None, np.zeros(6)]),
    "params int dtype": _adam(params=[np.zeros(4, np.int64), *_arrays()[1:]]),
    "params float16": _adam(params=[np.zeros(4, np.float16), *_arrays()[1:]]),
    "params mixed dtypes": _adam(params=[np.zeros(4), np.zeros(5, np.float32), np.zeros(6)]),
    "params strided": _adam(params=[np.zeros(8)[::2], *_arrays()[1:]]),
    "params read-only": _adam(params=_read_only()),
    "params byte-swapped": _adam(params=_swapped()),
    "params unaligned": _adam(params=[_unaligned(4), *_arrays()[1:]]),
    "s1 unaligned": _adam(s1=[_unaligned(4), *_arrays()[1:]]),
    "params overlapping": _overlapping_params(),
    "grads None": _adam(grads=None),
    "grads too few": _adam(grads=_arrays(2)),
    "grads too many": _adam(grads=_arrays(4)),
    "grads wrong size": _adam(grads=_arrays(size=5)),
    "grads wrong dtype": _adam(grads=_arrays(dtype=np.float32)),
    "grads hold a list": _adam(grads=[[0.0] * 4, *_arrays()[1:]]),
    "grads huge broadcast": _adam(
        grads=[np.lib.stride_tricks.as_strided(np.zeros(1), (2**40,), (0,)), *_arrays()[1:]]
    ),
    "s0 None for Adam": _adam(s0=None),
    "s1 None for Adam": _adam(s1=None),
    "s0 not a list": _adam(s0=np.zeros(4)),
    "s0 too short": _adam(s0=_arrays(2)),
    "s0 wrong size": _adam(s0=_arrays(size=2)),
    "s0 wrong dtype": _adam(s0=_arrays(dtype=np.float32)),
    "s0 read-only": _adam(s0=_read_only()),
    "s0 strided": _adam(s0=[np.zeros(8)[::2], *_arrays()[1:]]),
    "s0 shares a parameter": _shared_state(),
    "AMSGRAD without s2": _adam(flags=AMSGRAD),
    "s2 without AMSGRAD": _adam(s2=_arrays()),
    "SGD NESTEROV without buffer": _sgd(flags=NESTEROV),
    "SGD FIRST without buffer": _sgd(flags=FIRST),
    "SGD with s1": _sgd(s1=_arrays()),
    "MOMENTUM without s0": (
        MOMENTUM,
        0,
        MomentumHyper(0.1, 0.9, 0.1),
        _arrays(),
        _arrays(),
        None,
        None,
        None,
    ),
    "RMSPROP CENTERED without s1": (
        RMSPROP,
        CENTERED,
        RMSpropHyper(0.1, 0, 0.9, 0.1, 1e-8, 0),
        _arrays(),
        _arrays(),
        _arrays(),
        None,
        None,
    ),
}


def _outcome(fn, call):
    """(exception type, message) of ``fn(*call)`` on fresh copies of its arrays."""
    snapshot = [
        [a.copy() if isinstance(a, np.ndarray) and a.size < 1000 else a for a in x]
        if isinstance(x, list)
        else x
        for x in call
    ]
    try:
        fn(*call)
    except (TypeError, ValueError) as exc:
        for x, y in zip(call, snapshot, strict=True):  # nothing written before the error
            if isinstance(x, list):
                for a, b in zip(x, y, strict=True):
                    if isinstance(a, np.ndarray) and a.size < 1000:
                        np.testing.assert_array_equal(a, b)
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_call_raises_the_same_error_everywhere(name, backend):
    call = HOSTILE[name]
    expected = _outcome(_check.normalize, call)
    assert expected is not None, "the checker must refuse this call"
    assert _outcome(ext.fused_step, call) == expected
    assert _outcome(_check.fused_step, call) == expected
    assert _outcome(ext.step, call) == expected  # the C column, called directly


def test_error_messages_name_the_argument():
    assert _outcome(_check.normalize, HOSTILE["kind unknown"])[1].startswith(
        "unknown optimizer kind 42"
    )
    assert _outcome(_check.normalize, HOSTILE["grads wrong size"]) == (
        ValueError,
        "grads[0] has 5 elements, expected 4 like its parameter",
    )
    assert _outcome(_check.normalize, HOSTILE["s0 shares a parameter"]) == (
        ValueError,
        "params[1] and s0[1] share memory; every parameter and state array must be a "
        "separate array",
    )
    assert _outcome(_check.normalize, HOSTILE["AMSGRAD without s2"]) == (
        ValueError,
        "s2 must be given exactly when flag AMSGRAD is set for kind ADAM (it is set)",
    )


def test_kinds_match_the_c_header():
    assert {name: getattr(ext, name) for name in _kinds.NAMES} == _kinds.NAMES
    assert max(len(r._fields) for r in _kinds.HYPER.values()) <= ext.NHYPER
    with pytest.raises(ImportError, match=r"does not match csrc/optim\.h"):
        _kinds.verify({**_kinds.NAMES, "AMSGRAD": 16})


# ---- the fast path takes exactly the calls the checker returns unchanged ----------------------


_G = np.zeros(6)


def _aliased_grad():
    call = list(_sgd(s0=_arrays()))
    call[4] = [call[3][0], *call[4][1:]]  # grads[0] is params[0]
    return tuple(call)


VALID = {
    "adam": _adam(),
    "adam amsgrad float32": _adam(
        flags=AMSGRAD,
        params=_arrays(dtype=np.float32),
        grads=_arrays(dtype=np.float32),
        s0=_arrays(dtype=np.float32),
        s1=_arrays(dtype=np.float32),
        s2=_arrays(dtype=np.float32),
    ),
    "tuples": tuple(tuple(x) if isinstance(x, list) else x for x in _adam()),
    "empty": _sgd(params=[], grads=[]),
    "empty arrays": _sgd(params=[np.zeros(0), np.zeros(0)], grads=[np.zeros(0), np.zeros(0)]),
    "2-d arrays of equal size": _sgd(params=[np.zeros((2, 3))], grads=[np.zeros(6)]),
    "sgd nesterov first": _sgd(flags=NESTEROV | FIRST, s0=_arrays()),
    "grads share memory with each other": _sgd(grads=[_G[:4], _G[:5], _G]),
    # normalized: the checker returns another record
    "kind numpy int": _adam(kind=np.int64(ADAM)),
    "hyper numpy float": _adam(hyper=ADAM_H._replace(eps=np.float64(1e-8))),
    "hyper int": _adam(hyper=ADAM_H._replace(decay=1)),
    "grads strided": _adam(grads=[np.zeros(8)[::2], *_arrays()[1:]]),
    "grads byte-swapped": _adam(grads=_swapped()),
    "grads unaligned": _adam(grads=[_unaligned(4), *_arrays()[1:]]),
    "grads read-only": _adam(grads=_read_only()),
    "grad is a parameter": _aliased_grad(),
    "many arrays": _sgd(params=_arrays(40), grads=_arrays(40)),
}


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _unchanged(call, record) -> bool:
    """Whether the checker's record is the call itself (same scalars, the very same arrays)."""
    call = (*call, None) if len(call) < len(record) else call  # no half copies given
    (kind, flags, hyper), (kind2, flags2, hyper2) = call[:3], record[:3]
    if not (_same(kind, kind2) and _same(flags, flags2) and type(hyper) is type(hyper2)):
        return False
    if not all(_same(x, y) for x, y in zip(hyper, hyper2, strict=True)):
        return False
    for a, b in zip(call[3:], record[3:], strict=True):
        if (a is None) != (b is None):
            return False
        if a is not None and any(x is not y for x, y in zip(a, b, strict=True)):
            return False
    return True


@pytest.mark.parametrize("name", list(VALID))
def test_fast_path_takes_exactly_the_calls_the_checker_keeps(name, backend, monkeypatch):
    call = VALID[name]
    expected = not _unchanged(call, _check.normalize(*call))
    seen = []
    normalize = _check.normalize
    monkeypatch.setattr(_check, "normalize", lambda *a: seen.append(1) or normalize(*a))
    ext.fused_step(*call)
    assert bool(seen) == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aliased_gradient_reads_the_values_before_the_step(dtype, backend):
    # the gradient is the parameter itself: every backend uses its value from before the step
    p = np.linspace(-1, 1, 50).astype(dtype)
    expected = p.copy()
    normax.optim.SGD([expected], lr=0.1, momentum=0.9).step([expected.copy()])
    normax.optim.SGD([p], lr=0.1, momentum=0.9).step([p])
    np.testing.assert_array_equal(p, expected)


def test_heap_tables_for_many_arrays_match_the_reference():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(k % 7) for k in range(100)]
    grads = [rng.standard_normal(k % 7) for k in range(100)]
    ref = [p.copy() for p in params]
    ext.step(SGD, 0, SGD_H, params, grads, None, None, None)
    normax.optim._reference.step(SGD, 0, SGD_H, ref, grads, None, None, None)
    for a, b in zip(params, ref, strict=True):
        np.testing.assert_array_equal(a, b)
