# cython: language_level=3, boundscheck=False, wraparound=False, binding=False
# cython: embedsignature=True, embedsignature.format=clinic
"""Batch normalization: the compiled front door and the C kernels' entry in the backend table.

``batch_norm_train``, ``batch_norm_infer`` and ``batch_norm_backward`` are normax's public
functions. Each accepts, in compiled code, exactly the calls the checks of
``normax._batchnorm_check`` would pass unchanged (exact C-contiguous aligned native float
ndarrays of the right shapes, Python floats in range, no overlap of a written buffer with
anything) and hands every other call to that checker, so every error is written once. An
accepted call runs the C kernel directly when the C backend is active, else the active
backend's kernel through the one table, with the same record.

``train``, ``infer`` and ``backward`` are the "c" column of that table: they take the canonical
record and check it again in C, so that no direct call can make a kernel step outside its arrays.

Half precision (float16, and ``ml_dtypes``' bfloat16) takes the same fast path: x, y, dy and dx
in the half type, every per-channel array float32 (see ``normax._batchnorm_check``); the "c"
column runs such a record on the half kernels, ``kind`` taken from the dtype of x.
"""

cimport numpy as cnp
from libc.math cimport isfinite
from libc.stdint cimport uint16_t

from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM

from normax._ext_common cimport (
    NOGIL_MIN_ELEMENTS,
    c_active,
    checked_array,
    checked_record_typenum,
    checked_view,
    data_or_null,
    empty_like,
    empty_vector,
    exact_float,
    exact_int,
    float_typenum,
    half_kind,
    is_out,
    is_vector,
    nmx_index,
    nmx_set_num_threads,
    optional_data,
    overlaps,
    register_threads,
    same_shape,
    view3,
)

from normax import _backend
from normax import _batchnorm_check as _check

cnp.import_array()
register_threads(nmx_set_num_threads)

cdef extern from "batchnorm.h":
    int nmx_bn_train_f32(const float *x, nmx_index outer, nmx_index C, nmx_index inner,
                         const float *gamma, const float *beta, float *y, double *mean,
                         double *invstd, float *running_mean, float *running_var,
                         double momentum, double eps) nogil
    int nmx_bn_train_f64(const double *x, nmx_index outer, nmx_index C, nmx_index inner,
                         const double *gamma, const double *beta, double *y, double *mean,
                         double *invstd, double *running_mean, double *running_var,
                         double momentum, double eps) nogil
    int nmx_bn_infer_f32(const float *x, nmx_index outer, nmx_index C, nmx_index inner,
                         const float *gamma, const float *beta, const float *running_mean,
                         const float *running_var, double eps, float *y) nogil
    int nmx_bn_infer_f64(const double *x, nmx_index outer, nmx_index C, nmx_index inner,
                         const double *gamma, const double *beta, const double *running_mean,
                         const double *running_var, double eps, double *y) nogil
    int nmx_bn_backward_f32(const float *dy, const float *x, nmx_index outer, nmx_index C,
                            nmx_index inner, const double *mean, const double *invstd,
                            const float *gamma, float *dx, float *dgamma, float *dbeta) nogil
    int nmx_bn_backward_f64(const double *dy, const double *x, nmx_index outer, nmx_index C,
                            nmx_index inner, const double *mean, const double *invstd,
                            const double *gamma, double *dx, double *dgamma,
                            double *dbeta) nogil
    int nmx_bn_train_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C,
                       nmx_index inner, const float *gamma, const float *beta, uint16_t *y,
                       double *mean, double *invstd, float *running_mean, float *running_var,
                       double momentum, double eps) nogil
    int nmx_bn_infer_h(int kind, const uint16_t *x, nmx_index outer, nmx_index C,
                       nmx_index inner, const float *gamma, const float *beta,
                       const float *running_mean, const float *running_var, double eps,
                       uint16_t *y) nogil
    int nmx_bn_backward_h(int kind, const uint16_t *dy, const uint16_t *x, nmx_index outer,
                          nmx_index C, nmx_index inner, const double *mean,
                          const double *invstd, const float *gamma, uint16_t *dx,
                          float *dgamma, float *dbeta) nogil

