# cython: language_level=3, boundscheck=False, wraparound=False, binding=False
# cython: embedsignature=True, embedsignature.format=clinic
"""Softmax, log-softmax and cross-entropy: the compiled front door and the C kernels' entry in
the backend table.

The public functions accept, in compiled code, exactly the calls the checks of
``normax._softmax_check`` would pass unchanged (exact C-contiguous aligned native float ndarrays,
int32/int64 labels in range, plain Python scalars, no overlap of ``out`` with an input) and hand
every other call to that checker, so every error is written once. An accepted call runs the C
kernel directly when the C backend is active, else the active backend's kernel through the one
table, with the same record.

``forward``, ``backward`` and ``xent`` are the "c" column of that table: they take the canonical
record and check it again in C (sizes, dtypes, at least one class, labels in range), so that no
direct call can crash the process. They also take float16 / bfloat16 records (half-precision
storage, float32 arithmetic on converted tiles), which the front doors leave to the checker.
"""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint16_t
from libc.math cimport isfinite

from normax._ext_common cimport (
    NOGIL_MIN_ELEMENTS,
    c_active,
    checked_array,
    checked_record_typenum,
    checked_view,
    data_or_null,
    empty_like,
    exact_float,
    exact_int,
    float_typenum,
    is_out,
    new_output,
    nmx_index,
    nmx_set_num_threads,
    optional_data,
    overlaps,
    register_threads,
    same_shape,
    view3,
)

from normax import _backend
from normax import _softmax_check as _check

cnp.import_array()
register_threads(nmx_set_num_threads)

cdef extern from "softmax.h":
    ctypedef struct nmx_xent_args:
        nmx_index outer, classes, inner
        const void *labels
        int label_bytes
        const void *probs
        const double *weight
        int has_ignore
        int64_t ignore
        double eps
        double scale
        void *loss
    nmx_index nmx_xent_check_labels(const void *labels, int label_bytes, nmx_index n,
                                    nmx_index classes, int has_ignore, int64_t ignore,
                                    const double *weight, double *wsum) nogil
    double nmx_xent_f32(const float *z, float *dz, const nmx_xent_args *a) nogil
    double nmx_xent_f64(const double *z, double *dz, const nmx_xent_args *a) nogil
    void nmx_softmax_f32(const float *z, float *out, nmx_index outer, nmx_index classes,
                         nmx_index inner, int log_) nogil
    void nmx_softmax_f64(const double *z, double *out, nmx_index outer, nmx_index classes,
                         nmx_index inner, int log_) nogil
    void nmx_softmax_backward_f32(const float *g, const float *y, float *dz, nmx_index outer,
                                  nmx_index classes, nmx_index inner, int log_) nogil
    void nmx_softmax_backward_f64(const double *g, const double *y, double *dz,
                                  nmx_index outer, nmx_index classes, nmx_index inner,
                                  int log_) nogil
    int nmx_xent_h(int kind, const uint16_t *z, uint16_t *dz, const nmx_xent_args *a,
                   double *total) nogil
    int nmx_softmax_h(int kind, const uint16_t *z, uint16_t *out, nmx_index outer,
                      nmx_index classes, nmx_index inner, int log_) nogil
    int nmx_softmax_backward_h(int kind, const uint16_t *g, const uint16_t *y, uint16_t *dz,
                               nmx_index outer, nmx_index classes, nmx_index inner,
                               int log_) nogil

cdef object _KERNELS = _check.KERNELS
cdef dict _REDUCTIONS = _check.REDUCTIONS
cdef dict _BACKEND = _backend.__dict__
cdef str _MEAN = "mean"  # the default: the same object as a literal "mean" in the caller's code


# ---- the canonical record -> C kernels ---------------------------------------------------------
# The GIL is released only around kernels on NOGIL_MIN_ELEMENTS or more (see _ext_common.pxd).

