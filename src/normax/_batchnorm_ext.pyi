"""Batch normalization: the compiled front door and the C column of the backend table."""

import numpy as np
from numpy.typing import ArrayLike

from ._batchnorm_check import BatchNormCache

# ---- the front door (normax's public functions) -------------------------------------------------

def batch_norm_train(
    x: ArrayLike,
    gamma: ArrayLike | None,
    beta: ArrayLike | None,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    *,
    axis: int = 1,
    momentum: float = 0.1,
    eps: float = 1e-5,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, BatchNormCache]: ...
def batch_norm_infer(
    x: ArrayLike,
    gamma: ArrayLike | None,
    beta: ArrayLike | None,
    running_mean: ArrayLike,
    running_var: ArrayLike,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    out: np.ndarray | None = None,
) -> np.ndarray: ...
def batch_norm_backward(
    dy: ArrayLike, cache: BatchNormCache, *, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]: ...

# ---- the kernels on the canonical record (same signature on every backend) -------------------

def train(
    x: np.ndarray,
    outer: int,
    channels: int,
    inner: int,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    momentum: float,
    eps: float,
    y: np.ndarray,
    mean: np.ndarray,
    invstd: np.ndarray,
) -> None: ...
def infer(
    x: np.ndarray,
    outer: int,
    channels: int,
    inner: int,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
    y: np.ndarray,
) -> None: ...
def backward(
    dy: np.ndarray,
    x: np.ndarray,
    outer: int,
    channels: int,
    inner: int,
    mean: np.ndarray,
    invstd: np.ndarray,
    gamma: np.ndarray | None,
    dx: np.ndarray,
    dgamma: np.ndarray | None,
    dbeta: np.ndarray | None,
) -> None: ...
