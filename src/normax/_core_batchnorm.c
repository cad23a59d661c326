/* Binding of the batch-norm kernels (csrc/batchnorm.c).
 *
 * normax/batchnorm.py checks every argument before it calls these; the checks here only make
 * sure no call can make a kernel step outside its arrays. METH_FASTCALL keeps a (32, 64) call
 * to a few hundred nanoseconds; the view (outer, C, inner) is computed here from x and axis.
 */
#include "_core.h"

#include "batchnorm.h"

/* The (outer, C, inner) view of a C-contiguous float32/float64 `x` around `axis`. */
static int bn_view(PyObject *x, PyObject *axis_obj, const char *name, int *typenum,
                   nmx_index view[3]) {
    if (!PyArray_Check(x)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name,
                     Py_TYPE(x)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)x;
    int type = PyArray_TYPE(a), ndim = PyArray_NDIM(a);
    if (type != NPY_FLOAT32 && type != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s must be float32 or float64", name);
        return -1;
    }
    long axis = PyLong_AsLong(axis_obj);
    if (axis == -1 && PyErr_Occurred()) return -1;
    if (axis < 0 || axis >= ndim) {
        PyErr_Format(PyExc_ValueError, "axis %ld is out of range for %d dimensions", axis, ndim);
        return -1;
    }
    npy_intp *dims = PyArray_DIMS(a);
    nmx_index outer = 1, inner = 1;
    for (int i = 0; i < axis; i++) outer *= dims[i];
    for (int i = (int)axis + 1; i < ndim; i++) inner *= dims[i];
    *typenum = type;
    view[0] = outer;
    view[1] = dims[axis];
    view[2] = inner;
    return nmx_array_data(x, name, type, (nmx_index)PyArray_SIZE(a), 0) ? 0 : -1;
}

/* `out` checked against `like` (same size and type, writeable), or a new array shaped like it. */
static PyObject *bn_output(PyObject *out, PyObject *like, const char *name) {
    PyArrayObject *a = (PyArrayObject *)like;
    if (out == Py_None)
        return nmx_new_output(PyArray_NDIM(a), PyArray_DIMS(a), PyArray_TYPE(a));
    if (!nmx_array_data(out, name, PyArray_TYPE(a), (nmx_index)PyArray_SIZE(a), 1)) return NULL;
    Py_INCREF(out);
    return out;
}

/* The Python layer leaves the overlap tests to the C backend (they cost more than a small
 * kernel when done with numpy.may_share_memory): same test on contiguous arrays, same message,
 * same order, and before anything is written. */
static int bn_overlap(PyObject *a, const char *an, PyObject *b, const char *bname) {
    /* Not arrays (a direct call with bad arguments): the array checks that follow refuse them. */
    if (!PyArray_Check(a) || !PyArray_Check(b)) return 0;
    const char *pa = PyArray_BYTES((PyArrayObject *)a), *pb = PyArray_BYTES((PyArrayObject *)b);
    npy_intp na = PyArray_NBYTES((PyArrayObject *)a), nb = PyArray_NBYTES((PyArrayObject *)b);
    if (na > 0 && nb > 0 && pa < pb + nb && pb < pa + na) {
        PyErr_Format(PyExc_ValueError, "%s overlaps %s; pass a separate array", an, bname);
        return -1;
    }
    return 0;
}

static void *bn_data(PyObject *obj) { return PyArray_DATA((PyArrayObject *)obj); }

