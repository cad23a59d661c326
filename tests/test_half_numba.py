"""The Numba backend's rounding of float32 results into float16 / bfloat16 outputs: the bits
NumPy (float16) and ml_dtypes (bfloat16) give, for every kind of value."""

import numpy as np
import pytest

from normax._half_numba import round_into, widen

from .conftest import half_dtypes


def _values(dtype) -> np.ndarray:
    """Random float32 bit patterns, every half value, the midpoints between neighbouring halves
    and the float32 values just above them (the tie-to-even and rounding edges)."""
    rng = np.random.default_rng(5)
    halves = np.arange(65536, dtype=np.uint16).view(dtype).astype(np.float32)
    finite = np.sort(halves[np.isfinite(halves)])
    with np.errstate(all="ignore"):
        mid = (finite[:-1] + (finite[1:] - finite[:-1]) / 2).astype(np.float32)
        above = np.nextafter(mid, np.float32(np.inf))
    rand = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([rand, halves, mid, above])


@pytest.mark.parametrize("dtype", half_dtypes())
def test_round_into_matches_numpy_bit_for_bit(dtype):
    values = _values(dtype)
    with np.errstate(all="ignore"):
        want = values.astype(dtype)
    got = np.empty(values.size, dtype)
    round_into(got, values)
    nan = np.isnan(values)
    assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
    assert np.array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


@pytest.mark.parametrize("dtype", half_dtypes())
def test_round_into_float64_results_round_once(dtype):
    res = np.array([1 + 2.0**-11 + 2.0**-30, 1e-300, -np.inf])  # float64 -> half directly
    got = np.empty(3, dtype)
    round_into(got, res)
    with np.errstate(all="ignore"):
        assert np.array_equal(got.view(np.uint16), res.astype(dtype).view(np.uint16))


def _all_patterns(dtype) -> np.ndarray:
    return np.arange(65536, dtype=np.uint16).view(dtype)


