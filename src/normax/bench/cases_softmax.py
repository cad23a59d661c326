"""Softmax, log-softmax, their backward passes and fused softmax cross-entropy cases, class axis
last and first.

PyTorch runs ``torch.softmax`` / ``torch.log_softmax`` on the same memory, the backward passes with
the kernels autograd calls (``torch._softmax_backward_data``, ``torch._log_softmax_backward_data``),
and the cross-entropy as a user would: ``log_softmax`` then ``nll_loss`` forward and the gradient
with respect to the logits by ``torch.autograd.grad``. With classes first, (C, N) logits are handed
to ``nll_loss`` as the transposed (N, C) view.
"""

from __future__ import annotations

import numpy as np

from .cases import (
    BuildContext,
    Case,
    Contender,
    layout_comparisons,
    layout_grid,
    nbytes,
    normax_contenders,
    random_array,
    torch_tensor,
)

# layout: (class axis, {size: shape}). float32: tiny is per-call overhead, medium (4096 x 1000,
# ImageNet classes) fits in a 32 MiB last-level cache, large (512 x 32000, a language model's
# vocabulary) does not.
LAYOUTS = {
    "classes last": (
        -1,
        {"tiny": (32, 10), "small": (256, 1000), "medium": (4096, 1000), "large": (512, 32000)},
    ),
    "classes first": (
        0,
        {"tiny": (10, 32), "small": (1000, 256), "medium": (1000, 4096), "large": (32000, 512)},
    ),
}

# kernel: (public name, minimum bytes / bytes(z), distinct arrays of z's size touched)
KERNELS = {
    "softmax": ("softmax", 2, 2),  # read z, write p (the max and the sum stay in cache per row)
    "log_softmax": ("log_softmax", 2, 2),
    "softmax_backward": ("softmax_backward", 3, 3),  # read g and p, write dz
    "log_softmax_backward": ("log_softmax_backward", 3, 3),
    "cross_entropy": ("softmax_cross_entropy", 3, 2),  # read z twice, write dz
}

# Selected by --quick: the cross-entropy on every layout and size class that the targets name,
# float64 on the medium shape, bfloat16 on the large one (beside its float32 twin), and softmax /
# log-softmax on the medium shape.
QUICK = {
    ("cross_entropy", "classes last", "tiny", "float32"),
    ("cross_entropy", "classes last", "medium", "float32"),
    ("cross_entropy", "classes last", "large", "float32"),
    ("cross_entropy", "classes first", "medium", "float32"),
    ("cross_entropy", "classes last", "medium", "float64"),
    ("cross_entropy", "classes last", "large", "bfloat16"),
    ("softmax", "classes last", "medium", "float32"),
    ("log_softmax", "classes last", "medium", "float32"),
}


# Shapes tests/test_bench_cases.py adds to the tiny ones: one class, one row,
# odd sizes.
TEST_SHAPES = {"classes last": [(6, 5), (3, 1), (1, 7)], "classes first": [(5, 7), (1, 4)]}


def cases() -> list[Case]:
    """Every softmax-family case: kernel x layout x size x dtype."""
    return layout_grid(
        case,
        KERNELS,
        LAYOUTS,
        lambda kernel, layout, size, dtype: (kernel, layout, size, dtype) in QUICK,
    )


def comparison_cases() -> list[Case]:
    """The comparisons of the test suite: every kernel on :data:`TEST_SHAPES` and tiny shapes."""
    return layout_comparisons(case, KERNELS, LAYOUTS, TEST_SHAPES)


def case(kernel: str, layout: str, shape, dtype: str, size: str, quick: bool = False) -> Case:
    """One case: ``kernel`` of :data:`KERNELS` on ``shape`` with the classes as ``layout`` says."""
    name, traffic, arrays = KERNELS[kernel]
    z_bytes = nbytes(shape, dtype)
    return Case(
        family="softmax",
        kernel=kernel,
        layout=layout,
        shape=tuple(shape),
        dtype=dtype,
        size=size,
        requires=(name,),
        build=_builder(kernel, layout, tuple(shape), dtype),
        min_bytes=traffic * z_bytes,
        footprint=arrays * z_bytes,
        quick=quick,
    )


def _builder(kernel, layout, shape, dtype):
    if kernel == "cross_entropy":
        return lambda ctx: _cross_entropy(ctx, layout, shape, dtype)
    if kernel.endswith("_backward"):
        return lambda ctx: _backward(ctx, kernel, layout, shape, dtype)
    return lambda ctx: _activation(ctx, kernel, layout, shape, dtype)


def _logits(ctx: BuildContext, shape, dtype):
    rng = ctx.rng()
    return rng, random_array(rng, shape, dtype, scale=3.0)


def _activation(ctx, kernel, layout, shape, dtype):
    import normax

    axis = LAYOUTS[layout][0]
    _, z = _logits(ctx, shape, dtype)

    def make():
        f = getattr(normax, kernel)
        return lambda: f(z, axis=axis)

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        torch = ctx.torch

        def make_torch():
            f, zt = getattr(torch, kernel), torch_tensor(torch, z)
            return lambda: f(zt, axis)

        contenders.append(Contender("torch", make_torch))
    return contenders


def _backward(ctx, kernel, layout, shape, dtype):
    import normax

    axis = LAYOUTS[layout][0]
    forward = kernel.removesuffix("_backward")
    rng, z = _logits(ctx, shape, dtype)
    g = random_array(rng, shape, dtype)
    y = getattr(normax, forward)(z, axis=axis)  # p or lp, the backward's second input

    def make():
        f = getattr(normax, kernel)
        return lambda: f(g, y, axis=axis)

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        torch = ctx.torch

        def make_torch():
            f = getattr(torch, f"_{forward}_backward_data")
            gt, yt = torch_tensor(torch, g), torch_tensor(torch, y)
            return lambda: f(gt, yt, axis, yt.dtype)

        contenders.append(Contender("torch", make_torch))
    return contenders


def _cross_entropy(ctx, layout, shape, dtype):
    import normax

    axis = LAYOUTS[layout][0]
    rng, z = _logits(ctx, shape, dtype)
    n_classes = shape[axis]
    target = rng.integers(0, n_classes, size=shape[1] if axis == 0 else shape[0], dtype=np.int64)

    def make():
        f = normax.softmax_cross_entropy
        return lambda: f(z, target, axis=axis)

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        contenders.append(Contender("torch", lambda: _torch_ce(ctx.torch, z, target, axis)))
    return contenders


def _torch_ce(torch, z, target, axis):
    nll_loss = torch.nn.functional.nll_loss
    zt, tt = torch_tensor(torch, z).requires_grad_(True), torch.from_numpy(target)

    def run():
        logp = torch.log_softmax(zt, axis)
        loss = nll_loss(logp.t() if axis == 0 else logp, tt)
        (dz,) = torch.autograd.grad(loss, zt)
        return loss.detach(), dz

    return run