static PyObject *bn_tuple3(PyObject *a, PyObject *b, PyObject *c) {
    PyObject *t = PyTuple_New(3);
    if (!t) {
        Py_DECREF(a);
        Py_DECREF(b);
        Py_DECREF(c);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    PyTuple_SET_ITEM(t, 2, c);
    return t;
}

static int bn_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *fn) {
    if (nargs == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", fn, want, nargs);
    return -1;
}

/* bn_train(x, axis, gamma, beta, running_mean, running_var, momentum, eps, out)
 *   -> (y, mean, invstd) with mean and invstd float64 of shape (C,). */
static PyObject *bn_train(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int type;
    nmx_index v[3];
    void *g, *b, *rm, *rv;
    if (bn_nargs(nargs, 9, "bn_train") < 0 || bn_view(args[0], args[1], "x", &type, v) < 0)
        return NULL;
    double momentum = PyFloat_AsDouble(args[6]), eps = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred() || nmx_optional_array(args[2], "gamma", type, v[1], 0, &g) < 0 ||
        nmx_optional_array(args[3], "beta", type, v[1], 0, &b) < 0 ||
        nmx_optional_array(args[4], "running_mean", type, v[1], 1, &rm) < 0 ||
        nmx_optional_array(args[5], "running_var", type, v[1], 1, &rv) < 0)
        return NULL;
    if (bn_overlap(args[4], "running_mean", args[0], "x") < 0 ||
        bn_overlap(args[5], "running_var", args[0], "x") < 0 ||
        bn_overlap(args[4], "running_mean", args[5], "running_var") < 0 ||
        bn_overlap(args[8], "out", args[0], "x") < 0 ||
        bn_overlap(args[8], "out", args[4], "running_mean") < 0 ||
        bn_overlap(args[8], "out", args[5], "running_var") < 0 ||
        bn_overlap(args[8], "out", args[2], "gamma") < 0 ||
        bn_overlap(args[8], "out", args[3], "beta") < 0)
        return NULL;
    PyObject *y = bn_output(args[8], args[0], "out");
    if (!y) return NULL;
    npy_intp c = (npy_intp)v[1];
    PyObject *mean = PyArray_SimpleNew(1, &c, NPY_FLOAT64);
    PyObject *invstd = mean ? PyArray_SimpleNew(1, &c, NPY_FLOAT64) : NULL;
    if (!invstd) {
        Py_DECREF(y);
        Py_XDECREF(mean);
        return NULL;
    }
    const void *x = bn_data(args[0]);
    int rc;
    Py_BEGIN_ALLOW_THREADS;
    if (type == NPY_FLOAT32)
        rc = nmx_bn_train_f32(x, v[0], v[1], v[2], g, b, bn_data(y), bn_data(mean),
                              bn_data(invstd), rm, rv, momentum, eps);
    else
        rc = nmx_bn_train_f64(x, v[0], v[1], v[2], g, b, bn_data(y), bn_data(mean),
                              bn_data(invstd), rm, rv, momentum, eps);
    Py_END_ALLOW_THREADS;
    if (rc < 0) {
        Py_DECREF(y);
        Py_DECREF(mean);
        Py_DECREF(invstd);
        return PyErr_NoMemory();
    }
    return bn_tuple3(y, mean, invstd);
}

/* bn_infer(x, axis, gamma, beta, running_mean, running_var, eps, out) -> y */
static PyObject *bn_infer(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int type;
    nmx_index v[3];
    void *g, *b, *rm, *rv;
    if (bn_nargs(nargs, 8, "bn_infer") < 0 || bn_view(args[0], args[1], "x", &type, v) < 0)
        return NULL;
    double eps = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred() || nmx_optional_array(args[2], "gamma", type, v[1], 0, &g) < 0 ||
        nmx_optional_array(args[3], "beta", type, v[1], 0, &b) < 0 ||
        !(rm = nmx_array_data(args[4], "running_mean", type, v[1], 0)) ||
        !(rv = nmx_array_data(args[5], "running_var", type, v[1], 0)) ||
        bn_overlap(args[7], "out", args[0], "x") < 0 ||
        bn_overlap(args[7], "out", args[2], "gamma") < 0 ||
        bn_overlap(args[7], "out", args[3], "beta") < 0 ||
        bn_overlap(args[7], "out", args[4], "running_mean") < 0 ||
        bn_overlap(args[7], "out", args[5], "running_var") < 0)
        return NULL;
    PyObject *y = bn_output(args[7], args[0], "out");
    if (!y) return NULL;
    const void *x = bn_data(args[0]);
    int rc;
    Py_BEGIN_ALLOW_THREADS;
    if (type == NPY_FLOAT32)
        rc = nmx_bn_infer_f32(x, v[0], v[1], v[2], g, b, rm, rv, eps, bn_data(y));
    else
        rc = nmx_bn_infer_f64(x, v[0], v[1], v[2], g, b, rm, rv, eps, bn_data(y));
    Py_END_ALLOW_THREADS;
    if (rc < 0) {
        Py_DECREF(y);
        return PyErr_NoMemory();
    }
    return y;
}

