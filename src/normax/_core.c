/* normax._core: module init, thread control, and registration of each kernel family's binding
 * (_core_batchnorm.c, _core_softmax.c, _core_optim.c). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL normax_ARRAY_API
#include <numpy/arrayobject.h>

#include "normax.h"
#include "outbuf.h"

int normax_register_batchnorm(PyObject *module);
int normax_register_softmax(PyObject *module);
int normax_register_optim(PyObject *module);

/* NumPy allocator of the large outputs the kernels create: nmx_buf_* keep freed blocks mapped,
 * so the next call's output does not pay the page faults of a fresh 64 MiB array again. */
static void *nmx_h_malloc(void *ctx, size_t n) {
    (void)ctx;
    return nmx_buf_malloc(n);
}
static void *nmx_h_calloc(void *ctx, size_t n, size_t size) {
    (void)ctx;
    return nmx_buf_calloc(n, size);
}
static void *nmx_h_realloc(void *ctx, void *p, size_t n) {
    (void)ctx;
    return nmx_buf_realloc(p, n);
}
static void nmx_h_free(void *ctx, void *p, size_t n) {
    (void)ctx, (void)n;
    nmx_buf_free(p);
}
static PyDataMem_Handler nmx_handler = {
    "normax_outbuf", 1, {NULL, nmx_h_malloc, nmx_h_calloc, nmx_h_realloc, nmx_h_free}};
static PyObject *nmx_handler_capsule = NULL;

PyObject *nmx_new_output(int ndim, npy_intp const *dims, int typenum) {
    PyArray_Descr *descr = PyArray_DescrFromType(typenum);
    if (descr == NULL) return NULL;
    npy_intp n = PyDataType_ELSIZE(descr);
    Py_DECREF(descr);
    for (int i = 0; i < ndim; i++) n *= dims[i];
    if ((size_t)n < NMX_BUF_MIN_BYTES || nmx_handler_capsule == NULL)
        return PyArray_SimpleNew(ndim, (npy_intp *)dims, typenum);
    PyObject *old = PyDataMem_SetHandler(nmx_handler_capsule);
    if (old == NULL) return NULL;
    PyObject *out = PyArray_SimpleNew(ndim, (npy_intp *)dims, typenum);
    PyObject *back = PyDataMem_SetHandler(old);
    Py_DECREF(old);
    if (back == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    Py_DECREF(back);
    return out;
}

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
    if (normax_register_batchnorm(m) < 0 || normax_register_softmax(m) < 0 ||
        normax_register_optim(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    nmx_handler_capsule = PyCapsule_New(&nmx_handler, "mem_handler", NULL);
    if (nmx_handler_capsule == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    nmx_set_num_threads(0); /* installs the fork handler */
    return m;
}
