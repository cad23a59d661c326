"""The one contract of the fused optimizer step: every check, written once.

A fused step is the call ``step(kind, flags, hyper, params, grads, s0, s1, s2, half)``:

- ``kind``: the kernel (``_kinds.SGD`` ... ``_kinds.ADAM``); ``flags``: its option bits;
- ``hyper``: the kind's named record of scalars (``_kinds.HYPER[kind]``), Python floats;
- ``params``: a list of writeable arrays of one float dtype (float32 or float64), updated in
  place;
- ``grads``: a list of arrays with the sizes of the params, read only, all of the params' dtype
  or, with float32 params, all of one half-precision dtype (float16 or bfloat16), widened to
  float32 exactly as they are read (mixed precision: half gradients, float32 master weights);
- ``s0``, ``s1``, ``s2``: lists of state arrays like the params, or None, as :data:`RULES` says;
- ``half``: None, or (float32 params only) a list of writeable float16 or bfloat16 arrays of one
  dtype with the sizes of the params, overwritten with the updated params rounded once to
  nearest even in the same pass.

The compiled front door (``normax._optim_ext``) runs the calls that :func:`normalize` would
return unchanged: exact Python ints and floats, lists or tuples of C-contiguous aligned native
arrays of the dtypes above and matching sizes, no written buffer sharing memory with another or
with a gradient. It hands every other call here. :func:`normalize` makes a gradient contiguous
(or copies it when it shares memory with a parameter or state) and raises for everything else, so
every backend and every entry point raises the same error for the same call. The record then
runs on the active backend through :data:`KERNELS`: the ``step`` function of the C, Numba and
NumPy modules, one signature.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from typing import NamedTuple

import numpy as np

from .. import _backend, _dtypes
from .._checks import contiguous
from ._kinds import (
    ADAM,
    AMSGRAD,
    CENTERED,
    FIRST,
    FLAGS,
    HYPER,
    KINDS,
    MOMENTUM,
    NESTEROV,
    RMSPROP,
    SGD,
)

KERNELS = _backend.KernelTable(
    c="normax._optim_ext", numba="normax.optim._numba", numpy="normax.optim._reference"
)

KIND_NAMES = {v: n for n, v in KINDS.items()}
FLAG_NAMES = {v: n for n, v in FLAGS.items()}
SLOTS = ("s0", "s1", "s2")

# When a state list may or must be given: never, always, optional (but needed when any of the
# rule's flags is set), or exactly when the rule's flag is set.
NEVER, ALWAYS, OPTIONAL, WITH_FLAG = 0, 1, 2, 3


class Slot(NamedTuple):
    mode: int
    flags: int = 0


class Rule(NamedTuple):
    """What a kind accepts: its option flags and, per state slot, when a list is given."""

    flags: int
    slots: tuple[Slot, Slot, Slot]


_NO = Slot(NEVER)
RULES = {
    # s0: momentum buffer, when momentum > 0 (NESTEROV and FIRST act on it)
    SGD: Rule(NESTEROV | FIRST, (Slot(OPTIONAL, NESTEROV | FIRST), _NO, _NO)),
    # s0: velocity
    MOMENTUM: Rule(0, (Slot(ALWAYS), _NO, _NO)),
    # s0: square average; s1: gradient average (CENTERED); s2: momentum buffer, when momentum > 0
    RMSPROP: Rule(CENTERED, (Slot(ALWAYS), Slot(WITH_FLAG, CENTERED), Slot(OPTIONAL))),
    # s0, s1: first and second moments; s2: their running maximum (AMSGRAD)
    ADAM: Rule(AMSGRAD, (Slot(ALWAYS), Slot(ALWAYS), Slot(WITH_FLAG, AMSGRAD))),
}


def fused_step(kind, flags, hyper, params, grads, s0=None, s1=None, s2=None, half=None) -> None:
    """Update ``params`` in place on the active backend (the front door without the extension)."""
    KERNELS.active().step(*normalize(kind, flags, hyper, params, grads, s0, s1, s2, half))


def normalize(kind, flags, hyper, params, grads, s0=None, s1=None, s2=None, half=None) -> tuple:
    """The canonical record of a fused step, or TypeError / ValueError naming what is wrong."""
    kind = _kind(kind)
    rule = RULES[kind]
    flags = _flags(flags, kind, rule)
    hyper = _hyper(hyper, kind)
    params = _list(params, "params")
    dtype = _param_dtype(params)
    for k, p in enumerate(params):
        _state_array(p, f"params[{k}]", dtype, p)
    grads = _grads(grads, params, dtype)
    states = [
        _states(s, name, slot, kind, flags, params)
        for s, name, slot in zip((s0, s1, s2), SLOTS, rule.slots, strict=True)
    ]
    half = _half_copies(half, params, dtype)
    grads = _separate(params, grads, states, half)
    return (kind, flags, hyper, params, grads, *states, half)


# ---- scalars -----------------------------------------------------------------------------------


def _int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _kind(kind) -> int:
    k = _int(kind, "kind")
    if k not in RULES:
        known = ", ".join(f"{v} ({n})" for v, n in KIND_NAMES.items())
        raise ValueError(f"unknown optimizer kind {k}; known: {known}")
    return k


def _flags(flags, kind: int, rule: Rule) -> int:
    f = _int(flags, "flags")
    if f < 0 or f & ~rule.flags:
        allowed = " | ".join(n for v, n in FLAG_NAMES.items() if v & rule.flags) or "none"
        raise ValueError(
            f"flags {f} are not valid for kind {KIND_NAMES[kind]} (allowed: {allowed})"
        )
    return f


def _hyper(hyper, kind: int):
    record = HYPER[kind]
    if type(hyper) is not record:
        raise TypeError(
            f"hyper must be a {record.__name__} for kind {KIND_NAMES[kind]}, "
            f"got {type(hyper).__name__}"
        )
    if len(hyper) != len(record._fields):
        raise ValueError(
            f"hyper has {len(hyper)} values, {record.__name__} has {len(record._fields)}"
        )
    return record(*(_real(v, f"hyper.{n}") for v, n in zip(hyper, record._fields, strict=True)))


def _real(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float: {value!r}") from None


# ---- arrays ------------------------------------------------------------------------------------


def _list(value, name: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays, got {type(value).__name__}")
    return list(value)


def _param_dtype(params: list) -> np.dtype:
    if not params:
        return np.dtype(np.float64)
    p = params[0]
    if not isinstance(p, np.ndarray):
        raise TypeError(f"params[0] must be a numpy.ndarray, got {type(p).__name__}")
    if p.dtype.type not in (np.float32, np.float64):
        raise TypeError(f"params[0] has unsupported dtype {p.dtype}; supported: float32, float64")
    return p.dtype


def _array(a, name: str, dtype: np.dtype, like: np.ndarray) -> np.ndarray:
    """``a`` is an ndarray of ``dtype``'s type with the size of ``like`` (``params[k]``)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype.type is not dtype.type:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype} (the dtype of params)")
    if a.size != like.size:
        raise ValueError(f"{name} has {a.size} elements, expected {like.size} like its parameter")
    return a