cdef inline void _forward_run(int t, const void *z, void *out, nmx_index outer, nmx_index c,
                              nmx_index inner, int log) noexcept nogil:
    if t == cnp.NPY_FLOAT32:
        nmx_softmax_f32(<const float *>z, <float *>out, outer, c, inner, log)
    else:
        nmx_softmax_f64(<const double *>z, <double *>out, outer, c, inner, log)


cdef void _forward(int t, object z, object out, nmx_index outer, nmx_index c, nmx_index inner,
                   int log) noexcept:
    cdef void *pz = data_or_null(z)
    cdef void *po = data_or_null(out)
    if outer * c * inner < NOGIL_MIN_ELEMENTS:
        _forward_run(t, pz, po, outer, c, inner, log)
    else:
        with nogil:
            _forward_run(t, pz, po, outer, c, inner, log)


cdef inline void _backward_run(int t, const void *g, const void *y, void *out, nmx_index outer,
                               nmx_index c, nmx_index inner, int log) noexcept nogil:
    if t == cnp.NPY_FLOAT32:
        nmx_softmax_backward_f32(<const float *>g, <const float *>y, <float *>out, outer, c,
                                 inner, log)
    else:
        nmx_softmax_backward_f64(<const double *>g, <const double *>y, <double *>out, outer, c,
                                 inner, log)


cdef void _backward(int t, object g, object y, object out, nmx_index outer, nmx_index c,
                    nmx_index inner, int log) noexcept:
    cdef void *pg = data_or_null(g)
    cdef void *py = data_or_null(y)
    cdef void *po = data_or_null(out)
    if outer * c * inner < NOGIL_MIN_ELEMENTS:
        _backward_run(t, pg, py, po, outer, c, inner, log)
    else:
        with nogil:
            _backward_run(t, pg, py, po, outer, c, inner, log)


cdef inline double _xent_run(int t, const void *z, void *dz, const nmx_xent_args *a) noexcept nogil:
    if t == cnp.NPY_FLOAT32:
        return nmx_xent_f32(<const float *>z, <float *>dz, a)
    return nmx_xent_f64(<const double *>z, <double *>dz, a)


cdef double _xent(int t, object z, object dz, nmx_xent_args *a) noexcept:
    cdef void *pz = data_or_null(z)
    cdef void *pdz = data_or_null(dz)
    cdef double total
    if a.outer * a.classes * a.inner < NOGIL_MIN_ELEMENTS:
        return _xent_run(t, pz, pdz, a)
    with nogil:
        total = _xent_run(t, pz, pdz, a)
    return total


@cython.cdivision(True)  # wsum > 0 is tested; no Python ZeroDivisionError check in nogil code
cdef double _labels_then_xent(int t, const void *z, void *dz, nmx_xent_args *a, int red,
                              bint run, nmx_index *bad) noexcept nogil:
    """The fast path's label check, then the scale of the mean and, with ``run``, the C kernel.
    bad[0] receives the index of the first label out of range (the kernel does not run), or -1.
    """
    cdef double wsum = 0.0
    bad[0] = nmx_xent_check_labels(a.labels, a.label_bytes, a.outer * a.inner, a.classes,
                                   a.has_ignore, a.ignore, NULL, &wsum)
    if bad[0] >= 0:
        return 0.0
    a.scale = 1.0 if red != 0 else (1.0 / wsum if wsum > 0.0 else 0.0)
    return _xent_run(t, z, dz, a) if run else 0.0


cdef int _half_done(int rc) except -1:
    if rc != 0:
        raise MemoryError("no memory for the float32 tiles of a half-precision softmax kernel")
    return 0


cdef void _forward_h(int kind, object z, object out, nmx_index outer, nmx_index c,
                     nmx_index inner, int log) except *:
    cdef const uint16_t *pz = <const uint16_t *>data_or_null(z)
    cdef uint16_t *po = <uint16_t *>data_or_null(out)
    cdef int rc
    with nogil:
        rc = nmx_softmax_h(kind, pz, po, outer, c, inner, log)
    _half_done(rc)


