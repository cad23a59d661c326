"""Software prefetch for the Numba kernels: an intrinsic that issues LLVM's ``llvm.prefetch`` for
a byte offset into an array's data.

A prefetch is a hint with no effect on any value, and an address past the array does not fault,
so callers need not test for the last rows they fetch ahead.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _prefetcher(write, locality):
    """An intrinsic ``prefetch(arr, offset)``: fetch the cache line ``offset`` bytes into arr's
    data, for reading or (``write``) for writing, into every cache level (``locality`` 3) or
    into L2 and outward (2)."""

    @intrinsic
    def prefetch(typingctx, arr, offset):
        if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            ptr = builder.gep(builder.bitcast(data, i8p), [args[1]])
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(fn, [ptr, i32(int(write)), i32(locality), i32(1)])  # 1: data cache
            return context.get_dummy_value()

        return types.none(arr, offset), codegen

    return prefetch


prefetch_read = _prefetcher(False, 3)
prefetch_write = _prefetcher(True, 3)
prefetch_read_l2 = _prefetcher(False, 2)  # prefetcht1