cdef extern from *:
    """
    static PyObject *nmx_alloc_tuple(PyObject *type, Py_ssize_t n) {
        PyObject *t = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, n);
    #if PY_VERSION_HEX >= 0x030E0000
        /* 3.14 caches a tuple's hash, with -1 for "not computed"; tp_alloc zeroes it, which
           would read as a cached hash of 0 (and hash() of a cache holding arrays must raise). */
        if (t) ((PyTupleObject *)t)->ob_hash = -1;
    #endif
        return t;
    }
    """
    object _alloc_tuple "nmx_alloc_tuple"(object type, Py_ssize_t n)

cdef object _Cache = _check.BatchNormCache
cdef object _KERNELS = _check.KERNELS
cdef dict _BACKEND = _backend.__dict__


cdef inline void _put(object tup, Py_ssize_t k, object item) noexcept:
    Py_INCREF(item)  # PyTuple_SET_ITEM steals a reference
    PyTuple_SET_ITEM(tup, k, item)


cdef object _new_cache(object x, object mean, object invstd, object gamma, Py_ssize_t axis):
    """``BatchNormCache(x, mean, invstd, gamma, axis)``, filled in place as the tuple it is:
    the named tuple's ``__new__`` (or ``tuple.__new__`` called from here) builds and copies an
    argument tuple first, which costs about as much as allocating one more output array."""
    cdef object cache = _alloc_tuple(_Cache, 5)
    _put(cache, 0, x)
    _put(cache, 1, mean)
    _put(cache, 2, invstd)
    _put(cache, 3, gamma)
    _put(cache, 4, axis)
    return cache


# ---- half precision: which arrays the fast path takes ------------------------------------------

cdef inline int _typenum(object a, int *kind) except -2:
    """The type number of an array the fast path takes as x or dy (float32 or float64, or half
    precision with its kind in ``kind``; as float_typenum), else -1."""
    cdef int t = float_typenum(a)
    kind[0] = 0
    if t < 0 and cnp.PyArray_CheckExact(a) and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>a):
        kind[0] = half_kind(cnp.PyArray_TYPE(<cnp.ndarray>a))
        if kind[0]:
            t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return t


cdef inline bint _is_out(object out, cnp.ndarray like, int kind) noexcept:
    """is_out for every dtype of x: a writeable exact ndarray of ``like``'s dtype and shape that
    a kernel may write as a plain C array."""
    if not kind:
        return is_out(out, like)
    return (cnp.PyArray_CheckExact(out)
            and cnp.PyArray_TYPE(<cnp.ndarray>out) == cnp.PyArray_TYPE(like)
            and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>out) and same_shape(<cnp.ndarray>out, like)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out))


# ---- the canonical record -> C kernels ---------------------------------------------------------
# Each kernel runs through a nogil dispatcher, with the GIL released only for views of
# NOGIL_MIN_ELEMENTS or more (see _ext_common.pxd).

cdef inline int _train_run(int t, int kind, void *x, nmx_index outer, nmx_index c,
                           nmx_index inner, void *gamma, void *beta, void *rm, void *rv,
                           double momentum, double eps, void *y, double *mean,
                           double *invstd) noexcept nogil:
    if kind:
        return nmx_bn_train_h(kind, <uint16_t *>x, outer, c, inner, <float *>gamma,
                              <float *>beta, <uint16_t *>y, mean, invstd, <float *>rm,
                              <float *>rv, momentum, eps)
    if t == cnp.NPY_FLOAT32:
        return nmx_bn_train_f32(<float *>x, outer, c, inner, <float *>gamma, <float *>beta,
                                <float *>y, mean, invstd, <float *>rm, <float *>rv, momentum,
                                eps)
    return nmx_bn_train_f64(<double *>x, outer, c, inner, <double *>gamma, <double *>beta,
                            <double *>y, mean, invstd, <double *>rm, <double *>rv, momentum, eps)


cdef int _train(int t, int kind, object x, nmx_index outer, nmx_index c, nmx_index inner,
                object gamma, object beta, object rm, object rv, double momentum, double eps,
                object y, object mean, object invstd) except -1:
    cdef void *px = data_or_null(x)
    cdef void *pg = data_or_null(gamma)
    cdef void *pb = data_or_null(beta)
    cdef void *prm = data_or_null(rm)
    cdef void *prv = data_or_null(rv)
    cdef void *py = data_or_null(y)
    cdef double *pm = <double *>data_or_null(mean)
    cdef double *pi = <double *>data_or_null(invstd)
    cdef int rc
    if outer * c * inner < NOGIL_MIN_ELEMENTS:
        rc = _train_run(t, kind, px, outer, c, inner, pg, pb, prm, prv, momentum, eps, py, pm,
                        pi)
    else:
        with nogil:
            rc = _train_run(t, kind, px, outer, c, inner, pg, pb, prm, prv, momentum, eps, py,
                            pm, pi)
    if rc < 0:
        raise MemoryError()
    return 0


