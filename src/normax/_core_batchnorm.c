/* Binding of the batchnorm kernels (csrc/batchnorm.c). */
#include "_core.h"

static PyMethodDef batchnorm_methods[] = {
    {NULL, NULL, 0, NULL},
};

int normax_register_batchnorm(PyObject *module) { return PyModule_AddFunctions(module, batchnorm_methods); }
