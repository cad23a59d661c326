"""Kernel selectors shared by the three backends (mirrors ``enum nmx_optim_kind`` in optim.h)."""

SGD, MOMENTUM, RMSPROP, ADAM = 0, 1, 2, 3
NESTEROV, FIRST, CENTERED, AMSGRAD = 1, 2, 4, 8
