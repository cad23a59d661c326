"""What a benchmark case is, and how contenders are checked against each other.

A :class:`Case` is one kernel on one layout, shape and dtype. Its ``build`` function creates the
inputs once and returns the contenders: one per normax backend (C, Numba, the NumPy reference)
and PyTorch CPU when it is installed. A contender's ``make`` does its untimed set-up (with its
backend selected) and returns the callable that is timed; that callable returns the outputs to
compare, in NumPy's layout.

Before anything is timed, every contender's first result is compared with the reference
contender's (the NumPy reference backend) by the normwise relative error
``max|a - b| / max|b|`` over each output; a contender that disagrees beyond its dtype's
tolerance, or raises, is reported and not timed.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

import normax

SIZES = ("tiny", "small", "medium", "large")
# Half-precision storage (float32 arithmetic inside) is benchmarked on the shapes where its
# smaller bytes matter, the medium and large ones, and compared on the tiny and edge shapes.
HALF_DTYPES = ("float16", "bfloat16")
HALF_SIZES = ("medium", "large")
DTYPES = ("float32", "float64", *HALF_DTYPES)
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}

# Normwise relative tolerance between contenders. float32 allows for PyTorch, which accumulates
# in float32 where normax accumulates in float64. Half precision: two units in the last place of
# the largest output (2**-10 relative for float16, 2**-7 for bfloat16): every contender computes
# in float32 and rounds once, so two results may differ by one rounding of each.
TOLERANCE = {"float32": 1e-4, "float64": 1e-9, "float16": 2.0**-9, "bfloat16": 2.0**-6}


@dataclass
class BuildContext:
    """What a case's ``build`` may use: the backends to include, torch, a seed, a scratch dir."""

    backends: tuple[str, ...]
    torch: object | None
    seed: int = 0
    tmpdir: str | None = None

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a case's dtype name (bfloat16 is ml_dtypes' and needs it)."""
    from normax import _dtypes

    return _dtypes.resolve(name)


def random_array(rng: np.random.Generator, shape, dtype: str, scale=1.0, offset=0.0):
    """``offset + scale * N(0, 1)`` samples of ``shape``, drawn in float32 for the half types
    (rounded once to them), else drawn in ``dtype`` itself."""
    draw = "float32" if dtype in HALF_DTYPES else dtype
    x = rng.standard_normal(shape, dtype=draw)
    if scale != 1.0:
        x *= scale
    if offset != 0.0:
        x += offset
    return x.astype(np_dtype(dtype), copy=False)


def compute_dtype(dtype: str) -> str:
    """The dtype of float32-only companions (batch-norm parameters) of a ``dtype`` input."""
    return "float32" if dtype in HALF_DTYPES else dtype


def torch_tensor(torch, a: np.ndarray):
    """A copy of ``a`` in memory PyTorch allocated, bfloat16 included (torch.from_numpy does not
    know ml_dtypes' type: its bits are handed over as int16 and reinterpreted).

    A copy, not a view, because where an input starts within its 4 KiB page changes a streaming
    kernel's speed: its loads wait on its own earlier stores whose addresses agree in the low 12
    bits. PyTorch puts its large tensors, outputs included, 64 bytes into a page and NumPy 16
    bytes in, so a view of NumPy's memory would give PyTorch's kernels an input 48 bytes behind
    their output, which a PyTorch program's own tensors never are.
    """
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).clone()
    return torch.from_numpy(a).clone()


@dataclass
class Contender:
    """One implementation of a case.

    Attributes
    ----------
    name : str
        ``"c"``, ``"numba"``, ``"numpy"``, ``"torch"`` or a case-specific name.
    make : callable
        Untimed set-up; returns the timed callable, which returns the outputs to compare.
    backend : str or None
        normax backend selected around ``make`` and before every timed sample.
    """

    name: str
    make: Callable[[], Callable[[], object]]
    backend: str | None = None


@dataclass
class Case:
    """One kernel on one layout, shape and dtype.

    Attributes
    ----------
    family, kernel, layout : str
        E.g. ``"batch_norm"``, ``"train"``, ``"NCHW"``.
    shape : tuple of int
        Shape of the main input (for optimizers: arrays x elements per array).
    dtype : str
        One of :data:`DTYPES`.
    size : str
        One of :data:`SIZES`, for selecting cases.
    requires : tuple of str
        Public names the case needs, relative to ``normax`` (``"optim.Adam"``); the case is
        skipped, with a note, when one is missing.
    build : callable
        ``build(ctx) -> list[Contender]``.
    min_bytes : int or None
        Minimum bytes a kernel must move; gives GB/s and the roofline fraction.
    footprint : int or None
        Bytes of distinct data touched; tells whether the case fits in the last-level cache.
    quick : bool
        Part of the ``--quick`` selection.
    per_call : int
        Units of work per call (e.g. trials); reported times are per unit.
    unit : str
        Name of that unit.
    reference : str
        Contender whose result the others are checked against.
    tolerance : float or None
        Normwise relative tolerance; None takes :data:`TOLERANCE` for the dtype.
    """

    family: str
    kernel: str
    layout: str
    shape: tuple[int, ...]
    dtype: str
    size: str
    requires: tuple[str, ...]
    build: Callable[[BuildContext], list[Contender]] = field(repr=False)
    min_bytes: int | None = None
    footprint: int | None = None
    quick: bool = False
    per_call: int = 1
    unit: str = "call"
    reference: str = "numpy"
    tolerance: float | None = None

    @property
    def packages(self) -> tuple[str, ...]:
        """Optional Python packages the case needs (bfloat16 is the ml_dtypes package's)."""
        return ("ml_dtypes",) if self.dtype == "bfloat16" else ()

    @property
    def id(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.family}/{self.kernel}/{self.layout}/{shape}/{self.dtype}"

    @property
    def tol(self) -> float:
        return self.tolerance if self.tolerance is not None else TOLERANCE[self.dtype]


def layout_grid(case: Callable[..., Case], kernels, layouts, quick) -> list[Case]:
    """Every ``kernel x layout x size x dtype`` case of a family whose cases have layouts.

    ``case(kernel, layout, shape, dtype, size, quick=...)`` builds one case; ``layouts`` maps a
    layout to ``(axis, {size: shape})``; ``quick(kernel, layout, size, dtype)`` says whether the
    case is in the ``--quick`` selection.
    """
    return [
        case(kernel, layout, shape, dtype, size, quick=quick(kernel, layout, size, dtype))
        for kernel in kernels
        for layout, (_axis, shapes) in layouts.items()
        for size, shape in shapes.items()
        for dtype in DTYPES
        if dtype not in HALF_DTYPES or size in HALF_SIZES
    ]


def layout_comparisons(case: Callable[..., Case], kernels, layouts, test_shapes) -> list[Case]:
    """The test suite's comparisons: every kernel on each layout's tiny shape and its
    ``test_shapes`` (odd and edge sizes), in every dtype."""
    return [
        case(kernel, layout, shape, dtype, "tiny")
        for kernel in kernels
        for layout, shapes in test_shapes.items()
        for shape in [layouts[layout][1]["tiny"], *shapes]
        for dtype in DTYPES
    ]


def nbytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (without importing ml_dtypes)."""
    return math.prod(shape) * ITEMSIZE[dtype]


def missing_packages(names: Sequence[str]) -> list[str]:
    """The Python packages among ``names`` that are not installed."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def missing_requirements(names: Sequence[str]) -> list[str]:
    """The public names among ``names`` that this installation of normax does not provide."""
    missing = []
    for name in names:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(f"normax.{module_name}") if module_name else normax
        except ImportError:
            missing.append(name)
            continue
        if not hasattr(module, attr):
            missing.append(name)
    return missing


def normax_contenders(ctx: BuildContext, make: Callable[[], Callable[[], object]]):
    """One contender per normax backend in ``ctx``; ``make`` runs with that backend selected."""
    return [Contender(b, make, backend=b) for b in ctx.backends]


def as_arrays(out) -> list[np.ndarray | None]:
    """Flatten a result (arrays, tensors, scalars, nested tuples/lists) into copied arrays."""
    if isinstance(out, (tuple, list)) and not _is_numeric_list(out):
        flat: list[np.ndarray | None] = []
        for item in out:
            flat.extend(as_arrays(item))
        return flat
    if out is None:
        return [None]
    if hasattr(out, "detach"):  # a torch tensor, without importing torch
        out = out.detach().cpu()
        if out.is_floating_point() and out.element_size() == 2:  # float16 / bfloat16
            out = out.float()
        out = out.numpy()
    return [np.array(out, dtype=np.float64, copy=True)]


def _is_numeric_list(out) -> bool:
    return isinstance(out, list) and all(isinstance(v, (int, float)) for v in out)


def relative_error(actual: Sequence, expected: Sequence) -> float:
    """Largest normwise relative error ``max|a - b| / max|b|`` over paired outputs.

    Mismatched structure or shape, or NaN/Inf in different places, gives ``inf``.
    """
    if len(actual) != len(expected):
        return math.inf
    worst = 0.0
    for a, b in zip(actual, expected, strict=True):
        if a is None or b is None:
            if a is not b:
                return math.inf
            continue
        if a.shape != b.shape:
            return math.inf
        finite = np.isfinite(b)
        same_specials = np.array_equal(a[~finite], b[~finite], equal_nan=True)
        if not (same_specials and np.array_equal(np.isfinite(a), finite)):
            return math.inf
        if not finite.any():
            continue
        scale = float(np.max(np.abs(b[finite]))) or 1.0
        worst = max(worst, float(np.max(np.abs(a[finite] - b[finite]))) / scale)
    return worst
