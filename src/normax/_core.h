/* Binding helpers shared by the _core*.c files: the only code that includes Python.h.
 *
 * The Python layer (_checks.py) validates every argument and hands over C-contiguous, aligned,
 * native-endian arrays of the checked dtype. These helpers check it again, cheaply, so that no
 * call from Python can make a kernel read or write outside its arrays.
 */
#ifndef NORMAX_CORE_H
#define NORMAX_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL normax_ARRAY_API
#include <numpy/arrayobject.h>

#include "normax.h"

/* Return the data pointer of `obj` if it is an ndarray of `typenum` with exactly `size` elements,
 * C-contiguous, aligned and (if `writeable`) writeable; else set ValueError naming `name`. */
static inline void *nmx_array_data(PyObject *obj, const char *name, int typenum, nmx_index size,
                                   int writeable) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | (writeable ? NPY_ARRAY_WRITEABLE : 0);
    if (PyArray_TYPE(a) != typenum || !PyArray_ISNOTSWAPPED(a) || !PyArray_CHKFLAGS(a, flags) ||
        (nmx_index)PyArray_SIZE(a) != size) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a%s C-contiguous aligned array of %zd elements of type %d",
                     name, writeable ? " writeable" : "", (Py_ssize_t)size, typenum);
        return NULL;
    }
    return PyArray_DATA(a);
}

/* Same, but None gives NULL with no error set (optional arrays such as gamma). */
static inline int nmx_optional_array(PyObject *obj, const char *name, int typenum, nmx_index size,
                                     int writeable, void **data) {
    if (obj == Py_None) {
        *data = NULL;
        return 0;
    }
    *data = nmx_array_data(obj, name, typenum, size, writeable);
    return *data ? 0 : -1;
}

/* Parse a non-negative Py_ssize_t argument (a dimension). */
static inline int nmx_dim(PyObject *obj, const char *name, nmx_index *out) {
    Py_ssize_t v = PyLong_AsSsize_t(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0, got %zd", name, v);
        return -1;
    }
    *out = (nmx_index)v;
    return 0;
}

/* Product of (outer, C, inner) with an overflow check. */
static inline int nmx_numel3(nmx_index outer, nmx_index c, nmx_index inner, nmx_index *out) {
    nmx_index n;
    if (__builtin_mul_overflow(outer, c, &n) || __builtin_mul_overflow(n, inner, &n)) {
        PyErr_SetString(PyExc_OverflowError, "array size overflows a 64-bit index");
        return -1;
    }
    *out = n;
    return 0;
}

/* A new C-contiguous array for a kernel output; large ones come from csrc/outbuf.c. */
PyObject *nmx_new_output(int ndim, npy_intp const *dims, int typenum);

/* Each family registers its functions on the module. */
int normax_register_batchnorm(PyObject *module);
int normax_register_softmax(PyObject *module);
int normax_register_optim(PyObject *module);

#endif
