"""One small, valid call of every public kernel, for the hardening tests.

The leak, thread, fork and valgrind checks all need the same thing: for each kernel, inputs
built from a seed and a function that runs the kernel on them (optionally into preallocated
outputs) and returns every array it produced. A :class:`Case` is that pair. Kernel families that
have not been built into this installation are left out (see :func:`available`).

This file is not a test module; the hardening tests load it with :func:`load` (pytest's
importlib import mode does not put ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import normax


@dataclass
class Case:
    """A kernel call: ``run(out)`` computes from ``inputs`` and returns the produced arrays.

    ``out`` is None (the kernel allocates) or the dict returned by ``new_out()``: buffers of
    the caller's own, so that several threads can share ``inputs`` and write separately.
    """

    name: str
    inputs: dict[str, np.ndarray]
    run: Callable[[dict | None], tuple[np.ndarray, ...]]
    new_out: Callable[[], dict] = field(default=dict)


def _bn(rng, dtype, shape):
    x = rng.normal(3.0, 2.0, size=shape).astype(dtype)
    c = shape[1]
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.normal(size=c).astype(dtype)
    return x, gamma, beta


def bn_train(rng, dtype, shape) -> Case:
    x, gamma, beta = _bn(rng, dtype, shape)
    rm0 = rng.normal(size=shape[1]).astype(dtype)
    rv0 = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)

    def run(out):
        # Fresh running buffers per call: they are updated in place, so sharing them between
        # threads would be a data race in the caller, not in the kernel.
        rm, rv = rm0.copy(), rv0.copy()
        y, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=1, momentum=0.2,
                                           out=None if out is None else out["y"])
        # The cache's arrays (batch statistics) are results too.
        return (y, rm, rv, *(a for a in cache if isinstance(a, np.ndarray) and a is not x))

    return Case("batch_norm_train", {"x": x, "gamma": gamma, "beta": beta, "rm": rm0,
                                     "rv": rv0}, run, lambda: {"y": np.empty_like(x)})


def bn_infer(rng, dtype, shape) -> Case:
    x, gamma, beta = _bn(rng, dtype, shape)
    rm = rng.normal(size=shape[1]).astype(dtype)
    rv = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)

    def run(out):
        y = normax.batch_norm_infer(x, gamma, beta, rm, rv, axis=1,
                                    out=None if out is None else out["y"])
        return (y,)

    return Case("batch_norm_infer", {"x": x, "gamma": gamma, "beta": beta, "rm": rm, "rv": rv},
                run, lambda: {"y": np.empty_like(x)})


def bn_backward(rng, dtype, shape) -> Case:
    x, gamma, beta = _bn(rng, dtype, shape)
    dy = rng.normal(size=shape).astype(dtype)
    _, cache = normax.batch_norm_train(x, gamma, beta, axis=1)

    def run(out):
        dx, dgamma, dbeta = normax.batch_norm_backward(dy, cache,
                                                       out=None if out is None else out["dx"])
        return dx, dgamma, dbeta

    return Case("batch_norm_backward", {"x": x, "gamma": gamma, "beta": beta, "dy": dy}, run,
                lambda: {"dx": np.empty_like(x)})


def _softmax(fn_name: str):
    def build(rng, dtype, shape) -> Case:
        z = (rng.normal(size=shape) * 4).astype(dtype)
        fn = getattr(normax, fn_name)

        def run(out):
            return (fn(z, axis=1, out=None if out is None else out["p"]),)

        return Case(fn_name, {"z": z}, run, lambda: {"p": np.empty_like(z)})

    build.__name__ = fn_name
    return build


def _labels(rng, shape, ignore: int | None):
    """Integer labels for logits of ``shape`` with classes on axis 1, some set to ``ignore``."""
    lshape = (shape[0], *shape[2:])
    labels = rng.integers(0, shape[1], size=lshape)
    if ignore is not None:
        labels.flat[:: 5] = ignore
    return labels


def xent_labels(rng, dtype, shape) -> Case:
    z = (rng.normal(size=shape) * 4).astype(dtype)
    target = _labels(rng, shape, ignore=-100)
    weight = rng.uniform(0.1, 2.0, shape[1]).astype(dtype)

    def run(out):
        loss, dz = normax.softmax_cross_entropy(
            z, target, axis=1, weight=weight, ignore_index=-100, label_smoothing=0.1,
            out=None if out is None else out["dz"])
        return np.asarray(loss), dz

    return Case("softmax_cross_entropy[labels]", {"z": z, "target": target, "weight": weight},
                run, lambda: {"dz": np.empty_like(z)})


def xent_probs(rng, dtype, shape) -> Case:
    z = (rng.normal(size=shape) * 4).astype(dtype)
    t = rng.uniform(size=shape)
    target = (t / t.sum(axis=1, keepdims=True)).astype(dtype)

    def run(out):
        loss, dz = normax.softmax_cross_entropy(z, target, axis=1, reduction="none",
                                                out=None if out is None else out["dz"])
        return np.asarray(loss), dz

    return Case("softmax_cross_entropy[probs]", {"z": z, "target": target}, run,
                lambda: {"dz": np.empty_like(z)})


def _softmax_backward(fn_name: str, forward: str):
    def build(rng, dtype, shape) -> Case:
        z = (rng.normal(size=shape) * 4).astype(dtype)
        y = getattr(normax, forward)(z, axis=1)
        g = rng.normal(size=shape).astype(dtype)
        fn = getattr(normax, fn_name)

        def run(out):
            return (fn(g, y, 1),)

        return Case(fn_name, {"g": g, "y": y}, run)

    build.__name__ = fn_name
    return build


def _optimizer(cls_name: str, **options):
    def build(rng, dtype, shape) -> Case:
        params0 = {"w": rng.normal(size=shape).astype(dtype),
                   "b": rng.normal(size=shape[1]).astype(dtype)}
        grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in params0.items()}
                 for _ in range(3)]

        def run(out):
            # Each call owns its parameters and optimizer state: threads share only the grads.
            params = {k: v.copy() for k, v in params0.items()}
            opt = getattr(importlib.import_module("normax.optim"), cls_name)(params, **options)
            for g in grads:
                opt.step(g)
            return params["w"], params["b"]

        return Case(f"optim.{cls_name}", {"w": params0["w"], "gw": grads[0]["w"]}, run)

    build.__name__ = cls_name
    return build


#: (family attribute, builder); a builder takes (rng, dtype, shape) with shape[1] the channel or
#: class axis, and returns a Case.
BUILDERS = [
    ("batch_norm_train", bn_train),
    ("batch_norm_infer", bn_infer),
    ("batch_norm_backward", bn_backward),
    ("softmax", _softmax("softmax")),
    ("log_softmax", _softmax("log_softmax")),
    ("softmax_cross_entropy", xent_labels),
    ("softmax_cross_entropy", xent_probs),
    ("softmax_backward", _softmax_backward("softmax_backward", "softmax")),
    ("log_softmax_backward", _softmax_backward("log_softmax_backward", "log_softmax")),
    ("optim", _optimizer("SGD", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("optim", _optimizer("Adam", lr=1e-2, weight_decay=1e-3, amsgrad=True)),
    ("optim", _optimizer("AdamW", lr=1e-2)),
    ("optim", _optimizer("RMSprop", lr=1e-2, momentum=0.5, centered=True)),
    ("optim", _optimizer("Momentum", lr=0.1, beta=0.9, bias_correction=True)),
]


def available() -> list[Callable]:
    """Builders of every kernel."""
    return [build for _, build in BUILDERS]


def ids(builders) -> list[str]:
    """Test ids: the builders' names."""
    return [b.__name__ for b in builders]


