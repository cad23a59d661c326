"""float16 / bfloat16 <-> float32 conversions for the Numba backend, exact and vectorizable.

Numba cannot type float16 or bfloat16 arrays, so the Numba kernels see half-precision data as
16-bit integer views of the same memory (:func:`view`): float16 as ``uint16``, bfloat16 as
``int16`` (two distinct types, so one compiled kernel per format and no run-time test of the
format in the hot loops). :func:`load` widens one element of such a view to float32 and
:func:`store` rounds a float32 result into one, with the identity for float32 / float64 arrays,
so a kernel written with them compiles to the same machine code as before for those dtypes.

The conversions are emitted as LLVM IR on 32-bit integers, which LLVM vectorizes:

* widening is exact: bfloat16 is the upper half of a float32; a float16 is rebiased, its
  subnormals (``m * 2**-24``) converted through an exact float32 product, Inf and NaN (payload
  kept) mapped to the float32 Inf and NaN;
* rounding is to nearest even, as csrc/half.h and NumPy / ml_dtypes do: NaN is quieted, values
  past the half range become infinite, float16 subnormals are rounded by the float32 addition
  ``|v| + 0.5`` (whose unit in the last place is float16's 2**-24), bit for bit NumPy's result.

Where the CPU has F16C, the kernels' float16 loads and stores are LLVM's own conversions
(vcvtph2ps / vcvtps2ph), with the same results except that a signaling NaN is quieted when
loaded, as the arithmetic that follows would do anyway. The bulk :func:`widen` and
:func:`round_into` always use the integer code. NumPy's float32 -> float16 cast is a scalar
loop that raises the underflow flag value by value on subnormal results (a softmax over 32000
classes spent 0.97 of its 1.2 s there); these loops run at memory speed.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import float32, float64, int16, types, uint16
from numba.extending import intrinsic, overload

from . import _dtypes
from ._numba_notice import CompileNotice

_notice = CompileNotice("half-precision conversion", __name__)


# The conversions are written in LLVM IR on 32-bit integers: Numba widens integer arithmetic to
# 64 bits, which halves the lanes of the vectorized loops and keeps select chains from folding.
_I16, _I32, _F32 = ir.IntType(16), ir.IntType(32), ir.FloatType()


def _k(value):
    return ir.Constant(_I32, value)


def _f16_to_f32_ir(b, h, f16c):
    """float32 of the float16 bits ``h`` (i16), exactly: zero and subnormals through the exact
    product m * 2**-24, Inf and NaN (payload kept) by setting the float32 exponent, normals by
    rebiasing it. With F16C, LLVM's own conversion (one instruction per vector)."""
    if f16c:
        return b.fpext(b.bitcast(h, ir.HalfType()), _F32)
    u = b.zext(h, _I32)
    sign = b.shl(b.and_(u, _k(0x8000)), _k(16))
    a = b.and_(u, _k(0x7FFF))
    e = b.and_(a, _k(0x7C00))
    sub = b.bitcast(b.fmul(b.uitofp(a, _F32), ir.Constant(_F32, 2.0**-24)), _I32)
    shifted = b.shl(a, _k(13))
    inf_nan = b.or_(shifted, _k(0x7F800000))
    normal = b.add(shifted, _k(112 << 23))
    bits = b.select(b.icmp_unsigned("==", e, _k(0x7C00)), inf_nan, normal)
    bits = b.select(b.icmp_unsigned("==", e, _k(0)), sub, bits)
    return b.bitcast(b.or_(bits, sign), _F32)


def _f32_to_f16_ir(b, v, f16c):
    """float16 bits (i16) of the float32 ``v`` rounded to nearest even: NaN quieted with its
    upper payload bits, infinity from the midpoint of 65504 and 2**16 on, subnormals by the
    float32 addition |v| + 0.5 (its last place is 2**-24, float16's subnormal step, so the sum
    rounds |v| to a whole number of steps, ties to even, and its low bits count them). With
    F16C, LLVM's own conversion, which rounds and quiets NaN the same way."""
    if f16c:
        return b.bitcast(b.fptrunc(v, ir.HalfType()), _I16)
    u = b.bitcast(v, _I32)
    a = b.and_(u, _k(0x7FFFFFFF))
    sign = b.and_(b.lshr(u, _k(16)), _k(0x8000))
    nan = b.or_(b.and_(b.lshr(a, _k(13)), _k(0x3FF)), _k(0x7E00))
    r = b.sub(a, _k(112 << 23))  # rebias; round the 13 dropped bits to even
    normal = b.lshr(b.add(b.add(r, _k(0x0FFF)), b.and_(b.lshr(r, _k(13)), _k(1))), _k(13))
    absv = b.bitcast(a, _F32)
    sub = b.sub(b.bitcast(b.fadd(absv, ir.Constant(_F32, 0.5)), _I32), _k(0x3F000000))
    h = b.select(b.icmp_unsigned(">=", a, _k(0x38800000)), normal, sub)
    h = b.select(b.icmp_unsigned(">=", a, _k(0x477FF000)), _k(0x7C00), h)
    h = b.select(b.icmp_unsigned(">", a, _k(0x7F800000)), nan, h)
    return b.trunc(b.or_(sign, h), _I16)


def _bf16_to_f32_ir(b, h, f16c):
    """float32 of the bfloat16 bits ``h`` (i16): its upper half, exactly."""
    return b.bitcast(b.shl(b.zext(h, _I32), _k(16)), _F32)


