"""The C binding (normax._core) survives any arguments, not only those the Python layer sends.

The public functions check everything before calling ``normax._core``; the binding checks the
arrays again so that no call can make a kernel read or write outside them. This tests that
second line directly: the real argument tuples of every C kernel call are recorded, then each
argument is replaced in turn by hostile values (None, wrong types, huge and negative ints,
arrays of another size, dtype, byte order or layout, read-only arrays) and the call must return
or raise an ordinary exception: never crash, never SystemError (a NULL return without an
exception, or a result with one set). Run under the sanitizer build (CI step 3) this also
proves that none of those calls touches memory it should not.
"""

from __future__ import annotations

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

core = pytest.importorskip("normax._core")


def _c_tables():
    """(module dict, key) of every backend table entry that points into normax._core."""
    found = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("normax") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, dict) and getattr(value.get("c"), "__self__", None) is core:
                found.append(value)
    return found


def record_calls() -> dict[str, list[tuple]]:
    """Argument tuples of the C kernel calls made by one run of every hardening case."""
    for build in cases.available():  # imports each family's modules first
        build(np.random.default_rng(0), np.float64, (5, 3, 2))
    calls: dict[str, list[tuple]] = {}
    patched = []
    for table in _c_tables():
        fn = table["c"]

        def recorder(*args, _fn=fn):
            calls.setdefault(_fn.__name__, []).append(args)
            return _fn(*args)

        patched.append((table, fn))
        table["c"] = recorder
    previous = normax.get_backend()
    normax.set_backend("c")
    try:
        for build in cases.available():
            for dtype in (np.float32, np.float64):
                case = build(np.random.default_rng(1), dtype, (5, 3, 2))
                case.run(None)
                case.run(case.new_out())
    finally:
        normax.set_backend(previous)
        for table, fn in patched:
            table["c"] = fn
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


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_binding_survives_hostile_arguments(name):
    fn = getattr(core, name)
    outcomes = {"ok": 0, "error": 0}
    for args in RECORDED[name][:4]:
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
