# cython: language_level=3, boundscheck=False, wraparound=False, binding=False
# cython: embedsignature=True, embedsignature.format=clinic
"""The fused optimizer step: the compiled front door and the C kernel's entry in the table.

``fused_step`` runs, in compiled code, the calls that ``normax.optim._check.normalize`` would
return unchanged (see that module for the contract) and hands every other call to it, so every
error is written once. An accepted call runs the C kernel directly when the C backend is
active, else the active backend's ``step`` through the one table, with the same record.

``step`` is the "c" column of that table: it takes the same record and runs the same checks,
so that no direct call can make the kernel step outside an array.

Mixed precision: float16/bfloat16 gradients of float32 params, and the optional ``half`` copies,
run through ``nmx_optim_step_half``. float16 is NumPy's NPY_FLOAT16; bfloat16 is ml_dtypes'
user-defined dtype, recognized by its run-time type number once that module is loaded.

The kernel selectors and flags are exported from ``optim.h`` (``SGD`` ... ``AMSGRAD``); this
module refuses to import if ``normax.optim._kinds`` disagrees with them.
"""

cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_RawRealloc
from cpython.ref cimport PyObject
from libc.stdint cimport uint16_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy, memset

from normax._ext_common cimport (
    c_active,
    exact_int,
    half_kind,
    nmx_index,
    nmx_set_num_threads,
    register_threads,
)

from normax import _backend
from normax.optim import _check, _kinds

cnp.import_array()
register_threads(nmx_set_num_threads)

cdef dict _BACKEND = _backend.__dict__

cdef extern from "Python.h":
    PyObject **PySequence_Fast_ITEMS(object o)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    double PyFloat_AS_DOUBLE(PyObject *o)

cdef extern from "optim.h":
    cdef enum nmx_optim_kind:
        NMX_OPT_SGD
        NMX_OPT_MOMENTUM
        NMX_OPT_RMSPROP
        NMX_OPT_ADAM
    cdef enum nmx_optim_flag:
        NMX_OPT_NESTEROV
        NMX_OPT_FIRST
        NMX_OPT_CENTERED
        NMX_OPT_AMSGRAD
    enum: NMX_OPT_NHYPER
    ctypedef struct nmx_optim_call:
        int kind
        int flags
        double h[NMX_OPT_NHYPER]
        nmx_index narrays
        const nmx_index *sizes
        void **p
        const void **g
        void **s[3]
    ctypedef struct nmx_optim_half_call:
        nmx_optim_call c
        int gkind
        int hkind
        uint16_t **half
    void nmx_optim_step_f32(const nmx_optim_call *c) nogil
    void nmx_optim_step_f64(const nmx_optim_call *c) nogil
    void nmx_optim_step_half(const nmx_optim_half_call *hc) nogil

SGD, MOMENTUM, RMSPROP, ADAM = NMX_OPT_SGD, NMX_OPT_MOMENTUM, NMX_OPT_RMSPROP, NMX_OPT_ADAM
NESTEROV, FIRST = NMX_OPT_NESTEROV, NMX_OPT_FIRST
CENTERED, AMSGRAD = NMX_OPT_CENTERED, NMX_OPT_AMSGRAD
NHYPER = NMX_OPT_NHYPER

_kinds.verify({"SGD": SGD, "MOMENTUM": MOMENTUM, "RMSPROP": RMSPROP, "ADAM": ADAM,
               "NESTEROV": NESTEROV, "FIRST": FIRST, "CENTERED": CENTERED, "AMSGRAD": AMSGRAD})

# ---- the contract's rules as C tables, read once from normax.optim._check.RULES -------------

cdef enum:
    _NKINDS = 4
    # when a state slot's list is given (_check.NEVER ...): mapped from the rules at import
    _NEVER = 0
    _ALWAYS = 1
    _OPTIONAL = 2
    _WITH_FLAG = 3
    _STACK_ARRAYS = 32  # calls with up to this many arrays keep their pointer tables on the stack

cdef extern from "normax.h":
    # Below this many elements in total the kernel runs on one thread (csrc/threads.c); it then
    # also keeps the GIL: the update is short, and the lists need no copies to stay alive.
    const nmx_index NMX_PARALLEL_MIN_WORK