cdef inline int _infer_run(int t, int kind, void *x, nmx_index outer, nmx_index c,
                           nmx_index inner, void *gamma, void *beta, void *rm, void *rv,
                           double eps, void *y) noexcept nogil:
    if kind:
        return nmx_bn_infer_h(kind, <uint16_t *>x, outer, c, inner, <float *>gamma,
                              <float *>beta, <float *>rm, <float *>rv, eps, <uint16_t *>y)
    if t == cnp.NPY_FLOAT32:
        return nmx_bn_infer_f32(<float *>x, outer, c, inner, <float *>gamma, <float *>beta,
                                <float *>rm, <float *>rv, eps, <float *>y)
    return nmx_bn_infer_f64(<double *>x, outer, c, inner, <double *>gamma, <double *>beta,
                            <double *>rm, <double *>rv, eps, <double *>y)


cdef int _infer(int t, int kind, object x, nmx_index outer, nmx_index c, nmx_index inner,
                object gamma, object beta, object rm, object rv, double eps, object y) except -1:
    cdef void *px = data_or_null(x)
    cdef void *pg = data_or_null(gamma)
    cdef void *pb = data_or_null(beta)
    cdef void *prm = data_or_null(rm)
    cdef void *prv = data_or_null(rv)
    cdef void *py = data_or_null(y)
    cdef int rc
    if outer * c * inner < NOGIL_MIN_ELEMENTS:
        rc = _infer_run(t, kind, px, outer, c, inner, pg, pb, prm, prv, eps, py)
    else:
        with nogil:
            rc = _infer_run(t, kind, px, outer, c, inner, pg, pb, prm, prv, eps, py)
    if rc < 0:
        raise MemoryError()
    return 0


cdef inline int _backward_run(int t, int kind, void *dy, void *x, nmx_index outer, nmx_index c,
                              nmx_index inner, double *mean, double *invstd, void *gamma,
                              void *dx, void *dgamma, void *dbeta) noexcept nogil:
    if kind:
        return nmx_bn_backward_h(kind, <uint16_t *>dy, <uint16_t *>x, outer, c, inner, mean,
                                 invstd, <float *>gamma, <uint16_t *>dx, <float *>dgamma,
                                 <float *>dbeta)
    if t == cnp.NPY_FLOAT32:
        return nmx_bn_backward_f32(<float *>dy, <float *>x, outer, c, inner, mean, invstd,
                                   <float *>gamma, <float *>dx, <float *>dgamma,
                                   <float *>dbeta)
    return nmx_bn_backward_f64(<double *>dy, <double *>x, outer, c, inner, mean, invstd,
                               <double *>gamma, <double *>dx, <double *>dgamma,
                               <double *>dbeta)


cdef int _backward(int t, int kind, object dy, object x, nmx_index outer, nmx_index c,
                   nmx_index inner, object mean, object invstd, object gamma, object dx,
                   object dgamma, object dbeta) except -1:
    cdef void *pdy = data_or_null(dy)
    cdef void *px = data_or_null(x)
    cdef double *pm = <double *>data_or_null(mean)
    cdef double *pi = <double *>data_or_null(invstd)
    cdef void *pg = data_or_null(gamma)
    cdef void *pdx = data_or_null(dx)
    cdef void *pdg = data_or_null(dgamma)
    cdef void *pdb = data_or_null(dbeta)
    cdef int rc
    if outer * c * inner < NOGIL_MIN_ELEMENTS:
        rc = _backward_run(t, kind, pdy, px, outer, c, inner, pm, pi, pg, pdx, pdg, pdb)
    else:
        with nogil:
            rc = _backward_run(t, kind, pdy, px, outer, c, inner, pm, pi, pg, pdx, pdg, pdb)
    if rc < 0:
        raise MemoryError()
    return 0


# ---- the "c" column of the backend table: the record, checked against any direct call ---------

