"""Classes-first blocks with many classes (inner > 1): streamed, with the packed path's results.

When the column block that fits the kernels' packing budget (512 KiB) would be narrower than a
kernel's minimum, the C kernels stream every pass from the input over wide column blocks instead
of packing: softmax and log-softmax below 64 columns (more than 2048 float32 or 1024 float64
classes), the backwards below 128 (1024 / 512), cross-entropy below 16 (8192 / 4096). The
arithmetic per column is unchanged, so results must match the NumPy reference with the usual
tolerances, agree across thread counts, and, for float16 / bfloat16 storage, equal the float32
kernel's results on the widened input rounded once. The shapes straddle each threshold, the
16-lane vectors and the 256-column block.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax

from .conftest import BACKENDS, float64_reference, half_dtypes, softmax_pair

pytestmark = pytest.mark.skipif("c" not in BACKENDS, reason="needs the C extension")

TOL = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-5},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-12},
}
# The most classes a kernel still packs, per dtype: one more streams (softmax.c,
# nmx_block_streams).
LAST_PACKED = {
    "forward": {np.float32: 2048, np.float64: 1024},
    "backward": {np.float32: 1024, np.float64: 512},
    "xent": {np.float32: 8192, np.float64: 4096},
}
# Classes that every kernel streams.
STREAMED = {np.float32: 8193, np.float64: 4097}
INNERS = [7, 16, 33, 257]
XENT_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": -100},
    "smooth": {"label_smoothing": 0.1},
    "probs-weight-smooth": {"probs": True, "weight": True, "label_smoothing": 0.3},
}


def _cases(kernel):
    """Classes on each side of the kernel's streaming threshold, per dtype, and every inner."""
    last = LAST_PACKED[kernel]
    return [(d, c, i) for d in last for c in (last[d], last[d] + 1) for i in INNERS]


def _close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize(("dtype", "c", "inner"), _cases("forward"))
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_forward_matchesfloat64_reference(c_backend, rng, dtype, c, inner, log):
    z = (rng.standard_normal((c, inner)) * 3.0).astype(dtype)
    fn = normax.log_softmax if log else normax.softmax
    _close(fn(z, axis=0), float64_reference(fn, z, axis=0), dtype)


@pytest.mark.parametrize(("dtype", "c", "inner"), _cases("xent"))
@pytest.mark.parametrize("option", XENT_OPTIONS)
def test_xent_matchesfloat64_reference(c_backend, rng, dtype, c, inner, option):
    opts = XENT_OPTIONS[option]
    z = (rng.standard_normal((2, c, inner)) * 3.0).astype(dtype)
    if opts.get("probs"):
        q = rng.random(z.shape) + 0.05
        target = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, c, size=(2, inner))
        target[:, ::3] = opts.get("ignore_index", 0)
    kw = {k: v for k, v in opts.items() if k in ("ignore_index", "label_smoothing")}
    if opts.get("weight"):
        kw["weight"] = rng.random(c) + 0.25
    loss, dz = normax.softmax_cross_entropy(z, target, axis=1, reduction="none", **kw)
    want_loss, want_dz = float64_reference(
        normax.softmax_cross_entropy, z, target, axis=1, reduction="none", **kw
    )
    _close(loss, want_loss, dtype)
    _close(dz, want_dz, dtype)


