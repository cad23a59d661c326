# cython: language_level=3
"""What every compiled front door shares: the fast acceptance tests, C-level argument checks
that make a hostile direct call raise instead of crash, and the thread control.

The ``cdef inline`` helpers are compiled into each module that cimports them (no call across
modules on the hot path); ``register_threads``, ``pooled_empty`` and the state behind them (the
thread count, the pool of large outputs) live in ``_ext_common`` alone.
"""

cimport numpy as cnp
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsLongAndOverflow
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

cdef extern from "normax.h":
    ctypedef int64_t nmx_index
    void nmx_set_num_threads(int n) noexcept nogil
    int nmx_get_num_threads() noexcept nogil

cdef extern from "outbuf.h":
    size_t NMX_BUF_MIN_BYTES

cdef extern from "half.h":
    enum: NMX_F16   # the kernels' `kind` of float16 storage
    enum: NMX_BF16  # and of bfloat16 (ml_dtypes)

ctypedef void (*threads_setter)(int) noexcept nogil

# Kernels on fewer elements than this run with the GIL held. Releasing and re-taking it costs
# about 50 ns, a tenth of a whole (32, 64) batch-norm call, while a kernel this small finishes
# within a few microseconds: other Python threads lose nothing they would notice.
cdef enum:
    NOGIL_MIN_ELEMENTS = 16384

# Every module links its own copy of csrc/threads.c (csrc/ is a static library), so each one
# registers its setter here at import; normax.set_num_threads then reaches all of them.
cdef int register_threads(threads_setter setter) except -1

# NMX_F16 or NMX_BF16 for arrays of type number ``typenum`` (any byte order), else 0. bfloat16
# is ml_dtypes' user-defined dtype: its type number is chosen when ml_dtypes registers it, and
# looked up once after that.
cdef int half_kind(int typenum) noexcept

# A new C-contiguous array whose memory comes from the one output pool (csrc/outbuf.c) when it
# holds NMX_BUF_MIN_BYTES or more; the pool lives in _ext_common, whichever module allocates.
cdef cnp.ndarray pooled_empty(int nd, cnp.npy_intp *dims, int typenum)


cdef inline bint c_active(dict backend_globals) noexcept:
    """Whether the C backend runs (``normax._backend._active == "c"``), read from the globals of
    ``normax._backend``: a module attribute lookup would cost as much again."""
    cdef PyObject *name = PyDict_GetItem(backend_globals, "_active")
    return name != NULL and <object>name == "c"


cdef inline int float_typenum(object a) noexcept:
    """NPY_FLOAT32 or NPY_FLOAT64 if ``a`` is an exact ndarray of that dtype, C-contiguous,
    aligned and in native byte order (what every kernel reads), else -1."""
    if not cnp.PyArray_CheckExact(a):
        return -1
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int t = cnp.PyArray_TYPE(arr)
    if (t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64) and cnp.PyArray_ISCARRAY_RO(arr):
        return t
    return -1


cdef inline bint is_vector(object a, int typenum, cnp.npy_intp n, bint writeable) noexcept:
    """``a`` is an exact 1-d ndarray of ``typenum`` with ``n`` elements that a kernel may read
    (and write, with ``writeable``) as a plain C array."""
    if not cnp.PyArray_CheckExact(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_DIMS(arr)[0] == n
            and cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_ISCARRAY_RO(arr)
            and (not writeable or cnp.PyArray_ISWRITEABLE(arr)))


cdef inline bint same_shape(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef int k, nd = cnp.PyArray_NDIM(a)
    if cnp.PyArray_NDIM(b) != nd:
        return False
    for k in range(nd):
        if cnp.PyArray_DIMS(a)[k] != cnp.PyArray_DIMS(b)[k]:
            return False
    return True


cdef inline bint exact_int(object v, long *out) noexcept:
    """A Python int (not bool, not a NumPy integer) that fits in a C long: its value."""
    cdef int overflow = 0
    if type(v) is not int:
        return False
    out[0] = PyLong_AsLongAndOverflow(v, &overflow)
    return overflow == 0


cdef inline bint is_out(object out, cnp.ndarray like) noexcept:
    """``out`` is a writeable exact ndarray of ``like``'s float dtype and shape, C-contiguous,
    aligned and native: a kernel may write it as a plain C array."""
    return (float_typenum(out) == cnp.PyArray_TYPE(like) and same_shape(<cnp.ndarray>out, like)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out))


cdef inline bint view3(cnp.ndarray a, object axis, int min_ndim, Py_ssize_t *v) noexcept:
    """The (outer, C, inner) view of a non-empty C-contiguous ``a`` of at least ``min_ndim``
    dimensions around ``axis`` in v[0:3], and the axis in [0, ndim) in v[3], if ``axis`` is an
    exact int in range; else False (empty arrays are the checker's)."""
    cdef int nd = cnp.PyArray_NDIM(a), k
    cdef long ax
    if (nd < min_ndim or cnp.PyArray_SIZE(a) == 0 or not exact_int(axis, &ax) or ax < -nd
            or ax >= nd):
        return False
    if ax < 0:
        ax += nd
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    v[0] = 1
    v[2] = 1
    for k in range(ax):
        v[0] *= dims[k]
    for k in range(ax + 1, nd):
        v[2] *= dims[k]
    v[1] = dims[ax]
    v[3] = ax
    return True


