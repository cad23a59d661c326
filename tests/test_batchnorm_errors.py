"""Bad input to batch norm: the same exception and message on every backend, nothing written."""

from __future__ import annotations

import numpy as np
import pytest

import normax

C = 5


def _buffers():
    """Fresh arguments of a valid float32 (N, C) training call, filled with sentinels."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, C)).astype(np.float32)
    return {
        "x": x,
        "gamma": np.ones(C, np.float32),
        "beta": np.zeros(C, np.float32),
        "running_mean": np.full(C, 3.0, np.float32),
        "running_var": np.full(C, 4.0, np.float32),
        "out": np.full(x.shape, -7.0, np.float32),
    }


def _readonly(a):
    a.flags.writeable = False
    return a


def _train(**change):
    def call(b):
        args = {**b, **change.get("args", {})}
        for key, make in change.get("make", {}).items():
            args[key] = make(b)
        kw = {k: args.pop(k) for k in ("axis", "momentum", "eps", "out") if k in args}
        return normax.batch_norm_train(
            args["x"], args["gamma"], args["beta"], args["running_mean"], args["running_var"], **kw
        )

    return call


# id: (call, exception, message start). Every call gets fresh buffers; running_mean, running_var
# and out must be unchanged afterwards whenever they are arrays of the right shape.
TRAIN_CASES = {
    "int-x": (
        _train(args={"x": np.ones((6, C), np.int64)}),
        TypeError,
        "x has unsupported dtype int64; supported: float16, bfloat16, float32, float64",
    ),
    "float16-x-float16-running-var": (
        _train(args={"x": np.ones((6, C), np.float16), "running_var": np.ones(C, np.float16)}),
        TypeError,
        "running_var has dtype float16, expected float32",
    ),
    "float16-x-float16-out": (
        _train(args={"x": np.ones((6, C), np.float16)}),
        TypeError,
        "out has dtype float32, expected float16",
    ),
    "int-list-x": (
        _train(args={"x": [[1, 2, 3, 4, 5]] * 6}),
        TypeError,
        "x has unsupported dtype int64",
    ),
    "none-x": (_train(args={"x": None}), TypeError, "x must be a numpy array, got NoneType"),
    "1d-x": (
        _train(args={"x": np.ones(C, np.float32)}),
        ValueError,
        "x must have at least 2 dimensions, got shape (5,)",
    ),
    "axis-2": (
        _train(args={"axis": 2}),
        ValueError,
        "axis 2 is out of range for an array of 2 dimensions",
    ),
    "axis--3": (_train(args={"axis": -3}), ValueError, "axis -3 is out of range"),
    "axis-float": (_train(args={"axis": 1.0}), TypeError, "axis must be an int, got float"),
    "gamma-shape": (
        _train(args={"gamma": np.ones(C - 1, np.float32)}),
        ValueError,
        "gamma has shape (4,), expected (5,) for the 5 channels of x",
    ),
    "beta-shape": (
        _train(args={"beta": np.ones((1, C), np.float32)}),
        ValueError,
        "beta has shape (1, 5), expected (5,)",
    ),
    "gamma-int": (
        _train(args={"gamma": np.ones(C, np.int32)}),
        TypeError,
        "gamma has unsupported dtype int32",
    ),
    "running-mean-shape": (
        _train(args={"running_mean": np.zeros(C + 1, np.float32)}),
        ValueError,
        "running_mean has shape (6,), expected (5,)",
    ),
    "running-var-dtype": (
        _train(args={"running_var": np.ones(C, np.float64)}),
        TypeError,
        "running_var has dtype float64, expected float32",
    ),
    "running-var-int": (
        _train(args={"running_var": np.ones(C, np.int64)}),
        TypeError,
        "running_var has dtype int64, expected float32",
    ),
    "running-mean-list": (
        _train(args={"running_mean": [0.0] * C}),
        TypeError,
        "running_mean must be a numpy array, got list",
    ),
    "running-mean-readonly": (
        _train(make={"running_mean": lambda b: _readonly(b["running_mean"].copy())}),
        ValueError,
        "running_mean is read-only",
    ),
    "running-var-strided": (
        _train(make={"running_var": lambda b: np.ones(2 * C, np.float32)[::2]}),
        ValueError,
        "running_var must be C-contiguous",
    ),
    "running-mean-alone": (
        _train(args={"running_var": None}),
        ValueError,
        "running_mean and running_var must be given together",
    ),
    "running-var-alone": (
        _train(args={"running_mean": None}),
        ValueError,
        "running_mean and running_var must be given together: got running_var",
    ),
    "single-value": (
        _train(args={"x": np.ones((1, C), np.float32)}),
        ValueError,
        "x has shape (1, 5): training needs more than 1 value per channel",
    ),
    "single-value-columns": (
        _train(args={"x": np.ones((C, 1), np.float32), "axis": 0}),
        ValueError,
        "x has shape (5, 1): training needs more than 1 value",
    ),
    "eps-zero": (
        _train(args={"eps": 0.0}),
        ValueError,
        "eps must be positive during training, got 0.0",
    ),
    "eps-negative": (
        _train(args={"eps": -1e-5}),
        ValueError,
        "eps must be a finite number >= 0, got -1e-05",
    ),
    "eps-nan": (_train(args={"eps": float("nan")}), ValueError, "eps must be a finite number"),
    "eps-inf": (_train(args={"eps": float("inf")}), ValueError, "eps must be a finite number"),
    "eps-str": (_train(args={"eps": "small"}), TypeError, "eps must be a real number"),
    "momentum-high": (
        _train(args={"momentum": 1.5}),
        ValueError,
        "momentum must be a finite number in [0.0, 1.0], got 1.5",
    ),
    "momentum-negative": (_train(args={"momentum": -0.1}), ValueError, "momentum must be"),
    "momentum-nan": (_train(args={"momentum": float("nan")}), ValueError, "momentum must be"),
    "momentum-none": (
        _train(args={"momentum": None}),
        TypeError,
        "momentum must be a real number, got None",
    ),
    "out-shape": (
        _train(make={"out": lambda b: np.zeros((C, 6), np.float32)}),
        ValueError,
        "out has shape (5, 6), expected (6, 5)",
    ),
    "out-dtype": (
        _train(make={"out": lambda b: np.zeros((6, C), np.float64)}),
        TypeError,
        "out has dtype float64, expected float32",
    ),
    "out-readonly": (
        _train(make={"out": lambda b: _readonly(np.zeros((6, C), np.float32))}),
        ValueError,
        "out is read-only",
    ),
    "out-strided": (
        _train(make={"out": lambda b: np.zeros((6, 2 * C), np.float32)[:, ::2]}),
        ValueError,
        "out must be C-contiguous",
    ),
    "out-list": (_train(args={"out": [0.0]}), TypeError, "out must be a numpy array, got list"),
    "out-is-x": (
        _train(make={"out": lambda b: b["x"]}),
        ValueError,
        "out overlaps x; pass a separate array",
    ),
    "running-mean-in-x": (
        _train(make={"running_mean": lambda b: b["x"][2]}),
        ValueError,
        "running_mean overlaps x",
    ),
    "running-var-is-mean": (
        _train(make={"running_var": lambda b: b["running_mean"]}),
        ValueError,
        "running_mean overlaps running_var",
    ),
    "running-mean-is-gamma": (
        _train(make={"running_mean": lambda b: b["gamma"]}),
        ValueError,
        "running_mean overlaps gamma",
    ),
    "running-var-in-beta": (
        _train(make={"running_var": lambda b: b["beta"]}),
        ValueError,
        "running_var overlaps beta",
    ),
    "running-var-in-out": (
        _train(make={"running_var": lambda b: b["out"][1]}),
        ValueError,
        "out overlaps running_var",
    ),
}


def _snapshot(b):
    return {k: np.array(b[k], copy=True) for k in ("running_mean", "running_var", "out")}


def _outcome(call):
    """(exception type, message, buffers before, buffers after) of ``call`` on fresh buffers."""
    b = _buffers()
    before = _snapshot(b)
    with pytest.raises(Exception) as info:
        call(b)
    return info.type, str(info.value), before, _snapshot(b)


def _on_every_backend(call):
    results = {}
    previous = normax.get_backend()
    try:
        for name in normax.available_backends():
            normax.set_backend(name)
            results[name] = _outcome(call)
    finally:
        normax.set_backend(previous)
    return results


def _check(call, exc, message):
    results = _on_every_backend(call)
    kinds = {name: (r[0], r[1]) for name, r in results.items()}
    assert len(set(kinds.values())) == 1, kinds  # same type and message everywhere
    kind, text, _, _ = next(iter(results.values()))
    assert kind is exc, (kind, text)
    assert text.startswith(message), text
    for name, (_, _, b, a) in results.items():
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} wrote {key}")


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_input(case):
    _check(*TRAIN_CASES[case])


def _infer(**args):
    def call(b):
        a = {**b, **{k: (v(b) if callable(v) else v) for k, v in args.items()}}
        return normax.batch_norm_infer(
            a["x"],
            a["gamma"],
            a["beta"],
            a["running_mean"],
            a["running_var"],
            out=a["out"],
            **a.get("kw", {}),
        )

    return call


INFER_CASES = {
    "int-x": (_infer(x=np.ones((6, C), np.int16)), TypeError, "x has unsupported dtype int16"),
    "running-mean-none": (
        _infer(running_mean=None),
        TypeError,
        "running_mean must be a numpy array, got None",
    ),
    "running-var-shape": (
        _infer(running_var=np.ones(3)),
        ValueError,
        "running_var has shape (3,), expected (5,)",
    ),
    "running-var-int": (
        _infer(running_var=np.ones(C, np.int8)),
        TypeError,
        "running_var has unsupported dtype int8",
    ),
    "eps-negative": (_infer(kw={"eps": -1.0}), ValueError, "eps must be a finite number >= 0"),
    "axis": (_infer(kw={"axis": 3}), ValueError, "axis 3 is out of range"),
    "out-dtype": (_infer(out=np.zeros((6, C), np.float64)), TypeError, "out has dtype float64"),
    "out-is-x": (_infer(out=lambda b: b["x"]), ValueError, "out overlaps x"),
}


@pytest.mark.parametrize("case", INFER_CASES)
def test_infer_bad_input(case):
    _check(*INFER_CASES[case])


def _backward(**args):
    def call(b):
        _, cache = normax.batch_norm_train(b["x"], b["gamma"], b["beta"])
        dy = np.ones_like(b["x"])
        a = {"dy": dy, "cache": cache, "out": b["out"]}
        a.update({k: (v(b, a) if callable(v) else v) for k, v in args.items()})
        return normax.batch_norm_backward(a["dy"], a["cache"], out=a["out"])

    return call


BACKWARD_CASES = {
    "cache-tuple": (
        _backward(cache=lambda b, a: tuple(a["cache"])),
        TypeError,
        "cache must be the BatchNormCache returned by batch_norm_train, got tuple",
    ),
    "cache-none": (_backward(cache=None), TypeError, "cache must be the BatchNormCache"),
    "dy-shape": (
        _backward(dy=np.ones((C, 6), np.float32)),
        ValueError,
        "dy has shape (5, 6), expected (6, 5) (the shape of x)",
    ),
    "dy-dtype": (
        _backward(dy=np.ones((6, C), np.float64)),
        TypeError,
        "dy has dtype float64, expected float32 (the dtype of x)",
    ),
    "dy-int": (
        _backward(dy=np.ones((6, C), np.int32)),
        TypeError,
        "dy has unsupported dtype int32",
    ),
    "out-shape": (
        _backward(out=np.zeros((6, C + 1), np.float32)),
        ValueError,
        "out has shape (6, 6), expected (6, 5)",
    ),
    "out-is-dy": (_backward(out=lambda b, a: a["dy"]), ValueError, "out overlaps dy"),
    "out-is-x": (_backward(out=lambda b, a: b["x"]), ValueError, "out overlaps x"),
}


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_backward_bad_input(case):
    _check(*BACKWARD_CASES[case])


def test_int_eps_and_momentum_are_accepted():
    x = np.random.default_rng(0).standard_normal((4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    y, _ = normax.batch_norm_train(x, None, None, rm, rv, eps=1, momentum=1)
    np.testing.assert_allclose(rm, x.mean(0))
    assert np.isfinite(y).all()
    y = normax.batch_norm_infer(x, None, None, rm, rv, eps=0)  # inference keeps eps >= 0
    assert np.isfinite(y).all()
