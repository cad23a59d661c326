"""Batch-norm cases: training forward, inference forward and backward, in every layout.

PyTorch runs ``torch.ops.aten.native_batch_norm`` / ``native_batch_norm_backward`` (the kernels
behind ``torch.nn.functional.batch_norm`` and its autograd) on the same memory: channels-last
data is handed over as a channels_last view and the (C, m) layout as the transposed view, which is
what a PyTorch user holding that array would do. Training forward updates running statistics in
every contender.
"""

from __future__ import annotations

import numpy as np

from .cases import (
    BuildContext,
    Case,
    Contender,
    compute_dtype,
    layout_comparisons,
    layout_grid,
    nbytes,
    normax_contenders,
    random_array,
    torch_tensor,
)

EPS = 1e-5
MOMENTUM = 0.1

# layout: (channel axis, {size: shape}). float32 sizes: tiny and small fit in L2, medium in the
# last-level cache (the NCHW medium shape is also the ResNet-stage case of the targets), large
# is larger than a 32 MiB last-level cache.
LAYOUTS = {
    "(N,C)": (
        1,
        {"tiny": (32, 64), "small": (256, 256), "medium": (1024, 2048), "large": (8192, 2048)},
    ),
    "NCHW": (
        1,
        {
            "tiny": (2, 8, 4, 4),
            "small": (8, 32, 14, 14),
            "medium": (32, 64, 56, 56),
            "large": (64, 64, 56, 56),
        },
    ),
    "NHWC": (
        -1,
        {
            "tiny": (2, 4, 4, 8),
            "small": (8, 14, 14, 32),
            "medium": (32, 56, 56, 64),
            "large": (64, 56, 56, 64),
        },
    ),
    "(C,m)": (
        0,
        {"tiny": (64, 32), "small": (256, 256), "medium": (2048, 1024), "large": (2048, 8192)},
    ),
}

# kernel: (public names needed, minimum bytes / bytes(x), distinct arrays of x's size touched)
KERNELS = {
    "train": (("batch_norm_train",), 3, 2),  # read x for statistics, read again, write y
    "infer": (("batch_norm_infer",), 2, 2),  # read x, write y
    "backward": (("batch_norm_train", "batch_norm_backward"), 5, 3),  # read x, dy twice, write dx
}

# Selected by --quick: per-call overhead on the tiny (N, C) shape, the memory-bound large (N, C)
# shape, every other layout at its medium size (the NCHW one is the ResNet-stage case of the
# targets), all float32, float64 on the medium (N, C) shape, and bfloat16 on the large one (beside
# its float32 twin: half precision pays off where memory binds).
QUICK = {
    ("(N,C)", "tiny", "float32"),
    ("(N,C)", "large", "float32"),
    ("NCHW", "medium", "float32"),
    ("NHWC", "medium", "float32"),
    ("(C,m)", "medium", "float32"),
    ("(N,C)", "medium", "float64"),
    ("(N,C)", "large", "bfloat16"),
}


# Shapes tests/test_bench_cases.py adds to the tiny ones: odd sizes, one channel,
# a large C (heap scratch) and shapes past the parallel thresholds of both inner loops.
TEST_SHAPES = {
    "(N,C)": [(7, 5), (9, 1), (3, 1100), (97, 400)],
    "NCHW": [(4, 3, 5, 7), (5, 16, 500, 1), (16, 48, 7, 7)],
    "NHWC": [(4, 5, 7, 3)],
    "(C,m)": [(6, 11)],
}


def cases() -> list[Case]:
    """Every batch-norm case: kernel x layout x size x dtype."""
    return layout_grid(
        case, KERNELS, LAYOUTS, lambda _kernel, layout, size, dtype: (layout, size, dtype) in QUICK
    )


def comparison_cases() -> list[Case]:
    """The comparisons of the test suite: every kernel on :data:`TEST_SHAPES` and tiny shapes."""
    return layout_comparisons(case, KERNELS, LAYOUTS, TEST_SHAPES)


def case(kernel: str, layout: str, shape, dtype: str, size: str, quick: bool = False) -> Case:
    """One batch-norm case: ``kernel`` of :data:`KERNELS` on ``shape`` in ``layout``."""
    requires, traffic, arrays = KERNELS[kernel]
    x_bytes = nbytes(shape, dtype)
    return Case(
        family="batch_norm",
        kernel=kernel,
        layout=layout,
        shape=tuple(shape),
        dtype=dtype,
        size=size,
        requires=requires,
        build=_builder(kernel, layout, tuple(shape), dtype),
        min_bytes=traffic * x_bytes,
        footprint=arrays * x_bytes,
        quick=quick,
    )


def _builder(kernel, layout, shape, dtype):
    return lambda ctx: BUILDERS[kernel](ctx, layout, shape, dtype)