def in_place(a: np.ndarray, name: str) -> np.ndarray:
    """An array a kernel updates in place: C-contiguous, aligned, native-endian and writeable.

    Nothing can be normalized here (a copy would be updated instead), so it is right or an
    error; the optimizers check their parameters with it when they are constructed.
    """
    if not (a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative):
        raise ValueError(
            f"{name} must be C-contiguous, aligned and native-endian to be updated in place"
        )
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return a


def _state_array(a, name: str, dtype: np.dtype, like: np.ndarray) -> np.ndarray:
    return in_place(_array(a, name, dtype, like), name)


def is_half(dtype: np.dtype) -> bool:
    """float16 or bfloat16, in either byte order."""
    return _dtypes.is_half(dtype.newbyteorder("="))


def check_half_grad(g: np.ndarray, dtype: np.dtype, name: str) -> None:
    """A half-precision gradient is applied to float32 master weights only."""
    if dtype != _dtypes.FLOAT32:
        raise TypeError(
            f"{name} has dtype {g.dtype}: half-precision gradients need float32 params "
            f"(the master weights), got {dtype} params"
        )


def _grads(grads, params: list, dtype: np.dtype) -> list:
    grads = _list(grads, "grads")
    if len(grads) != len(params):
        raise ValueError(f"grads has {len(grads)} arrays, params has {len(params)}")
    out = []
    for k, (g, p) in enumerate(zip(grads, params, strict=True)):
        name = f"grads[{k}]"
        if isinstance(g, np.ndarray) and is_half(g.dtype):
            check_half_grad(g, dtype, name)
            _array(g, name, g.dtype, p)
        else:
            _array(g, name, dtype, p)
        if k and g.dtype.type is not grads[0].dtype.type:
            raise TypeError(
                f"{name} has dtype {g.dtype}, grads[0] has {grads[0].dtype}: the gradients "
                "of one fused step share one dtype"
            )
        out.append(contiguous(g))
    return out


