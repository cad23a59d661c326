"""The Numba backend's rounding of float32 results into float16 / bfloat16 outputs: the bits
NumPy (float16) and ml_dtypes (bfloat16) give, for every kind of value."""

import numpy as np
import pytest

from normax._half_numba import round_into

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
