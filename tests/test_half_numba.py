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
# parallel threshold so that the work is split into chunks.
_RECORDS = [(37, 5, 1), (3, 7, 9), (1, 6, 33), (2000, 24, 1), (40, 33, 50), (1, 3, 4097)]


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
