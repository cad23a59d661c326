"""Batch norm in float16 and bfloat16 on every backend.

Half-precision storage, float32 arithmetic, PyTorch's mixed rule: x, y, dy and dx in the half
type; gamma, beta, the running statistics, dgamma and dbeta in float32. Every half output is
compared with the float64 computation on the (exactly) upcast inputs, within one unit of the
storage type (conftest.HALF_TOL); the float32 outputs with the float32 tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax import _batchnorm_numpy as ref

from .conftest import BACKENDS, assert_half_close, half_dtypes, same_bits_on_one_and_two_threads

HALF = half_dtypes()

# (shape, axis): the four named layouts, and shapes that take every path of the C kernels:
# rows wider than a conversion tile's slice (C > 256), runs longer than a tile (inner > 1024),
# and the parallel path (more than 2**15 elements) for rows, long runs and short runs.
LAYOUTS = {
    "NC": ((33, 7), 1),
    "NCHW": ((4, 3, 5, 7), 1),
    "NHWC": ((4, 5, 7, 3), -1),
    "C,m": ((6, 1500), 0),
    "wide-C": ((9, 1100), 1),
    # wide rows by tiles of four rows, a leftover row on each thread, the output streamed
    # (over half the kernels' 32 MiB cache budget)
    "wide-C-streamed": ((4099, 2100), 1),
    "rows-parallel": ((130, 300), 1),
    "long-runs-parallel": ((3, 5, 45, 50), 1),
    "short-runs-parallel": ((16, 48, 7, 7), 1),
}

F32 = {"rtol": 2e-5, "atol": 2e-5}


def _make(shape, axis, dtype, rng):
    c = shape[axis]
    x = (rng.standard_normal(shape) * 2.0 + 3.0).astype(dtype)
    gamma = (rng.standard_normal(c) + 1.0).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    return x, gamma, beta


def _finfo(dtype):
    """np.finfo, which does not know bfloat16 (ml_dtypes has its own)."""
    if dtype == np.float16:
        return np.finfo(dtype)
    import ml_dtypes

    return ml_dtypes.finfo(dtype)


def _f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


def _ref_train(x, axis, gamma, beta, momentum=0.1, eps=1e-5):
    """The float64 forward on the upcast input: y, mean, invstd, running mean and variance."""
    c = x.shape[axis]
    rm, rv = np.zeros(c), np.ones(c)
    x64, g64, b64 = _f64(x, gamma, beta)
    y, mean, invstd = ref.train_by_axis(x64, axis % x.ndim, g64, b64, rm, rv, momentum, eps)
    return y, mean, invstd, rm, rv


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_matches_float64(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = _make(shape, axis, dtype, rng)
    c = shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis)
    y64, mean, invstd, rm64, rv64 = _ref_train(x, axis, gamma, beta)
    assert y.shape == x.shape
    assert_half_close(y, y64, dtype, "y")
    assert cache.mean.dtype == cache.invstd.dtype == np.float64
    np.testing.assert_allclose(cache.mean, mean, **F32)
    np.testing.assert_allclose(cache.invstd, invstd, **F32)
    assert rm.dtype == rv.dtype == np.float32
    np.testing.assert_allclose(rm, rm64, **F32)
    np.testing.assert_allclose(rv, rv64, **F32)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_infer_matches_float64(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = _make(shape, axis, dtype, rng)
    c = shape[axis]
    rm = rng.standard_normal(c).astype(np.float32) + 3.0
    rv = rng.uniform(0.5, 5.0, c).astype(np.float32)
    y = normax.batch_norm_infer(x, gamma, beta, rm, rv, axis=axis)
    y64 = ref.infer_by_axis(*_f64(x), axis % x.ndim, *_f64(gamma, beta, rm, rv), 1e-5)
    assert_half_close(y, y64, dtype, "y")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_matches_float64(backend, layout, dtype, affine, rng):
    """The half backward against the float64 backward of the same forward, rounded once."""
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = _make(shape, axis, dtype, rng)
    if not affine:
        gamma = beta = None
    dy = rng.standard_normal(shape).astype(dtype)
    _, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache)
    _, mean, invstd, _, _ = _ref_train(x, axis, gamma, beta)
    dx64, dg64, db64 = ref.backward_by_axis(*_f64(dy, x), axis % x.ndim, mean, invstd, *_f64(gamma))
    assert_half_close(dx, dx64, dtype, "dx")
    if not affine:
        assert dgamma is None and dbeta is None
        return
    assert dgamma.dtype == dbeta.dtype == np.float32
    n = x.size // x.shape[axis]
    np.testing.assert_allclose(dgamma, dg64, rtol=1e-5, atol=1e-6 * n)
    np.testing.assert_allclose(dbeta, db64, rtol=1e-5, atol=1e-6 * n)


# NCHW: grouped on any machine, as tests/test_batchnorm.py explains (three 16 KiB runs a channel).
@pytest.mark.parametrize("case", [((3, 400, 8192), 1), ((37, 240001), 0)], ids=["NCHW", "C,m"])
@pytest.mark.parametrize("dtype", HALF)
def test_large_runs_give_the_same_bits_on_any_thread_count(case, dtype, rng):
    """Half runs past the cache go group by group (as float32 does): one thread and two give the
    same bits, and the right values."""
    shape, axis = case
    x, gamma, beta = _make(shape, axis, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)

    def call():
        y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
        return (y, cache.mean, cache.invstd, *normax.batch_norm_backward(dy, cache))

    y, mean, _, dx, dgamma, _ = same_bits_on_one_and_two_threads(call)
    y64, mean64, invstd64, _, _ = _ref_train(x, axis, gamma, beta)
    assert_half_close(y, y64, dtype, "y")
    np.testing.assert_allclose(mean, mean64, **F32)
    dx64, dg64, _ = ref.backward_by_axis(
        *_f64(dy, x), axis % x.ndim, mean64, invstd64, *_f64(gamma)
    )
    assert_half_close(dx, dx64, dtype, "dx")
    np.testing.assert_allclose(dgamma, dg64, rtol=1e-5, atol=1e-6 * (x.size // x.shape[axis]))


@pytest.mark.parametrize("dtype", HALF)
def test_out_and_noncontiguous_input(backend, dtype, rng):
    x, gamma, beta = _make((40, 12, 6), 1, dtype, rng)
    xt = x.transpose(0, 2, 1)  # (40, 6, 12), channels last, not contiguous
    out = np.empty(xt.shape, dtype)
    y, cache = normax.batch_norm_train(xt, gamma, beta, axis=-1, out=out)
    assert y is out
    y64 = _ref_train(np.ascontiguousarray(xt), -1, gamma, beta)[0]
    assert_half_close(y, y64, dtype, "y")
    dx_out = np.empty(xt.shape, dtype)
    dx, _, _ = normax.batch_norm_backward(np.ones(xt.shape, dtype), cache, out=dx_out)
    assert dx is dx_out
    np.testing.assert_allclose(dx.astype(np.float64), 0.0, atol=2e-2)  # constant dy: no gradient


@pytest.mark.parametrize("shape", [(4100, 2048), (8200, 1024)], ids=["wide", "rows"])
@pytest.mark.parametrize("offset", [2, 32])
@pytest.mark.parametrize("dtype", HALF)
def test_out_off_the_line_boundary_gives_the_same_bits(backend, dtype, offset, shape, rng):
    """Streamed rows (over half the kernels' 32 MiB cache budget) on whole lines go straight to a
    line-aligned output; an `out` starting `offset` bytes past a line takes the buffered path,
    with the same bits."""
    x, gamma, beta = _make(shape, 1, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    size = x.size * x.itemsize
    raw = np.empty(size + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start : start + size].view(dtype).reshape(shape)
    y, cache = normax.batch_norm_train(x, gamma, beta)
    yo, _ = normax.batch_norm_train(x, gamma, beta, out=out)
    np.testing.assert_array_equal(_half_bits(yo, dtype), _half_bits(y, dtype), "y")
    yi = normax.batch_norm_infer(x, gamma, beta, cache.mean, 1 / cache.invstd**2)
    yio = normax.batch_norm_infer(x, gamma, beta, cache.mean, 1 / cache.invstd**2, out=out)
    np.testing.assert_array_equal(_half_bits(yio, dtype), _half_bits(yi, dtype), "infer y")
    dx = normax.batch_norm_backward(dy, cache)[0]
    dxo = normax.batch_norm_backward(dy, cache, out=out)[0]
    np.testing.assert_array_equal(_half_bits(dxo, dtype), _half_bits(dx, dtype), "dx")


@pytest.mark.parametrize(
    "shape",
    [
        (220000, 40),  # rows of 80 bytes: straight from their loops, shared lines plain
        (90000, 100),  # rows of 200 bytes
        (140000, 64),  # rows of whole lines: from their loops at any offset
        (380000, 24),  # rows of 48 bytes: four at a time as rows of three lines
        (3000001, 3),  # rows of 6 bytes: 32 at a time, and a row of its own
    ],
)
@pytest.mark.parametrize("dtype", HALF)
def test_streamed_rows_have_the_bits_at_any_alignment(c_backend, dtype, shape, rng):
    """Streamed rows of at least 80 bytes are written by the row loops, each row's whole 64-byte
    lines non-temporally and the rest plain, wherever the output starts (rows that start on a
    line and hold whole lines on any CPU, others on AVX-512 and float16 on AVX2, else through a
    buffer); rows under 64 bytes go several at a time as one row of whole lines. Where an output
    starts moves those boundaries; it must never move a bit:
    training forward, inference and backward into `out` at every element offset within a line
    give the bits of the call that allocates its own (line-aligned) outputs. The outputs are past
    half the kernels' 32 MiB cache budget, so they are streamed on any machine."""
    x, gamma, beta = _make(shape, 1, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = normax.batch_norm_train(x, gamma, beta)
    mean, var = cache.mean, 1 / cache.invstd**2
    yi = normax.batch_norm_infer(x, gamma, beta, mean, var)
    dx = normax.batch_norm_backward(dy, cache)[0]
    per_line = 64 // x.itemsize
    raw = np.empty(x.size + 2 * per_line, dtype)
    base = raw[(-raw.ctypes.data) % 64 // x.itemsize :]
    for shift in range(per_line):
        out = base[shift : shift + x.size].reshape(shape)
        calls = [
            ("y", lambda: normax.batch_norm_train(x, gamma, beta, out=out)[0], y),
            ("inference", lambda: normax.batch_norm_infer(x, gamma, beta, mean, var, out=out), yi),
            ("dx", lambda: normax.batch_norm_backward(dy, cache, out=out)[0], dx),
        ]
        for name, call, want in calls:  # one at a time: each overwrites `out`
            assert call() is out
            np.testing.assert_array_equal(  # no NaN here: compare every bit
                out.view(np.uint16), want.view(np.uint16), f"{name}, {shift} elements in"
            )


@pytest.mark.parametrize("dtype", HALF)
def test_parameters_in_any_float_type_become_float32(backend, dtype, rng):
    """gamma and beta in half, float32 or float64 give the same result; inference statistics
    may be half too (all read only and converted to float32)."""
    x, gamma, beta = _make((20, 4), 1, dtype, rng)
    g16, b16 = gamma.astype(dtype), beta.astype(dtype)
    y16, c16 = normax.batch_norm_train(x, g16, b16)
    y32, _ = normax.batch_norm_train(x, g16.astype(np.float32), b16.astype(np.float64))
    np.testing.assert_array_equal(y16.astype(np.float64), y32.astype(np.float64))
    assert c16.gamma.dtype == np.float32
    stats = np.zeros(4, dtype), np.ones(4, dtype)
    yi = normax.batch_norm_infer(x, None, None, *stats, eps=0.0)
    yf = normax.batch_norm_infer(x, None, None, *(s.astype(np.float32) for s in stats), eps=0.0)
    np.testing.assert_array_equal(yi.astype(np.float64), yf.astype(np.float64))


@pytest.mark.parametrize("dtype", HALF)
def test_infer_identity_keeps_every_half_value(backend, dtype):
    """Normalizing with mean 0, variance 1 and eps 0 is the identity in float32: every finite
    half value, subnormals included, comes back unchanged; Inf stays Inf and NaN stays NaN."""
    bits = np.arange(2**16, dtype=np.uint16)
    x = bits.view(dtype).reshape(-1, 64)
    y = normax.batch_norm_infer(
        x, None, None, np.zeros(64, np.float32), np.ones(64, np.float32), eps=0.0
    )
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it widens a signaling NaN
        np.testing.assert_array_equal(y.astype(np.float64), x.astype(np.float64))


def test_subnormal_inputs_are_not_flushed(backend):
    """A float16 channel of subnormal values normalizes like the same values scaled into the
    normal range (a flush to zero would give a constant channel and y == 0). Not for bfloat16:
    its subnormals are float32's, and 1 / std of such a channel overflows float32."""
    tiny = float(np.finfo(np.float16).smallest_subnormal)
    k = np.arange(1, 9, dtype=np.float64)
    x = np.stack([k * tiny, k], axis=1).astype(np.float16)  # channel 0 subnormal, 1 normal
    y, _ = normax.batch_norm_train(x, None, None, eps=1e-30)
    np.testing.assert_array_equal(y[:, 0], y[:, 1])
    assert np.all(y[:, 0] != 0)


@pytest.mark.parametrize("dtype", HALF)
def test_subnormal_outputs_are_not_flushed(backend, dtype, rng):
    """A gamma below the smallest normal half makes every y subnormal: each is the float64
    result rounded to within one subnormal step, not zero."""
    info = _finfo(dtype)
    x = rng.standard_normal((64, 3)).astype(dtype)
    gamma = np.full(3, float(info.smallest_normal) / 8, np.float32)
    y, _ = normax.batch_norm_train(x, gamma, None)
    y64 = _ref_train(x, 1, gamma, None)[0]
    np.testing.assert_allclose(
        y.astype(np.float64), y64, rtol=0, atol=float(info.smallest_subnormal)
    )
    assert np.count_nonzero(y) > 0.9 * y.size


@pytest.mark.parametrize("layout", ["NC", "NCHW", "rows-parallel"])
@pytest.mark.parametrize("dtype", HALF)
def test_nan_and_inf_stay_in_their_channel(backend, layout, dtype, rng):
    shape, axis = LAYOUTS[layout]
    x, gamma, beta = _make(shape, axis, dtype, rng)
    xm = np.moveaxis(x, axis, 0)  # channel-first view of x
    xm[0].flat[3] = np.nan
    xm[1].flat[-1] = np.inf
    y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis)
    ym = np.moveaxis(y, axis, 0).astype(np.float64)
    assert np.isnan(ym[:2]).all()
    assert np.isfinite(ym[2:]).all()
    dx, dgamma, _ = normax.batch_norm_backward(np.ones_like(x), cache)
    assert np.isnan(np.moveaxis(dx, axis, 0)[:2].astype(np.float64)).all()
    assert np.isfinite(dgamma[2:]).all()


@pytest.mark.parametrize("dtype", HALF)
def test_huge_bfloat16_values_do_not_overflow_the_sums(backend, dtype):
    """Values near the top of the range: their squares overflow float32 (bfloat16 reaches
    3e38), so the blocked float32 sums are redone in float64 and the variance stays right."""
    big = float(_finfo(dtype).max) / 4
    x = np.array([[big, 1.0], [-big, 2.0], [big, 3.0], [-big, 4.0], [big, 5.0]] * 8, dtype)
    y, cache = normax.batch_norm_train(x, None, None)
    y64, _, invstd, _, _ = _ref_train(x, 1, None, None)
    assert_half_close(y, y64, dtype, "y")
    np.testing.assert_allclose(cache.invstd, invstd, rtol=1e-5)


def test_huge_bfloat16_gradients_do_not_overflow_the_sums(backend, rng):
    """The backward's blocked float32 sums of wide rows (four rows a block, in parallel):
    dy * (x - mean) near 1e68 overflows float32, so those sums are redone in float64 and dgamma
    (about 1e31) and dx stay right."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype, shape = ml_dtypes.bfloat16, (41, 1100)
    big = float(_finfo(dtype).max) / 4
    x = (rng.choice([-big, big], shape) + rng.standard_normal(shape) * big / 8).astype(dtype)
    dy = (rng.standard_normal(shape) * 1e30).astype(dtype)
    gamma = (rng.standard_normal(shape[1]) + 1.0).astype(np.float32)
    _, cache = normax.batch_norm_train(x, gamma, None)
    dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache)
    _, mean, invstd, _, _ = _ref_train(x, 1, gamma, None)
    dx64, dg64, db64 = ref.backward_by_axis(*_f64(dy, x), 1, mean, invstd, *_f64(gamma))
    assert np.isfinite(dg64).all() and np.abs(dg64).max() > 1e30
    assert_half_close(dx, dx64, dtype, "dx")
    np.testing.assert_allclose(dgamma, dg64, rtol=1e-5)
    np.testing.assert_allclose(dbeta, db64, rtol=1e-5, atol=1e-6 * np.abs(db64).max())


@pytest.mark.parametrize("dtype", HALF)
def test_empty_batch(backend, dtype):
    rm, rv = np.full(3, 2.0, np.float32), np.full(3, 5.0, np.float32)
    y, cache = normax.batch_norm_train(np.empty((0, 3), dtype), None, None, rm, rv)
    assert y.shape == (0, 3) and y.dtype == dtype
    assert rm.tolist() == [2.0] * 3 and rv.tolist() == [5.0] * 3
    dx, dgamma, dbeta = normax.batch_norm_backward(np.empty((0, 3), dtype), cache)
    assert dx.shape == (0, 3) and dx.dtype == dtype and dgamma is None and dbeta is None


def test_bfloat16_reference_rounds_once():
    """The NumPy reference rounds float64 to bfloat16 once: 1 + 2**-8 + 2**-30 lies just above
    the midpoint between 1 and 1 + 2**-7, so it rounds up (through float32 it would tie to 1)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dst = np.empty(4, ml_dtypes.bfloat16)
    value = np.array([1 + 2.0**-8 + 2.0**-30, -(1 + 2.0**-8 + 2.0**-30), 1 + 2.0**-8, np.nan])
    ref._store(dst, value)
    got = dst.astype(np.float64)
    assert got[:3].tolist() == [1 + 2.0**-7, -(1 + 2.0**-7), 1.0]
    assert np.isnan(got[3])


# ---- errors: the same on every backend ---------------------------------------------------------

ERRORS = {
    "running-var-float16": (
        lambda x, c: normax.batch_norm_train(
            x, None, None, np.zeros(c, np.float32), np.ones(c, np.float16)),
        TypeError, "running_var has dtype float16, expected float32",
    ),
    "running-mean-float64": (
        lambda x, c: normax.batch_norm_train(
            x, None, None, np.zeros(c, np.float64), np.ones(c, np.float32)),
        TypeError, "running_mean has dtype float64, expected float32",
    ),
    "out-float32": (
        lambda x, c: normax.batch_norm_train(x, None, None, out=np.empty(x.shape, np.float32)),
        TypeError, "out has dtype float32, expected {}",
    ),
    "dy-float32": (
        lambda x, c: normax.batch_norm_backward(
            np.ones(x.shape, np.float32), normax.batch_norm_train(x, None, None)[1]),
        TypeError, "dy has dtype float32, expected {} (the dtype of x)",
    ),
    "infer-out-float32": (
        lambda x, c: normax.batch_norm_infer(
            x, None, None, np.zeros(c), np.ones(c), out=np.empty(x.shape, np.float32)),
        TypeError, "out has dtype float32, expected {}",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", ERRORS)
@pytest.mark.parametrize("dtype", HALF)
def test_errors_are_the_same_everywhere(case, dtype):
    call, exc, message = ERRORS[case]
    x = np.ones((6, 5), dtype)
    previous = normax.get_backend()
    try:
        for name in BACKENDS:
            normax.set_backend(name)
            with pytest.raises(exc) as info:
                call(x, 5)
            assert str(info.value).startswith(message.format(np.dtype(dtype).name)), name
    finally:
        normax.set_backend(previous)


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize("dtype", HALF)
def test_c_column_rechecks_a_half_record(dtype):
    """A direct call of the C kernels' entries with a half x must raise, never crash, when
    any other array of the record does not match it."""
    from normax import _batchnorm_ext as ext

    x = np.ones((6, 5), dtype)
    f32 = np.ones(5, np.float32)
    y, mean, invstd = np.empty_like(x), np.empty(5), np.empty(5)
    ext.train(x, 6, 5, 1, f32, f32, None, None, 0.1, 1e-5, y, mean, invstd)  # a valid record
    bad_train = [
        ((x, 6, 5, 1, f32.astype(dtype), f32, None, None, 0.1, 1e-5, y, mean, invstd), "gamma"),
        (
            (x, 6, 5, 1, None, None, f32, f32.astype(dtype), 0.1, 1e-5, y, mean, invstd),
            "running_var",
        ),
        ((x, 6, 5, 1, None, None, None, None, 0.1, 1e-5, y.astype(np.float32), mean, invstd), "y"),
        ((x, 7, 5, 1, None, None, None, None, 0.1, 1e-5, y, mean, invstd), "x"),
    ]
    for args, name in bad_train:
        with pytest.raises(ValueError, match=rf"^{name} must be a"):
            ext.train(*args)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        ext.train(x.astype(np.int16), 6, 5, 1, None, None, None, None, 0.1, 1e-5, y, mean, invstd)
    with pytest.raises(ValueError, match=r"^running_mean must be a"):
        ext.infer(x, 6, 5, 1, None, None, f32.astype(dtype), f32, 1e-5, y)
    with pytest.raises(ValueError, match=r"^dgamma must be a"):
        ext.backward(x, x, 6, 5, 1, mean, invstd, f32, y, f32.astype(dtype), f32.copy())
    with pytest.raises(ValueError, match=r"^dy must be a"):
        ext.backward(x.astype(np.float32), x, 6, 5, 1, mean, invstd, None, y, None, None)


# ---- PyTorch: the same call on bfloat16 / float16 tensors with float32 parameters --------------


def _torch(a, torch):
    if a.dtype.itemsize == 2:
        t = torch.from_numpy(a.view(np.uint16).copy())
        return t.view(torch.bfloat16 if a.dtype != np.float16 else torch.float16)
    return torch.from_numpy(a.copy())


def _numpy(t, dtype, torch):
    return t.detach().view(torch.int16).numpy().view(np.uint16).view(dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", ["NC", "NCHW", "rows-parallel", "long-runs-parallel"])
def test_matches_pytorch(backend, layout, dtype, rng):
    torch = pytest.importorskip("torch")
    shape, axis = LAYOUTS[layout]
    if axis != 1:
        pytest.skip("PyTorch's channel axis is 1")
    x, gamma, beta = _make(shape, axis, dtype, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, momentum=0.2)
    dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache)

    tx = _torch(x, torch).requires_grad_()
    tg, tb = _torch(gamma, torch).requires_grad_(), _torch(beta, torch).requires_grad_()
    trm, trv = torch.zeros(c), torch.ones(c)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=0.2, eps=1e-5)
    ty.backward(_torch(dy, torch))
    assert ty.dtype == tx.dtype and tg.grad.dtype == torch.float32
    assert_half_close(y, _numpy(ty, dtype, torch).astype(np.float64), dtype, "y")
    assert_half_close(dx, _numpy(tx.grad, dtype, torch).astype(np.float64), dtype, "dx")
    np.testing.assert_allclose(rm, trm.numpy(), **F32)
    np.testing.assert_allclose(rv, trv.numpy(), **F32)
    n = x.size // c
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), rtol=1e-4, atol=1e-5 * n)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), rtol=1e-4, atol=1e-5 * n)

    yi = normax.batch_norm_infer(x, gamma, beta, rm, rv)
    with torch.no_grad():
        tyi = torch.nn.functional.batch_norm(
            _torch(x, torch),
            trm,
            trv,
            _torch(gamma, torch),
            _torch(beta, torch),
            training=False,
            eps=1e-5,
        )
    assert_half_close(yi, _numpy(tyi, dtype, torch).astype(np.float64), dtype, "infer y")


