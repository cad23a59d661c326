"""Layers with explicit forward and backward passes: Linear, BatchNorm, ReLU, Sequential.

A layer keeps what its backward pass needs from the last ``forward`` call, and ``backward(dy)``
returns the gradient with respect to its input while storing the gradients of its parameters.
``parameters()`` and ``grads()`` return dicts with the same keys, ready for ``normax.optim``::

    opt = normax.optim.Adam(model.parameters(), lr=1e-3)
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step(model.grads())
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import FLOAT_DTYPES, real_scalar


def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _features(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return int(n)


class Module:
    """Base class: train/eval mode, parameters, gradients and buffers (all empty here)."""

    training = True

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable arrays by name (updated in place by an optimizer)."""
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        """Gradients from the last ``backward``, with the keys of :meth:`parameters`."""
        return {}

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state saved in checkpoints (batch-norm running statistics)."""
        return {}

    def train(self, mode: bool = True):
        """Switch to training mode (``mode=False``: evaluation mode); returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Switch to evaluation mode (batch norm uses its running statistics)."""
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy, need_dx: bool = True):  # pragma: no cover - abstract
        raise NotImplementedError

    def _saved(self, attr: str):
        value = getattr(self, attr, None)
        if value is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward needs a forward pass in training mode first"
            )
        return value


class Linear(Module):
    """``y = x @ weight + bias`` for ``x`` of shape (..., in_features).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output feature axes (the last axis).
    bias : bool
        Add a bias; leave it out before a batch norm, whose beta makes it redundant.
    dtype : float32 or float64
        Dtype of the parameters; inputs are converted to it.
    rng : numpy.random.Generator or int, optional
        Source of the He-uniform initial weights, U(-sqrt(6 / in), sqrt(6 / in)).

    Examples
    --------
    >>> import numpy as np, normax
    >>> layer = normax.nn.Linear(3, 2, rng=0)
    >>> layer(np.ones((4, 3))).shape
    (4, 2)
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        self.in_features = _features(in_features, "in_features")
        self.out_features = _features(out_features, "out_features")
        self.dtype = _dtype(dtype)
        bound = math.sqrt(6.0 / self.in_features)
        gen = np.random.default_rng(rng)
        self.weight = gen.uniform(-bound, bound, (self.in_features, self.out_features)).astype(
            self.dtype
        )
        self.dweight = np.zeros_like(self.weight)
        self.bias = np.zeros(self.out_features, self.dtype) if bias else None
        self.dbias = np.zeros_like(self.bias) if bias else None
        self._x = None

    def parameters(self):
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def grads(self):
        return {"weight": self.dweight, **({"bias": self.dbias} if self.bias is not None else {})}

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expects input of shape (..., {self.in_features}), got {x.shape}"
            )
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.weight
        if self.bias is not None:
            y += self.bias
        self._x = x2 if self.training else None
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy, need_dx=True):
        x2 = self._saved("_x")
        dy2 = np.asarray(dy, dtype=self.dtype).reshape(-1, self.out_features)
        if dy2.shape[0] != x2.shape[0]:
            raise ValueError(
                f"dy has shape {np.shape(dy)}, the forward output had "
                f"{x2.shape[0]} rows of {self.out_features}"
            )
        np.matmul(x2.T, dy2, out=self.dweight)
        if self.bias is not None:
            dy2.sum(axis=0, out=self.dbias)
        if not need_dx:
            return None
        return (dy2 @ self.weight.T).reshape(*np.shape(dy)[:-1], self.in_features)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class BatchNorm(Module):
    """Batch normalization over every axis but ``axis``, on normax's fused kernels.

    Training mode normalizes with the batch statistics and updates the running averages
    (``momentum`` is the weight of the new batch, as in PyTorch); evaluation mode normalizes with
    the running averages, so a single example is classified the same way whatever its batch.

    Parameters
    ----------
    num_features : int
        Size of the feature (channel) axis.
    axis : int
        The feature axis: 1 for (N, C) and (N, C, H, W), -1 for channels-last, 0 for the
        course notes' (C, m) layout.
    momentum, eps : float
        Running-average weight of the new batch, and the variance offset.
    dtype : float32 or float64
    """

    def __init__(self, num_features, *, axis=1, momentum=0.1, eps=1e-5, dtype=np.float32):
        n = _features(num_features, "num_features")
        self.num_features, self.axis, self.dtype = n, axis, _dtype(dtype)
        self.momentum = real_scalar(momentum, "momentum", 0.0, 1.0)
        self.eps = real_scalar(eps, "eps", 0.0, math.inf)
        self.gamma, self.beta = np.ones(n, self.dtype), np.zeros(n, self.dtype)
        self.dgamma, self.dbeta = np.zeros(n, self.dtype), np.zeros(n, self.dtype)
        self.running_mean, self.running_var = np.zeros(n, self.dtype), np.ones(n, self.dtype)
        self._cache = None

    def parameters(self):
        return {"gamma": self.gamma, "beta": self.beta}

    def grads(self):
        return {"gamma": self.dgamma, "beta": self.dbeta}

    def buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def forward(self, x):
        import normax

        x = np.asarray(x, dtype=self.dtype)
        if self.training:
            y, self._cache = normax.batch_norm_train(
                x,
                self.gamma,
                self.beta,
                self.running_mean,
                self.running_var,
                axis=self.axis,
                momentum=self.momentum,
                eps=self.eps,
            )
            return y
        self._cache = None
        return normax.batch_norm_infer(
            x,
            self.gamma,
            self.beta,
            self.running_mean,
            self.running_var,
            axis=self.axis,
            eps=self.eps,
        )

    def backward(self, dy, need_dx=True):
        import normax

        cache = self._saved("_cache")
        dx, dgamma, dbeta = normax.batch_norm_backward(np.asarray(dy, dtype=self.dtype), cache)
        np.copyto(self.dgamma, dgamma)
        np.copyto(self.dbeta, dbeta)
        return dx if need_dx else None

    def __repr__(self):
        return f"BatchNorm({self.num_features}, axis={self.axis}, momentum={self.momentum})"


