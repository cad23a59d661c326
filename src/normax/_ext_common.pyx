# cython: language_level=3
"""What every compiled front door shares at run time: the thread control of the kernels and the
pool of large outputs."""

import math
import sys

import numpy as np

cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport strncpy

from normax._ext_common cimport (
    NMX_BF16,
    NMX_BUF_MIN_BYTES,
    NMX_F16,
    nmx_get_num_threads,
    nmx_set_num_threads,
    threads_setter,
)

from normax import _dtypes

cnp.import_array()

if (NMX_F16, NMX_BF16) != (_dtypes.KIND_F16, _dtypes.KIND_BF16):
    raise ImportError("normax._dtypes half kinds do not match csrc/half.h; rebuild the extension")

cdef extern from "normax.h":
    int nmx_openmp_version() noexcept nogil
    const char *nmx_openmp_library() noexcept nogil
    const char *nmx_simd_target() noexcept nogil
    long nmx_llc_cap() noexcept nogil

cdef extern from "half.h":
    const char *nmx_half_isa(int kind) noexcept nogil

cdef threads_setter _setters[16]
cdef int _count = 0
cdef int _threads = 0  # 0: follow OpenMP (OMP_NUM_THREADS, threadpoolctl)


cdef int register_threads(threads_setter setter) except -1:
    global _count
    if _count == 16:
        raise RuntimeError("too many compiled normax modules")
    _setters[_count] = setter
    _count += 1
    setter(_threads)  # also installs that copy's fork handler
    return 0


def set_num_threads(int n):
    """Set the OpenMP thread count of every compiled kernel (0 restores the default)."""
    global _threads
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _threads = n
    for k in range(_count):
        _setters[k](n)


def get_num_threads():
    """Thread count the compiled kernels use for large inputs."""
    return nmx_get_num_threads()


def build_info():
    """What the compiled kernels are: ``_OPENMP`` date (0: serial build), the file of the OpenMP
    runtime they call ("" if unknown), the SIMD version this CPU runs, the float16
    conversion path it uses, and the largest last-level cache in bytes they count on (a larger
    reported cache is taken to be shared, and capped to this)."""
    return {
        "openmp": nmx_openmp_version(),
        "openmp_library": nmx_openmp_library().decode("utf-8", "replace"),
        "simd": nmx_simd_target().decode("ascii"),
        "float16": nmx_half_isa(1).decode("ascii"),
        "bfloat16": nmx_half_isa(2).decode("ascii"),
        "llc_cap_bytes": nmx_llc_cap(),
    }


register_threads(nmx_set_num_threads)


# ---- half precision -----------------------------------------------------------------------------

cdef int _bf16_num = -1  # bfloat16's type number, once ml_dtypes has registered it


cdef int half_kind(int typenum) noexcept:
    global _bf16_num
    if typenum == cnp.NPY_FLOAT16:
        return NMX_F16
    if _bf16_num < 0 and cnp.PyTypeNum_ISUSERDEF(typenum):
        ml_dtypes = sys.modules.get("ml_dtypes")  # no bfloat16 array exists before it is loaded
        if ml_dtypes is not None:
            try:
                _bf16_num = cnp.dtype(ml_dtypes.bfloat16).num
            except Exception:  # a broken ml_dtypes: no array here is bfloat16 then
                return 0
    return NMX_BF16 if _bf16_num >= 0 and typenum == _bf16_num else 0


# ---- the output pool (csrc/outbuf.c) --------------------------------------------------------
# Installed as NumPy's allocator only around the allocation of a large output, so NumPy records
# it in that array and frees (or resizes) the array through it; every other array is untouched.

cdef extern from "outbuf.h":
    void *nmx_buf_malloc(size_t nbytes) noexcept nogil
    void *nmx_buf_calloc(size_t count, size_t size) noexcept nogil
    void *nmx_buf_realloc(void *p, size_t nbytes) noexcept nogil
    void nmx_buf_free(void *p) noexcept nogil
    size_t nmx_buf_trim() noexcept nogil
    size_t nmx_buf_kept_bytes() noexcept nogil


cdef void *_pool_malloc(void *ctx, size_t n) noexcept nogil:
    return nmx_buf_malloc(n)


cdef void *_pool_calloc(void *ctx, size_t n, size_t size) noexcept nogil:
    return nmx_buf_calloc(n, size)


cdef void *_pool_realloc(void *ctx, void *p, size_t n) noexcept nogil:
    return nmx_buf_realloc(p, n)


cdef void _pool_free(void *ctx, void *p, size_t n) noexcept nogil:
    nmx_buf_free(p)


cdef cnp.PyDataMem_Handler _handler
strncpy(_handler.name, b"normax_outbuf", 127)
_handler.version = 1
_handler.allocator.ctx = NULL
_handler.allocator.malloc = _pool_malloc
_handler.allocator.calloc = _pool_calloc
_handler.allocator.realloc = _pool_realloc
_handler.allocator.free = _pool_free
# NumPy keeps a reference to this capsule in every array it allocates with the handler; the
# module (and so the static struct) outlives them all.
cdef object _capsule = PyCapsule_New(&_handler, b"mem_handler", NULL)


cdef cnp.ndarray pooled_empty(int nd, cnp.npy_intp *dims, int typenum):
    cdef object old = cnp.PyDataMem_SetHandler(_capsule)
    try:
        return <cnp.ndarray>cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    finally:
        cnp.PyDataMem_SetHandler(old)


def empty(shape, dtype):
    """``numpy.empty(shape, dtype)`` for a tuple ``shape``; 4 MiB or more come from the pool.

    For the outputs the Python checker allocates, so that they reuse freed outputs' pages as
    the front doors' own do.
    """
    dt = np.dtype(dtype)
    if dt.itemsize * math.prod(shape) < <Py_ssize_t>NMX_BUF_MIN_BYTES:
        return np.empty(shape, dt)
    old = cnp.PyDataMem_SetHandler(_capsule)
    try:
        return np.empty(shape, dt)
    finally:
        cnp.PyDataMem_SetHandler(old)


def release_memory():
    """Give the freed large outputs the pool keeps back to the system; the bytes released."""
    return nmx_buf_trim()


def kept_bytes():
    """Bytes of freed large outputs the pool keeps for reuse."""
    return nmx_buf_kept_bytes()