cdef int _allowed_flags[_NKINDS]
cdef int _slot_mode[_NKINDS][3]
cdef int _slot_flags[_NKINDS][3]
cdef Py_ssize_t _nfields[_NKINDS]
cdef tuple _records = tuple(_kinds.HYPER[k] for k in range(_NKINDS))
cdef object _kernels = _check.KERNELS


cdef int _load_rules() except -1:
    if sorted(_check.RULES) != list(range(_NKINDS)):
        raise ImportError(f"optim kinds {sorted(_check.RULES)} are not 0..{_NKINDS - 1}")
    modes = {_check.NEVER: _NEVER, _check.ALWAYS: _ALWAYS, _check.OPTIONAL: _OPTIONAL,
             _check.WITH_FLAG: _WITH_FLAG}
    for k in range(_NKINDS):
        rule = _check.RULES[k]
        _allowed_flags[k] = rule.flags
        _nfields[k] = len(_records[k]._fields)
        if _nfields[k] > NMX_OPT_NHYPER:
            raise ImportError(f"{_records[k].__name__} has more than {NMX_OPT_NHYPER} fields")
        for j in range(3):
            _slot_mode[k][j] = modes[rule.slots[j].mode]
            _slot_flags[k][j] = rule.slots[j].flags
    return 0


_load_rules()


# ---- acceptance: the calls normalize() returns unchanged -----------------------------------------

cdef struct _Range:
    const char *lo
    const char *hi


cdef struct _Tables:
    # filled for one call: sizes[n], data pointers of params, grads, s0..s2, half (6 x n), the
    # byte ranges of the non-empty written arrays in call order (nw <= 5 x n) and of the
    # gradients (ng <= n), and room for the written ranges sorted (5 x n)
    nmx_index *sizes
    void **ptr
    _Range *written
    _Range *grads
    _Range *scratch
    Py_ssize_t nw
    Py_ssize_t ng


cdef inline bint _is_list(object o) noexcept:
    return type(o) is list or type(o) is tuple


cdef inline bint _slot_ok(object s, int kind, int j, int flags) noexcept:
    """The state list of slot j is given or absent as the kind and flags require."""
    cdef bint given = s is not None
    cdef int mode = _slot_mode[kind][j]
    cdef bint need
    if mode == _NEVER:
        need = False
    elif mode == _ALWAYS:
        need = True
    elif mode == _OPTIONAL:
        need = given or (flags & _slot_flags[kind][j]) != 0
    else:
        need = (flags & _slot_flags[kind][j]) != 0
    return given == need and (not given or _is_list(s))


cdef inline bint _hyper_ok(object hyper, int kind, nmx_optim_call *c) noexcept:
    """``hyper`` is exactly the kind's record, of Python floats: copy them into ``c.h``."""
    if type(hyper) is not _records[kind] or len(<tuple>hyper) != _nfields[kind]:
        return False
    cdef PyObject **items = PySequence_Fast_ITEMS(hyper)
    cdef Py_ssize_t i
    memset(c.h, 0, sizeof(c.h))
    for i in range(_nfields[kind]):
        if type(<object>items[i]) is not float:
            return False
        c.h[i] = PyFloat_AS_DOUBLE(items[i])
    return True


cdef inline bint _array_ok(PyObject *o, int typenum, cnp.npy_intp size, bint written,
                           _Range *ranges, Py_ssize_t *nranges, void **ptr) noexcept:
    """``o`` is an ndarray of ``typenum`` with ``size`` elements a kernel may read (and write,
    with ``written``) as a plain C array; records its data pointer and byte range."""
    if not cnp.PyArray_Check(<object>o):
        return False
    cdef cnp.ndarray a = <cnp.ndarray>o
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_SIZE(a) != size
            or not (cnp.PyArray_ISCARRAY(a) if written else cnp.PyArray_ISCARRAY_RO(a))):
        return False
    cdef char *data = cnp.PyArray_BYTES(a)
    ptr[0] = data
    if size > 0:  # an empty array shares memory with nothing
        ranges[nranges[0]].lo = data
        ranges[nranges[0]].hi = data + size * cnp.PyArray_ITEMSIZE(a)  # no second product
        nranges[0] += 1
    return True