# ---- the compiled front door takes the common half call itself ------------------------------


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize("dtype", HALF)
def test_front_door_takes_half_calls_the_checker_keeps(backend, dtype, rng, monkeypatch):
    """Half x with float32 parameters and buffers runs without the Python checker, with the
    checker's result; a half gamma (converted by the checker) still goes through it."""
    from normax import _batchnorm_check as check

    x, gamma, beta = _make((40, 6), 1, dtype, rng)
    dy = rng.standard_normal(x.shape).astype(dtype)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    rm2, rv2 = rm.copy(), rv.copy()
    y_ref, cache_ref = check.batch_norm_train(x, gamma, beta, rm2, rv2)
    yi_ref = check.batch_norm_infer(x, gamma, beta, rm2, rv2)
    grads_ref = check.batch_norm_backward(dy, cache_ref)
    seen = []
    for name in ("batch_norm_train", "batch_norm_infer", "batch_norm_backward"):
        original = getattr(check, name)
        monkeypatch.setattr(check, name, lambda *a, f=original, **k: seen.append(1) or f(*a, **k))
    out = np.empty_like(x)
    y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, out=out)
    yi = normax.batch_norm_infer(x, gamma, beta, rm, rv)
    grads = normax.batch_norm_backward(dy, cache, out=np.empty_like(x))
    assert not seen and y is out
    for got, want in [
        (y, y_ref),
        (rm, rm2),
        (rv, rv2),
        (yi, yi_ref),
        *zip(grads, grads_ref, strict=True),
    ]:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))
    normax.batch_norm_train(x, gamma.astype(dtype), beta)
    assert seen


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize("case", [((4200, 2048), 1), ((64, 41, 3300), 1)])
def test_outputs_larger_than_the_cache(case, rng):
    """Half outputs above 16 MiB take the streamed path of the C kernels (here into an `out`
    2 bytes off 16-byte alignment): the float32 kernels' result, rounded once."""
    shape, axis = case
    dtype = np.dtype(np.float16)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    out = np.empty(x.size + 1, dtype)[1:].reshape(shape)
    previous = normax.get_backend()
    try:
        normax.set_backend("c")
        y, cache = normax.batch_norm_train(x, gamma, beta, axis=axis, out=out)
        dx, _, _ = normax.batch_norm_backward(dy, cache, out=np.empty_like(x))
        y32, cache32 = normax.batch_norm_train(x.astype(np.float32), gamma, beta, axis=axis)
        dx32, _, _ = normax.batch_norm_backward(dy.astype(np.float32), cache32)
    finally:
        normax.set_backend(previous)
    assert y is out
    assert_half_close(y, y32.astype(np.float64), dtype, "y")
    assert_half_close(dx, dx32.astype(np.float64), dtype, "dx")