@pytest.mark.parametrize(("dtype", "c", "inner"), _cases("backward"))
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_matchesfloat64_reference(c_backend, rng, dtype, c, inner, log):
    z = (rng.standard_normal((c, inner)) * 3.0).astype(dtype)
    g = rng.standard_normal((c, inner)).astype(dtype)
    fwd, bwd = softmax_pair(log)
    p = fwd(z, axis=0)
    _close(bwd(g, p, axis=0), float64_reference(bwd, g, p, axis=0), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_columns_do_not_depend_on_the_block(c_backend, rng, dtype, log):
    """Each column's sum is added in class order whatever block carries it: 300 streamed columns
    (blocks of 256 + 44) give the bits of the same columns computed 16 and 44 at a time."""
    c, inner = STREAMED[dtype], 300
    z = (rng.standard_normal((c, inner)) * 3.0).astype(dtype)
    g = rng.standard_normal((c, inner)).astype(dtype)
    fwd, bwd = softmax_pair(log)
    p = fwd(z, axis=0)
    whole = bwd(g, p, axis=0)
    for lo, hi in [(0, 16), (240, 256), (256, 300)]:
        part = bwd(np.ascontiguousarray(g[:, lo:hi]), np.ascontiguousarray(p[:, lo:hi]), axis=0)
        np.testing.assert_array_equal(part.view(np.uint8), whole[:, lo:hi].view(np.uint8))


# A streamed softmax whose output passes half of the largest last-level cache the kernels count
# on (32 MiB) writes it with non-temporal stores; its column slices, below that threshold, are
# written with plain ones. The other streamed kernels (plain stores at any size) are checked the
# same way. The slices start at multiples of the 256-column block, so each column is computed by
# the same vector or scalar code either way.
BIG_INNER = 600
BIG_SLICES = [(0, 256), (256, 512), (512, 600)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_past_the_cache_have_the_bits_of_smaller_calls(c_backend, rng, dtype):
    c = STREAMED[dtype]
    assert c * BIG_INNER * np.dtype(dtype).itemsize > 16 << 20
    z = _special_columns(rng, c, BIG_INNER, dtype)
    g = rng.standard_normal((c, BIG_INNER)).astype(dtype)
    y = rng.integers(0, c, size=BIG_INNER)
    y[::7] = -100

    def run(z, g, y):
        with np.errstate(invalid="ignore"):
            p, lp = normax.softmax(z, axis=0), normax.log_softmax(z, axis=0)
            loss, dz = normax.softmax_cross_entropy(
                z, y, axis=0, reduction="none", ignore_index=-100
            )
            _, dzs = normax.softmax_cross_entropy(
                z, y, axis=0, reduction="sum", ignore_index=-100, label_smoothing=0.1
            )
            return (
                p,
                lp,
                loss,
                dz,
                dzs,
                normax.softmax_backward(g, p, axis=0),
                normax.log_softmax_backward(g, lp, axis=0),
            )

    whole = run(z, g, y)
    for lo, hi in BIG_SLICES:
        part = run(np.ascontiguousarray(z[:, lo:hi]), np.ascontiguousarray(g[:, lo:hi]), y[lo:hi])
        for i, (got, out) in enumerate(zip(part, whole, strict=True)):
            want = np.ascontiguousarray(out[lo:hi] if out.ndim == 1 else out[:, lo:hi])
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), f"output {i}")


def _special_columns(rng, c, inner, dtype):
    """Logits whose columns 0-4 hold a NaN, +inf, only -inf, a tie everywhere and a huge max."""
    z = rng.standard_normal((c, inner)) * 3.0
    z[c // 2, 0] = np.nan
    z[1, 1 % inner] = np.inf
    z[:, 2 % inner] = -np.inf
    z[:, 3 % inner] = z[0, 3 % inner]
    z[0, 4 % inner] = 6e4
    return z.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inner", [17, 300])
def test_threads_give_the_same_bits(c_backend, rng, dtype, inner):
    c = STREAMED[dtype]
    z = _special_columns(rng, c, inner, dtype)
    y = rng.integers(0, c, size=inner)
    previous = normax.get_num_threads()
    results = []
    try:
        for nt in (1, 2):
            normax.set_num_threads(nt)
            with np.errstate(invalid="ignore"):
                p, lp = normax.softmax(z, axis=0), normax.log_softmax(z, axis=0)
                _, dz = normax.softmax_cross_entropy(z, y, axis=0)
                dp = normax.softmax_backward(dz, p, axis=0)
                dlp = normax.log_softmax_backward(dz, lp, axis=0)
            results.append([a.view(np.uint8) for a in (p, lp, dz, dp, dlp)])
    finally:
        normax.set_num_threads(previous)
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


def _assert_same_bits(got, want, what):
    """Equal bit patterns, NaN where the reference is NaN (its payload aside)."""
    nan = np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan, err_msg=what)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan], what)