# ---- no written buffer shares memory with another or with a gradient ----------------------------
# Sorting the ranges of every call would cost more than the whole binding (~30 us for 100
# arrays). An optimizer passes the same parameters and states at every step, so the written
# ranges already found disjoint are remembered, in call order, for the last few distinct sets
# (param groups, dtypes): a repeated set costs one comparison, then each gradient is found in
# the sorted ranges by bisection. Whether ranges are disjoint depends on nothing but the
# ranges, so a remembered answer is exact.

cdef struct _Known:
    Py_ssize_t n, cap
    _Range *order   # as the call listed them
    _Range *sorted  # by start, disjoint

cdef enum:
    _NKNOWN = 4

cdef _Known _known[_NKNOWN]
cdef int _known_next = 0


cdef int _range_order(const void *a, const void *b) noexcept nogil:
    cdef const char *x = (<const _Range *>a).lo
    cdef const char *y = (<const _Range *>b).lo
    return -1 if x < y else (1 if x > y else 0)


cdef const _Range *_recall(const _Range *w, Py_ssize_t n) noexcept:
    """The sorted copy of a remembered set of written ranges, or NULL."""
    cdef int k
    for k in range(_NKNOWN):
        if _known[k].n == n and n > 0 and memcmp(_known[k].order, w, n * sizeof(_Range)) == 0:
            return _known[k].sorted
    return NULL


cdef void _remember(const _Range *w, const _Range *sorted, Py_ssize_t n) noexcept:
    """Keep a set found disjoint (round robin; nothing is kept if memory runs out)."""
    global _known_next
    cdef _Known *k = &_known[_known_next]
    cdef _Range *mem
    if n > k.cap:
        mem = <_Range *>PyMem_RawRealloc(k.order, 2 * n * sizeof(_Range))
        if mem == NULL:
            return
        k.order, k.sorted, k.cap = mem, mem + n, n
    memcpy(k.order, w, n * sizeof(_Range))
    memcpy(k.sorted, sorted, n * sizeof(_Range))
    k.n = n
    _known_next = (_known_next + 1) % _NKNOWN


cdef const _Range *_sorted_disjoint(_Tables *t) noexcept:
    """The written ranges sorted by start if no two of them meet, else NULL."""
    cdef const _Range *known = _recall(t.written, t.nw)
    if known != NULL:
        return known
    cdef _Range *s = t.scratch
    cdef _Range r
    cdef Py_ssize_t i, j, n = t.nw
    memcpy(s, t.written, n * sizeof(_Range))
    if n <= 32:  # insertion sort: the few ranges of a small model are often already in order
        for i in range(1, n):
            r = s[i]
            j = i - 1
            while j >= 0 and s[j].lo > r.lo:
                s[j + 1] = s[j]
                j -= 1
            s[j + 1] = r
    else:
        qsort(s, n, sizeof(_Range), _range_order)
    for i in range(1, n):
        if s[i].lo < s[i - 1].hi:
            return NULL
    if n > 0:
        _remember(t.written, s, n)
    return s


cdef bint _separate(_Tables *t) noexcept:
    """No written range meets another, and no gradient meets a written range."""
    cdef const _Range *w = _sorted_disjoint(t)
    if w == NULL:
        return False
    cdef Py_ssize_t i, lo, hi, mid
    for i in range(t.ng):
        # the last written range starting before the gradient ends: the sorted disjoint ranges
        # have sorted ends, so it is the only one that can reach past the gradient's start
        lo, hi = 0, t.nw
        while lo < hi:
            mid = (lo + hi) >> 1
            if w[mid].lo < t.grads[i].hi:
                lo = mid + 1
            else:
                hi = mid
        if lo > 0 and w[lo - 1].hi > t.grads[i].lo:
            return False
    return True