cdef void _backward_h(int kind, object g, object y, object out, nmx_index outer, nmx_index c,
                      nmx_index inner, int log) except *:
    cdef const uint16_t *pg = <const uint16_t *>data_or_null(g)
    cdef const uint16_t *py = <const uint16_t *>data_or_null(y)
    cdef uint16_t *po = <uint16_t *>data_or_null(out)
    cdef int rc
    with nogil:
        rc = nmx_softmax_backward_h(kind, pg, py, po, outer, c, inner, log)
    _half_done(rc)


cdef double _xent_h(int kind, object z, object dz, nmx_xent_args *a) except? -1.0:
    cdef const uint16_t *pz = <const uint16_t *>data_or_null(z)
    cdef uint16_t *pdz = <uint16_t *>data_or_null(dz)
    cdef double total = 0.0
    cdef int rc
    with nogil:
        rc = nmx_xent_h(kind, pz, pdz, a, &total)
    _half_done(rc)
    return total


cdef int _reduction(object reduction) noexcept:
    """0 "mean", 1 "sum", 2 "none", else -1 (the checker says why)."""
    if type(reduction) is not str:
        return -1
    cdef object red = _REDUCTIONS.get(reduction)
    return -1 if red is None else <int>red


cdef int _label_bytes(object target) noexcept:
    """4 or 8 for an int32 / int64 ndarray, else 0."""
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>target)
    return 8 if t == cnp.NPY_INT64 else 4 if t == cnp.NPY_INT32 else 0


# ---- the "c" column of the backend table: the record, checked against any direct call ---------

def forward(z, out, outer, classes, inner, log):
    """C kernel of (log-)softmax on the canonical record (see _softmax_check)."""
    cdef int kind
    cdef int t = checked_record_typenum(z, "z", &kind)
    cdef nmx_index n = checked_view(outer, classes, inner, True)
    checked_array(z, "z", t, n, False)
    checked_array(out, "out", t, n, True)
    if kind:
        _forward_h(kind, z, out, outer, classes, inner, bool(log))
    else:
        _forward(t, z, out, outer, classes, inner, bool(log))


def backward(g, y, out, outer, classes, inner, log):
    """C kernel of the (log-)softmax gradient on the canonical record (see _softmax_check)."""
    cdef int kind
    cdef int t = checked_record_typenum(g, "g", &kind)
    cdef nmx_index n = checked_view(outer, classes, inner, True)
    checked_array(g, "g", t, n, False)
    checked_array(y, "y", t, n, False)
    checked_array(out, "out", t, n, True)
    if kind:
        _backward_h(kind, g, y, out, outer, classes, inner, bool(log))
    else:
        _backward(t, g, y, out, outer, classes, inner, bool(log))


def xent(z, outer, classes, inner, target, weight, ignore, double eps, double scale, dz, loss):
    """C kernel of the fused cross-entropy on the canonical record (see _softmax_check);
    returns the summed loss."""
    cdef int kind
    cdef int t = checked_record_typenum(z, "z", &kind)
    cdef nmx_index n = checked_view(outer, classes, inner, True)
    cdef nmx_xent_args a
    cdef double wsum
    a.outer, a.classes, a.inner = outer, classes, inner
    a.labels = a.probs = a.loss = NULL
    a.label_bytes = 0
    checked_array(z, "z", t, n, False)
    checked_array(dz, "dz", t, n, True)
    a.weight = <const double *>optional_data(weight, "weight", cnp.NPY_FLOAT64, a.classes,
                                             False)
    a.loss = optional_data(loss, "loss", t, a.outer * a.inner, True)
    a.has_ignore = ignore is not None
    a.ignore = ignore if a.has_ignore else 0
    a.eps, a.scale = eps, scale
    if isinstance(target, cnp.ndarray) and _label_bytes(target):
        a.label_bytes = _label_bytes(target)
        a.labels = cnp.PyArray_DATA(checked_array(target, "target", cnp.PyArray_TYPE(target),
                                                  a.outer * a.inner, False))
        # The kernel indexes by label: an unchecked one would read outside z.
        if nmx_xent_check_labels(a.labels, a.label_bytes, a.outer * a.inner, a.classes,
                                 a.has_ignore, a.ignore, NULL, &wsum) >= 0:
            raise ValueError("target holds a label outside [0, classes) that is not ignored")
    else:
        a.probs = cnp.PyArray_DATA(checked_array(target, "target", t, n, False))
    if kind:
        return _xent_h(kind, z, dz, &a)
    return _xent(t, z, dz, &a)


