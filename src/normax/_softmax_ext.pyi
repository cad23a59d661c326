"""Softmax and cross-entropy: the compiled front door and the C column of the backend table."""

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

# ---- the front door (normax's public functions) -------------------------------------------------

def softmax(z: ArrayLike, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray: ...
def log_softmax(z: ArrayLike, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray: ...
def softmax_backward(
    dp: ArrayLike, p: ArrayLike, axis: int = -1, *, out: np.ndarray | None = None
) -> np.ndarray: ...
def log_softmax_backward(
    dlp: ArrayLike, lp: ArrayLike, axis: int = -1, *, out: np.ndarray | None = None
) -> np.ndarray: ...
def softmax_cross_entropy(
    z: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    out: np.ndarray | None = None,
) -> tuple[float | np.ndarray, np.ndarray]: ...

# ---- the kernels on the canonical record (same signature on every backend) -------------------

def forward(
    z: np.ndarray, out: np.ndarray, outer: int, classes: int, inner: int, log: bool
) -> None: ...
def backward(
    g: np.ndarray, y: np.ndarray, out: np.ndarray, outer: int, classes: int, inner: int, log: bool
) -> None: ...
def xent(
    z: np.ndarray,
    outer: int,
    classes: int,
    inner: int,
    target: np.ndarray,
    weight: np.ndarray | None,
    ignore: int | None,
    eps: float,
    scale: float,
    dz: np.ndarray,
    loss: np.ndarray | None,
) -> float: ...
