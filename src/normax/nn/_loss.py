"""Softmax cross-entropy loss for networks, on normax's fused loss-and-gradient kernel."""

from __future__ import annotations

import numpy as np


class SoftmaxCrossEntropy:
    """Cross-entropy of softmax(z) against integer class labels (or class probabilities).

    ``loss = fn(z, target)`` computes the loss and, in the same pass, its gradient with respect
    to ``z``, which ``fn.backward()`` returns. Options are those of
    :func:`normax.softmax_cross_entropy` (class ``axis``, ``reduction``, ``weight``,
    ``ignore_index``, ``label_smoothing``).

    Examples
    --------
    >>> import numpy as np, normax
    >>> fn = normax.nn.SoftmaxCrossEntropy()
    >>> loss = fn(np.zeros((2, 4), np.float32), np.array([0, 3]))
    >>> round(float(loss), 4), fn.backward().shape      # log(4) = 1.3863
    (1.3863, (2, 4))
    """

    def __init__(
        self, *, axis=-1, reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0
    ):
        self.options = dict(
            axis=axis,
            reduction=reduction,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )
        self._dz = None

    def __call__(self, z, target):
        return self.forward(z, target)

    def forward(self, z, target):
        """The loss (a float, or an array with ``reduction="none"``); keeps its gradient."""
        import normax

        loss, self._dz = normax.softmax_cross_entropy(z, target, **self.options)
        return float(loss) if np.ndim(loss) == 0 else loss

    def backward(self):
        """d loss / d z from the last forward call."""
        if self._dz is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward needs a forward call first")
        return self._dz

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"SoftmaxCrossEntropy({opts})"
