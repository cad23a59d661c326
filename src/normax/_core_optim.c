/* Binding of the optim kernels (csrc/optim.c).
 *
 * optim_step(kind, flags, hyper, params, grads, s0, s1, s2) updates a list of parameter arrays
 * in place. `hyper` is a tuple of NMX_OPT_NHYPER floats; s0..s2 are lists of state arrays or
 * None. normax.optim has checked everything already; here each array is re-verified (dtype,
 * size, contiguity, writeability) so that no call can make the kernel step outside an array.
 */
#include "_core.h"
#include "optim.h"

/* The item lists and pointer tables of one call, freed together. */
typedef struct {
    /* params, grads, s0, s1, s2 copied into tuples (or NULL): the tuples keep every array
     * alive while the GIL is released, even if the caller's lists change meanwhile */
    PyObject *seq[5];
    void *mem;          /* sizes and the five pointer tables */
} call_buffers;

static void release(call_buffers *b) {
    for (int j = 0; j < 5; j++) Py_XDECREF(b->seq[j]);
    PyMem_Free(b->mem);
}

static const char *const list_names[5] = {"params", "grads", "state0", "state1", "state2"};

/* Fill c->sizes and the pointer tables from the sequences; return -1 with an error set. */
static int gather(nmx_optim_call *c, call_buffers *b, int typenum) {
    Py_ssize_t n = PyTuple_GET_SIZE(b->seq[0]);
    b->mem = PyMem_Malloc((size_t)(n > 0 ? n : 1) * (sizeof(nmx_index) + 5 * sizeof(void *)));
    if (b->mem == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    nmx_index *sizes = (nmx_index *)b->mem;
    void **tables = (void **)(sizes + (n > 0 ? n : 1));
    for (int j = 0; j < 5; j++) {
        if (b->seq[j] != NULL && PyTuple_GET_SIZE(b->seq[j]) != n) {
            PyErr_Format(PyExc_ValueError, "%s has %zd arrays, params has %zd", list_names[j],
                         PyTuple_GET_SIZE(b->seq[j]), n);
            return -1;
        }
    }
    PyObject **items = &PyTuple_GET_ITEM(b->seq[0], 0);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!PyArray_Check(items[k])) {
            PyErr_Format(PyExc_TypeError, "params must hold numpy arrays, got %s",
                         Py_TYPE(items[k])->tp_name);
            return -1;
        }
        sizes[k] = (nmx_index)PyArray_SIZE((PyArrayObject *)items[k]);
    }
    for (int j = 0; j < 5; j++) {
        void **table = tables + (size_t)j * (size_t)(n > 0 ? n : 1);
        if (b->seq[j] == NULL) continue;
        PyObject **it = &PyTuple_GET_ITEM(b->seq[j], 0);
        for (Py_ssize_t k = 0; k < n; k++) {
            table[k] = nmx_array_data(it[k], list_names[j], typenum, sizes[k], j != 1);
            if (table[k] == NULL) return -1;
        }
        if (j == 0) c->p = table;
        else if (j == 1) c->g = (const void *const *)table;
        else c->s[j - 2] = table;
    }
    c->sizes = sizes;
    c->narrays = (nmx_index)n;
    return 0;
}

static int parse_hyper(PyObject *obj, nmx_optim_call *c) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != NMX_OPT_NHYPER) {
        PyErr_Format(PyExc_TypeError, "hyper must be a tuple of %d floats", NMX_OPT_NHYPER);
        return -1;
    }
    for (int i = 0; i < NMX_OPT_NHYPER; i++) {
        c->h[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(obj, i));
        if (c->h[i] == -1.0 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* Which state lists each kind needs (bit j: s_j required). Optional ones may be None. */
static int required_states(int kind) {
    switch (kind) {
    case NMX_OPT_SGD: return 0;
    case NMX_OPT_MOMENTUM: return 1;
    case NMX_OPT_RMSPROP: return 1;
    case NMX_OPT_ADAM: return 3;
    default: return -1;
    }
}

static PyObject *optim_step(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "optim_step takes 8 arguments, got %zd", nargs);
        return NULL;
    }
    nmx_optim_call c = {0};
    c.kind = (int)PyLong_AsLong(args[0]);
    c.flags = (int)PyLong_AsLong(args[1]);
    if (PyErr_Occurred() || parse_hyper(args[2], &c) < 0) return NULL;
    int need = required_states(c.kind);
    if (need < 0) return PyErr_Format(PyExc_ValueError, "unknown optimizer kind %d", c.kind);
    call_buffers b = {{NULL}, NULL};
    for (int j = 0; j < 5; j++) {
        PyObject *obj = args[3 + j];
        if (obj == Py_None && j >= 2 && !(need >> (j - 2) & 1)) continue;
        if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
            PyErr_Format(PyExc_TypeError, "%s must be a list of arrays, got %s", list_names[j],
                         Py_TYPE(obj)->tp_name);
            goto fail;
        }
        b.seq[j] = PySequence_Tuple(obj);
        if (b.seq[j] == NULL) goto fail;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(b.seq[0]);
    int typenum = NPY_FLOAT64;
    if (n > 0) {
        PyObject *first = PyTuple_GET_ITEM(b.seq[0], 0);
        if (PyArray_Check(first)) typenum = PyArray_TYPE((PyArrayObject *)first);
    }
    if (typenum != NPY_FLOAT32 && typenum != NPY_FLOAT64) {
        PyErr_SetString(PyExc_TypeError, "params must be float32 or float64 arrays");
        goto fail;
    }
    if (gather(&c, &b, typenum) < 0) goto fail;
    Py_BEGIN_ALLOW_THREADS;
    if (typenum == NPY_FLOAT32) nmx_optim_step_f32(&c);
    else nmx_optim_step_f64(&c);
    Py_END_ALLOW_THREADS;
    release(&b);
    Py_RETURN_NONE;
fail:
    release(&b);
    return NULL;
}

static PyMethodDef optim_methods[] = {
    {"optim_step", (PyCFunction)(void (*)(void))optim_step, METH_FASTCALL,
     "optim_step(kind, flags, hyper, params, grads, s0, s1, s2): fused in-place update."},
    {NULL, NULL, 0, NULL},
};

int normax_register_optim(PyObject *module) { return PyModule_AddFunctions(module, optim_methods); }
