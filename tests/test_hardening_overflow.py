"""Sizes and values at the edges of the integer types.

Cheap by construction, so they run in CI:

- zero-size arrays whose other dimension is astronomically large (2**40): the kernels must
  return empty results (or refuse them) without allocating per-channel or per-row scratch for
  2**40 entries;
- zero-stride (``np.broadcast_to``) views wherever the API reads an array: same result as the
  materialized array; wherever the API writes one (``out``, running statistics, optimizer
  parameters) the read-only view is refused;
- Python integers too large for int64 or for a double as axis, labels, ignore_index and
  scalar options: the documented TypeError/ValueError, never OverflowError or a wrapped value;
- unsigned labels >= 2**63 that would wrap to negative numbers (and so to ignore_index or to
  Python-style negative indexing) if cast carelessly.

Arrays whose element count really exceeds 2**31 need 8 GiB per float32 array: the test at the
end runs only with NORMAX_TEST_BIGMEM=1 and enough free memory (by hand, see tools/README.md).
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

import normax

HUGE = 2**40


def documented_error(fn):
    """Run ``fn``; it must raise TypeError or ValueError (not OverflowError, not MemoryError)."""
    with pytest.raises((TypeError, ValueError)) as info:
        fn()
    assert not isinstance(info.value, OverflowError), info.value
    return info.value


# ---- zero-size with a huge dimension ---------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((0, HUGE), 1), ((HUGE, 0), 1), ((0, HUGE, 3), 1),
                                         ((HUGE, 0), 0), ((2, 0, HUGE), -1)])
def test_batch_norm_empty_huge(backend, shape, axis):
    x = np.empty(shape, np.float32)
    y, cache = normax.batch_norm_train(x, None, None, axis=axis)
    assert y.shape == x.shape and cache.mean.shape == (x.shape[axis],)
    dx, _, _ = normax.batch_norm_backward(np.empty_like(x), cache)
    assert dx.shape == x.shape
    c = x.shape[axis]
    if 0 < c <= 2**20:
        stats = np.ones(c, np.float32)
        y = normax.batch_norm_infer(x, None, None, stats, stats, axis=axis)
        assert y.shape == x.shape


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, axis", [((0, HUGE), -1), ((HUGE, 0), -1), ((HUGE, 0), 0),
                                         ((3, 0, HUGE), 1)])
def test_softmax_empty_huge(backend, fn, shape, axis):
    z = np.empty(shape, np.float64)
    p = getattr(normax, fn)(z, axis=axis)
    assert p.shape == z.shape
    g = normax.softmax_backward(p, p, axis=axis)
    assert g.shape == z.shape


@pytest.mark.parametrize("shape", [(0, HUGE), (HUGE, 0)])
def test_cross_entropy_empty_huge(backend, shape):
    z = np.empty(shape, np.float32)
    labels = np.broadcast_to(np.int64(0), shape[:1])  # 2**40 labels in 8 bytes
    probs = np.empty(shape, np.float32)
    if shape[0] == 0:  # an empty batch: every target ignored, "mean" is 0.0
        for target in (labels, probs):
            loss, dz = normax.softmax_cross_entropy(z, target)
            assert loss == 0.0 and dz.shape == z.shape
    else:  # 2**40 examples of no class: refused, without reading a label
        documented_error(lambda: normax.softmax_cross_entropy(z, labels))
        documented_error(lambda: normax.softmax_cross_entropy(z, probs))


# ---- zero-stride views -----------------------------------------------------------------------


def test_batch_norm_broadcast_inputs(backend, rng):
    base = rng.normal(size=(1, 257, 8)).astype(np.float32)
    xb = np.broadcast_to(base, (64, 257, 8))  # zero stride along the batch axis
    gamma = np.broadcast_to(np.float32(1.5), (257,))
    beta = np.broadcast_to(np.float32(-0.5), (257,))
    y, _ = normax.batch_norm_train(xb, gamma, beta)
    y_ref, _ = normax.batch_norm_train(np.ascontiguousarray(xb), np.full(257, 1.5, np.float32),
                                       np.full(257, -0.5, np.float32))
    np.testing.assert_array_equal(y, y_ref)
    # Every value of a channel equal: zero variance, y = beta exactly, no NaN.
    const = np.broadcast_to(base[:, :, :1], (64, 257, 8))
    yc, _ = normax.batch_norm_train(const, gamma, beta)
    np.testing.assert_array_equal(yc, np.float32(-0.5))


def test_batch_norm_refuses_broadcast_buffers(backend, rng):
    x = rng.normal(size=(16, 5)).astype(np.float64)
    ro = np.broadcast_to(np.float64(0.0), (5,))
    ones = np.ones(5)
    documented_error(lambda: normax.batch_norm_train(x, None, None, ro, ones.copy()))
    documented_error(lambda: normax.batch_norm_train(x, None, None, ones.copy(), ro))
    out = np.broadcast_to(np.float64(0.0), x.shape)
    documented_error(lambda: normax.batch_norm_train(x, None, None, out=out))
    documented_error(lambda: normax.batch_norm_infer(x, None, None, ones, ones, out=out))


def test_cross_entropy_broadcast_inputs(backend, rng):
    z = rng.normal(size=(1, 11)).astype(np.float64)
    zb = np.broadcast_to(z, (4096, 11))
    labels = np.broadcast_to(np.int64(7), (4096,))
    weight = np.broadcast_to(2.0, (11,))
    loss, dz = normax.softmax_cross_entropy(zb, labels, weight=weight, reduction="none")
    loss1, dz1 = normax.softmax_cross_entropy(z, labels[:1], weight=np.full(11, 2.0),
                                              reduction="none")
    np.testing.assert_allclose(loss, np.broadcast_to(loss1, loss.shape), rtol=1e-14)
    np.testing.assert_allclose(dz, np.broadcast_to(dz1, dz.shape), rtol=1e-14)
    p = normax.softmax(zb)
    np.testing.assert_allclose(p, np.broadcast_to(normax.softmax(z), p.shape), rtol=1e-14)
    documented_error(lambda: normax.softmax(z, out=np.broadcast_to(0.0, z.shape)))


def test_optimizer_refuses_broadcast_params(backend):
    optim = importlib.import_module("normax.optim")
    p = np.broadcast_to(np.float32(1.0), (1000,))  # 1000 elements aliasing one float
    documented_error(lambda: optim.SGD([p], lr=0.1).step([np.ones(1000, np.float32)]))
    # A broadcast gradient is fine: it is only read.
    q = np.zeros(1000, np.float32)
    optim.SGD([q], lr=0.5).step([np.broadcast_to(np.float32(2.0), (1000,))])
    np.testing.assert_array_equal(q, -1.0)


# ---- integers beyond int64 / double ----------------------------------------------------------

BIG_INTS = [2**63, -(2**63) - 1, 2**64 + 3, 10**400]
BIG_IDS = ["2**63", "-2**63-1", "2**64+3", "10**400"]


@pytest.mark.parametrize("axis", BIG_INTS, ids=BIG_IDS)
def test_huge_axis(backend, axis):
    z = np.zeros((3, 4))
    documented_error(lambda: normax.softmax(z, axis=axis))
    documented_error(lambda: normax.batch_norm_train(z, None, None, axis=axis))


@pytest.mark.parametrize("value", [10**400, -(10**400), 2**1024],
                         ids=["1e400", "-1e400", "2**1024"])
def test_real_scalar_check_refuses_huge_ints(value):
    """float(10**400) raises OverflowError: the shared check turns it into ValueError."""
    from normax import _checks

    with pytest.raises(ValueError, match="must be a finite number"):
        _checks.real_scalar(value, "momentum", 0.0, 1.0)


@pytest.mark.parametrize("name", ["momentum", "eps"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 2**1024],
                         ids=["1e400", "-1e400", "2**1024"])
def test_huge_scalar_options(backend, name, value):
    x = np.ones((4, 3))
    documented_error(lambda: normax.batch_norm_train(x, None, None, **{name: value}))


@pytest.mark.parametrize("value", [10**400, 2**1024], ids=["1e400", "2**1024"])
def test_huge_label_smoothing(backend, value):
    z = np.zeros((4, 3))
    documented_error(lambda: normax.softmax_cross_entropy(z, np.zeros(4, np.int64),
                                                          label_smoothing=value))


@pytest.mark.parametrize("ignore", BIG_INTS, ids=BIG_IDS)
def test_huge_ignore_index(backend, ignore):
    """An ignore_index no int64 label can equal: ignored (nothing matches) or refused."""
    z = np.random.default_rng(0).normal(size=(6, 5))
    labels = np.arange(6) % 5
    try:
        loss, dz = normax.softmax_cross_entropy(z, labels, ignore_index=ignore)
    except (TypeError, ValueError) as exc:
        assert not isinstance(exc, OverflowError), exc
        return
    want, dwant = normax.softmax_cross_entropy(z, labels)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(dz, dwant, rtol=1e-12)


@pytest.mark.parametrize("ignore", [None, -1, -100])
def test_unsigned_labels_do_not_wrap(backend, ignore):
    """uint64 2**64 - 1 is not -1: it is out of range, even when ignore_index is -1."""
    z = np.zeros((4, 3))
    for bad in (2**64 - 1, 2**63, 2**63 + 2):
        labels = np.array([0, 1, bad, 2], np.uint64)
        err = documented_error(lambda labels=labels: normax.softmax_cross_entropy(
            z, labels, ignore_index=ignore))
        assert str(bad) in str(err), err


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32])
def test_small_int_labels_at_their_limits(backend, dtype):
    info = np.iinfo(dtype)
    z = np.zeros((3, 4))
    for bad in {info.min, info.max} - {0}:
        labels = np.array([0, bad, 1], dtype)
        err = documented_error(lambda labels=labels: normax.softmax_cross_entropy(z, labels))
        assert str(bad) in str(err), err


# ---- really more than 2**31 elements (by hand) -----------------------------------------------


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


BIG = 2**31 + 17  # elements in one row: every index past 2**31 must still be right
bigmem = pytest.mark.skipif(
    os.environ.get("NORMAX_TEST_BIGMEM") != "1" or _available_bytes() < 20 * 2**30,
    reason="set NORMAX_TEST_BIGMEM=1 on a machine with 20 GiB free (two 8 GiB arrays)")


@bigmem
def test_log_softmax_row_longer_than_int32():
    """One row of 2**31 + 17 float32 logits, zeros but two spikes past index 2**31."""
    z = np.zeros((1, BIG), np.float32)
    z[0, -1] = 10.0
    z[0, 2**31 + 3] = 5.0
    lp = normax.log_softmax(z, axis=-1)
    lse = 10.0 + np.log1p((BIG - 2) * np.exp(-10.0) + np.exp(-5.0))
    for i, zi in ((0, 0.0), (2**31 - 1, 0.0), (2**31, 0.0), (2**31 + 3, 5.0), (BIG - 1, 10.0)):
        assert lp[0, i] == pytest.approx(zi - lse, rel=1e-6), i
    del z
    p = normax.softmax(lp, axis=-1)  # log-probabilities in, probabilities out
    assert float(p.sum(dtype=np.float64)) == pytest.approx(1.0, rel=1e-4)


@bigmem
def test_batch_norm_channel_longer_than_int32():
    """(C, m) layout, one channel with 2**31 + 17 values: the last ones are normalized too."""
    x = np.full((1, BIG), 3.0, np.float32)
    x[0, -2:] = [5.0, 7.0]
    y = normax.batch_norm_infer(x, None, None, np.array([3.0], np.float32),
                                np.array([4.0], np.float32), axis=0, eps=0.0)
    assert y[0, 0] == 0.0 and y[0, 2**31] == 0.0
    assert y[0, -2] == pytest.approx(1.0) and y[0, -1] == pytest.approx(2.0)


@pytest.mark.parametrize("option", ["lr", "weight_decay", "eps"])
def test_optimizer_huge_int_options(option):
    """Adam(lr=10**400) raised OverflowError from float(); now the documented ValueError."""
    optim = importlib.import_module("normax.optim")
    documented_error(lambda: optim.Adam([np.zeros(3)], **{option: 10**400}))
