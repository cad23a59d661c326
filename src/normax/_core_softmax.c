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
        out = PyArray_NewLikeArray((PyArrayObject *)args[0], NPY_CORDER, NULL, 0);
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

static PyMethodDef softmax_methods[] = {
    {"softmax", (PyCFunction)(void (*)(void))softmax, METH_FASTCALL,
     "softmax(z, out, outer, classes, inner, log): (log-)softmax along the class axis."},
    {"softmax_backward", (PyCFunction)(void (*)(void))softmax_backward, METH_FASTCALL,
     "softmax_backward(g, y, out, outer, classes, inner, log): gradient wrt the logits."},
    {"xent", (PyCFunction)(void (*)(void))xent, METH_FASTCALL,
     "xent(z, target, weight, out, loss, outer, classes, inner, ignore, eps, reduction)."},
    {NULL, NULL, 0, NULL},
};

int normax_register_softmax(PyObject *module) {
    return PyModule_AddFunctions(module, softmax_methods);
}