# ---- the front doors ---------------------------------------------------------------------------

cdef object _softmax_door(object z, object axis, object out, bint log):
    cdef int t = float_typenum(z)
    cdef Py_ssize_t v[4]
    v[0] = v[1] = v[2] = v[3] = 0  # set by view3; zeroed so no path reads garbage
    if (t < 0 or not view3(<cnp.ndarray>z, axis, 1, v)
            or (out is not None and (not is_out(out, <cnp.ndarray>z) or overlaps(out, z)))):
        return _check.forward(z, axis, out, log)
    if out is None:
        out = empty_like(<cnp.ndarray>z)
    if c_active(_BACKEND):
        _forward(t, z, out, v[0], v[1], v[2], log)
    else:
        _KERNELS.active().forward(z, out, v[0], v[1], v[2], log)
    return out


cdef object _backward_door(object g, object y, object axis, object out, bint log, tuple names):
    cdef int t = float_typenum(y)
    cdef Py_ssize_t v[4]
    v[0] = v[1] = v[2] = v[3] = 0  # set by view3; zeroed so no path reads garbage
    if (t < 0 or float_typenum(g) != t or not same_shape(<cnp.ndarray>g, <cnp.ndarray>y)
            or not view3(<cnp.ndarray>y, axis, 1, v)
            or (out is not None and (not is_out(out, <cnp.ndarray>y) or overlaps(out, g)
                                     or overlaps(out, y)))):
        return _check.backward(g, y, axis, out, log, names)
    if out is None:
        out = empty_like(<cnp.ndarray>y)
    if c_active(_BACKEND):
        _backward(t, g, y, out, v[0], v[1], v[2], log)
    else:
        _KERNELS.active().backward(g, y, out, v[0], v[1], v[2], log)
    return out


def softmax(z, axis=-1, *, out=None):
    """Softmax of ``z`` along ``axis``: ``exp(z - max) / sum(exp(z - max))``.

    An empty ``z`` gives an empty result; a 0-d ``z`` (one class) gives 1.0, as in PyTorch.

    Parameters
    ----------
    z : ndarray of float16, bfloat16, float32 or float64
        Logits; ``axis`` is the class axis. float16 and bfloat16 (``ml_dtypes``) are storage
        types: the arithmetic runs in float32 (sums in float64) and the result is rounded once
        to z's dtype, as PyTorch's CPU kernels do.
    axis : int, default -1
        Class axis: -1 for (N, C), 1 for (N, C, H, W), 0 for the (C, m) column layout.
    out : ndarray, optional
        C-contiguous array of z's shape and dtype that receives the result; it must not overlap z.

    Returns
    -------
    ndarray
        Probabilities of z's dtype and shape, summing to 1 along ``axis``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> normax.softmax(np.array([[0.0, np.log(3.0)]])).round(3)
    array([[0.25, 0.75]])
    """
    return _softmax_door(z, axis, out, False)