@pytest.mark.parametrize("dtype", half_dtypes())
def test_widen_matches_numpy_bit_for_bit(dtype):
    """Every 16-bit pattern, NaN payloads and signaling NaNs included, widens as NumPy's and
    ml_dtypes' casts do."""
    halves = _all_patterns(dtype)
    got = widen(halves.reshape(256, 256))
    assert got.dtype == np.float32 and got.shape == (256, 256)
    want = halves.astype(np.float32)
    assert np.array_equal(got.reshape(-1).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype", half_dtypes())
def test_round_into_nan_is_quiet_with_its_payload(dtype):
    rng = np.random.default_rng(7)
    mant = rng.integers(1, 2**23, 10_000, dtype=np.uint32)
    sign = rng.integers(0, 2, 10_000, dtype=np.uint32) << np.uint32(31)
    bits = sign | np.uint32(0x7F800000) | mant
    got = np.empty(bits.size, dtype)
    round_into(got, bits.view(np.float32))
    if dtype == np.float16:
        want = (sign >> 16) | 0x7E00 | ((mant >> 13) & 0x3FF)
    else:
        want = (bits >> 16) | 0x40
    assert np.array_equal(got.view(np.uint16), want.astype(np.uint16))


# ---- batch norm: the kernels on 16-bit views give the float32 kernels' results, rounded once --

# (outer, C, inner) records: rows (inner == 1) and runs (inner > 1), odd sizes, and some above the
# parallel threshold so that the work is split into chunks. The half kernels prefetch short rows
# in blocks of a multiple of four rows (64 rows of 64 channels, 40 of 96 here) and tile the
# element-wise constants over spans of rows: odd chunk lengths put remainders after both.
_RECORDS = [
    (37, 5, 1), (3, 7, 9), (1, 6, 33), (2000, 24, 1), (40, 33, 50), (1, 3, 4097),
    (1001, 64, 1), (999, 96, 1),
]


def _edge_input(shape, dtype, rng) -> np.ndarray:
    """Random values with edge channels: channel 0 every finite half value (subnormals, the
    largest values, both zeros) in turn, channel 1 a NaN, channel 2 an infinity."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    halves = _all_patterns(dtype)
    finite = halves[np.isfinite(halves.astype(np.float32))]
    ch0 = x[:, 0, :].reshape(-1)
    ch0[...] = finite[rng.integers(0, finite.size, ch0.size)]
    x[:, 0, :] = ch0.reshape(x[:, 0, :].shape)
    x[0, 1, 0] = np.nan
    x[-1, 2, -1] = np.inf
    return x


def _rounded(res32: np.ndarray, dtype) -> np.ndarray:
    out = np.empty(res32.shape, dtype)
    round_into(out, res32)
    return out


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("record", _RECORDS, ids=str)
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("affine", [False, True], ids=["no-gamma", "gamma"])
def test_batchnorm_half_is_the_float32_kernel_rounded_once(record, dtype, affine):
    """Train (y, statistics, running buffers), infer and backward (dx, dgamma, dbeta) on a half
    input give, bit for bit, the float32 kernels on the upcast input with each half output
    rounded once; tiny gammas put outputs in the float16 subnormal range."""
    bn = pytest.importorskip("normax._batchnorm_numba")
    outer, c, inner = record
    rng = np.random.default_rng(sum(record))
    x = _edge_input(record, dtype, rng)
    dy = _edge_input(record, dtype, rng)
    gamma = (rng.standard_normal(c) * 10.0 ** rng.integers(-6, 1, c)).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    gamma, beta = (gamma, beta) if affine else (None, None)
    got, want = {}, {}
    for run, (xs, dys) in ((got, (x, dy)), (want, (widen(x), widen(dy)))):
        y = np.empty(record, xs.dtype)
        mean, invstd = np.empty(c), np.empty(c)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        with np.errstate(all="ignore"):
            bn.train(xs, outer, c, inner, gamma, beta, rm, rv, 0.1, 1e-5, y, mean, invstd)
        yi = np.empty(record, xs.dtype)
        bn.infer(xs, outer, c, inner, gamma, beta, rm, rv, 1e-5, yi)
        dx = np.empty(record, xs.dtype)
        dg, db = (np.zeros(c, np.float32), np.zeros(c, np.float32)) if affine else (None, None)
        bn.backward(dys, xs, outer, c, inner, mean, invstd, gamma, dx, dg, db)
        run.update(y=y, yi=yi, dx=dx, mean=mean, invstd=invstd, rm=rm, rv=rv, dg=dg, db=db)
    for name in ("y", "yi", "dx"):
        assert _same_bits(got[name], _rounded(want[name], dtype)), name
    for name in ("mean", "invstd", "rm", "rv") + (("dg", "db") if affine else ()):
        assert _same_bits(got[name], want[name]), name


# ---- softmax family: float32 tiles of the 16-bit data, bit for bit the float32 kernels' -------

# Rows (inner == 1) and column blocks (inner > 1, one partial block), some split into chunks.
_SOFTMAX_RECORDS = [(7, 13, 1), (200, 180, 1), (3, 17, 40), (2, 40, 700)]


def _logits(record, dtype, rng) -> np.ndarray:
    """Random logits with a third of them arbitrary 16-bit patterns (NaN payloads, signaling
    NaNs, infinities, subnormals, the largest values)."""
    z = (rng.standard_normal(record) * 4).astype(dtype)
    flat = z.reshape(-1)
    n = flat.size // 3
    flat[:n] = _all_patterns(dtype)[rng.integers(0, 65536, n)]
    return z


@pytest.mark.parametrize("record", _SOFTMAX_RECORDS, ids=str)
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_half_is_the_float32_kernel_rounded_once(record, dtype, log):
    sm = pytest.importorskip("normax._softmax_numba")
    outer, c, inner = record
    rng = np.random.default_rng(sum(record) + log)
    z, g = _logits(record, dtype, rng), _logits(record, dtype, rng)
    out, ref = np.empty(record, dtype), np.empty(record, np.float32)
    sm.forward(z, out, outer, c, inner, log)
    sm.forward(widen(z), ref, outer, c, inner, log)
    assert _same_bits(out, _rounded(ref, dtype))
    dz, ref = np.empty(record, dtype), np.empty(record, np.float32)
    sm.backward(g, out, dz, outer, c, inner, log)
    sm.backward(widen(g), widen(out), ref, outer, c, inner, log)
    assert _same_bits(dz, _rounded(ref, dtype))


@pytest.mark.parametrize("record", _SOFTMAX_RECORDS, ids=str)
@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("probs", [False, True], ids=["labels", "probabilities"])
def test_cross_entropy_half_is_the_float32_kernel_rounded_once(record, dtype, probs):
    """The gradient and the per-example losses, with class weights, label smoothing and an
    ignored label."""
    sm = pytest.importorskip("normax._softmax_numba")
    outer, c, inner = record
    rng = np.random.default_rng(sum(record) + probs)
    z = _logits(record, dtype, rng)
    weight = rng.random(c) + 0.5
    if probs:
        target, target32, ignore = rng.random(record).astype(dtype), None, None
        target32 = widen(target)
    else:
        target = rng.integers(0, c, (outer, inner))
        target32, ignore = target, int(target[0, 0])
    dz, loss = np.empty(record, dtype), np.empty((outer, inner), dtype)
    grad, per = np.empty(record, np.float32), np.empty((outer, inner))
    total = sm.xent(z, outer, c, inner, target, weight, ignore, 0.1, 0.5, dz, loss)
    want = sm.xent(widen(z), outer, c, inner, target32, weight, ignore, 0.1, 0.5, grad, per)
    assert _same_bits(dz, _rounded(grad, dtype))
    assert _same_bits(loss, _rounded(per, dtype))
    assert np.array_equal(total, want, equal_nan=True)


def _quiet_nan_bits(bits: int, dtype) -> int:
    """The NaN ``bits`` of ``dtype`` (float32 or a 16-bit type), quieted: widened, quiet bit
    set, rounded back."""
    if dtype == np.float32:
        return bits | 0x00400000
    bits32 = widen(np.array([bits], np.uint16).view(dtype)).view(np.uint32) | 0x00400000
    return int(_rounded(bits32.view(np.float32), dtype).view(np.uint16)[0])


_FLOAT32 = pytest.param(np.dtype(np.float32), id="float32")


@pytest.mark.parametrize("dtype", [_FLOAT32, *half_dtypes()])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_row_with_nans_takes_its_first_nan(dtype, log):
    """A classes-last row whose sum is NaN comes back all NaN, every element the row's first NaN
    input (g, then y for softmax) in class order, quieted: not whichever of its NaNs a
    vectorized sum kept, which may differ between the float and the 16-bit instances."""
    sm = pytest.importorskip("normax._softmax_numba")
    outer, c = 4, 300
    half = dtype != np.float32
    patterns = (0x7D01, 0xFD55, 0x7E2A) if dtype == np.float16 else (0x7F81, 0xFF95, 0x7FAA)

    def nan(k):  # distinct payloads, one of them signaling, in the row's dtype
        if half:
            return np.array([patterns[k]], np.uint16).view(dtype)[0]
        bits = 0x7F800000 | (patterns[k] & 0x7F) << 16 | 1
        return np.array([bits], np.uint32).view(np.float32)[0]

    rng = np.random.default_rng(3)
    g = rng.standard_normal((outer, c)).astype(dtype)
    y = rng.random((outer, c)).astype(dtype)
    first = {}
    # row 0: two NaNs in g; row 1: three, the first late; row 2: y's NaN before g's
    for row, cols in ((0, (7, 200)), (1, (250, 270, 299)), (2, (40,))):
        for k, j in enumerate(cols):
            g[row, j] = nan(k % 3)
        first[row] = nan(0)
    y[2, 5] = nan(1)
    if not log:
        first[2] = nan(1)
    dz = np.empty_like(g)
    sm.backward(g, y, dz, outer, c, 1, log)
    bits = dz.view(np.uint16 if half else np.uint32)
    for row, value in first.items():
        raw = int(np.array([value]).view(np.uint16 if half else np.uint32)[0])
        want = _quiet_nan_bits(raw, dtype)
        assert (bits[row] == want).all(), (row, hex(want), np.unique(bits[row]))
    assert np.isfinite(dz[3].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", [_FLOAT32, *half_dtypes()])
def test_cross_entropy_row_with_nan_targets_takes_their_first_nan(dtype):
    """Probability targets with two NaNs in a classes-last row: the row's gradient and its loss
    are all the first NaN target, quieted (see the backward's test above)."""
    sm = pytest.importorskip("normax._softmax_numba")
    outer, c = 3, 300
    half = dtype != np.float32
    ubits = np.uint16 if half else np.uint32
    if dtype == np.float16:
        nans = np.array([0x7D01, 0xFE2A], np.uint16).view(dtype)
    elif half:
        nans = np.array([0x7F81, 0xFFAA], np.uint16).view(dtype)
    else:
        nans = np.array([0x7F810001, 0xFFAA0000], np.uint32).view(dtype)
    rng = np.random.default_rng(4)
    z = rng.standard_normal((outer, c)).astype(dtype)
    q = rng.random((outer, c)).astype(dtype)
    q[1, 20], q[1, 220] = nans
    dz, loss = np.empty_like(z), np.empty(outer, dtype if half else np.float64)
    sm.xent(z, outer, c, 1, q, None, None, 0.1, 1.0, dz, loss)
    raw = int(nans[:1].view(ubits)[0])
    want = _quiet_nan_bits(raw, dtype)
    assert (dz[1].view(ubits) == want).all(), np.unique(dz[1].view(ubits))
    # the loss is that NaN too, in float64 (rounded once to a half dtype)
    nan64 = widen(nans[:1]).view(np.uint32) | 0x00400000
    nan64 = nan64.view(np.float32).astype(np.float64)
    want_loss = _rounded(nan64, dtype) if half else nan64
    assert loss[1:2].tobytes() == want_loss.tobytes()
    assert np.isfinite(dz[[0, 2]].astype(np.float32)).all()
