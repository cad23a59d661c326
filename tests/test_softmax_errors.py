"""Bad input: the same exception type and message on every backend, and nothing written."""

from __future__ import annotations

import re

import numpy as np
import pytest

import normax

XENT = normax.softmax_cross_entropy
Z = np.arange(40, dtype=np.float32).reshape(4, 10) / 7
Y = np.array([1, 2, 3, 4])

# name -> (call, exception, message)
XENT_CASES = {
    "label-too-big": (lambda o: XENT(Z, np.array([1, 2, 3, 12]), out=o), ValueError,
                      "label 12 at index 3 is out of range for 10 classes"),
    "label-negative": (lambda o: XENT(Z, np.array([1, -1, 3, -5]), out=o), ValueError,
                       "label -1 at index 1 is out of range for 10 classes"),
    "label-nd-index": (lambda o: XENT(np.zeros((2, 3, 4), np.float32), np.array(
        [[0, 1, 2, 0], [0, 1, 9, 0]]), axis=1, out=o), ValueError,
        "label 9 at index (1, 2) is out of range for 3 classes", (2, 3, 4)),
    "label-uint8": (lambda o: XENT(Z, np.array([1, 200, 3, 4], np.uint8), out=o), ValueError,
                    "label 200 at index 1 is out of range for 10 classes"),
    "label-uint64-huge": (lambda o: XENT(Z, np.array([1, 2, 2**63 + 5, 4], np.uint64), out=o),
                          ValueError,
                          f"label {2**63 + 5} at index 2 is out of range for 10 classes"),
    "label-not-ignored": (lambda o: XENT(Z, np.array([-100, 2, 10, 4]), ignore_index=-100,
                                         out=o), ValueError,
                          "label 10 at index 2 is out of range for 10 classes"),
    "target-shape": (lambda o: XENT(Z, np.array([1, 2, 3]), out=o), ValueError,
                     "target has shape (3,); class indices for z of shape (4, 10) with axis=1 "
                     "need shape (4,)"),
    "target-prob-shape": (lambda o: XENT(Z, np.zeros((4, 9)), out=o), ValueError,
                          "target has shape (4, 9); probability targets need z's shape (4, 10)"),
    "target-dtype": (lambda o: XENT(Z, np.array([True, False, True, True]), out=o), TypeError,
                     "target has unsupported dtype bool; expected integer class indices or "
                     "float16/bfloat16/float32/float64 probabilities"),
    "target-complex": (lambda o: XENT(Z, np.zeros((4, 10), np.complex64), out=o), TypeError,
                       "target has unsupported dtype complex64; expected integer class indices "
                       "or float16/bfloat16/float32/float64 probabilities"),
    "probs-with-ignore": (lambda o: XENT(Z, np.zeros((4, 10)), ignore_index=-100, out=o),
                          ValueError,
                          "ignore_index=-100 applies only to integer class indices, not "
                          "probability targets"),
    "ignore-float": (lambda o: XENT(Z, Y, ignore_index=1.5, out=o), TypeError,
                     "ignore_index must be an int or None, got float"),
    "weight-length": (lambda o: XENT(Z, Y, weight=np.ones(9), out=o), ValueError,
                      "weight has shape (9,), expected (10,) for 10 classes"),
    "weight-negative": (lambda o: XENT(Z, Y, weight=[1.0] * 9 + [-2.0], out=o), ValueError,
                        "weight must be finite and non-negative, got -2.0 at index 9"),
    "weight-nan": (lambda o: XENT(Z, Y, weight=[np.nan] + [1.0] * 9, out=o), ValueError,
                   "weight must be finite and non-negative, got nan at index 0"),
    "weight-dtype": (lambda o: XENT(Z, Y, weight=["a"] * 10, out=o), TypeError,
                     "weight has unsupported dtype <U1; expected real numbers"),
    "smoothing-high": (lambda o: XENT(Z, Y, label_smoothing=1.5, out=o), ValueError,
                       "label_smoothing must be a finite number in [0.0, 1.0], got 1.5"),
    "smoothing-negative": (lambda o: XENT(Z, Y, label_smoothing=-0.1, out=o), ValueError,
                           "label_smoothing must be a finite number in [0.0, 1.0], got -0.1"),
    "smoothing-nan": (lambda o: XENT(Z, Y, label_smoothing=float("nan"), out=o), ValueError,
                      "label_smoothing must be a finite number in [0.0, 1.0], got nan"),
    "smoothing-type": (lambda o: XENT(Z, Y, label_smoothing="x", out=o), TypeError,
                       "label_smoothing must be a real number, got 'x'"),
    "reduction": (lambda o: XENT(Z, Y, reduction="avg", out=o), ValueError,
                  "reduction must be 'mean', 'sum' or 'none', got 'avg'"),
    "reduction-type": (lambda o: XENT(Z, Y, reduction=None, out=o), ValueError,
                       "reduction must be 'mean', 'sum' or 'none', got None"),
    "axis-range": (lambda o: XENT(Z, Y, axis=2, out=o), ValueError,
                   "axis 2 is out of range for an array of 2 dimensions"),
    "axis-type": (lambda o: XENT(Z, Y, axis=1.0, out=o), TypeError,
                  "axis must be an int, got float"),
    "z-int": (lambda o: XENT(Z.astype(np.int64), Y, out=o), TypeError,
              "z has unsupported dtype int64; supported: float16, bfloat16, float32, float64"),
    "z-complex": (lambda o: XENT(Z.astype(np.complex64), Y, out=o), TypeError,
                  "z has unsupported dtype complex64; supported: float16, bfloat16, float32, "
                  "float64"),
    "no-classes": (lambda o: XENT(np.zeros((4, 0), np.float32), Y), ValueError,
                   "z has shape (4, 0): no classes along axis 1"),
    "z-0d": (lambda o: XENT(np.float32(1.0), Y, out=o), ValueError,
             "z must have at least 1 dimension (the class axis), got shape ()"),
    "out-overlaps-z": (lambda o: XENT(Z, Y, out=Z), ValueError,
                       "out overlaps z; pass a separate array"),
    "out-dtype": (lambda o: XENT(Z, Y, out=np.zeros((4, 10))), TypeError,
                  "out has dtype float64, expected float32"),
    "out-shape": (lambda o: XENT(Z, Y, out=np.zeros((10, 4), np.float32)), ValueError,
                  "out has shape (10, 4), expected (4, 10)"),
}  # fmt: skip

