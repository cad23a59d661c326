"""The vocabulary of the fused optimizer step: kernel selectors, option flags, named scalars.

The selectors and flags are the values of ``enum nmx_optim_kind`` and ``enum nmx_optim_flag``
in ``csrc/optim.h``. They are spelled out here so that the Numba and NumPy backends work without
the compiled extension; the extension exports the header's values and refuses to import if
these differ (:func:`verify`).

Each kernel takes its scalar hyperparameters as one named record, derived once per step in
double precision by the optimizer. The fields are those the header documents for the kind, in
its order: the compiled front door copies them into ``nmx_optim_call.h`` as they come.
"""

from __future__ import annotations

from typing import NamedTuple

SGD, MOMENTUM, RMSPROP, ADAM = 0, 1, 2, 3
NESTEROV, FIRST, CENTERED, AMSGRAD = 1, 2, 4, 8

KINDS = {"SGD": SGD, "MOMENTUM": MOMENTUM, "RMSPROP": RMSPROP, "ADAM": ADAM}
FLAGS = {"NESTEROV": NESTEROV, "FIRST": FIRST, "CENTERED": CENTERED, "AMSGRAD": AMSGRAD}
NAMES = KINDS | FLAGS


class SGDHyper(NamedTuple):
    """Scalars of :data:`SGD`: ``d = g + weight_decay * p``, ``p -= lr * d`` (with momentum)."""

    lr: float
    weight_decay: float
    momentum: float
    one_minus_dampening: float


class MomentumHyper(NamedTuple):
    """Scalars of :data:`MOMENTUM`: ``v = beta * v + (1 - beta) * g``, ``p -= lr * v``.

    ``lr`` already includes the bias correction ``1 / (1 - beta**t)`` when it is on.
    """

    lr: float
    beta: float
    one_minus_beta: float


class RMSpropHyper(NamedTuple):
    """Scalars of :data:`RMSPROP`; ``one_minus_alpha`` is the averaging weight of new values."""

    lr: float
    weight_decay: float
    alpha: float
    one_minus_alpha: float
    eps: float
    momentum: float


class AdamHyper(NamedTuple):
    """Scalars of :data:`ADAM` at step ``t``.

    ``step_size = lr / (1 - beta1**t)``; ``weight_decay`` is Adam's L2 term (0 for AdamW);
    ``decay = 1 - lr * weight_decay`` is AdamW's decoupled decay (exactly 1 otherwise);
    ``bias_correction2_sqrt = sqrt(1 - beta2**t)``.
    """

    step_size: float
    weight_decay: float
    decay: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float
    bias_correction2_sqrt: float


HYPER = {SGD: SGDHyper, MOMENTUM: MomentumHyper, RMSPROP: RMSpropHyper, ADAM: AdamHyper}


def verify(header: dict[str, int]) -> None:
    """Raise ImportError unless ``header`` (name -> value, from optim.h) matches this module."""
    if header != NAMES:
        raise ImportError(
            f"normax.optim._kinds {NAMES} does not match csrc/optim.h {header}; "
            "rebuild the extension or update _kinds"
        )