cdef inline int _list_type(PyObject *lst, Py_ssize_t n) noexcept:
    """The type number of the first array of a list of ``n`` items, or -1."""
    if n == 0:
        return -1
    cdef PyObject *first = PySequence_Fast_ITEMS(<object>lst)[0]
    return cnp.PyArray_TYPE(<cnp.ndarray>first) if cnp.PyArray_Check(<object>first) else -1


cdef bint _accept(nmx_optim_half_call *hc, _Tables *t, Py_ssize_t n, int *typenum, object kind,
                  object flags, object hyper, object params, object grads, object s0, object s1,
                  object s2, object half) noexcept:
    """Fill ``hc`` from a call that normalize() would return unchanged; False for any other.
    ``params`` is a list or tuple of ``n`` items; ``t`` has room for ``n`` arrays."""
    cdef nmx_optim_call *c = &hc.c
    cdef long k, f
    if not exact_int(kind, &k) or not exact_int(flags, &f) or k < 0 or k >= _NKINDS:
        return False
    if f < 0 or f & ~_allowed_flags[k] or not _hyper_ok(hyper, k, c):
        return False
    cdef Py_ssize_t i, j
    cdef PyObject *lists[5]  # borrowed: grads, s0, s1, s2, half
    lists[0], lists[1], lists[2], lists[3], lists[4] = <PyObject *>grads, <PyObject *>s0, \
        <PyObject *>s1, <PyObject *>s2, <PyObject *>half
    t.nw = t.ng = 0
    if not _is_list(grads) or PySequence_Fast_GET_SIZE(grads) != n:
        return False
    if half is not None and (not _is_list(half) or PySequence_Fast_GET_SIZE(half) != n):
        return False
    for j in range(3):
        if not _slot_ok(<object>lists[j + 1], k, j, f):
            return False
        if lists[j + 1] != <PyObject *>None and PySequence_Fast_GET_SIZE(<object>lists[j + 1]) != n:
            return False
    cdef PyObject **items = PySequence_Fast_ITEMS(params)
    typenum[0] = cnp.NPY_FLOAT64
    if n > 0:
        if not cnp.PyArray_Check(<object>items[0]):
            return False
        typenum[0] = cnp.PyArray_TYPE(<cnp.ndarray>items[0])
        if typenum[0] != cnp.NPY_FLOAT32 and typenum[0] != cnp.NPY_FLOAT64:
            return False
    for i in range(n):
        if not cnp.PyArray_Check(<object>items[i]):
            return False
        t.sizes[i] = cnp.PyArray_SIZE(<cnp.ndarray>items[i])
        if not _array_ok(items[i], typenum[0], t.sizes[i], True, t.written, &t.nw, &t.ptr[i]):
            return False
    # the gradients have the params' type or, with float32 params, one half type; so do the
    # half copies (always a half type)
    cdef int types[5]
    cdef int gkind = 0, hkind = 0
    types[0] = types[1] = types[2] = types[3] = typenum[0]
    if n > 0 and _list_type(lists[0], n) != typenum[0]:
        types[0] = _list_type(lists[0], n)
        gkind = half_kind(types[0]) if typenum[0] == cnp.NPY_FLOAT32 else 0
        if gkind == 0:
            return False
    types[4] = _list_type(lists[4], n) if half is not None else -1
    if half is not None and n > 0:
        hkind = half_kind(types[4]) if typenum[0] == cnp.NPY_FLOAT32 else 0
        if hkind == 0:
            return False
    for j in range(5):
        if lists[j] == <PyObject *>None:
            continue
        items = PySequence_Fast_ITEMS(<object>lists[j])
        for i in range(n):
            if not _array_ok(items[i], types[j], t.sizes[i], j > 0,
                             t.written if j > 0 else t.grads, &t.nw if j > 0 else &t.ng,
                             &t.ptr[(j + 1) * n + i]):
                return False
    if not _separate(t):
        return False
    c.kind = k
    c.flags = f
    c.narrays = n
    c.sizes = t.sizes
    c.p = t.ptr
    c.g = <const void **>(t.ptr + n)
    for j in range(3):
        c.s[j] = NULL if lists[j + 1] == <PyObject *>None else t.ptr + (j + 2) * n
    hc.gkind = gkind
    hc.hkind = hkind
    hc.half = <uint16_t **>(t.ptr + 5 * n) if hkind else NULL
    return True


