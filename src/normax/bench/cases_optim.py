"""Fused optimizer updates: Adam and SGD with momentum over many parameter arrays.

Every contender starts from identical copies of the parameters and its own fresh state, and the
first step's parameters are compared. PyTorch runs ``torch.optim.Adam`` / ``torch.optim.SGD``
with ``foreach=True`` (its fastest CPU path) on tensors sharing the arrays' memory, gradients set
once; the NumPy contender is normax's NumPy reference backend.

Mixed precision (Adam in float16 / bfloat16): the dtype is the gradients' and the weights' copy;
the parameters (master weights) and the state are float32. normax takes the half gradients and
writes the half copy in its fused step (``step(grads, half_params=...)``); PyTorch does what its
users do: widen the gradients (``g.float()``), step, and copy the weights into the half tensors
(``torch._foreach_copy_``). Both then hold the same float32 weights and half copies.
"""

from __future__ import annotations

from .cases import (
    HALF_DTYPES,
    HALF_SIZES,
    Case,
    Contender,
    nbytes,
    normax_contenders,
    np_dtype,
    random_array,
    torch_tensor,
)

LR = {"adam": 1e-3, "sgd_momentum": 1e-2}

# size: (arrays, elements per array). large is 10 million parameters in 100 arrays.
SHAPES = {
    "tiny": (10, 100),
    "small": (10, 10_000),
    "medium": (100, 10_000),
    "large": (100, 100_000),
}

# kernel: (public name, minimum bytes / bytes(params), distinct arrays of the params' size)
KERNELS = {
    "adam": ("optim.Adam", 7, 4),  # read p, g, m, v; write p, m, v
    "sgd_momentum": ("optim.SGD", 5, 3),  # read p, g, v; write p, v
}

# Selected by --quick: Adam's per-call overhead and its 10-million-parameter target case, and SGD
# with momentum on a million parameters.
QUICK = {
    ("adam", "tiny", "float32"),
    ("adam", "large", "float32"),
    ("sgd_momentum", "medium", "float32"),
}


# Shapes tests/test_bench_cases.py adds to the tiny one: one scalar parameter,
# arrays of odd length.
TEST_SHAPES = [(1, 1), (3, 7)]


def cases() -> list[Case]:
    """Every optimizer case: kernel x size x dtype."""
    return [
        case(kernel, shape, dtype, size, quick=(kernel, size, dtype) in QUICK)
        for kernel in KERNELS
        for size, shape in SHAPES.items()
        for dtype in _dtypes(kernel)
        if dtype not in HALF_DTYPES or size in HALF_SIZES
    ]


def _dtypes(kernel: str) -> tuple[str, ...]:
    """float32 and float64; Adam also with half-precision gradients and weight copies."""
    return ("float32", "float64", *HALF_DTYPES) if kernel == "adam" else ("float32", "float64")


def comparison_cases() -> list[Case]:
    """The comparisons of the test suite: every kernel on :data:`TEST_SHAPES` and the tiny shape."""
    return [
        case(kernel, shape, dtype, "tiny")
        for kernel in KERNELS
        for shape in [SHAPES["tiny"], *TEST_SHAPES]
        for dtype in _dtypes(kernel)
    ]


def case(kernel: str, shape, dtype: str, size: str, quick: bool = False) -> Case:
    """One case: a step of ``kernel`` over ``shape[0]`` arrays of ``shape[1]`` elements."""
    name, traffic, arrays = KERNELS[kernel]
    # Mixed precision moves the float32 step's bytes: the half gradient read and the half copy
    # written take the place of the float32 gradient read.
    p_bytes = nbytes(shape, "float32" if dtype in HALF_DTYPES else dtype)
    return Case(
        family="optim",
        kernel=kernel,
        layout=f"{shape[0]} arrays",
        shape=tuple(shape),
        dtype=dtype,
        size=size,
        requires=(name,),
        build=_builder(kernel, tuple(shape), dtype),
        min_bytes=traffic * p_bytes,
        footprint=arrays * p_bytes,
        quick=quick,
    )


def _builder(kernel, shape, dtype):
    return lambda ctx: _build(ctx, kernel, shape, dtype)


def _build(ctx, kernel, shape, dtype):
    import normax.optim

    if dtype in HALF_DTYPES:
        return _build_mixed(ctx, kernel, shape, dtype)
    rng = ctx.rng()
    k, n = shape
    params = [rng.standard_normal(n, dtype=dtype) for _ in range(k)]
    grads = [rng.standard_normal(n, dtype=dtype) for _ in range(k)]

    def make():
        ps = [p.copy() for p in params]
        if kernel == "adam":
            opt = normax.optim.Adam(ps, lr=LR[kernel])
        else:
            opt = normax.optim.SGD(ps, lr=LR[kernel], momentum=0.9)
        step = opt.step
        return lambda: (step(grads), ps)[1]

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        contenders.append(Contender("torch", lambda: _torch(ctx.torch, kernel, params, grads)))
    return contenders


def _torch(torch, kernel, params, grads):
    ps = [torch.from_numpy(p.copy()) for p in params]
    for p, g in zip(ps, grads, strict=True):
        p.grad = torch.from_numpy(g)
    if kernel == "adam":
        opt = torch.optim.Adam(ps, lr=LR[kernel], foreach=True)
    else:
        opt = torch.optim.SGD(ps, lr=LR[kernel], momentum=0.9, foreach=True)
    step = opt.step
    return lambda: (step(), ps)[1]


def _build_mixed(ctx, kernel, shape, dtype):
    import normax.optim

    rng = ctx.rng()
    k, n = shape
    params = [rng.standard_normal(n, dtype="float32") for _ in range(k)]
    grads = [random_array(rng, n, dtype) for _ in range(k)]
    half = np_dtype(dtype)

    def make():
        ps = [p.copy() for p in params]
        copies = [p.astype(half) for p in params]
        step = normax.optim.Adam(ps, lr=LR[kernel]).step
        return lambda: (step(grads, half_params=copies), (ps, copies))[1]

    contenders = normax_contenders(ctx, make)
    if ctx.torch is not None:
        contenders.append(
            Contender("torch", lambda: _torch_mixed(ctx.torch, kernel, params, grads, half))
        )
    return contenders


def _torch_mixed(torch, kernel, params, grads, half):
    ps = [torch.from_numpy(p.copy()) for p in params]
    copies = [torch_tensor(torch, p.astype(half)) for p in params]
    gs = [torch_tensor(torch, g) for g in grads]
    opt = torch.optim.Adam(ps, lr=LR[kernel], foreach=True)

    def run():
        for p, g in zip(ps, gs, strict=True):
            p.grad = g.float()
        opt.step()
        torch._foreach_copy_(copies, ps)
        return ps, copies

    return run
