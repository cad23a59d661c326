/* Binding of the softmax kernels (csrc/softmax.c). */
#include "_core.h"

static PyMethodDef softmax_methods[] = {
    {NULL, NULL, 0, NULL},
};

int normax_register_softmax(PyObject *module) { return PyModule_AddFunctions(module, softmax_methods); }