# 1000 classes: packed half blocks of 128 columns (the backward's g and y widened into float32
# scratch), prefetched; 1025: the backward streams, softmax packs 112 columns; 2048: softmax
# packs 64; 2049: both stream (every pass widens a class row at a time). 129 columns leave a
# last block of one column.
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("c", [1000, 1025, 2048, 2049])
@pytest.mark.parametrize("inner", [7, 33, 129, 257])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_half_equals_float32_rounded_once(c_backend, rng, dtype, c, inner, log, backward):
    z = _special_columns(rng, c, inner, dtype)
    g = rng.standard_normal((c, inner)).astype(dtype)
    g[c // 3, 0] = np.nan
    g[2, 1 % inner] = -np.inf
    g[:, 5 % inner] = 6e-8  # subnormal in float16
    fwd, bwd = softmax_pair(log)
    with np.errstate(invalid="ignore", over="ignore"):
        if backward:
            p = fwd(z, axis=0)
            want = bwd(g.astype(np.float32), p.astype(np.float32), axis=0).astype(dtype)
            got = bwd(g, p, axis=0)
        else:
            want = fwd(z.astype(np.float32), axis=0).astype(dtype)
            got = fwd(z, axis=0)
    _assert_same_bits(got, want, f"{c}x{inner}")


def _special_last_columns(rng, c, inner, dtype):
    """Logits whose last inner % 16 columns (the float32 kernels' scalar ones) hold a NaN,
    +inf, only -inf, a tie everywhere, a huge max, and exponentials that are subnormal in float32
    (every class but one 90 below the max: the scalar exp keeps them, the vector exp flushes)."""
    z = rng.standard_normal((c, inner)) * 3.0
    first = inner - inner % 16
    col = [first + k % (inner - first) for k in range(6)]
    z[c // 2, col[0]] = np.nan
    z[1, col[1]] = np.inf
    z[:, col[2]] = -np.inf
    z[:, col[3]] = z[0, col[3]]
    z[0, col[4]] = 6e4
    z[:, col[5]] = -90.0
    z[c // 3, col[5]] = 0.0
    return z.astype(dtype)


# 1000 classes: packed blocks of 128 columns (the last of 300 columns is 44 wide); 2049:
# streamed blocks of up to 256 columns.
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("c", [1000, 2049])
@pytest.mark.parametrize("inner", [7, 44, 300])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_half_last_columns_equal_float32_rounded_once(c_backend, rng, dtype, c, inner, log):
    """The columns past a half block's last full vector take the float32 kernels' scalar
    arithmetic (computed 16 lanes at a time), so their results are those bits rounded once."""
    z = _special_last_columns(rng, c, inner, dtype)
    fn = normax.log_softmax if log else normax.softmax
    with np.errstate(invalid="ignore", over="ignore"):
        want = fn(z.astype(np.float32), axis=0).astype(dtype)
    _assert_same_bits(fn(z, axis=0), want, f"{c}x{inner}")
    first = inner - inner % 16
    assert np.isnan(want[:, first].astype(np.float32)).all()  # the specials reached the tail


@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("c", [8192, 8193])
@pytest.mark.parametrize("inner", [7, 17, 33, 257])
@pytest.mark.parametrize("option", XENT_OPTIONS)
def test_half_xent_equals_float32_rounded_once(c_backend, rng, dtype, c, inner, option):
    """Half cross-entropy: dz and per-example losses are the float32 kernel's rounded once.

    With inner % 16 == 1 the last column of each example is computed alone, as a row.
    """
    opts = XENT_OPTIONS[option]
    z = np.stack([_special_columns(rng, c, inner, dtype)] * 2)
    if opts.get("probs"):
        q = rng.random(z.shape) + 0.05
        target = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
        wide_target = target.astype(np.float32)
    else:
        target = rng.integers(0, c, size=(2, inner))
        target[:, ::3] = opts.get("ignore_index", 0)
        wide_target = target
    kw = {k: v for k, v in opts.items() if k in ("ignore_index", "label_smoothing")}
    if opts.get("weight"):
        kw["weight"] = rng.random(c) + 0.25
    wide = z.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        loss, dz = normax.softmax_cross_entropy(z, target, axis=1, reduction="none", **kw)
        want_loss, want_dz = normax.softmax_cross_entropy(
            wide, wide_target, axis=1, reduction="none", **kw
        )
        if inner % 16 == 1:  # the lone last column: the float32 kernel on it alone (a row)
            want_loss[:, -1:], want_dz[..., -1:] = normax.softmax_cross_entropy(
                wide[..., -1:], wide_target[..., -1:], axis=1, reduction="none", **kw
            )
        want_loss, want_dz = want_loss.astype(dtype), want_dz.astype(dtype)
    _assert_same_bits(loss, want_loss, f"loss {c}x{inner}")
    _assert_same_bits(dz, want_dz, f"dz {c}x{inner}")


@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("inner", [17, 300])
def test_half_xent_reduced_loss(c_backend, rng, dtype, inner):
    """The reduced half loss sums the float32 kernel's float64 losses: equal up to their order."""
    c = STREAMED[np.float32]
    z = (rng.standard_normal((c, inner)) * 3.0).astype(dtype)
    y = rng.integers(0, c, size=inner)
    got, _ = normax.softmax_cross_entropy(z, y, axis=0)
    want, _ = normax.softmax_cross_entropy(z.astype(np.float32), y, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-9)
