"""Optimizers with fused in-place updates, learning-rate schedules, and state save/load.

``SGD``, ``RMSprop``, ``Adam`` and ``AdamW`` match torch.optim step for step; ``Momentum`` is
the exponentially weighted form. Each update runs as one fused kernel over all parameters of
a group (C with OpenMP; Numba and NumPy backends give the same result).

Examples
--------
>>> import numpy as np, normax
>>> params = {"w": np.zeros(3), "b": np.zeros(1)}
>>> opt = normax.optim.Adam(params, lr=1e-2)
>>> opt.step({"w": np.ones(3), "b": np.ones(1)})
>>> params["w"]
array([-0.01, -0.01, -0.01])
"""

from ._base import Optimizer
from ._optimizers import SGD, Adam, AdamW, Momentum, RMSprop
from ._state import load_state, save_state
from .schedules import cosine, exponential, inverse_time, step_decay

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Momentum",
    "Optimizer",
    "RMSprop",
    "cosine",
    "exponential",
    "inverse_time",
    "load_state",
    "save_state",
    "step_decay",
]
