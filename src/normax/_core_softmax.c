/* Binding of the softmax kernels (csrc/softmax.c).
 *
 * The Python layer (normax.softmax) has checked every argument and made the arrays
 * C-contiguous; these functions re-verify dtype, size and contiguity so that no call can make a
 * kernel touch memory outside its arrays, then release the GIL around the kernel. METH_FASTCALL
 * keeps a small call (a (32, 10) batch) to a few hundred nanoseconds of overhead.
 */
#include "_core.h"
#include "softmax.h"

static int parse_dims(PyObject *const *args, nmx_index *outer, nmx_index *classes,
                      nmx_index *inner, nmx_index *numel) {
    if (nmx_dim(args[0], "outer", outer) < 0 || nmx_dim(args[1], "classes", classes) < 0 ||
        nmx_dim(args[2], "inner", inner) < 0)
        return -1;
    return nmx_numel3(*outer, *classes, *inner, numel);
}

static int float_type(PyObject *z, const char *name) {
    if (!PyArray_Check(z)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray", name);
        return -1;
    }
    int t = PyArray_TYPE((PyArrayObject *)z);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s must be float32 or float64", name);
        return -1;
    }
    return t;
}

/* softmax(z, out, outer, classes, inner, log) */
static PyObject *softmax(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) return PyErr_Format(PyExc_TypeError, "softmax expects 6 arguments");
    nmx_index outer, classes, inner, numel;
    int t = float_type(args[0], "z");
    if (t < 0 || parse_dims(args + 2, &outer, &classes, &inner, &numel) < 0) return NULL;
    int log_ = PyObject_IsTrue(args[5]);
    void *z = nmx_array_data(args[0], "z", t, numel, 0);
    void *out = z ? nmx_array_data(args[1], "out", t, numel, 1) : NULL;
    if (!out || log_ < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    if (t == NPY_FLOAT32)
        nmx_softmax_f32(z, out, outer, classes, inner, log_);
    else
        nmx_softmax_f64(z, out, outer, classes, inner, log_);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

/* softmax_backward(g, y, out, outer, classes, inner, log) */
static PyObject *softmax_backward(PyObject *Py_UNUSED(self), PyObject *const *args,
                                  Py_ssize_t nargs) {
    if (nargs != 7) return PyErr_Format(PyExc_TypeError, "softmax_backward expects 7 arguments");
    nmx_index outer, classes, inner, numel;
    int t = float_type(args[0], "g");
    if (t < 0 || parse_dims(args + 3, &outer, &classes, &inner, &numel) < 0) return NULL;
    int log_ = PyObject_IsTrue(args[6]);
    void *g = nmx_array_data(args[0], "g", t, numel, 0);
    void *y = g ? nmx_array_data(args[1], "y", t, numel, 0) : NULL;
    void *out = y ? nmx_array_data(args[2], "out", t, numel, 1) : NULL;
    if (!out || log_ < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    if (t == NPY_FLOAT32)
        nmx_softmax_backward_f32(g, y, out, outer, classes, inner, log_);
    else
        nmx_softmax_backward_f64(g, y, out, outer, classes, inner, log_);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

/* Fill the target fields of `a` from an int32 / int64 label array or a probability array. */
static int parse_target(PyObject *target, int t, nmx_index numel, nmx_xent_args *a) {
    if (!PyArray_Check(target)) {
        PyErr_SetString(PyExc_TypeError, "target must be a numpy.ndarray");
        return -1;
    }
    int tt = PyArray_TYPE((PyArrayObject *)target);
    if (tt == NPY_INT64 || tt == NPY_INT32) {
        a->label_bytes = tt == NPY_INT64 ? 8 : 4;
        a->labels = nmx_array_data(target, "target", tt, a->outer * a->inner, 0);
        return a->labels ? 0 : -1;
    }
    a->probs = nmx_array_data(target, "target", t, numel, 0);
    return a->probs ? 0 : -1;
}

static PyObject *xent_result(PyObject *loss_obj, double total, double scale, int reduction,
                             PyObject *out) {
    PyObject *loss = reduction == 2   ? (Py_INCREF(loss_obj), loss_obj)
                     : reduction == 0 ? PyFloat_FromDouble(scale == 0.0 ? 0.0 : total * scale)
                                      : PyFloat_FromDouble(total);
    if (!loss) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *res = PyTuple_Pack(2, loss, out);
    Py_DECREF(loss);
    Py_DECREF(out);
    return res;
}

/* xent(z, target, weight, out, loss, outer, classes, inner, ignore, eps, reduction)
 * reduction: 0 mean, 1 sum, 2 none (loss is then the per-example array to fill).
 * Returns (loss, dz), or the flat index (int) of the first invalid label, having written
 * nothing. */
static PyObject *xent(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) return PyErr_Format(PyExc_TypeError, "xent expects 11 arguments");
    nmx_xent_args a = {0};
    nmx_index numel;
    int t = float_type(args[0], "z");
    if (t < 0 || parse_dims(args + 5, &a.outer, &a.classes, &a.inner, &numel) < 0) return NULL;
    long reduction = PyLong_AsLong(args[10]);
    a.eps = PyFloat_AsDouble(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (reduction < 0 || reduction > 2)
        return PyErr_Format(PyExc_ValueError, "reduction code %ld", reduction);
    a.has_ignore = args[8] != Py_None;
    if (a.has_ignore) {
        a.ignore = PyLong_AsLongLong(args[8]);
        if (a.ignore == -1 && PyErr_Occurred()) return NULL;
    }
    const void *z = nmx_array_data(args[0], "z", t, numel, 0);
    if (!z || parse_target(args[1], t, numel, &a) < 0) return NULL;
    if (nmx_optional_array(args[2], "weight", NPY_FLOAT64, a.classes, 0, (void **)&a.weight) < 0)
        return NULL;
    if (reduction == 2) {
        a.loss = nmx_array_data(args[4], "loss", t, a.outer * a.inner, 1);
        if (!a.loss) return NULL;
    }
    PyObject *out = args[3];
    if (out == Py_None)
        out = nmx_new_output(PyArray_NDIM((PyArrayObject *)args[0]),
                             PyArray_DIMS((PyArrayObject *)args[0]),
                             PyArray_TYPE((PyArrayObject *)args[0]));
    else
        Py_INCREF(out);
    if (!out) return NULL;
    void *dz = nmx_array_data(out, "out", t, numel, 1);
    if (!dz) {
        Py_DECREF(out);
        return NULL;
    }
    nmx_index bad = -1;
    double wsum = (double)(a.outer * a.inner), total = 0.0;
    Py_BEGIN_ALLOW_THREADS;
    if (a.labels)
        bad = nmx_xent_check_labels(a.labels, a.label_bytes, a.outer * a.inner, a.classes,
                                    a.has_ignore, a.ignore, a.weight, &wsum);
    if (bad < 0) {
        a.scale = reduction != 0 ? 1.0 : wsum > 0.0 ? 1.0 / wsum : 0.0;
        total = t == NPY_FLOAT32 ? nmx_xent_f32(z, dz, &a) : nmx_xent_f64(z, dz, &a);
    }
    Py_END_ALLOW_THREADS;
    if (bad >= 0) {
        Py_DECREF(out);
        return PyLong_FromLongLong(bad);
    }
    return xent_result(args[4], total, a.scale, (int)reduction, out);
}

/* ---------------------------------------------------------------- fast path for common calls
 * xent_fast(z, target, axis, reduction, weight, ignore_index, label_smoothing, out) accepts only
 * calls that the Python checks would accept unchanged: exact ndarrays, float32/64 C-contiguous
 * non-empty logits, int32/int64 C-contiguous labels of the right shape, no weight, a plain
 * str reduction, an int (or None) ignore_index, a float label_smoothing in [0, 1] and either no
 * out or a valid, non-overlapping one. For anything else, and for a bad label, it returns
 * NotImplemented and normax.softmax takes the checked path, which raises the errors. It exists
 * because those checks in Python cost more than a (32, 10) batch. */

static int plain_array(PyObject *obj, int ndim_min) {
    if (!PyArray_CheckExact(obj)) return 0;
    PyArrayObject *a = (PyArrayObject *)obj;
    return PyArray_NDIM(a) >= ndim_min && PyArray_ISNOTSWAPPED(a) &&
           PyArray_CHKFLAGS(a, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

static int fast_reduction(PyObject *r) {
    if (!PyUnicode_CheckExact(r)) return -1;
    if (PyUnicode_CompareWithASCIIString(r, "mean") == 0) return 0;
    if (PyUnicode_CompareWithASCIIString(r, "sum") == 0) return 1;
    if (PyUnicode_CompareWithASCIIString(r, "none") == 0) return 2;
    return -1;
}

/* (outer, classes, inner) of z around axis if target has z's shape without that axis. */
static int fast_shapes(PyArrayObject *z, PyArrayObject *y, PyObject *axis_obj, nmx_xent_args *a) {
    if (!PyLong_CheckExact(axis_obj)) return 0;
    int nd = PyArray_NDIM(z), overflow;
    long axis = PyLong_AsLongAndOverflow(axis_obj, &overflow);
    if (overflow || axis < -nd || axis >= nd || PyArray_NDIM(y) != nd - 1) return 0;
    if (axis < 0) axis += nd;
    npy_intp *zd = PyArray_DIMS(z), *yd = PyArray_DIMS(y);
    a->outer = a->inner = 1;
    for (int k = 0; k < nd; k++) {
        if (k == axis) continue;
        if (yd[k < axis ? k : k - 1] != zd[k]) return 0;
        if (k < axis) a->outer *= zd[k];
        else a->inner *= zd[k];
    }
    a->classes = zd[axis];
    return PyArray_SIZE(z) > 0;
}

static int fast_scalars(PyObject *ignore, PyObject *eps, nmx_xent_args *a) {
    if (ignore != Py_None) {
        if (!PyLong_CheckExact(ignore)) return 0;
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(ignore, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        a->has_ignore = 1;
        a->ignore = v;
    }
    if (!PyFloat_CheckExact(eps)) return 0;
    a->eps = PyFloat_AS_DOUBLE(eps);
    return a->eps >= 0.0 && a->eps <= 1.0;
}

static int disjoint(PyArrayObject *a, PyArrayObject *b) {
    char *pa = PyArray_BYTES(a), *pb = PyArray_BYTES(b);
    return pa + PyArray_NBYTES(a) <= pb || pb + PyArray_NBYTES(b) <= pa;
}

/* out must be a writeable array like z that overlaps neither z nor the labels. */
static int fast_out(PyObject *out, PyArrayObject *z, PyArrayObject *y) {
    if (!plain_array(out, 1)) return 0;
    PyArrayObject *o = (PyArrayObject *)out;
    return PyArray_TYPE(o) == PyArray_TYPE(z) && PyArray_ISWRITEABLE(o) &&
           PyArray_NDIM(o) == PyArray_NDIM(z) &&
           PyArray_CompareLists(PyArray_DIMS(o), PyArray_DIMS(z), PyArray_NDIM(z)) &&
           disjoint(o, z) && disjoint(o, y);
}

static PyObject *xent_fast(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) return PyErr_Format(PyExc_TypeError, "xent_fast expects 8 arguments");
    PyObject *z_obj = args[0], *y_obj = args[1], *out_obj = args[7];
    nmx_xent_args a = {0};
    int reduction = fast_reduction(args[3]);
    if (!plain_array(z_obj, 1) || !plain_array(y_obj, 0) || reduction < 0 || args[4] != Py_None)
        Py_RETURN_NOTIMPLEMENTED;
    PyArrayObject *z = (PyArrayObject *)z_obj, *y = (PyArrayObject *)y_obj;
    int t = PyArray_TYPE(z), yt = PyArray_TYPE(y);
    if ((t != NPY_FLOAT32 && t != NPY_FLOAT64) || (yt != NPY_INT64 && yt != NPY_INT32) ||
        !fast_shapes(z, y, args[2], &a) || !fast_scalars(args[5], args[6], &a) ||
        (out_obj != Py_None && !fast_out(out_obj, z, y)))
        Py_RETURN_NOTIMPLEMENTED;
    a.labels = PyArray_DATA(y);
    a.label_bytes = yt == NPY_INT64 ? 8 : 4;
    nmx_index n = a.outer * a.inner, bad;
    double wsum = 0.0;
    Py_BEGIN_ALLOW_THREADS;
    bad = nmx_xent_check_labels(a.labels, a.label_bytes, n, a.classes, a.has_ignore, a.ignore,
                                NULL, &wsum);
    Py_END_ALLOW_THREADS;
    if (bad >= 0) Py_RETURN_NOTIMPLEMENTED; /* the checked path reports it */
    PyObject *loss = NULL, *out = out_obj;
    if (reduction == 2) {
        loss = PyArray_SimpleNew(PyArray_NDIM(y), PyArray_DIMS(y), t);
        if (!loss) return NULL;
        a.loss = PyArray_DATA((PyArrayObject *)loss);
    }
    if (out == Py_None)
        out = nmx_new_output(PyArray_NDIM(z), PyArray_DIMS(z), PyArray_TYPE(z));
    else
        Py_INCREF(out);
    if (!out) {
        Py_XDECREF(loss);
        return NULL;
    }
    a.scale = reduction != 0 ? 1.0 : wsum > 0.0 ? 1.0 / wsum : 0.0;
    double total;
    void *dz = PyArray_DATA((PyArrayObject *)out);
    const void *zd = PyArray_DATA(z);
    Py_BEGIN_ALLOW_THREADS;
    total = t == NPY_FLOAT32 ? nmx_xent_f32(zd, dz, &a) : nmx_xent_f64(zd, dz, &a);
    Py_END_ALLOW_THREADS;
    PyObject *res = xent_result(loss, total, a.scale, reduction, out);
    Py_XDECREF(loss);
    return res;
}

static PyMethodDef softmax_methods[] = {
    {"softmax", (PyCFunction)(void (*)(void))softmax, METH_FASTCALL,
     "softmax(z, out, outer, classes, inner, log): (log-)softmax along the class axis."},
    {"softmax_backward", (PyCFunction)(void (*)(void))softmax_backward, METH_FASTCALL,
     "softmax_backward(g, y, out, outer, classes, inner, log): gradient wrt the logits."},
    {"xent", (PyCFunction)(void (*)(void))xent, METH_FASTCALL,
     "xent(z, target, weight, out, loss, outer, classes, inner, ignore, eps, reduction)."},
    {"xent_fast", (PyCFunction)(void (*)(void))xent_fast, METH_FASTCALL,
     "xent_fast(z, target, axis, reduction, weight, ignore_index, label_smoothing, out)."},
    {NULL, NULL, 0, NULL},
};

int normax_register_softmax(PyObject *module) {
    return PyModule_AddFunctions(module, softmax_methods);
}