def bad_calls(rng, dtype, shape) -> list[tuple[str, Callable[[], object]]]:
    """Calls of every kernel family that must raise TypeError or ValueError (error paths).

    ``shape`` is (N, C, inner) as for the builders; the label and ``out`` errors sit at the end
    of the arrays so that a kernel checking while it runs gets far before it fails.
    """
    x = rng.normal(size=shape).astype(dtype)
    c = shape[1]
    return _bad_batch_norm(x, c, dtype) + _bad_softmax(rng, x, c, shape) + _bad_optim(c, dtype)


def _bad_batch_norm(x, c, dtype):
    ones = np.ones(c, dtype)
    ro = np.zeros(c, dtype)
    ro.flags.writeable = False
    _, cache = normax.batch_norm_train(x, ones, ones)
    return [
        ("bn gamma shape", lambda: normax.batch_norm_train(x, np.ones(c + 1, dtype), None)),
        ("bn int x", lambda: normax.batch_norm_train(x.astype(np.int32), None, None)),
        ("bn momentum", lambda: normax.batch_norm_train(x, None, None, momentum=1.5)),
        ("bn read-only running", lambda: normax.batch_norm_train(x, None, None, ro, ro)),
        ("bn out dtype", lambda: normax.batch_norm_train(
            x, None, None, out=np.empty(x.shape, np.float16))),
        ("bn infer eps", lambda: normax.batch_norm_infer(x, None, None, ones, ones,
                                                         eps=float("nan"))),
        ("bn backward dy shape", lambda: normax.batch_norm_backward(x[:, :-1], cache)),
    ]


def _bad_softmax(rng, x, c, shape):
    labels = rng.integers(0, c, size=(shape[0], *shape[2:]))
    high = labels.copy()
    high.flat[-1] = c  # out of range, last in memory
    neg = labels.copy()
    neg.flat[-1] = -7
    probs = np.full(shape, 1.0 / c, x.dtype)
    xent = normax.softmax_cross_entropy
    return [
        ("softmax axis", lambda: normax.softmax(x, axis=3)),
        ("xent no classes", lambda: xent(x[:, :0], labels, axis=1)),
        ("softmax out shape", lambda: normax.softmax(x, axis=1, out=np.empty_like(x)[:-1])),
        ("xent label >= C", lambda: xent(x, high, axis=1)),
        ("xent label < 0", lambda: xent(x, neg, axis=1, ignore_index=-100)),
        ("xent weight < 0", lambda: xent(x, labels, axis=1, weight=-np.ones(c, x.dtype))),
        ("xent probs + ignore_index", lambda: xent(x, probs, axis=1, ignore_index=0)),
        ("xent reduction", lambda: xent(x, labels, axis=1, reduction="avg")),
        ("xent smoothing", lambda: xent(x, labels, axis=1, label_smoothing=1.5)),
    ]


def _bad_optim(c, dtype):
    optim = importlib.import_module("normax.optim")
    opt = optim.Adam([np.zeros(c, dtype)], lr=1e-3)
    return [
        ("adam grad shape", lambda: opt.step([np.zeros(c + 1, dtype)])),
        ("adam grad dtype", lambda: opt.step([np.zeros(c, np.int64)])),
        ("adam lr < 0", lambda: optim.Adam([np.zeros(c, dtype)], lr=-1.0)),
    ]