def _inputs(ctx: BuildContext, layout: str, shape, dtype):
    """x in ``dtype``; gamma and beta in its compute type (float32 for half-precision x, the
    mixed-precision rule of normax and of PyTorch's CPU batch norm)."""
    rng = ctx.rng()
    axis = LAYOUTS[layout][0]
    c = shape[axis]
    x = random_array(rng, shape, dtype, scale=2.0, offset=0.5)
    param = compute_dtype(dtype)
    gamma = (1 + 0.1 * rng.standard_normal(c)).astype(param)
    beta = (0.1 * rng.standard_normal(c)).astype(param)
    return rng, axis, x, gamma, beta


def _running(c: int, dtype):
    """Running statistics for an input of ``dtype`` (float32 for half precision)."""
    param = compute_dtype(np.dtype(dtype).name)
    return np.zeros(c, dtype=param), np.ones(c, dtype=param)


def _torch_view(torch, a, layout):
    """A tensor on ``a``'s memory with channels on dim 1, as PyTorch's batch norm expects."""
    t = torch_tensor(torch, a)
    if layout == "NHWC":
        return t.permute(0, 3, 1, 2)
    if layout == "(C,m)":
        return t.t()
    return t


def _numpy_view(t, layout):
    """The inverse of :func:`_torch_view`: a view of a result in NumPy's layout."""
    if layout == "NHWC":
        return t.permute(0, 2, 3, 1)
    if layout == "(C,m)":
        return t.t()
    return t


def _train(ctx, layout, shape, dtype):
    import normax

    _, axis, x, gamma, beta = _inputs(ctx, layout, shape, dtype)

    def make():
        rm, rv = _running(gamma.size, dtype)
        f = normax.batch_norm_train
        return lambda: f(x, gamma, beta, rm, rv, axis=axis, momentum=MOMENTUM, eps=EPS)[0]

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        contenders.append(
            Contender("torch", lambda: _torch_train(ctx.torch, x, gamma, beta, layout))
        )
    return contenders


def _torch_train(torch, x, gamma, beta, layout):
    xt = _torch_view(torch, x, layout)
    gt, bt = torch.from_numpy(gamma), torch.from_numpy(beta)
    rm, rv = (torch.from_numpy(a) for a in _running(gamma.size, x.dtype))
    op = torch.ops.aten.native_batch_norm
    return lambda: _numpy_view(op(xt, gt, bt, rm, rv, True, MOMENTUM, EPS)[0], layout)


def _infer(ctx, layout, shape, dtype):
    import normax

    rng, axis, x, gamma, beta = _inputs(ctx, layout, shape, dtype)
    rm = (0.5 + 0.1 * rng.standard_normal(gamma.size)).astype(gamma.dtype)
    rv = (4 + rng.random(gamma.size)).astype(gamma.dtype)

    def make():
        f = normax.batch_norm_infer
        return lambda: f(x, gamma, beta, rm, rv, axis=axis, eps=EPS)

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        contenders.append(
            Contender("torch", lambda: _torch_infer(ctx.torch, x, gamma, beta, rm, rv, layout))
        )
    return contenders


def _torch_infer(torch, x, gamma, beta, rm, rv, layout):
    xt = _torch_view(torch, x, layout)
    args = [torch.from_numpy(a) for a in (gamma, beta, rm, rv)]
    op = torch.ops.aten.native_batch_norm
    return lambda: _numpy_view(op(xt, *args, False, MOMENTUM, EPS)[0], layout)


def _backward(ctx, layout, shape, dtype):
    import normax

    rng, axis, x, gamma, beta = _inputs(ctx, layout, shape, dtype)
    dy = random_array(rng, shape, dtype)

    def make():
        _, cache = normax.batch_norm_train(x, gamma, beta, axis=axis, eps=EPS)
        f = normax.batch_norm_backward
        return lambda: f(dy, cache)

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        contenders.append(
            Contender("torch", lambda: _torch_backward(ctx.torch, x, dy, gamma, beta, layout))
        )
    return contenders


def _torch_backward(torch, x, dy, gamma, beta, layout):
    xt, dyt = _torch_view(torch, x, layout), _torch_view(torch, dy, layout)
    gt, bt = torch.from_numpy(gamma), torch.from_numpy(beta)
    _, mean, invstd = torch.ops.aten.native_batch_norm(xt, gt, bt, None, None, True, 0.0, EPS)
    op = torch.ops.aten.native_batch_norm_backward

    def run():
        dx, dgamma, dbeta = op(dyt, xt, gt, None, None, mean, invstd, True, EPS, [True, True, True])
        return _numpy_view(dx, layout), dgamma, dbeta

    return run


BUILDERS = {"train": _train, "infer": _infer, "backward": _backward}
