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

Mixed precision: float32 master weights take float16 (or bfloat16) gradients, and
``half_params`` receives the updated weights rounded once, written in the same fused pass:

>>> master = [np.full(2, 0.5, np.float32)]
>>> model = [master[0].astype(np.float16)]
>>> opt = normax.optim.SGD(master, lr=1e-4)
>>> opt.step([np.ones(2, np.float16)], half_params=model)
>>> master[0], model[0]
(array([0.4999, 0.4999], dtype=float32), array([0.5, 0.5], dtype=float16))
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
