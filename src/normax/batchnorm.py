"""Batch normalization: training forward, inference, and the exact backward.

The public functions are the compiled front door (``normax._batchnorm_ext``): it runs the
common call (C-contiguous float arrays, float scalars) without a Python-level check, and hands
every other call to the one checker (``normax._batchnorm_check``), so all backends raise the
same errors and nothing is written when a check fails. Without the compiled extension, the
checker is the public API.

Layouts are chosen with ``axis``, the channel axis; statistics run over all other axes:

==============================  ======  ======================
layout                          axis    kernel view
==============================  ======  ======================
(N, C)                          1       (N, C, 1)
(N, C, H, W)                    1       (N, C, H*W)
(N, H, W, C)                    -1      (N*H*W, C, 1)
(C, m) (examples are columns)   0       (1, C, m)
==============================  ======  ======================

Half precision is storage only: float16 and bfloat16 (``ml_dtypes``) inputs compute in float32
(sums in float64) and every output or gradient shaped like x is rounded once to x's dtype;
gamma, beta, the running statistics, dgamma and dbeta are float32, as in PyTorch's CPU kernels.
"""

from __future__ import annotations

from ._batchnorm_check import BatchNormCache

try:
    from ._batchnorm_ext import batch_norm_backward, batch_norm_infer, batch_norm_train
except ImportError:  # pragma: no cover - exercised only without a compiled extension
    from ._batchnorm_check import batch_norm_backward, batch_norm_infer, batch_norm_train

__all__ = ["BatchNormCache", "batch_norm_backward", "batch_norm_infer", "batch_norm_train"]
