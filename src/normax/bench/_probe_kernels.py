"""Parallel copy and read loops for the bandwidth probe (Numba; imported only when probing).

NumPy's own copy and reductions run on one thread, which on many machines cannot saturate the
memory system; the kernels being measured use every thread, so their roofline must too.
"""

from __future__ import annotations

import numba
from numba import prange


@numba.njit("void(float64[::1], float64[::1])", parallel=True, cache=True, nogil=True)
def parallel_copy(src, dst):  # pragma: no cover - compiled
    for i in prange(src.size):
        dst[i] = src[i]


# fastmath lets the sum use several vector accumulators, so it is limited by memory, not by
# the latency of one dependent chain of additions.
@numba.njit("float64(float64[::1])", parallel=True, cache=True, nogil=True, fastmath=True)
def parallel_read(src):  # pragma: no cover - compiled
    total = 0.0
    for i in prange(src.size):
        total += src[i]
    return total


def set_threads(n: int) -> None:
    """Hold Numba's thread pool to ``n`` threads (at most its configured maximum)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