cdef inline void *data_or_null(object a) noexcept:
    """The data pointer of an ndarray the front door accepted, NULL for None."""
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint overlaps(object a, object b) noexcept:
    """Whether the byte ranges of two arrays intersect (None and empty arrays never do). Exact
    for the contiguous arrays the front doors accept, like ``numpy.may_share_memory``."""
    if a is None or b is None:
        return False
    cdef cnp.ndarray x = <cnp.ndarray>a
    cdef cnp.ndarray y = <cnp.ndarray>b
    cdef char *px = cnp.PyArray_BYTES(x)
    cdef char *py = cnp.PyArray_BYTES(y)
    cdef cnp.npy_intp nx = nbytes(x), ny = nbytes(y)
    return nx > 0 and ny > 0 and px < py + ny and py < px + nx


cdef inline cnp.npy_intp nbytes(cnp.ndarray a) noexcept:
    """``a.nbytes``, inline: PyArray_NBYTES calls into NumPy for the element count, and the
    training front door asks for ten overlaps."""
    cdef cnp.npy_intp n = cnp.PyArray_ITEMSIZE(a)
    cdef int k
    for k in range(cnp.PyArray_NDIM(a)):
        n *= cnp.PyArray_DIMS(a)[k]
    return n


cdef inline bint exact_float(object v, double *out) noexcept:
    """A Python float (not a subclass, not a NumPy scalar): its value, without a call."""
    if type(v) is float:
        out[0] = <double>v
        return True
    return False


cdef inline cnp.ndarray new_output(int nd, cnp.npy_intp *dims, int typenum):
    """An uninitialized C-contiguous output. Large ones reuse the pages of freed outputs: a fresh
    64 MiB array would pay a page fault per page on first write, inside the kernel's call."""
    cdef cnp.npy_intp n = 8  # no output dtype is wider: a smaller total is certainly small
    cdef int k
    for k in range(nd):
        n *= dims[k]
    if <size_t>n < NMX_BUF_MIN_BYTES:
        return <cnp.ndarray>cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    return pooled_empty(nd, dims, typenum)


cdef inline cnp.ndarray empty_like(cnp.ndarray a):
    return new_output(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.PyArray_TYPE(a))


cdef inline cnp.ndarray empty_vector(cnp.npy_intp n, int typenum):
    return new_output(1, &n, typenum)


# ---- checks of the kernel entry points (the backend table's "c" column) ----------------------
# They receive calls the checker has already normalized, but a direct call may pass anything:
# these make every such call raise (TypeError / ValueError) before a kernel runs.

cdef inline cnp.ndarray checked_array(object a, str name, int typenum, nmx_index size,
                                      bint writeable):
    """``a`` as an ndarray a kernel may read (and write) as ``size`` elements of ``typenum``."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISCARRAY_RO(arr)
            or cnp.PyArray_SIZE(arr) != size
            or (writeable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(
            f"{name} must be a{' writeable' if writeable else ''} C-contiguous aligned array "
            f"of {size} elements of dtype {cnp.PyArray_DescrFromType(typenum)}, got {a.dtype} "
            f"with {a.size} elements"
        )
    return arr


cdef inline void *optional_data(object a, str name, int typenum, nmx_index size,
                                bint writeable) except? NULL:
    """Data pointer of an optional array (None gives NULL)."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(checked_array(a, name, typenum, size, writeable))


cdef inline int checked_typenum(object a, str name) except -1:
    """NPY_FLOAT32 / NPY_FLOAT64 of an ndarray (TypeError for anything else)."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    return t


cdef inline int checked_record_typenum(object a, str name, int *kind) except -1:
    """The type number of a record's float array ``a`` (float32, float64, float16 or bfloat16;
    TypeError for anything else) and in kind[0] its half-precision kind (0 for float32 /
    float64)."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    kind[0] = 0
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        kind[0] = half_kind(t)
        if kind[0] == 0:
            raise TypeError(
                f"{name} must be float16, bfloat16, float32 or float64, got {a.dtype}")
    return t


cdef inline nmx_index checked_view(object outer, object channels, object inner,
                                   bint need_channels) except -1:
    """The element count of an (outer, C, inner) view: every size >= 0 (C >= 1 when the kernel
    divides by it) and a product that fits in 63 bits."""
    cdef object o = int(outer), c = int(channels), i = int(inner)
    if o < 0 or c < 0 or i < 0:
        raise ValueError(f"view sizes must be >= 0, got ({o}, {c}, {i})")
    if need_channels and c == 0:
        raise ValueError("the class or channel axis is empty (0 classes)")
    cdef object n = o * c * i
    if n >= (<object>1) << 62:
        raise ValueError(f"view ({o}, {c}, {i}) has too many elements")
    return <nmx_index>n