FORWARD_CASES = {
    "int": (lambda f, o: f(np.arange(4), out=o), TypeError,
            "z has unsupported dtype int64; supported: float16, bfloat16, float32, float64"),
    "axis": (lambda f, o: f(Z, axis=-3, out=o), ValueError,
             "axis -3 is out of range for an array of 2 dimensions"),
    "scalar-axis": (lambda f, o: f(np.float32(1.0), axis=1, out=o), ValueError,
                    "axis 1 is out of range for an array of 1 dimensions"),
    "not-array": (lambda f, o: f({"a": 1}, out=o), TypeError, "z must be a numpy array, got dict"),
    "out-readonly": (lambda f, o: f(Z, out=_readonly()), ValueError, "out is read-only"),
    "out-noncontig": (lambda f, o: f(Z, out=np.zeros((4, 20), np.float32)[:, ::2]), ValueError,
                      "out must be C-contiguous, aligned and in native byte order"),
    "out-overlap": (lambda f, o: f(Z, out=Z), ValueError, "out overlaps z; pass a separate array"),
}  # fmt: skip

BACKWARD_CASES = {
    "shape": (lambda f, o: f(Z[:2], Z, out=o), ValueError, "has shape (2, 10), expected"),
    "dtype": (lambda f, o: f(Z.astype(np.float64), Z, out=o), TypeError,
              "has dtype float64, expected"),
}  # fmt: skip


def _readonly():
    a = np.zeros((4, 10), np.float32)
    a.flags.writeable = False
    return a


def expect_everywhere(call, exc, message, *, exact=True, shape=(4, 10)):
    """``call(out)`` raises ``exc(message)`` on every backend and leaves ``out`` untouched."""
    previous = normax.get_backend()
    pattern = "^" + re.escape(message) + "$" if exact else re.escape(message)
    try:
        for name in normax.available_backends():
            normax.set_backend(name)
            out = np.full(shape, 7.0, np.float32)
            with pytest.raises(exc, match=pattern):
                call(out)
            assert (out == 7.0).all(), f"{name} wrote into out before failing"
    finally:
        normax.set_backend(previous)


@pytest.mark.parametrize("case", XENT_CASES)
def test_xent_bad_input(case):
    call, exc, message, *shape = XENT_CASES[case]
    expect_everywhere(call, exc, message, shape=shape[0] if shape else (4, 10))


@pytest.mark.parametrize("fn", [normax.softmax, normax.log_softmax])
@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_bad_input(fn, case):
    call, exc, message = FORWARD_CASES[case]
    expect_everywhere(lambda o: call(fn, o), exc, message)


@pytest.mark.parametrize("fn", [normax.softmax_backward, normax.log_softmax_backward])
@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_bad_input(fn, case):
    call, exc, message = BACKWARD_CASES[case]
    expect_everywhere(lambda o: call(fn, o), exc, message, exact=False)


def test_out_survives_bad_label_after_valid_prefix(backend):
    """A bad label late in a large batch is found before any kernel writes ``out``."""
    z = np.zeros((50_000, 3), np.float32)
    y = np.zeros(50_000, np.int64)
    y[-1] = 3
    out = np.full_like(z, 7.0)
    with pytest.raises(ValueError, match=r"^label 3 at index 49999 is out of range for 3 classes$"):
        XENT(z, y, out=out)
    assert (out == 7.0).all()