def log_softmax(z, axis=-1, *, out=None):
    """Log-softmax of ``z`` along ``axis``, computed as ``(z - max) - log1p(s)``.

    Same parameters as :func:`softmax`. Exact for ties of huge logits (``[3e29, 3e29]`` in float32
    gives ``-log 2`` twice) and for a dominating class (its value is ``-s``, not 0).

    Examples
    --------
    >>> import numpy as np, normax
    >>> normax.log_softmax(np.array([1e30, 1e30], dtype=np.float32)).round(4)
    array([-0.6931, -0.6931], dtype=float32)
    """
    return _softmax_door(z, axis, out, True)


def softmax_backward(dp, p, axis=-1, *, out=None):
    """Gradient with respect to the logits given ``dp = dL/dp`` and ``p = softmax(z)``.

    Returns ``p * (dp - sum(dp * p, axis))`` (float64 sums; float32 arithmetic for float16 and
    bfloat16), of p's dtype and shape.

    Examples
    --------
    >>> import numpy as np, normax
    >>> p = normax.softmax(np.array([[1.0, 2.0, 3.0]]))
    >>> bool(abs(normax.softmax_backward(np.ones_like(p), p)).max() < 1e-15)  # sum(p) = 1
    True
    """
    return _backward_door(dp, p, axis, out, False, ("dp", "p"))


def log_softmax_backward(dlp, lp, axis=-1, *, out=None):
    """Gradient with respect to the logits given ``dlp = dL/dlp`` and ``lp = log_softmax(z)``.

    Returns ``dlp - exp(lp) * sum(dlp, axis)`` (float64 sums; float32 arithmetic for float16 and
    bfloat16), of lp's dtype and shape.

    Examples
    --------
    >>> import numpy as np, normax
    >>> lp = normax.log_softmax(np.array([[0.0, 0.0]]))
    >>> normax.log_softmax_backward(np.array([[1.0, 0.0]]), lp)
    array([[ 0.5, -0.5]])
    """
    return _backward_door(dlp, lp, axis, out, True, ("dlp", "lp"))


cdef inline bint _labels_for(cnp.ndarray z, object target, Py_ssize_t *v) noexcept:
    """``target`` is an exact C-contiguous int32/int64 ndarray of z's shape without the axis."""
    if not cnp.PyArray_CheckExact(target):
        return False
    cdef cnp.ndarray y = <cnp.ndarray>target
    cdef int nd = cnp.PyArray_NDIM(z), k
    if (_label_bytes(y) == 0 or not cnp.PyArray_ISCARRAY_RO(y)
            or cnp.PyArray_NDIM(y) != nd - 1):
        return False
    for k in range(nd):
        if k != v[3] and cnp.PyArray_DIMS(y)[k if k < v[3] else k - 1] != cnp.PyArray_DIMS(z)[k]:
            return False
    return True


