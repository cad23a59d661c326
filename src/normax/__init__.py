"""normax: fast, exact deep-learning kernels for NumPy users.

Batch normalization and numerically stable softmax / softmax cross-entropy as C kernels (OpenMP;
the GIL is released for kernels of 16384 elements or more) with Numba fallbacks and a pure-NumPy
reference, fused optimizers, a small network layer and hyperparameter-tuning tools built on top.
"""

from ._backend import (
    available_backends,
    get_backend,
    get_num_threads,
    release_memory,
    set_backend,
    set_num_threads,
)
from ._config import show_config
from .batchnorm import (
    batch_norm_backward,
    batch_norm_infer,
    batch_norm_train,
)
from .softmax import (
    log_softmax,
    log_softmax_backward,
    softmax,
    softmax_backward,
    softmax_cross_entropy,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available_backends",
    "batch_norm_backward",
    "batch_norm_infer",
    "batch_norm_train",
    "get_backend",
    "get_num_threads",
    "log_softmax",
    "log_softmax_backward",
    "nn",
    "optim",
    "release_memory",
    "set_backend",
    "set_num_threads",
    "show_config",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
    "tune",
]


_SUBPACKAGES = ("nn", "optim", "tune")


def __getattr__(name: str):
    # subpackages load on first use, so `import normax` stays fast
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
