"""Dispatch of the fused update to the active backend (C, Numba or NumPy).

All three take ``(kind, flags, hyper, params, grads, s0, s1, s2)``: lists of same-dtype,
C-contiguous arrays already checked by the optimizer, the kernel selector and flags of
``_kinds``, and the tuple of derived scalars described in ``csrc/optim.h``.
"""

from __future__ import annotations

from .. import _backend
from . import _reference


def _c_step(kind, flags, hyper, params, grads, s0, s1, s2) -> None:
    _backend._core.optim_step(kind, flags, hyper, params, grads, s0, s1, s2)


def _numba_step(kind, flags, hyper, params, grads, s0, s1, s2) -> None:
    from . import _numba

    _numba.step(kind, flags, hyper, params, grads, s0, s1, s2)


TABLE = {"c": _c_step, "numba": _numba_step, "numpy": _reference.step}


def fused_step(kind, flags, hyper, params, grads, s0=None, s1=None, s2=None) -> None:
    """Run one in-place update of ``params`` on the active backend."""
    _backend.impl(TABLE)(kind, flags, tuple(hyper), params, grads, s0, s1, s2)