def train(x, outer, channels, inner, gamma, beta, running_mean, running_var, double momentum,
          double eps, y, mean, invstd):
    """C kernel of the training forward on the canonical record (see _batchnorm_check)."""
    cdef int kind
    cdef int t = checked_record_typenum(x, "x", &kind)
    cdef int p = cnp.NPY_FLOAT32 if kind else t  # the per-channel arrays
    cdef nmx_index n = checked_view(outer, channels, inner, True)
    cdef nmx_index c = channels
    checked_array(x, "x", t, n, False)
    checked_array(y, "y", t, n, True)
    checked_array(mean, "mean", cnp.NPY_FLOAT64, c, True)
    checked_array(invstd, "invstd", cnp.NPY_FLOAT64, c, True)
    optional_data(gamma, "gamma", p, c, False)
    optional_data(beta, "beta", p, c, False)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    optional_data(running_mean, "running_mean", p, c, True)
    optional_data(running_var, "running_var", p, c, True)
    _train(t, kind, x, outer, c, inner, gamma, beta, running_mean, running_var, momentum, eps, y,
           mean, invstd)


def infer(x, outer, channels, inner, gamma, beta, running_mean, running_var, double eps, y):
    """C kernel of inference on the canonical record (see _batchnorm_check)."""
    cdef int kind
    cdef int t = checked_record_typenum(x, "x", &kind)
    cdef int p = cnp.NPY_FLOAT32 if kind else t
    cdef nmx_index n = checked_view(outer, channels, inner, True)
    cdef nmx_index c = channels
    checked_array(x, "x", t, n, False)
    checked_array(y, "y", t, n, True)
    optional_data(gamma, "gamma", p, c, False)
    optional_data(beta, "beta", p, c, False)
    checked_array(running_mean, "running_mean", p, c, False)
    checked_array(running_var, "running_var", p, c, False)
    _infer(t, kind, x, outer, c, inner, gamma, beta, running_mean, running_var, eps, y)


def backward(dy, x, outer, channels, inner, mean, invstd, gamma, dx, dgamma, dbeta):
    """C kernel of the backward pass on the canonical record (see _batchnorm_check)."""
    cdef int kind
    cdef int t = checked_record_typenum(x, "x", &kind)
    cdef int p = cnp.NPY_FLOAT32 if kind else t
    cdef nmx_index n = checked_view(outer, channels, inner, True)
    cdef nmx_index c = channels
    checked_array(x, "x", t, n, False)
    checked_array(dy, "dy", t, n, False)
    checked_array(dx, "dx", t, n, True)
    checked_array(mean, "mean", cnp.NPY_FLOAT64, c, False)
    checked_array(invstd, "invstd", cnp.NPY_FLOAT64, c, False)
    optional_data(gamma, "gamma", p, c, False)
    if (gamma is None) != (dgamma is None) or (dgamma is None) != (dbeta is None):
        raise ValueError("dgamma and dbeta are given exactly when gamma is")
    optional_data(dgamma, "dgamma", p, c, True)
    optional_data(dbeta, "dbeta", p, c, True)
    _backward(t, kind, dy, x, outer, c, inner, mean, invstd, gamma, dx, dgamma, dbeta)


# ---- the front doors ---------------------------------------------------------------------------

