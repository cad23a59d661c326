"""Rounding float32 results into float16 / bfloat16 outputs for the Numba backend.

The Numba kernels compute half-precision records in float32 and round each result once. NumPy's
float32 -> float16 cast is a scalar loop that is slow on subnormal results (it raises the
underflow flag value by value): a softmax over 32000 classes, whose probabilities are float16
subnormals, spent 0.97 of its 1.2 s there. These parallel loops round the bit patterns instead,
to nearest even, as csrc/half.h does: NaN is quieted, infinities stay, subnormals are kept,
values past the half range become infinite.
"""

from __future__ import annotations

import numba
import numpy as np

from . import _dtypes
from ._numba_notice import CompileNotice

_notice = CompileNotice("half-precision rounding", __name__)
_SIG = "void(uint32[::1], float32[::1], uint16[::1])"


@numba.njit(_SIG, parallel=True, cache=True, nogil=True)
def _to_f16(bits, values, out):  # pragma: no cover - compiled
    for i in numba.prange(bits.size):
        u = bits[i]
        a = u & np.uint32(0x7FFFFFFF)
        sign = (u >> np.uint32(16)) & np.uint32(0x8000)
        if a > np.uint32(0x7F800000):  # NaN: quiet, upper payload bits kept
            h = np.uint32(0x7E00) | ((a >> np.uint32(13)) & np.uint32(0x3FF))
        elif a >= np.uint32(0x477FF000):  # at or past the midpoint of 65504 and 2**16
            h = np.uint32(0x7C00)
        elif a >= np.uint32(0x38800000):  # a normal half: rebias, round 13 bits to even
            r = a - np.uint32(112 << 23)
            h = (r + np.uint32(0x0FFF) + ((r >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        else:  # a subnormal half: the number of 2**-24 steps, rounded to even (exact in float64)
            h = np.uint32(np.rint(abs(np.float64(values[i])) * 16777216.0))
        out[i] = np.uint16(sign | h)


@numba.njit(_SIG, parallel=True, cache=True, nogil=True)
def _to_bf16(bits, values, out):  # pragma: no cover - compiled
    for i in numba.prange(bits.size):
        u = bits[i]
        if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: quiet
            out[i] = np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
        else:  # drop 16 bits, ties to even; the carry rounds the largest values to infinity
            rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
            out[i] = np.uint16(rounded >> np.uint32(16))


_notice.close()


def round_into(out: np.ndarray, res: np.ndarray) -> None:
    """``out[...] = res`` for a C-contiguous float16 / bfloat16 ``out``: each float32 value of
    ``res`` rounded once to nearest even. Other result types (float64 losses) are rounded by
    NumPy directly, so that nothing is rounded twice."""
    kind = _dtypes.half_kind(out.dtype)
    if res.dtype != np.float32 or not kind or not out.flags.c_contiguous:
        with np.errstate(over="ignore", under="ignore"):
            out[...] = res
        return
    values = np.ascontiguousarray(res, np.float32).reshape(-1)
    convert = _to_f16 if kind == _dtypes.KIND_F16 else _to_bf16
    convert(values.view(np.uint32), values, out.reshape(-1).view(np.uint16))