# ---- running the record ------------------------------------------------------------------------

cdef int _run_c(nmx_optim_half_call *hc, int typenum, object params, object grads, object s0,
                object s1, object s2, object half) except -1:
    cdef nmx_index total = 0, k
    for k in range(hc.c.narrays):
        total += hc.c.sizes[k]
    if total < NMX_PARALLEL_MIN_WORK:
        _kernel(hc, typenum)
        return 0
    # the lists are copied into tuples that keep every array alive while the GIL is released,
    # whatever another thread does to the caller's lists meanwhile
    cdef list keep = [None if x is None else tuple(x) for x in (params, grads, s0, s1, s2, half)]
    with nogil:
        _kernel(hc, typenum)
    return 0


cdef inline void _kernel(nmx_optim_half_call *hc, int typenum) noexcept nogil:
    if hc.gkind or hc.hkind:
        nmx_optim_step_half(hc)
    elif typenum == cnp.NPY_FLOAT32:
        nmx_optim_step_f32(&hc.c)
    else:
        nmx_optim_step_f64(&hc.c)


cdef bint _try_run(object kind, object flags, object hyper, object params, object grads,
                   object s0, object s1, object s2, object half, bint run_c) except -1:
    """Run the call if it is accepted as it is (True); False if it needs the checker."""
    cdef nmx_optim_half_call c
    cdef _Tables t
    cdef nmx_index sizes[_STACK_ARRAYS]
    cdef void *ptr[6 * _STACK_ARRAYS]
    cdef _Range ranges[11 * _STACK_ARRAYS]
    cdef void *heap = NULL
    cdef int typenum
    if not _is_list(params):
        return False
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(params)
    cdef _Range *r = ranges
    t.sizes, t.ptr = sizes, ptr
    if n > _STACK_ARRAYS:
        heap = PyMem_Malloc(n * (sizeof(nmx_index) + 6 * sizeof(void *) + 11 * sizeof(_Range)))
        if heap == NULL:
            raise MemoryError()
        r = <_Range *>heap
        t.ptr = <void **>(r + 11 * n)
        t.sizes = <nmx_index *>(t.ptr + 6 * n)
    t.written, t.grads, t.scratch = r, r + 5 * n, r + 6 * n
    try:
        # no Python code runs from here to the kernel, so the lists cannot change in between
        if not _accept(&c, &t, n, &typenum, kind, flags, hyper, params, grads, s0, s1, s2,
                       half):
            return False
        if run_c:
            _run_c(&c, typenum, params, grads, s0, s1, s2, half)
        else:
            _kernels.active().step(kind, flags, hyper, params, grads, s0, s1, s2, half)
        return True
    finally:
        PyMem_Free(heap)


cdef int _step(object kind, object flags, object hyper, object params, object grads, object s0,
               object s1, object s2, object half, bint c_only) except -1:
    """Run the call as it is if it is canonical, else as the checker normalizes it (or raise)."""
    cdef bint run_c = c_only or c_active(_BACKEND)
    if _try_run(kind, flags, hyper, params, grads, s0, s1, s2, half, run_c):
        return 0
    kind, flags, hyper, params, grads, s0, s1, s2, half = _check.normalize(
        kind, flags, hyper, params, grads, s0, s1, s2, half)
    if not _try_run(kind, flags, hyper, params, grads, s0, s1, s2, half, run_c):
        raise AssertionError("normax: a normalized optimizer step was not accepted")
    return 0


def fused_step(kind, flags, hyper, params, grads, s0=None, s1=None, s2=None, half=None):
    """Update ``params`` in place with one fused optimizer step on the active backend.

    The arguments are the record described in ``normax.optim._check``; a call that is not
    already canonical is normalized there or raises TypeError / ValueError.
    """
    _step(kind, flags, hyper, params, grads, s0, s1, s2, half, False)


def step(kind, flags, hyper, params, grads, s0, s1, s2, half=None):
    """The C kernel on the canonical record (the "c" entry of ``_check.KERNELS``)."""
    _step(kind, flags, hyper, params, grads, s0, s1, s2, half, True)
