"""Type stubs of normax._optim_ext, the compiled front door of the fused optimizer step."""

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from normax.optim._kinds import AdamHyper, MomentumHyper, RMSpropHyper, SGDHyper

_Hyper = SGDHyper | MomentumHyper | RMSpropHyper | AdamHyper
_Arrays = Sequence[npt.NDArray[np.float32]] | Sequence[npt.NDArray[np.float64]]
# float16 or bfloat16 (ml_dtypes) arrays: half-precision gradients and copies of float32 params
_Halves = Sequence[npt.NDArray[np.generic]]

SGD: Final[int]
MOMENTUM: Final[int]
RMSPROP: Final[int]
ADAM: Final[int]
NESTEROV: Final[int]
FIRST: Final[int]
CENTERED: Final[int]
AMSGRAD: Final[int]
NHYPER: Final[int]

def fused_step(
    kind: int,
    flags: int,
    hyper: _Hyper,
    params: _Arrays,
    grads: _Arrays | _Halves,
    s0: _Arrays | None = None,
    s1: _Arrays | None = None,
    s2: _Arrays | None = None,
    half: _Halves | None = None,
) -> None:
    """Update ``params`` in place with one fused optimizer step on the active backend."""

def step(
    kind: int,
    flags: int,
    hyper: _Hyper,
    params: _Arrays,
    grads: _Arrays | _Halves,
    s0: _Arrays | None,
    s1: _Arrays | None,
    s2: _Arrays | None,
    half: _Halves | None = None,
) -> None:
    """The C kernel on the canonical record (the "c" entry of ``_check.KERNELS``)."""