def batch_norm_train(x, gamma, beta, running_mean=None, running_var=None, *, axis=1,
                     momentum=0.1, eps=1e-5, out=None):
    """Batch-normalize ``x`` with its own batch statistics (training mode).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased batch variance over all
    axes but ``axis``. Running statistics, when given, are updated in place with the unbiased
    variance: ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention;
    Keras' ``momentum=0.99`` is ``momentum=0.01`` here). An empty batch gives an empty ``y`` and
    leaves the running statistics untouched.

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        Input; ``axis`` is its channel (feature) axis. Half precision (float16, or bfloat16
        from ``ml_dtypes``) is storage only: the arithmetic runs in float32 (sums in float64)
        and ``y`` is rounded once to the dtype of ``x``, as PyTorch does on the CPU.
    gamma, beta : ndarray of shape (C,) or None
        Scale and shift; None means no affine transform. Cast to the dtype of ``x``, or to
        float32 when ``x`` is half precision.
    running_mean, running_var : ndarray of shape (C,), optional
        Writeable buffers updated in place, of the dtype of ``x`` (float32 when ``x`` is half
        precision); give both or neither. They must not overlap each other or any other
        argument.
    axis : int
        Channel axis: 1 for (N, C) and (N, C, H, W), -1 for (N, H, W, C), 0 for (C, m).
    momentum : float in [0, 1]
        Weight of the new batch statistic in the running average.
    eps : float > 0
        Added to the variance before the square root (0 is refused in training, as in PyTorch).
    out : ndarray, optional
        Receives ``y``: C-contiguous, shape and dtype of ``x``, not overlapping any input.

    Returns
    -------
    y : ndarray
        Normalized output, shape and dtype of ``x``.
    cache : BatchNormCache
        What :func:`batch_norm_backward` needs.

    Examples
    --------
    >>> import numpy as np, normax
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 8)).astype(np.float32)
    >>> rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    >>> y, cache = normax.batch_norm_train(x, None, None, rm, rv, momentum=0.1)
    >>> bool(abs(y.mean(axis=0)).max() < 1e-5), bool(abs(y.std(axis=0) - 1).max() < 1e-3)
    (True, True)
    """
    cdef int kind
    cdef int t = _typenum(x, &kind)
    cdef int p = cnp.NPY_FLOAT32 if kind else t  # the dtype of the per-channel arrays
    cdef Py_ssize_t v[4]
    v[0] = v[1] = v[2] = v[3] = 0  # set by view3; zeroed so no path reads garbage
    cdef double m, e
    if (t < 0 or not view3(<cnp.ndarray>x, axis, 2, v) or v[0] * v[2] < 2
            or not exact_float(momentum, &m) or not exact_float(eps, &e)
            or not (0.0 <= m <= 1.0) or not (e > 0.0 and isfinite(e))
            or (gamma is not None and not is_vector(gamma, p, v[1], False))
            or (beta is not None and not is_vector(beta, p, v[1], False))
            or (out is not None and not _is_out(out, <cnp.ndarray>x, kind))):
        return _check.batch_norm_train(x, gamma, beta, running_mean, running_var, axis=axis,
                                       momentum=momentum, eps=eps, out=out)
    if running_mean is not None or running_var is not None:
        if (not is_vector(running_mean, p, v[1], True)
                or not is_vector(running_var, p, v[1], True)
                or overlaps(running_mean, x) or overlaps(running_var, x)
                or overlaps(running_mean, running_var)
                or overlaps(running_mean, gamma) or overlaps(running_mean, beta)
                or overlaps(running_var, gamma) or overlaps(running_var, beta)
                or overlaps(out, running_mean) or overlaps(out, running_var)):
            return _check.batch_norm_train(x, gamma, beta, running_mean, running_var,
                                           axis=axis, momentum=momentum, eps=eps, out=out)
    if out is not None and (overlaps(out, x) or overlaps(out, gamma) or overlaps(out, beta)):
        return _check.batch_norm_train(x, gamma, beta, running_mean, running_var, axis=axis,
                                       momentum=momentum, eps=eps, out=out)
    y = empty_like(<cnp.ndarray>x) if out is None else out
    mean = empty_vector(v[1], cnp.NPY_FLOAT64)
    invstd = empty_vector(v[1], cnp.NPY_FLOAT64)
    if c_active(_BACKEND):
        _train(t, kind, x, v[0], v[1], v[2], gamma, beta, running_mean, running_var, m, e, y, mean,
               invstd)
    else:
        _KERNELS.active().train(x, v[0], v[1], v[2], gamma, beta, running_mean, running_var,
                                m, e, y, mean, invstd)
    return y, _new_cache(x, mean, invstd, gamma, v[3])


def batch_norm_infer(x, gamma, beta, running_mean, running_var, *, axis=1, eps=1e-5, out=None):
    """Batch-normalize ``x`` with running statistics (inference mode).

    ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``, per channel.

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        Input; ``axis`` is its channel axis. Half precision computes in float32 (see
        :func:`batch_norm_train`).
    gamma, beta : ndarray of shape (C,) or None
        Scale and shift; None means no affine transform.
    running_mean, running_var : ndarray of shape (C,)
        Statistics to normalize with (read only; gamma, beta and these are cast to the dtype of
        ``x``, or to float32 when ``x`` is half precision).
    axis : int
        Channel axis (see :func:`batch_norm_train`).
    eps : float >= 0
        Added to the variance before the square root.
    out : ndarray, optional
        Receives ``y``: C-contiguous, shape and dtype of ``x``, not overlapping any input.

    Returns
    -------
    ndarray
        Shape and dtype of ``x``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> normax.batch_norm_infer(x, None, None, np.array([1.0, 2.0]), np.array([4.0, 16.0]),
    ...                         eps=0.0)
    array([[0., 0.],
           [1., 1.]])
    """
    cdef int kind
    cdef int t = _typenum(x, &kind)
    cdef int p = cnp.NPY_FLOAT32 if kind else t
    cdef Py_ssize_t v[4]
    v[0] = v[1] = v[2] = v[3] = 0  # set by view3; zeroed so no path reads garbage
    cdef double e
    if (t < 0 or not view3(<cnp.ndarray>x, axis, 2, v)
            or not exact_float(eps, &e) or not (e >= 0.0 and isfinite(e))
            or (gamma is not None and not is_vector(gamma, p, v[1], False))
            or (beta is not None and not is_vector(beta, p, v[1], False))
            or not is_vector(running_mean, p, v[1], False)
            or not is_vector(running_var, p, v[1], False)
            or (out is not None and not _is_out(out, <cnp.ndarray>x, kind))
            or (out is not None and (overlaps(out, x) or overlaps(out, gamma)
                                     or overlaps(out, beta) or overlaps(out, running_mean)
                                     or overlaps(out, running_var)))):
        return _check.batch_norm_infer(x, gamma, beta, running_mean, running_var, axis=axis,
                                       eps=eps, out=out)
    y = empty_like(<cnp.ndarray>x) if out is None else out
    if c_active(_BACKEND):
        _infer(t, kind, x, v[0], v[1], v[2], gamma, beta, running_mean, running_var, e, y)
    else:
        _KERNELS.active().infer(x, v[0], v[1], v[2], gamma, beta, running_mean, running_var, e,
                                y)
    return y


