"""A small network layer on normax's kernels: layers, a loss, checkpoints, and the demo.

Build a batch-normalized classifier, train it with :mod:`normax.optim`, switch batch norm to
its running averages for evaluation, checkpoint it and resume it bit for bit.

Examples
--------
>>> import numpy as np, normax
>>> from normax import nn
>>> model = nn.Sequential(nn.Linear(4, 16, bias=False, rng=0), nn.BatchNorm(16), nn.ReLU(),
...                       nn.Linear(16, 3, rng=1))
>>> loss_fn = nn.SoftmaxCrossEntropy()
>>> opt = normax.optim.Adam(model.parameters(), lr=1e-2)
>>> x, y = np.random.default_rng(0).standard_normal((32, 4)), np.arange(32) % 3
>>> loss = loss_fn(model(x), y)
>>> _ = model.backward(loss_fn.backward(), need_dx=False)
>>> opt.step(model.grads())
"""

from ._layers import BatchNorm, Linear, Module, ReLU, Sequential
from ._loss import SoftmaxCrossEntropy
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "BatchNorm",
    "Linear",
    "Module",
    "ReLU",
    "Sequential",
    "SoftmaxCrossEntropy",
    "load_checkpoint",
    "save_checkpoint",
]
