/* Binding of the optim kernels (csrc/optim.c). */
#include "_core.h"

static PyMethodDef optim_methods[] = {
    {NULL, NULL, 0, NULL},
};

int normax_register_optim(PyObject *module) { return PyModule_AddFunctions(module, optim_methods); }
