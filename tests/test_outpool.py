"""The Numba backend's output pool: large outputs reuse freed memory, never that of live ones."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from normax import _outpool

BIG = (1024, 2048)  # 8 MiB of float32, above MIN_BYTES


@pytest.fixture(autouse=True)
def empty_pool():
    _outpool.clear()
    yield
    _outpool.clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_dtype_flags(dtype):
    a = np.zeros(BIG, dtype)
    out = _outpool.empty_like(a)
    assert out.shape == a.shape and out.dtype == a.dtype
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.aligned
    assert out.ctypes.data % _outpool.ALIGN == 0


def test_small_arrays_are_plain():
    out = _outpool.empty_like(np.zeros((8, 8)))
    assert out.flags.owndata


def test_freed_block_is_reused():
    a = np.zeros(BIG, np.float32)
    out = _outpool.empty_like(a)
    address = out.ctypes.data
    del out
    gc.collect()
    assert _outpool.empty_like(a).ctypes.data == address


@pytest.mark.parametrize(
    "derive", [lambda y: y[3:], lambda y: y.T, lambda y: y.reshape(-1), lambda y: np.asarray(y)]
)
def test_block_stays_taken_while_a_view_lives(derive):
    a = np.zeros(BIG, np.float32)
    out = _outpool.empty_like(a)
    out[...] = 7.0
    view = derive(out)
    del out
    gc.collect()
    other = _outpool.empty_like(a)
    assert not np.shares_memory(other, view)
    other[...] = 0.0
    assert (view == 7.0).all()


def test_pool_is_bounded():
    a = np.zeros(BIG, np.float32)
    outs = [_outpool.empty_like(a) for _ in range(_outpool.SLOTS + 3)]
    del outs
    gc.collect()
    assert len(_outpool._free) == _outpool.SLOTS


def test_numba_backend_output_from_pool():
    pytest.importorskip("numba")
    import normax

    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    previous = normax.get_backend()
    normax.set_backend("numba")
    try:
        y, _ = normax.batch_norm_train(x, None, None)
        address = y.ctypes.data
        expected = normax.batch_norm_train(x, None, None, out=np.empty_like(x))[0]
        np.testing.assert_array_equal(y, expected)
        del y
        gc.collect()
        assert normax.batch_norm_train(x, None, None)[0].ctypes.data == address
    finally:
        normax.set_backend(previous)
