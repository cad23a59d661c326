"""The compiled entry points survive any arguments, not only those the front doors send.

The front doors check everything before a kernel runs; the "c" column of each backend table
(normax._batchnorm_ext.train/infer/backward, normax._softmax_ext.forward/backward/xent) checks
the canonical record again so that no direct call can make a kernel read or write outside its
arrays or divide by zero. This tests that second line directly: the real records of every kernel
call are recorded (they are the same on every backend), then each argument is replaced in turn
by hostile values (None, wrong types, huge and negative ints, arrays of another size, dtype,
byte order or layout, read-only arrays) and the call must return or raise an ordinary
exception: never crash, never SystemError. Run under the sanitizer build (CI step 3) this also
proves that none of those calls touches memory it should not.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

import normax

_spec = importlib.util.spec_from_file_location(
    "normax_hardening_cases", Path(__file__).with_name("hardening_cases.py"))
cases = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(cases, "BUILDERS"):
    _spec.loader.exec_module(cases)

pytest.importorskip("normax._batchnorm_ext")

# compiled module -> the NumPy module with the same kernel names and signatures
FAMILIES = {
    "normax._batchnorm_ext": ("normax._batchnorm_numpy", ("train", "infer", "backward")),
    "normax._softmax_ext": ("normax._softmax_numpy", ("forward", "backward", "xent")),
}


def record_calls() -> dict[tuple[str, str], list[tuple]]:
    """Records (argument tuples) of the kernel calls made by one run of every hardening case,
    keyed by (compiled module, kernel name). Recorded on the NumPy backend: the front doors hand
    every backend the same record."""
    calls: dict[tuple[str, str], list[tuple]] = {}
    patched = []
    for ext, (ref_name, names) in FAMILIES.items():
        ref = importlib.import_module(ref_name)
        for name in names:
            fn = getattr(ref, name)

            def recorder(*args, _fn=fn, _key=(ext, name)):
                calls.setdefault(_key, []).append(args)
                return _fn(*args)

            patched.append((ref, name, fn))
            setattr(ref, name, recorder)
    previous = normax.get_backend()
    normax.set_backend("numpy")
    try:
        for build in cases.available():
            for dtype in (np.float32, np.float64):
                case = build(np.random.default_rng(1), dtype, (5, 3, 2))
                case.run(None)
                case.run(case.new_out())
    finally:
        normax.set_backend(previous)
        for ref, name, fn in patched:
            setattr(ref, name, fn)
    return calls


def hostile(arg) -> list:
    """Values to put in place of ``arg``."""
    values = [None, 0, -1, 1, 2**40, -(2**63), 2**70, 1.5, float("nan"), "x", object(),
              np.empty(0), np.zeros(1, np.float32), np.zeros((2, 2), np.int64), np.float64(1.0)]
    if isinstance(arg, np.ndarray):
        flat = arg.reshape(-1)
        values += [
            flat[:-1].copy(),  # one element short
            np.concatenate([flat, flat[:1]]),  # one element long
            arg.astype(np.float32 if arg.dtype != np.float32 else np.float64),
            arg.astype(arg.dtype.newbyteorder()),
            np.asfortranarray(arg.reshape(arg.shape[0], -1)) if arg.ndim else arg,
            flat[::-1],  # negative stride, same size
        ]
        frozen = arg.copy()
        frozen.flags.writeable = False
        values.append(frozen)
    return values


RECORDED = record_calls()


@pytest.mark.parametrize("key", sorted(RECORDED), ids=lambda k: f"{k[0][7:]}.{k[1]}")
def test_binding_survives_hostile_arguments(key):
    fn = getattr(importlib.import_module(key[0]), key[1])
    name = ".".join(key)
    outcomes = {"ok": 0, "error": 0}
    for args in RECORDED[key][:4]:
        variants = [args[:-1], (*args, None), ()]
        for i, j in itertools.combinations(range(len(args)), 2):
            variants.append((*args[:i], None, *args[i + 1:j], "x", *args[j + 1:]))
        for i, arg in enumerate(args):
            variants += [(*args[:i], h, *args[i + 1:]) for h in hostile(arg)]
        for v in variants:
            # Fresh copies of the writable arrays: a call that succeeds may write its outputs.
            v = tuple(a.copy() if isinstance(a, np.ndarray) and a.flags.writeable else a
                      for a in v)
            try:
                fn(*v)
            except SystemError as exc:  # a binding bug, not an argument error
                raise AssertionError(f"{name}: SystemError for a hostile argument") from exc
            except Exception:
                outcomes["error"] += 1
            else:
                outcomes["ok"] += 1
    assert outcomes["error"] > 0, f"{name}: no hostile argument was refused"


def _records(dtype=np.float32):
    """Named hostile records for each compiled kernel entry: sizes that would divide by zero,
    index outside an array or overflow, if a kernel ever saw them."""
    bn = importlib.import_module("normax._batchnorm_ext")
    sm = importlib.import_module("normax._softmax_ext")
    e, e64, f = np.empty(0, dtype), np.empty(0), np.zeros(12, dtype)
    y = np.zeros(12, dtype)
    c3, c4 = np.zeros(3), np.zeros(4)
    g3 = np.ones(3, dtype)
    labels = np.zeros(4, np.int64)
    return {
        "softmax 0 classes": lambda: sm.forward(e, e.copy(), 4, 0, 1, False),
        "softmax 0 classes, no rows": lambda: sm.forward(e, e.copy(), 0, 0, 1, True),
        "softmax backward 0 classes": lambda: sm.backward(e, e, e.copy(), 4, 0, 3, False),
        "xent 0 classes": lambda: sm.xent(e, 4, 0, 1, labels, None, None, 0.0, 1.0, e.copy(),
                                          None),
        "xent label out of range": lambda: sm.xent(f, 4, 3, 1, np.array([0, 1, 2, 3]), None,
                                                   None, 0.0, 1.0, y, None),
        "xent weight short": lambda: sm.xent(f, 4, 3, 1, labels, np.ones(2), None, 0.0, 1.0,
                                             y, None),
        "xent loss short": lambda: sm.xent(f, 4, 3, 1, labels, None, None, 0.0, 1.0, y,
                                           np.zeros(3, dtype)),
        "softmax negative size": lambda: sm.forward(f, y, -4, -3, 1, False),
        "softmax huge size": lambda: sm.forward(f, y, 2**40, 2**40, 2**40, False),
        "softmax size overflows int64": lambda: sm.forward(f, y, 2**62, 4, 1, False),
        "softmax size mismatch": lambda: sm.forward(f, y, 4, 4, 1, False),
        "bn train 0 channels": lambda: bn.train(e, 4, 0, 1, None, None, None, None, 0.1, 1e-5,
                                                e.copy(), e64, e64.copy()),
        "bn train gamma short": lambda: bn.train(f, 4, 3, 1, np.ones(2, dtype), None, None,
                                                 None, 0.1, 1e-5, y, c3, c3.copy()),
        "bn train mean short": lambda: bn.train(f, 4, 3, 1, None, None, None, None, 0.1, 1e-5,
                                                y, np.zeros(2), c3),
        "bn train one running buffer": lambda: bn.train(f, 4, 3, 1, None, None, g3, None, 0.1,
                                                        1e-5, y, c3, c3.copy()),
        "bn infer running_var long": lambda: bn.infer(f, 4, 3, 1, None, None, g3,
                                                      np.ones(4, dtype), 1e-5, y),
        "bn infer negative size": lambda: bn.infer(f, -4, -3, 1, None, None, g3, g3, 1e-5, y),
        "bn backward forged mean": lambda: bn.backward(f, f, 4, 3, 1, np.zeros(2), c3, None,
                                                       y, None, None),
        "bn backward forged invstd": lambda: bn.backward(f, f, 4, 3, 1, c3, c4, None, y, None,
                                                         None),
        "bn backward forged gamma": lambda: bn.backward(f, f, 4, 3, 1, c3, c3,
                                                        np.ones(5, dtype), y,
                                                        np.zeros(5, dtype), np.zeros(5, dtype)),
        "bn backward dgamma without gamma": lambda: bn.backward(f, f, 4, 3, 1, c3, c3, None, y,
                                                                g3.copy(), g3.copy()),
        "bn backward huge size": lambda: bn.backward(f, f, 2**40, 3, 2**40, c3, c3, None, y,
                                                     None, None),
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(_records()))
def test_compiled_entry_refuses_hostile_record(name):
    """Each record raises ValueError or TypeError before any kernel runs (0 classes used to
    divide by zero in csrc/softmax.c and kill the interpreter)."""
    with pytest.raises((ValueError, TypeError)):
        _records()[name]()