class ReLU(Module):
    """``max(x, 0)``; the gradient passes where ``x > 0`` (NaN stays NaN)."""

    def __init__(self):
        self._mask = None

    def forward(self, x):
        x = np.asarray(x)
        self._mask = x > 0 if self.training else None
        return np.maximum(x, 0)

    def backward(self, dy, need_dx=True):
        mask = self._saved("_mask")
        if np.shape(dy) != mask.shape:
            raise ValueError(f"dy has shape {np.shape(dy)}, the forward input had {mask.shape}")
        return np.multiply(dy, mask) if need_dx else None

    def __repr__(self):
        return "ReLU()"


class Sequential(Module):
    """Layers applied in order; parameters are named ``"<index>.<name>"``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> from normax.nn import Sequential, Linear, BatchNorm, ReLU
    >>> model = Sequential(Linear(4, 8, bias=False, rng=0), BatchNorm(8), ReLU(), Linear(8, 3))
    >>> sorted(model.parameters())
    ['0.weight', '1.beta', '1.gamma', '3.bias', '3.weight']
    """

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} must be a normax.nn.Module, got {type(layer).__name__}")
        self.layers = list(layers)

    def _collect(self, what: str) -> dict[str, np.ndarray]:
        return {
            f"{i}.{k}": v
            for i, layer in enumerate(self.layers)
            for k, v in getattr(layer, what)().items()
        }

    def parameters(self):
        return self._collect("parameters")

    def grads(self):
        return self._collect("grads")

    def buffers(self):
        return self._collect("buffers")

    def train(self, mode=True):
        for layer in self.layers:
            layer.train(mode)
        return super().train(mode)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy, need_dx=True):
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=need_dx or i > 0)
        return dy

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"
