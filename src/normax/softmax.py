"""Softmax, log-softmax and fused softmax cross-entropy.

The public functions are the compiled front door (``normax._softmax_ext``): it runs the common
call without a Python-level check and hands every other call to the one checker
(``normax._softmax_check``), so all backends raise the same errors and give the same results.
Without the compiled extension, the checker is the public API.

Numerics: every reduction is max-shifted and written as ``1 + s``, where ``s`` sums
``exp(z_j - max)`` over all entries but one maximum. Log-softmax is ``(z - max) - log1p(s)`` and
the loss of an integer label is ``log1p(s) - (z[label] - max)``: logits up to 1e30 (float32) or
1e300 (float64) give finite, exact results, and a class that dominates by 100 keeps its loss of
about ``exp(-100)`` in float64. A row holding NaN or +inf gives NaN for that row only.

Half precision: float16 and bfloat16 (``ml_dtypes``) inputs are stored in half and computed in
float32 with float64 sums; outputs, gradients and losses (the reduced loss too) are rounded once
to z's dtype, the rule of PyTorch's CPU kernels. Probability targets are converted to z's dtype.
"""

from __future__ import annotations

try:
    from ._softmax_ext import (
        log_softmax,
        log_softmax_backward,
        softmax,
        softmax_backward,
        softmax_cross_entropy,
    )
except ImportError:  # pragma: no cover - exercised only without a compiled extension
    from ._softmax_check import (
        log_softmax,
        log_softmax_backward,
        softmax,
        softmax_backward,
        softmax_cross_entropy,
    )

__all__ = [
    "log_softmax",
    "log_softmax_backward",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
]