def _half_copies(half, params: list, dtype: np.dtype) -> list | None:
    """The half copies of the updated params: writeable float16/bfloat16 arrays of one dtype."""
    if half is None:
        return None
    half = _list(half, "half")
    if len(half) != len(params):
        raise ValueError(f"half has {len(half)} arrays, params has {len(params)}")
    for k, (h, p) in enumerate(zip(half, params, strict=True)):
        name = f"half[{k}]"
        if not isinstance(h, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(h).__name__}")
        if not is_half(h.dtype):
            raise TypeError(f"{name} has dtype {h.dtype}; a half copy is float16 or bfloat16")
        if dtype != _dtypes.FLOAT32:
            raise TypeError(
                f"{name} is a half copy of {dtype} params; half copies need float32 params"
            )
        if k and h.dtype.type is not half[0].dtype.type:
            raise TypeError(
                f"{name} has dtype {h.dtype}, half[0] has {half[0].dtype}: the half copies of "
                "one fused step share one dtype"
            )
        _state_array(h, name, h.dtype, p)
    return half


def _states(states, name: str, slot: Slot, kind: int, flags: int, params: list):
    given = states is not None
    need = {
        NEVER: False,
        ALWAYS: True,
        OPTIONAL: given or bool(flags & slot.flags),
        WITH_FLAG: bool(flags & slot.flags),
    }[slot.mode]
    if given != need:
        raise ValueError(_slot_message(name, slot, kind, flags))
    if not given:
        return None
    states = _list(states, name)
    if len(states) != len(params):
        raise ValueError(f"{name} has {len(states)} arrays, params has {len(params)}")
    for k, (s, p) in enumerate(zip(states, params, strict=True)):
        _state_array(s, f"{name}[{k}]", p.dtype, p)
    return states


def _slot_message(name: str, slot: Slot, kind: int, flags: int) -> str:
    what = f"for kind {KIND_NAMES[kind]}"
    flag_names = " or ".join(n for v, n in FLAG_NAMES.items() if v & slot.flags)
    if slot.mode == NEVER:
        return f"{name} must be None {what}"
    if slot.mode == ALWAYS:
        return f"{name} must be a list of state arrays {what}, got None"
    if slot.mode == OPTIONAL:
        return f"{name} must be a list of state arrays {what} with flag {flag_names}, got None"
    state = "set" if flags & slot.flags else "not set"
    return f"{name} must be given exactly when flag {flag_names} is set {what} (it is {state})"


def _span(a: np.ndarray) -> tuple[int, int]:
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def _separate(params: list, grads: list, states: list, half: list | None) -> list:
    """Refuse written buffers that share memory; copy a gradient that shares memory with one.

    The kernels write parameters and states while they read gradients, so a gradient aliasing
    one of them would give backend-dependent results; its copy gives the result of the
    unaliased call on every backend. A half copy is an output only: one that shares memory with
    anything is refused.
    """
    written = sorted(  # (start, end, name); empty arrays share no memory
        (*_span(a), f"{name}[{k}]")
        for name, arrays in [("params", params), *zip(SLOTS, states, strict=True), ("half", half)]
        for k, a in enumerate(arrays or ())
        if a.nbytes
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(written):
        if start < end:
            what = (
                "a half copy must be a separate array"
                if second.startswith("half") or first.startswith("half")
                else "every parameter and state array must be a separate array"
            )
            raise ValueError(f"{first} and {second} share memory; {what}")
    copies = [w for w in written if w[2].startswith("half")]
    copy_starts = [s for s, _, _ in copies]
    starts = [s for s, _, _ in written]
    out = []
    for k, g in enumerate(grads):
        lo, hi = _span(g)
        i = bisect.bisect_left(copy_starts, hi) - 1
        if g.nbytes and i >= 0 and copies[i][1] > lo:
            raise ValueError(
                f"grads[{k}] and {copies[i][2]} share memory; a half copy must be a separate array"
            )
    for g in grads:
        lo, hi = _span(g)
        # the disjoint sorted spans have sorted ends: only the last one starting before hi can
        # reach past lo
        i = bisect.bisect_left(starts, hi) - 1
        out.append(g.copy() if g.nbytes and i >= 0 and written[i][1] > lo else g)
    return out
