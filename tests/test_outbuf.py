"""Large outputs that normax allocates come from one pool that keeps freed blocks mapped.

A fresh 64 MiB output costs its page faults (the system zeroes every page on first write); the
pool hands the next call of about the same size the block of the previous one, already mapped.
The compiled front doors and the Python checker allocate every output, so every backend gets
pooled outputs. These tests check the contract (same answers, NumPy owns and can resize the
array, blocks are reused, release_memory gives them back), not the speed.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax

pytestmark = pytest.mark.skipif(
    "c" not in normax.available_backends(), reason="the C extension is not built"
)

get_handler_name = getattr(np._core.multiarray, "get_handler_name", None)
BIG = (1024, 2048)  # 8 MiB in float32: above the pool's 4 MiB threshold
SMALL = (64, 32)


@pytest.fixture(autouse=True, params=["c", "numba"])
def backend(request):
    previous = normax.get_backend()
    normax.set_backend(request.param)
    yield request.param
    normax.set_backend(previous)


def _calls(x):
    c = x.shape[1]
    g, b = np.ones(c, x.dtype), np.zeros(c, x.dtype)
    _, cache = normax.batch_norm_train(x, g, b)
    labels = np.arange(x.shape[0]) % c
    return {
        "train": lambda out=None: normax.batch_norm_train(x, g, b, out=out)[0],
        "infer": lambda out=None: normax.batch_norm_infer(x, g, b, g, g, out=out),
        "backward": lambda out=None: normax.batch_norm_backward(x, cache, out=out)[0],
        "xent": lambda out=None: normax.softmax_cross_entropy(x, labels, out=out)[1],
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["train", "infer", "backward", "xent"])
def test_pooled_output_same_answer(kernel, dtype):
    x = np.random.default_rng(0).standard_normal(BIG).astype(dtype)
    call = _calls(x)[kernel]
    new = call()
    expected = call(out=np.empty_like(x))
    np.testing.assert_array_equal(new, expected)
    assert new.flags.owndata and new.flags.c_contiguous and new.flags.writeable
    if get_handler_name is not None:
        assert get_handler_name(new) == "normax_outbuf"


def test_small_output_uses_numpy_allocator():
    if get_handler_name is None:
        pytest.skip("numpy without get_handler_name")
    x = np.ones(SMALL, np.float32)
    y, _ = normax.batch_norm_train(x, None, None)
    assert get_handler_name(y) == get_handler_name(np.empty(3))


def test_freed_block_is_reused():
    # Blocks that earlier tests left in the pool may fit the request as well as y's block does.
    normax.release_memory()
    x = np.random.default_rng(1).standard_normal(BIG).astype(np.float32)
    y, _ = normax.batch_norm_train(x, None, None)
    address = y.ctypes.data
    del y
    y2, _ = normax.batch_norm_train(x, None, None)
    assert y2.ctypes.data == address


def test_live_outputs_do_not_share_memory():
    x = np.random.default_rng(2).standard_normal(BIG).astype(np.float32)
    labels = np.zeros(x.shape[0], np.int64)
    outs = [normax.softmax_cross_entropy(x, labels)[1] for _ in range(6)]  # more than it keeps
    for i, a in enumerate(outs):
        for b in outs[i + 1 :]:
            assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(outs[0], outs[-1])


@pytest.mark.parametrize("factor", [0.25, 0.75, 1.5])
def test_resize_keeps_contents(factor):
    x = np.random.default_rng(3).standard_normal(BIG).astype(np.float32)
    y, _ = normax.batch_norm_train(x, None, None)
    before = y.ravel().copy()
    n = int(y.size * factor)
    y.resize(n, refcheck=False)  # reallocates through the pool's realloc
    keep = min(n, before.size)
    np.testing.assert_array_equal(y[:keep], before[:keep])
    if n > before.size:
        assert not y[keep:].any()  # numpy zero-fills the grown part


CHECKED = {
    "softmax": lambda x: normax.softmax(x),
    "train": lambda x: normax.batch_norm_train(x, None, None)[0],
    "xent": lambda x: normax.softmax_cross_entropy(x, np.zeros(x.shape[0], np.int64))[1],
}


@pytest.mark.parametrize("kernel", sorted(CHECKED))
def test_checker_outputs_are_pooled(kernel):
    """A call the front door hands to the Python checker (a Fortran-ordered input) gets its
    output from the same pool, and the same answer as the fast path."""
    if get_handler_name is None:
        pytest.skip("numpy without get_handler_name")
    x = np.random.default_rng(4).standard_normal(BIG).astype(np.float32)
    y = CHECKED[kernel](np.asfortranarray(x))
    assert get_handler_name(y) == "normax_outbuf"
    np.testing.assert_array_equal(y, CHECKED[kernel](x))


def test_release_memory_returns_kept_blocks():
    from normax import _ext_common

    x = np.ones(BIG, np.float32)
    ys = [normax.batch_norm_train(x, None, None)[0] for _ in range(2)]
    del ys
    kept = _ext_common.kept_bytes()
    assert kept >= 2 * x.nbytes
    assert normax.release_memory() == kept
    assert _ext_common.kept_bytes() == 0
    assert normax.release_memory() == 0
    y, _ = normax.batch_norm_train(x, None, None)  # the pool works after a release
    np.testing.assert_array_equal(y, np.zeros_like(x))
