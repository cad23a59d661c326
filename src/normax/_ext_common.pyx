# cython: language_level=3
"""Thread control of the compiled kernels, shared by every compiled front door."""

from normax._ext_common cimport nmx_get_num_threads, nmx_set_num_threads, threads_setter

cdef extern from "normax.h":
    int nmx_openmp_version() noexcept nogil
    const char *nmx_openmp_library() noexcept nogil
    const char *nmx_simd_target() noexcept nogil

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
    runtime they call ("" if unknown) and the SIMD version this CPU runs."""
    return {
        "openmp": nmx_openmp_version(),
        "openmp_library": nmx_openmp_library().decode("utf-8", "replace"),
        "simd": nmx_simd_target().decode("ascii"),
    }


register_threads(nmx_set_num_threads)
