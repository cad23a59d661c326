/* normax._core: module init, thread control, and registration of each kernel family's binding
 * (_core_batchnorm.c, _core_softmax.c). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL normax_ARRAY_API
#include <numpy/arrayobject.h>

#include "normax.h"

int normax_register_batchnorm(PyObject *module);
int normax_register_softmax(PyObject *module);

static PyObject *set_num_threads(PyObject *Py_UNUSED(self), PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n must be >= 0, got %ld", n);
        return NULL;
    }
    nmx_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *get_num_threads(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(arg)) {
    return PyLong_FromLong(nmx_get_num_threads());
}

static PyMethodDef core_methods[] = {
    {"set_num_threads", set_num_threads, METH_O,
     "Set the OpenMP thread count used by the C kernels (0 restores the default)."},
    {"get_num_threads", get_num_threads, METH_NOARGS,
     "Thread count the C kernels use for large inputs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "normax._core", "normax C kernels (internal).", -1, core_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL) return NULL;
    if (normax_register_batchnorm(m) < 0 || normax_register_softmax(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    nmx_set_num_threads(0); /* installs the fork handler */
    return m;
}
