"""Shared fixtures: every kernel test runs on every available backend."""

from __future__ import annotations

import numpy as np
import pytest

import normax

BACKENDS = normax.available_backends()

# Per-dtype tolerances against the float64-accumulating NumPy reference.
TOL = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-5},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-12},
}


# Half-precision storage: the result computed in float64 and rounded once to the storage type is
# exact to half an ulp (2**-11 relative for float16, 2**-8 for bfloat16). normax computes in
# float32 and rounds once, so its float32 error (~1e-6 relative) can move a value that lies
# near a rounding midpoint to the neighbouring half: one ulp of the storage type, relative to
# the value, plus the same in absolute terms for results near zero (cancellation in x - mean,
# p - target), is the tolerance against the float64 reference.
HALF_TOL = {"float16": {"rtol": 2.0**-10, "atol": 2.0**-10},
            "bfloat16": {"rtol": 2.0**-7, "atol": 2.0**-7}}


def half_dtypes() -> list:
    """float16, and bfloat16 when ml_dtypes is installed (a skipped param otherwise)."""
    try:
        import ml_dtypes
    except ImportError:
        bf16 = pytest.param("bfloat16", marks=pytest.mark.skip(reason="needs ml_dtypes"))
    else:
        bf16 = pytest.param(np.dtype(ml_dtypes.bfloat16), id="bfloat16")
    return [pytest.param(np.dtype(np.float16), id="float16"), bf16]


def assert_half_close(got: np.ndarray, ref64: np.ndarray, dtype: np.dtype, what: str = ""):
    """``got`` (half precision) is within :data:`HALF_TOL` of the float64 ``ref64``; NaN and
    infinities where the reference has them."""
    assert got.dtype == dtype, (what, got.dtype, dtype)
    np.testing.assert_allclose(got.astype(np.float64), ref64, equal_nan=True, err_msg=what,
                               **HALF_TOL[np.dtype(dtype).name])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test with ``normax.set_backend(param)`` and restore the previous backend after."""
    previous = normax.get_backend()
    normax.set_backend(request.param)
    yield request.param
    normax.set_backend(previous)


@pytest.fixture
def c_backend():
    """Run the test on the C backend and restore the previous backend after; skip it where the
    C backend is not built."""
    if "c" not in BACKENDS:
        pytest.skip("C backend not built")
    previous = normax.get_backend()
    normax.set_backend("c")
    yield
    normax.set_backend(previous)


def float64_reference(fn, *arrays, **kw):
    """``fn`` on the NumPy backend with float arrays promoted to float64."""
    previous = normax.get_backend()
    normax.set_backend("numpy")
    try:
        args = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
        return fn(*args, **kw)
    finally:
        normax.set_backend(previous)


def softmax_pair(log):
    """(forward, backward): log-softmax's with ``log``, else softmax's."""
    if log:
        return normax.log_softmax, normax.log_softmax_backward
    return normax.softmax, normax.softmax_backward


def same_bits_on_one_and_two_threads(call, also=()):
    """``call()`` on the C backend with one thread, with two and with each count in ``also``;
    asserts that every array it returns is the same bits each time and returns the one-thread
    arrays. The backend in force before and the default thread count are restored."""
    if "c" not in normax.available_backends():
        pytest.skip("C backend not built")
    previous = normax.get_backend()
    counts = (1, 2, *also)
    results = []
    try:
        normax.set_backend("c")
        for threads in counts:
            normax.set_num_threads(threads)
            results.append(call())
    finally:
        normax.set_backend(previous)
        normax.set_num_threads(0)
    for threads, result in zip(counts[1:], results[1:], strict=True):
        for i, (one, other) in enumerate(zip(results[0], result, strict=True)):
            assert one.tobytes() == other.tobytes(), (
                f"output {i} differs between 1 and {threads} threads"
            )
    return results[0]


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)
