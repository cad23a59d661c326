"""Error parity: every hostile input gets the same exception type and message everywhere.

"Everywhere" is the compiled front door on each backend (C, Numba, NumPy) and the Python
checker called without the front door. The inputs are every bad call of
``tests/hardening_cases.py``, of the batch-norm and softmax error tests, and a few forged
arguments the front doors must not trust (an edited BatchNormCache, aliased buffers).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import normax
from normax import _batchnorm_check, _softmax_check

TESTS = Path(__file__).parent


def _load(name: str, file: str):
    """A module of this folder (pytest's importlib mode does not put tests/ on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / file)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _load("normax_hardening_cases", "hardening_cases.py")
bn_errors = _load("normax_parity_bn_errors", "test_batchnorm_errors.py")
sm_errors = _load("normax_parity_sm_errors", "test_softmax_errors.py")

PUBLIC = {
    "batch_norm_train": _batchnorm_check.batch_norm_train,
    "batch_norm_infer": _batchnorm_check.batch_norm_infer,
    "batch_norm_backward": _batchnorm_check.batch_norm_backward,
    "softmax": _softmax_check.softmax,
    "log_softmax": _softmax_check.log_softmax,
    "softmax_backward": _softmax_check.softmax_backward,
    "log_softmax_backward": _softmax_check.log_softmax_backward,
    "softmax_cross_entropy": _softmax_check.softmax_cross_entropy,
}


def _outcome(call) -> tuple[str, str]:
    try:
        call()
    except Exception as exc:  # the point is to compare whatever is raised
        return type(exc).__name__, str(exc)
    return "ok", ""


def _everywhere(call) -> dict[str, tuple[str, str]]:
    """Outcome of ``call()`` through the front door on every backend, and through the checker
    alone (the public names of ``normax`` pointed at the checker's functions)."""
    results = {}
    previous = normax.get_backend()
    try:
        for name in normax.available_backends():
            normax.set_backend(name)
            results[name] = _outcome(call)
        saved = {name: getattr(normax, name) for name in PUBLIC}
        saved_xent = sm_errors.XENT
        try:
            for name, fn in PUBLIC.items():
                setattr(normax, name, fn)
            sm_errors.XENT = PUBLIC["softmax_cross_entropy"]
            results["checker"] = _outcome(call)
        finally:
            for name, fn in saved.items():
                setattr(normax, name, fn)
            sm_errors.XENT = saved_xent
    finally:
        normax.set_backend(previous)
    return results


def _forged_caches():
    x = np.random.default_rng(3).normal(size=(6, 4))
    _, cache = normax.batch_norm_train(x, np.ones(4), np.zeros(4))
    dy = np.ones_like(x)
    return {
        "cache mean short": lambda: normax.batch_norm_backward(
            dy, cache._replace(mean=cache.mean[:3])),
        "cache invstd long": lambda: normax.batch_norm_backward(
            dy, cache._replace(invstd=np.ones(5))),
        "cache gamma short": lambda: normax.batch_norm_backward(
            dy, cache._replace(gamma=np.ones(3))),
        "cache mean int": lambda: normax.batch_norm_backward(
            dy, cache._replace(mean=np.zeros(4, np.int64))),
        "cache axis 5": lambda: normax.batch_norm_backward(dy, cache._replace(axis=5)),
        "cache x 1-d": lambda: normax.batch_norm_backward(dy, cache._replace(x=x[0])),
        "running_mean is gamma": lambda: normax.batch_norm_train(
            x, cache.gamma, None, cache.gamma, np.ones(4)),
        "eps 0 training": lambda: normax.batch_norm_train(x, None, None, eps=0.0),
        "xent no classes": lambda: normax.softmax_cross_entropy(
            np.zeros((3, 0)), np.zeros(3, int)),
        "softmax 0-d axis 1": lambda: normax.softmax(np.float64(2.0), axis=1),
    }  # fmt: skip


def _all_calls() -> dict[str, object]:
    calls = {}
    for dtype in (np.float32, np.float64):
        for name, call in cases.bad_calls(np.random.default_rng(0), dtype, (5, 3, 2)):
            calls[f"hardening {name} {np.dtype(dtype).name}"] = call
    for table, kind in ((bn_errors.TRAIN_CASES, "train"), (bn_errors.INFER_CASES, "infer"),
                        (bn_errors.BACKWARD_CASES, "backward")):  # fmt: skip
        for name, (call, _, _) in table.items():
            calls[f"bn {kind} {name}"] = lambda call=call: call(bn_errors._buffers())
    for name, (call, *_) in sm_errors.XENT_CASES.items():
        calls[f"xent {name}"] = lambda call=call: call(None)
    for table, fns in ((sm_errors.FORWARD_CASES, ("softmax", "log_softmax")),
                       (sm_errors.BACKWARD_CASES, ("softmax_backward", "log_softmax_backward"))):
        for name, (call, _, _) in table.items():
            for fn in fns:
                calls[f"{fn} {name}"] = lambda call=call, fn=fn: call(getattr(normax, fn), None)
    calls.update(_forged_caches())
    return calls


CALLS = _all_calls()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_same_error_everywhere(name):
    results = _everywhere(CALLS[name])
    assert len(set(results.values())) == 1, results
    kind, _ = next(iter(results.values()))
    assert kind in ("TypeError", "ValueError"), results