def batch_norm_backward(dy, cache, *, out=None):
    """Gradients of :func:`batch_norm_train` with respect to ``x``, ``gamma`` and ``beta``.

    Exact through the batch statistics:
    ``dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``,
    ``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)`` over all axes but the channel axis.

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to ``y``; shape and dtype of the forward input.
        For a half-precision input, ``dx`` is half precision too (computed in float32, rounded
        once) and ``dgamma``, ``dbeta`` are float32.
    cache : BatchNormCache
        Returned by :func:`batch_norm_train`.
    out : ndarray, optional
        Receives ``dx``: C-contiguous, shape and dtype of ``x``, not overlapping ``dy``, ``x``
        or the cache.

    Returns
    -------
    dx : ndarray
        Shape and dtype of ``x``.
    dgamma, dbeta : ndarray of shape (C,) or None
        None when the forward pass ran without ``gamma``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> x = np.random.default_rng(0).normal(size=(16, 3))
    >>> y, cache = normax.batch_norm_train(x, np.ones(3), np.zeros(3))
    >>> dx, dgamma, dbeta = normax.batch_norm_backward(np.ones_like(y), cache)
    >>> bool(np.allclose(dx, 0.0)), dbeta.tolist()
    (True, [16.0, 16.0, 16.0])
    """
    cdef int t = -1, p, kind = 0, dy_kind
    cdef Py_ssize_t v[4]
    v[0] = v[1] = v[2] = v[3] = 0  # set by view3; zeroed so no path reads garbage
    if type(cache) is _Cache:
        x, mean, invstd, gamma, axis = <tuple>cache
        t = _typenum(x, &kind)
    p = cnp.NPY_FLOAT32 if kind else t
    if (t < 0 or _typenum(dy, &dy_kind) != t
            or not same_shape(<cnp.ndarray>dy, <cnp.ndarray>x)
            or not view3(<cnp.ndarray>x, axis, 2, v) or v[3] != <Py_ssize_t>axis
            or not is_vector(mean, cnp.NPY_FLOAT64, v[1], False)
            or not is_vector(invstd, cnp.NPY_FLOAT64, v[1], False)
            or (gamma is not None and not is_vector(gamma, p, v[1], False))
            or (out is not None and not _is_out(out, <cnp.ndarray>x, kind))
            or (out is not None and (overlaps(out, x) or overlaps(out, dy)
                                     or overlaps(out, gamma) or overlaps(out, mean)
                                     or overlaps(out, invstd)))):
        return _check.batch_norm_backward(dy, cache, out=out)
    dx = empty_like(<cnp.ndarray>x) if out is None else out
    dgamma = dbeta = None
    if gamma is not None:
        dgamma = empty_vector(v[1], p)
        dbeta = empty_vector(v[1], p)
    if c_active(_BACKEND):
        _backward(t, kind, dy, x, v[0], v[1], v[2], mean, invstd, gamma, dx, dgamma, dbeta)
    else:
        _KERNELS.active().backward(dy, x, v[0], v[1], v[2], mean, invstd, gamma, dx, dgamma,
                                   dbeta)
    return dx, dgamma, dbeta