/* bn_backward(dy, x, axis, mean, invstd, gamma, out) -> (dx, dgamma, dbeta); the last two are
 * None when gamma is None. */
static PyObject *bn_backward(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int type, dtype;
    nmx_index v[3], dv[3];
    void *g, *mean, *invstd;
    if (bn_nargs(nargs, 7, "bn_backward") < 0 || bn_view(args[1], args[2], "x", &type, v) < 0 ||
        bn_view(args[0], args[2], "dy", &dtype, dv) < 0)
        return NULL;
    if (dtype != type || dv[0] * dv[1] * dv[2] != v[0] * v[1] * v[2]) {
        PyErr_SetString(PyExc_ValueError, "dy must match x in dtype and size");
        return NULL;
    }
    if (!(mean = nmx_array_data(args[3], "mean", NPY_FLOAT64, v[1], 0)) ||
        !(invstd = nmx_array_data(args[4], "invstd", NPY_FLOAT64, v[1], 0)) ||
        nmx_optional_array(args[5], "gamma", type, v[1], 0, &g) < 0 ||
        bn_overlap(args[6], "out", args[1], "x") < 0 ||
        bn_overlap(args[6], "out", args[0], "dy") < 0 ||
        bn_overlap(args[6], "out", args[5], "gamma") < 0)
        return NULL;
    PyObject *dx = bn_output(args[6], args[1], "out");
    if (!dx) return NULL;
    PyObject *dg = Py_None, *db = Py_None;
    npy_intp c = (npy_intp)v[1];
    if (g) {
        dg = PyArray_SimpleNew(1, &c, type);
        db = dg ? PyArray_SimpleNew(1, &c, type) : NULL;
        if (!db) {
            Py_DECREF(dx);
            Py_XDECREF(dg);
            return NULL;
        }
    } else {
        Py_INCREF(dg);
        Py_INCREF(db);
    }
    void *pdg = g ? bn_data(dg) : NULL, *pdb = g ? bn_data(db) : NULL;
    const void *pdy = bn_data(args[0]), *px = bn_data(args[1]);
    int rc;
    Py_BEGIN_ALLOW_THREADS;
    if (type == NPY_FLOAT32)
        rc = nmx_bn_backward_f32(pdy, px, v[0], v[1], v[2], mean, invstd, g, bn_data(dx), pdg,
                                 pdb);
    else
        rc = nmx_bn_backward_f64(pdy, px, v[0], v[1], v[2], mean, invstd, g, bn_data(dx), pdg,
                                 pdb);
    Py_END_ALLOW_THREADS;
    if (rc < 0) {
        Py_DECREF(dx);
        Py_DECREF(dg);
        Py_DECREF(db);
        return PyErr_NoMemory();
    }
    return bn_tuple3(dx, dg, db);
}

static PyMethodDef batchnorm_methods[] = {
    {"bn_train", (PyCFunction)(void (*)(void))bn_train, METH_FASTCALL,
     "bn_train(x, axis, gamma, beta, running_mean, running_var, momentum, eps, out)"},
    {"bn_infer", (PyCFunction)(void (*)(void))bn_infer, METH_FASTCALL,
     "bn_infer(x, axis, gamma, beta, running_mean, running_var, eps, out)"},
    {"bn_backward", (PyCFunction)(void (*)(void))bn_backward, METH_FASTCALL,
     "bn_backward(dy, x, axis, mean, invstd, gamma, out)"},
    {NULL, NULL, 0, NULL},
};

int normax_register_batchnorm(PyObject *module) {
    return PyModule_AddFunctions(module, batchnorm_methods);
}
