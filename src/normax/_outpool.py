"""Large output arrays that reuse the memory of freed ones (the Numba backend's allocator).

A fresh 64 MiB array costs its page faults: the system zeroes every page on first write, one
more full write of the array inside the call that fills it. The C extension keeps freed output
blocks mapped for the next call (csrc/outbuf.c); this is the same idea in Python for the Numba
kernels, which run where the extension is not built.

Each large output derives from ``flat``, a 1-D array over a pooled uint8 block seen through a
``memoryview``. NumPy points every view derived from the output (slices, reshapes, transposes)
at ``flat``, not further down (its base is not an array), so ``flat`` dies only when the last
array using the block does; a finalizer then returns the block to the pool. Up to ``SLOTS``
free blocks (``KEEP_BYTES`` together) are kept, the oldest dropped first.
"""

from __future__ import annotations

import weakref

import numpy as np

MIN_BYTES = 4 << 20  # smaller arrays: NumPy's allocator, which already reuses memory
ALIGN = 64  # cache-line aligned, as the C pool's blocks: NumPy's malloc gives 16 bytes, and a
# classes-first kernel writing 64-byte column blocks then splits every store over two lines
SLOTS = 4
KEEP_BYTES = 1 << 30

# Free blocks, oldest first. Only single list operations touch it (atomic under the GIL): the
# finalizer that appends may run during a garbage collection inside empty_like itself.
_free: list[np.ndarray] = []


def empty_like(a: np.ndarray) -> np.ndarray:
    """An uninitialized C-contiguous array of ``a``'s shape and dtype.

    Parameters
    ----------
    a : ndarray
        The array whose shape and dtype to take.

    Returns
    -------
    ndarray
        Writeable and C-contiguous. From ``MIN_BYTES`` on it does not own its data (a pooled
        block does), so ``resize`` refuses it; everything else behaves as ``np.empty_like``.
    """
    nbytes = a.nbytes
    if nbytes < MIN_BYTES:
        return np.empty(a.shape, a.dtype)
    block = _take(nbytes)
    if block is None:
        block = np.empty(nbytes + ALIGN, np.uint8)
    start = -block.ctypes.data % ALIGN
    flat = np.frombuffer(memoryview(block)[start:], a.dtype, count=a.size)
    weakref.finalize(flat, _give_back, block)
    return flat.reshape(a.shape)


def _take(nbytes: int) -> np.ndarray | None:
    """A free block for ``nbytes`` wasting at most a quarter of them (the smallest), or None."""
    fits = [b for b in list(_free) if nbytes <= b.nbytes - ALIGN <= nbytes + nbytes // 4]
    for block in sorted(fits, key=lambda b: b.nbytes):
        try:
            _free.remove(block)
        except ValueError:  # taken meanwhile by another thread
            continue
        return block
    return None


def _give_back(block: np.ndarray) -> None:
    if block.nbytes > KEEP_BYTES:
        return
    _free.append(block)
    while len(_free) > SLOTS or sum(b.nbytes for b in list(_free)) > KEEP_BYTES:
        try:
            _free.pop(0)
        except IndexError:
            break


def clear() -> None:
    """Drop every free block (their memory goes back to the system)."""
    _free.clear()