# (shape, axis) for the C kernels' bit-for-bit contract below: rows of 1 to 2049 channels
# (around the fused loops' vector widths, 8 and 16 lanes, and the float16 tiles' 256-channel
# slices), batches of 2 to 131 rows (blocks of four rows and their leftovers), runs of 2 to 1024
# values (around the run sums' 8 and 32 lanes and the tile length), and the parallel path (more
# than 2**15 elements) for rows and runs.
EXACT_CASES = [
    ((2, 1), 1),
    ((5, 3), 1),
    ((9, 8), 1),
    ((6, 15), 1),
    ((7, 16), 1),
    ((8, 17), 1),
    # rows ending in a slice of 2, 5 and 6 of 8 lanes (10, 13, 14 and 5 of 16): with the others
    # here, every width of a last slice on 8 lanes
    ((10, 10), 1),
    ((11, 13), 1),
    ((12, 14), 1),
    ((4100, 21), 1),
    # rows narrower than a line on the parallel path: their blocks summed as lanes
    ((11001, 3), 1),
    ((5003, 7), 1),
    ((2300, 15), 1),
    ((1100, 30), 1),
    # rows of 64, 96 and 128 B on the parallel path: four vectors summed in registers on AVX2,
    # two to four on AVX-512
    ((1100, 32), 1),
    ((1100, 48), 1),
    ((600, 64), 1),
    ((131, 255), 1),
    ((7, 256), 1),
    ((6, 257), 1),
    ((9, 1025), 1),
    ((3, 2049), 1),
    ((4100, 17), 1),
    ((70, 1001), 1),
    ((3, 5, 2), 1),
    ((3, 4, 7), 1),
    ((3, 4, 8), 1),
    ((2, 3, 127), 1),
    ((2, 3, 128), 1),
    ((2, 3, 129), 1),
    ((4, 3, 49), 1),
    ((2, 7, 1023), 1),
    ((3, 2, 1024), 1),
    ((5, 9, 1000), 1),
    ((6, 4, 7, 3), -1),
    ((5, 1000), 0),
    # wide rows with the output streamed (over half the kernels' 32 MiB cache budget): rows on
    # whole lines, written by strips with non-temporal stores (the last tile one strip wide, a
    # leftover row), and rows that are not, through a buffer
    ((4100, 2048), 1),
    ((4099, 2080), 1),
    ((4097, 2100), 1),
    # rows that are not wide, streamed: on whole lines, stored non-temporally, or not
    ((32, 64, 64, 64), -1),
    ((8500, 1000), 1),
    # runs streamed: whole lines of each run stored non-temporally, the ends as they fall
    ((2049, 4, 1024), 1),
    ((4101, 2, 1023), 1),
]


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize("shape", [(4100, 2048), (3000, 2830)], ids=["lines", "tails"])
@pytest.mark.parametrize("dtype", HALF)
def test_streamed_rows_are_the_float32_kernels_rounded_once(shape, dtype, rng):
    """Rows past the cache budget, stored straight into whole lines (2048 channels) or through
    the buffer, with a group of eight and six channels left after the last group of sixteen
    (2830): the bits of the float32 kernels, rounded once, as on small rows."""
    x = (rng.standard_normal(shape) * 3.0 + 5.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(np.float32)
    beta = rng.standard_normal(shape[1]).astype(np.float32)
    got, want = _c_half_and_float32(x, dy, gamma, beta, 1)
    for name, h, f in zip(C_OUTPUTS, got, want, strict=True):
        if h.dtype == dtype:
            np.testing.assert_array_equal(_half_bits(h, dtype), _half_bits(f, dtype), name)
        else:
            np.testing.assert_array_equal(h, f, name)


def _half_bits(a, dtype):
    """Bit patterns of a half array, every NaN made the same (the payload is not the contract)."""
    bits = a.astype(dtype).view(np.uint16).copy()
    bits[np.isnan(a.astype(np.float64))] = 0x7FFF
    return bits


def _with_specials(x, dtype, rng):
    """x with NaN, +-Inf, subnormals and the largest finite value in separate channels."""
    info = _finfo(dtype)
    f = x.reshape(-1)
    picks = rng.choice(f.size, size=min(f.size, 6), replace=False)
    values = [
        np.nan,
        np.inf,
        -np.inf,
        float(info.smallest_subnormal) * 3,
        float(info.smallest_normal) / 2,
        float(info.max),
    ]
    for p, v in zip(picks, values[: picks.size], strict=True):
        f[p] = v
    return x


C_OUTPUTS = (
    "y",
    "infer y",
    "dx",
    "dgamma",
    "dbeta",
    "running_mean",
    "running_var",
    "mean",
    "invstd",
)


def _c_half_and_float32(x, dy, gamma, beta, axis, running=None):
    """The C kernels' training forward, inference (with `running` = (mean, var), or the running
    statistics the training left) and backward, on the half x and dy and on their float32
    copies: two tuples of the outputs named by C_OUTPUTS."""
    c = x.shape[axis]
    previous = normax.get_backend()
    try:
        normax.set_backend("c")
        runs = []
        for xs, dys in ((x, dy), (x.astype(np.float32), dy.astype(np.float32))):
            rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
            with np.errstate(invalid="ignore", over="ignore"):
                y, cache = normax.batch_norm_train(xs, gamma, beta, rm, rv, axis=axis)
                stats = running if running is not None else (rm, rv)
                yi = normax.batch_norm_infer(xs, gamma, beta, *stats, axis=axis)
                dx, dgamma, dbeta = normax.batch_norm_backward(dys, cache)
            runs.append((y, yi, dx, dgamma, dbeta, rm, rv, cache.mean, cache.invstd))
    finally:
        normax.set_backend(previous)
    return runs


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("case", EXACT_CASES, ids=str)
@pytest.mark.parametrize("dtype", HALF)
def test_c_kernels_are_the_float32_kernels_rounded_once(case, dtype, specials, rng):
    """Half storage, float32 arithmetic, bit for bit: on runs of at most a tile, y, dx, the
    statistics and the running buffers equal the float32 kernels' on the widened input, and
    each half output is their float32 result rounded once (NaN as NaN: the payload is free).
    This holds the fused bfloat16 loops and the float16 tiles to the float32 loops."""
    shape, axis = case
    x = (rng.standard_normal(shape) * 3.0 + 5.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if specials:
        x = _with_specials(x, dtype, rng)
        dy = _with_specials(dy, dtype, rng)
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    got, want = _c_half_and_float32(x, dy, gamma, beta, axis)
    for name, h, f in zip(C_OUTPUTS, got, want, strict=True):
        if h.dtype == dtype:
            np.testing.assert_array_equal(_half_bits(h, dtype), _half_bits(f, dtype), name)
        else:
            np.testing.assert_array_equal(h, f, name)


def _round_keeping_nan(f, dtype):
    """float32 rounded to the half dtype, every NaN quieted with its sign and upper payload bits
    kept, as normax's conversions do (NumPy's float16 cast does so too; ml_dtypes' bfloat16 cast
    returns one NaN for all)."""
    with np.errstate(invalid="ignore", over="ignore"):
        h = f.astype(dtype)
    if dtype != np.float16:
        bits = h.view(np.uint16)
        nan = np.isnan(f)
        bits[nan] = (f[nan].view(np.uint32) >> 16).astype(np.uint16) | 0x0040
    return h


# A NaN payload of each kind per dtype: signaling, negative quiet, quiet with a payload, and
# negative signaling.
NAN_PAYLOADS = {
    "float16": [0x7D55, 0xFE00, 0x7E01, 0xFC01],
    "bfloat16": [0x7FA5, 0xFFC0, 0x7FC1, 0xFF81],
}


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize("case", [((9, 37), 1), ((3, 37, 150), 1)], ids=str)
@pytest.mark.parametrize("dtype", HALF)
def test_c_nan_payloads_are_the_float32_kernels(case, dtype, rng):
    """With one NaN payload per channel (signaling or quiet, either sign), every NaN that comes
    out carries that payload, quieted, exactly as the float32 kernels give it: the half kernels
    widen and round NaN as the hardware conversions do. (Where two different NaNs meet in one
    operation, which one x86 returns depends on the compiler's choice of operand order, so the
    payload is not part of the contract there.)"""
    shape, axis = case
    dtype = np.dtype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    payloads = np.array(NAN_PAYLOADS[dtype.name], np.uint16).view(dtype)
    for a, salt in ((x, 0), (dy, 1)):
        am = np.moveaxis(a, axis, 0)
        for c in range(0, shape[axis], 3):  # every third channel, its own payload
            flat = am[c].reshape(-1).copy()
            flat[(c + salt) % flat.size :: 7] = payloads[(c // 3) % payloads.size]
            am[c] = flat.reshape(am[c].shape)
    c = shape[axis]
    gamma = rng.standard_normal(c).astype(np.float32)
    got, want = _c_half_and_float32(x, dy, gamma, None, axis)
    for name, h, f in zip(C_OUTPUTS, got, want, strict=True):
        if h.dtype == dtype:
            f = _round_keeping_nan(f, dtype)
            np.testing.assert_array_equal(h.view(np.uint16), f.view(np.uint16), name)
        else:
            np.testing.assert_array_equal(h.view(np.uint8), f.view(np.uint8), name)
    assert np.isnan(got[0].astype(np.float64)).any()


# float32 NaNs with their low 16 bits set, where a bfloat16 rounding's carry would reach the
# high half (0x7FFFFFFF would turn into -0, 0x7F80FFFF into Inf): quiet and signaling, either
# sign.
PARAMETER_NANS = np.array(
    [0x7FFFFFFF, 0xFFBFFFFF, 0x7F80FFFF, 0xFFC08001, 0x7FA5A5A5], np.uint32
).view(np.float32)


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize(
    "case",
    [
        ((9, 37), 1, True),
        ((3, 37, 150), 1, True),
        ((4100, 2048), 1, True),  # wide rows, streamed: non-temporal row by row or by strips
        ((2049, 4, 1024), 1, True),  # runs, streamed
        # runs in channel groups held in the cache, streamed: their sums are not the float32
        # kernels' bits (the groups of the two differ), so only the NaNs are compared
        ((2, 130, 32768), 1, False),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", HALF)
def test_c_nan_parameters_are_the_float32_kernels(case, dtype, rng):
    """NaNs in the float32 parameters, with payloads in their low 16 bits (gamma and beta in
    training; gamma, beta and the running statistics in inference; gamma in the backward, one
    parameter per channel): every half output is the float32 kernels' result rounded once, its
    NaNs quiet with their sign and upper payload bits, on every path of the kernels, and the
    float32 outputs are the float32 kernels' bits. In dx the sign of a NaN is left out: a NaN
    gamma makes both dx coefficients NaN, gamma * invstd and -gamma * ..., of opposite signs,
    and which of two NaNs x86 returns follows the compiler's operand order, which differs
    between builds."""
    shape, axis, exact = case
    dtype = np.dtype(dtype)
    c = shape[axis]
    x = (rng.standard_normal(shape) * 2.0 + 1.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = [rng.standard_normal(c).astype(np.float32) for _ in range(4)]
    params[3] = np.abs(params[3]) + 0.5  # running variance
    nans = np.resize(PARAMETER_NANS, c)
    for j, p in enumerate(params):  # channel i: parameter i % 5, the rest finite
        p[j::5] = nans[j::5]
    gamma, beta, rmean, rvar = params
    got, want = _c_half_and_float32(x, dy, gamma, beta, axis, running=(rmean, rvar))
    for name, h, f in zip(C_OUTPUTS, got, want, strict=True):
        if h.dtype == dtype:
            f = _round_keeping_nan(f, dtype)
            hb, fb = h.view(np.uint16).copy(), f.view(np.uint16).copy()
            nan = np.isnan(f.astype(np.float32))
            if name == "dx":
                hb[nan] &= 0x7FFF
                fb[nan] &= 0x7FFF
            if not exact:
                np.testing.assert_array_equal(np.isnan(h.astype(np.float32)), nan, name)
                hb, fb = hb[nan], fb[nan]
            np.testing.assert_array_equal(hb, fb, name)
        elif exact:
            np.testing.assert_array_equal(h.view(np.uint8), f.view(np.uint8), name)
    for out in got[:3]:  # the parameters' NaNs reached y, the inference's y and dx
        assert np.isnan(np.moveaxis(out, axis, 0)[0].astype(np.float32)).all()


@pytest.mark.skipif("c" not in BACKENDS, reason="C backend not built")
@pytest.mark.parametrize(
    "layout",
    [
        ("runs", (1, -1), 0),  # one run longer than a tile, ending in a partial vector
        ("short runs", (-1, 3, 7), 1),  # runs shorter than one vector
        ("one channel", (-1, 1), 1),  # rows of a single channel: only partial vectors
        ("wide row", (1, -1), 1),  # one row of every value, ending in a partial vector
        ("rows", (-1, 17), 1),  # a vector and a partial one per row
    ],
    ids=lambda layout: layout[0],
)
@pytest.mark.parametrize("dtype", HALF)
def test_c_output_rounding_ties_to_even(layout, dtype):
    """The rounding of the outputs, in every vector loop and its tails: every finite half value
    times 1 + 2**-(p + 1) (p fraction bits) is exact in float32 and lands on hundreds of
    midpoints between two halves; the half kernel must give the float32 kernel's result rounded
    to nearest even, bit for bit (rounding half away from zero, or truncating, would differ)."""
    dtype = np.dtype(dtype)
    values = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    values = values[np.isfinite(values.astype(np.float32))]
    _, shape, axis = layout
    size = np.prod([d for d in shape if d > 0])
    x = values[: values.size // size * size].reshape([d if d > 0 else -1 for d in shape])
    c = x.shape[axis]
    scale = np.full(c, 1 + 2.0 ** -(_finfo(dtype).nmant + 1), np.float32)
    zeros, ones = np.zeros(c, np.float32), np.ones(c, np.float32)
    previous = normax.get_backend()
    try:
        normax.set_backend("c")
        with np.errstate(over="ignore"):
            y = normax.batch_norm_infer(x, scale, zeros, zeros, ones, axis=axis, eps=0.0)
            f = normax.batch_norm_infer(
                x.astype(np.float32), scale, zeros, zeros, ones, axis=axis, eps=0.0
            )
            want = f.astype(dtype)
    finally:
        normax.set_backend(previous)
    if dtype != np.float16:  # a bfloat16 midpoint: the dropped half of the float32 is 0x8000
        assert ((f.view(np.uint32) & 0xFFFF) == 0x8000).sum() > 100
    np.testing.assert_array_equal(y.view(np.uint16), want.view(np.uint16))