def softmax_cross_entropy(z, target, *, axis=-1, reduction="mean", weight=None,
                          ignore_index=None, label_smoothing=0.0, out=None):
    """Softmax cross-entropy and its gradient with respect to the logits, in one pass.

    Semantics equal ``torch.nn.functional.cross_entropy`` with the same arguments, except that
    when every target is ignored (or the batch is empty), ``"mean"`` gives 0.0 and a zero
    gradient instead of NaN.

    Parameters
    ----------
    z : ndarray of float16, bfloat16, float32 or float64
        Logits; ``axis`` is the class axis (C classes). Half precision (float16, bfloat16) is
        stored in half and computed in float32 with float64 sums; every result is rounded once
        to z's dtype.
    target : ndarray
        Either integer class indices (any integer dtype) of z's shape without ``axis``, or float
        probabilities of z's shape (soft labels, e.g. a one-hot matrix), converted to z's dtype.
    axis : int, default -1
        Class axis: -1 for (N, C), 1 for (N, C, H, W), 0 for the (C, m) column layout.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides the summed loss by the summed weight of the non-ignored integer targets
        (by the number of examples for probability targets).
    weight : array_like of C non-negative finite numbers, optional
        Per-class weights.
    ignore_index : int, optional
        Integer targets equal to it contribute no loss and no gradient.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution: ``(1 - eps) * target + eps / C``.
    out : ndarray, optional
        C-contiguous array of z's shape and dtype that receives the gradient.

    Returns
    -------
    loss : float or ndarray
        A Python float for "mean" and "sum", whatever z's dtype (accumulated in float64; a
        half-precision z does not round it); for "none" the per-example losses, an array of z's
        dtype and shape without ``axis``.
    dz : ndarray
        Gradient of the returned loss (of the sum of the losses for "none"), z's dtype and shape.

    Examples
    --------
    The course-notes layout: classes are rows, the m examples are columns, Y is one-hot.

    >>> import numpy as np, normax
    >>> Z = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])      # (C, m) = (3, 2)
    >>> Y = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> loss, dZ = normax.softmax_cross_entropy(Z, Y, axis=0)
    >>> round(loss, 6), dZ.shape
    (0.239545, (3, 2))
    >>> loss2, _ = normax.softmax_cross_entropy(Z, np.array([0, 1]), axis=0)
    >>> bool(np.isclose(loss, loss2))
    True
    """
    cdef int t = float_typenum(z)
    cdef Py_ssize_t v[4]
    v[0] = v[1] = v[2] = v[3] = 0  # set by view3; zeroed so no path reads garbage
    cdef nmx_xent_args a
    cdef double total
    cdef nmx_index bad = -1
    cdef long ign = 0
    cdef int red = 0 if reduction is _MEAN else _reduction(reduction)
    cdef bint run_c
    cdef void *pz
    cdef void *pdz
    if (t < 0 or red < 0 or weight is not None or not view3(<cnp.ndarray>z, axis, 1, v)
            or not _labels_for(<cnp.ndarray>z, target, v)
            or not exact_float(label_smoothing, &a.eps) or not (0.0 <= a.eps <= 1.0)
            or (ignore_index is not None and not exact_int(ignore_index, &ign))
            or (out is not None and (not is_out(out, <cnp.ndarray>z) or overlaps(out, z)
                                     or overlaps(out, target)))):
        return _check.softmax_cross_entropy(
            z, target, axis=axis, reduction=reduction, weight=weight, ignore_index=ignore_index,
            label_smoothing=label_smoothing, out=out)
    a.outer, a.classes, a.inner = v[0], v[1], v[2]
    a.labels, a.label_bytes = data_or_null(target), _label_bytes(target)
    a.probs, a.weight = NULL, NULL
    a.has_ignore, a.ignore, a.loss = ignore_index is not None, ign, NULL
    loss = None
    if red == 2:
        loss = new_output(cnp.PyArray_NDIM(<cnp.ndarray>target),
                          cnp.PyArray_DIMS(<cnp.ndarray>target), t)
        a.loss = data_or_null(loss)
    dz = empty_like(<cnp.ndarray>z) if out is None else out
    # One pass over the labels, then the kernel; a label out of range stops before the kernel.
    run_c = c_active(_BACKEND)
    pz, pdz = data_or_null(z), data_or_null(dz)
    if a.outer * a.classes * a.inner < NOGIL_MIN_ELEMENTS:
        total = _labels_then_xent(t, pz, pdz, &a, red, run_c, &bad)
    else:
        with nogil:
            total = _labels_then_xent(t, pz, pdz, &a, red, run_c, &bad)
    if bad >= 0:  # the checker finds it again and says where
        return _check.softmax_cross_entropy(
            z, target, axis=axis, reduction=reduction, ignore_index=ignore_index,
            label_smoothing=label_smoothing, out=out)
    if not run_c:
        total = _KERNELS.active().xent(z, a.outer, a.classes, a.inner, target, None,
                                       ignore_index, a.eps, a.scale, dz, loss)
    # As _softmax_check.reduce, without a Python call.
    if red == 2:
        return loss, dz
    return (total if red == 1 else (total * a.scale if a.scale != 0.0 else 0.0)), dz