def _f32_to_bf16_ir(b, v, f16c):
    """bfloat16 bits (i16) of ``v``: 16 bits dropped, ties to even (the carry rounds the largest
    values to infinity); NaN quieted."""
    u = b.bitcast(v, _I32)
    odd = b.and_(b.lshr(u, _k(16)), _k(1))
    rounded = b.lshr(b.add(b.add(u, _k(0x7FFF)), odd), _k(16))
    quiet = b.or_(b.lshr(u, _k(16)), _k(0x40))
    is_nan = b.icmp_unsigned(">", b.and_(u, _k(0x7FFFFFFF)), _k(0x7F800000))
    return b.trunc(b.select(is_nan, quiet, rounded), _I16)


def _has_f16c(context) -> bool:
    """Whether the code is compiled for a CPU with the F16C conversions. Numba's on-disk cache
    is keyed by the CPU and its features, so code built with them never loads elsewhere."""
    return "+f16c" in getattr(context.codegen(), "_tm_features", "")


def _converter(arg_type, result_type, build, doc, hardware=True):
    @intrinsic
    def convert(typingctx, x):
        if x != arg_type:
            return None

        def codegen(context, builder, sig, args):
            return build(builder, args[0], hardware and _has_f16c(context))

        return result_type(x), codegen

    convert.__doc__ = doc
    return convert


f16_to_f32 = _converter(uint16, float32, _f16_to_f32_ir, "float32 of float16 bits (exact).")
# The F16C widening quiets a signaling NaN (as any arithmetic on it would): the kernels do
# arithmetic on every value they load, but a bulk copy must keep the bits NumPy's cast keeps.
# The bulk loops use the integer code everywhere, so that it is tested on every CPU, and the
# tests compare the kernels' F16C conversions with it.
_f16_to_f32_bits = _converter(
    uint16, float32, _f16_to_f32_ir, "float32 of float16 bits, sNaN kept.", hardware=False
)
_f32_to_f16_bits = _converter(
    float32, uint16, _f32_to_f16_ir, "float32 to float16 bits, RNE (integer code).", hardware=False
)
bf16_to_f32 = _converter(int16, float32, _bf16_to_f32_ir, "float32 of bfloat16 bits (exact).")
f32_to_f16 = _converter(float32, uint16, _f32_to_f16_ir, "float32 to float16 bits, RNE.")
f32_to_bf16 = _converter(float32, int16, _f32_to_bf16_ir, "float32 to bfloat16 bits, RNE.")


def load(v):
    """``v`` (an element of a float array or of a half-precision view) as a float to compute
    with: float32 for the half formats, itself otherwise."""
    raise NotImplementedError  # pragma: no cover - replaced by the overload in compiled code


def store(arr, v):
    """The value to assign into an element of ``arr`` for the float32 / float64 result ``v``:
    ``v`` rounded once to nearest even for a half-precision view, ``v`` itself otherwise."""
    raise NotImplementedError  # pragma: no cover


@overload(load)
def _load_impl(v):
    if v in (float32, float64):
        return lambda v: v
    if v == uint16:
        return lambda v: f16_to_f32(v)
    if v == int16:
        return lambda v: bf16_to_f32(v)
    return None


@overload(store)
def _store_impl(arr, v):
    if not isinstance(arr, types.Array):
        return None
    if arr.dtype in (float32, float64):
        return lambda arr, v: v
    if arr.dtype == uint16:
        return lambda arr, v: f32_to_f16(np.float32(v))
    if arr.dtype == int16:
        return lambda arr, v: f32_to_bf16(np.float32(v))
    return None


def _widen_bits(h):
    """float32 of a half element, every bit kept (NaN payloads, signaling NaNs)."""
    raise NotImplementedError  # pragma: no cover


@overload(_widen_bits)
def _widen_bits_impl(h):
    if h == uint16:
        return lambda h: _f16_to_f32_bits(h)
    if h == int16:
        return lambda h: bf16_to_f32(h)
    return None


def _narrow_bits(arr, v):
    """``store`` with the integer code for float16."""
    raise NotImplementedError  # pragma: no cover


@overload(_narrow_bits)
def _narrow_bits_impl(arr, v):
    if arr.dtype == uint16:
        return lambda arr, v: _f32_to_f16_bits(v)
    if arr.dtype == int16:
        return lambda arr, v: f32_to_bf16(v)
    return None


_OPTS = {"parallel": True, "cache": True, "nogil": True}


@numba.njit(["void(uint16[::1], float32[::1])", "void(int16[::1], float32[::1])"], **_OPTS)
def _widen(src, out):  # pragma: no cover - compiled
    for i in numba.prange(src.size):
        out[i] = _widen_bits(src[i])


@numba.njit(["void(float32[::1], uint16[::1])", "void(float32[::1], int16[::1])"], **_OPTS)
def _narrow(values, out):  # pragma: no cover - compiled
    for i in numba.prange(values.size):
        out[i] = _narrow_bits(out, values[i])


_notice.close()


def view(a: np.ndarray | None) -> np.ndarray | None:
    """The 16-bit integer view the Numba kernels take of a half-precision array: ``uint16`` for
    float16, ``int16`` for bfloat16 (the same memory). Other arrays (and None) pass."""
    if a is None:
        return None
    kind = _dtypes.half_kind(a.dtype)
    if not kind:
        return a
    return a.view(np.uint16 if kind == _dtypes.KIND_F16 else np.int16)


def widen(a: np.ndarray) -> np.ndarray:
    """A float32 copy of the half-precision array ``a`` (exact; parallel). Other arrays are
    converted by NumPy."""
    if not _dtypes.half_kind(a.dtype):
        return a.astype(np.float32)
    src = np.ascontiguousarray(a)
    out = np.empty(a.shape, np.float32)
    _widen(view(src).reshape(-1), out.reshape(-1))
    return out


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
    _narrow(values, view(out).reshape(-1))
