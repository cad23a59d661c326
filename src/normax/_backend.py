"""Which implementation runs the kernels: the C extension, Numba, or the NumPy reference.

``NORMAX_BACKEND=c|numba|numpy`` picks one at import; :func:`set_backend` and
:func:`get_backend` change and report it. If the C extension cannot be imported, normax warns
once and falls back to Numba.

Each kernel family keeps a :class:`KernelTable`: one module per backend, with the same kernel
names and signatures, imported on first use (so ``import normax`` stays fast and Numba loads
only when its backend runs).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from types import ModuleType

import numpy as np

BACKENDS = ("c", "numba", "numpy")

# The compiled front doors are built together; _ext_common (thread control, shared checks) is
# the one they all link against, so its import stands for the whole C backend.
_core: ModuleType | None
try:
    from . import _ext_common as _core
except ImportError as exc:  # pragma: no cover - exercised only without a compiled extension
    _core = None
    _core_error: ImportError | None = exc
else:
    _core_error = None


def _core_reason() -> str:
    """Why the extension did not import, in words (the raw ImportError can mislead)."""
    spec = importlib.util.find_spec(f"{__package__}._ext_common") if __package__ else None
    if spec is None:
        return (
            "this installation has no compiled extension (a pure-Python install: no working C "
            "compiler when it was built)"
        )
    return f"{spec.origin} failed to load: {_core_error}"


_num_threads = 0  # 0: each runtime's default (OMP_NUM_THREADS, numba's NUMBA_NUM_THREADS)
_active = "c"


def _validate(name: object) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name.lower()


def set_backend(name: str) -> None:
    """Select the implementation used by every kernel: ``"c"``, ``"numba"`` or ``"numpy"``.

    Examples
    --------
    >>> import normax
    >>> normax.set_backend("numpy"); normax.get_backend()
    'numpy'
    >>> normax.set_backend("c")
    """
    global _active
    name = _validate(name)
    if name == "c" and _core is None:
        raise ImportError(f"the C extension of normax is not available: {_core_reason()}")
    if name == "numba":
        _numba_ready()
    _active = name


def get_backend() -> str:
    """Name of the active backend."""
    return _active


def available_backends() -> tuple[str, ...]:
    """Backends that can run on this installation."""
    names = ["c"] if _core is not None else []
    if importlib.util.find_spec("numba") is not None:
        names.append("numba")
    names.append("numpy")
    return tuple(names)


def _numba_threads() -> int:
    """Threads the Numba kernels use: normax.set_num_threads, capped by NUMBA_NUM_THREADS."""
    import numba

    cap = numba.config.NUMBA_NUM_THREADS
    return min(_num_threads, cap) if _num_threads else cap


def _numba_ready() -> None:
    import numba

    if _num_threads:
        numba.set_num_threads(_numba_threads())


def _max_threads() -> int:
    """The most threads :func:`set_num_threads` accepts: four per CPU of this machine.

    More threads than CPUs only take turns on them; far more is a mistake (``10**6`` would ask
    OpenMP for a million threads), refused rather than silently capped.
    """
    return 4 * (os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Threads used by the C and Numba kernels; ``0`` restores the default.

    The default follows ``OMP_NUM_THREADS`` (and threadpoolctl limits on OpenMP) for the C
    backend and ``NUMBA_NUM_THREADS`` for Numba. At most four threads per CPU are accepted
    (ValueError beyond); Numba never runs more than ``NUMBA_NUM_THREADS``.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if n > _max_threads():
        raise ValueError(
            f"n must be at most {_max_threads()} (four per CPU; this machine has "
            f"{os.cpu_count()}), got {n}"
        )
    _num_threads = n
    if _core is not None:
        _core.set_num_threads(n)
    if "numba" in _loaded_modules():
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS) if n else
                              numba.config.NUMBA_NUM_THREADS)


def get_num_threads() -> int:
    """Threads the C kernels use for large inputs (the Numba kernels use the same number)."""
    if _core is not None:
        return _core.get_num_threads()
    return _num_threads or os.cpu_count() or 1


def release_memory() -> int:
    """Give the memory normax keeps for its large outputs back to the system.

    Outputs of 4 MiB or more that normax allocates (calls without ``out=``) reuse the pages of
    freed ones: up to four freed blocks, at most 1 GiB together, stay mapped so that the next
    call does not pay a page fault per page again. This unmaps them; later calls work as before
    and start keeping blocks again.

    Returns
    -------
    int
        The bytes given back (0 without the C extension, which owns the pool).

    Examples
    --------
    >>> import numpy as np, normax
    >>> y, _ = normax.batch_norm_train(np.ones((1024, 2048), np.float32), None, None)
    >>> del y
    >>> normax.release_memory() >= 0
    True
    """
    return 0 if _core is None else _core.release_memory()


def empty_output(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An output array for the Python checker: from the compiled front doors' pool when built."""
    return np.empty(shape, dtype) if _core is None else _core.empty(shape, dtype)


def _loaded_modules():
    import sys

    return sys.modules


def _initial_backend() -> str:
    requested = os.environ.get("NORMAX_BACKEND", "").strip().lower()
    if requested:
        requested = _validate(requested)
        if requested == "c" and _core is None:
            raise ImportError(
                f"NORMAX_BACKEND=c but the C extension of normax is not available: "
                f"{_core_reason()}"
            )
        return requested
    if _core is None:
        warnings.warn(
            f"normax: the compiled extension is unavailable ({_core_reason()}); "
            "using the slower Numba kernels. Install a normax wheel, or reinstall with a C "
            "compiler (see the README), to get it.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numba"
    return "c"


_active = _initial_backend()


def _numba_forked_unsafe() -> bool:
    """Whether Numba's GNU OpenMP threading layer has started in this process.

    A child forked after that aborts ("fork() called from a process already using GNU OpenMP,
    this is unsafe") as soon as it enters a parallel Numba region; the TBB and workqueue layers
    survive fork.
    """
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(parallel is not None and getattr(parallel, "_is_initialized", False)
                and getattr(parallel, "_threading_layer", None) == "omp")


def _after_fork_in_child() -> None:
    # The C kernels run serially in a forked child (csrc/threads.c). Numba's OpenMP layer cannot
    # run at all there, so a child of a process that used it computes with the NumPy reference
    # (same results within dtype tolerance; get_backend() says "numpy").
    global _active
    if _active == "numba" and _numba_forked_unsafe():
        _active = "numpy"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class KernelTable:
    """One kernel family on every backend: a module per backend, imported on first use.

    Each module defines the family's kernels under the same names with the same signature (the
    canonical record of a call: contiguous arrays, the ``(outer, C, inner)`` view, C scalars,
    outputs allocated by the caller), so the front door and the checker dispatch with one
    lookup: ``TABLE.active().train(...)``.
    """

    def __init__(self, **modules: str) -> None:
        self._names = modules
        self._loaded: dict[str, ModuleType] = {}

    def __getitem__(self, backend: str) -> ModuleType:
        module = self._loaded.get(backend)
        if module is None:
            module = self._loaded[backend] = importlib.import_module(self._names[backend])
        return module

    def active(self) -> ModuleType:
        """The module of the active backend."""
        return self[_active]
