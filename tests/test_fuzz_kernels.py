"""Fuzzing every public kernel across backends, hostile inputs included.

Each example draws a whole call: shapes (zero-size axes, odd sizes, now and then one past the
C kernels' threading threshold), dtypes (float32/float64, and float16, integers, bool, complex,
object that must be refused), memory layouts (C order, Fortran order, strided, byte-swapped,
unaligned, read-only, zero-stride broadcast), values (NaN, +-inf, denormals, -0.0, logits near
the largest finite values), axes (in range, out of range, not an int), labels (negative, huge,
every integer dtype, ignore_index anywhere), weights, options (in and out of their ranges) and
``out`` buffers (correct, wrong, read-only, overlapping an input).

The same call is made on every available backend with freshly built arguments. Every backend
must either return the NumPy reference backend's result (within the dtype's tolerance, NaN
where it has NaN) or raise TypeError/ValueError with the same message; an input the call must
not write stays untouched, and nothing at all is written by a call that raises.

Budget: ``NORMAX_FUZZ=ci`` (the default; a fixed, derandomized set of examples so CI is
reproducible), ``NORMAX_FUZZ=long`` (thousands of fresh examples per kernel, by hand:
``tools/fuzz.sh``) or ``NORMAX_FUZZ=<number of examples per kernel>``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import normax  # noqa: E402

# NORMAX_BACKEND pins the backend under test (the sanitizer stage sets c): it is then compared
# with the NumPy reference alone, which skips compiling the Numba kernels there.
_PINNED = os.environ.get("NORMAX_BACKEND", "").strip().lower()
BACKENDS = tuple(b for b in normax.available_backends() if not _PINNED or b in (_PINNED, "numpy"))
TRIED: Counter = Counter()  # examples run per kernel (printed at the end with -s)


def _profile() -> settings:
    choice = os.environ.get("NORMAX_FUZZ", "ci")
    common = {
        "deadline": None,  # first Numba calls compile
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                  HealthCheck.filter_too_much],
    }
    if choice == "ci":
        return settings(max_examples=120, derandomize=True, database=None, **common)
    if choice == "long":
        return settings(max_examples=4000, **common)
    return settings(max_examples=int(choice), **common)


FUZZ = _profile()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if TRIED:
        total = sum(TRIED.values())
        print(f"\nfuzz: {total} calls x {len(BACKENDS)} backends: " + ", ".join(
            f"{k} {v}" for k, v in sorted(TRIED.items())))


# ---- arrays ----------------------------------------------------------------------------------

LAYOUTS = ["c", "c", "c", "fortran", "strided", "swapped", "unaligned", "readonly", "broadcast"]
GOOD_DTYPES = ["float32", "float64"]
BAD_DTYPES = ["float16", "int32", "int64", "bool", "complex128", "object", "longdouble"]


@dataclass(frozen=True)
class Spec:
    """How to build one array argument, so every backend gets an identical fresh copy."""

    shape: tuple[int, ...]
    dtype: str
    layout: str
    seed: int
    scale: float
    specials: float  # fraction of entries replaced by NaN, inf, denormals, -0.0, huge values
    huge: bool = True  # whether the specials include values near the largest finite one

    def values(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        a = rng.normal(size=self.shape) * self.scale
        dt = np.dtype(self.dtype)
        if self.specials and dt.kind == "f" and a.size:
            fin = np.finfo(dt)
            pool = [np.nan, np.inf, -np.inf, -0.0, float(fin.smallest_subnormal),
                    -float(fin.smallest_subnormal)]
            if self.huge:
                pool += [float(fin.max) / 4, -float(fin.max) / 4]
            pool = np.array(pool, dtype=np.float64)
            hit = rng.random(self.shape) < self.specials
            a[hit] = rng.choice(pool, size=int(hit.sum()))
        with np.errstate(all="ignore"):
            return a.astype(dt) if dt != np.dtype(object) else a.astype(object)

    def build(self) -> np.ndarray:
        return lay_out(self.values(), self.layout)


def lay_out(a: np.ndarray, layout: str) -> np.ndarray:
    """The values of ``a`` in the given memory layout."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim:
        wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if layout == "swapped" and a.dtype.kind in "fiuc":
        return a.astype(a.dtype.newbyteorder())
    if layout == "unaligned" and a.dtype.kind in "fiuc" and a.dtype.itemsize > 1:
        raw = np.zeros(a.nbytes + 1, np.uint8)
        u = raw[1:].view(a.dtype).reshape(a.shape)
        u[...] = a
        return u
    if layout == "readonly":
        a.flags.writeable = False
        return a
    if layout == "broadcast" and a.ndim and a.size:
        return np.broadcast_to(a[:1], a.shape)
    return a


@st.composite
def shapes(draw, min_ndim=1, max_ndim=4, min_side=0):
    """Mostly small shapes; sometimes a zero; sometimes one long axis (> 2**15 elements)."""
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape = draw(st.lists(st.integers(min_side, 6), min_size=ndim, max_size=ndim))
    if ndim and draw(st.integers(0, 14)) == 0:
        shape[draw(st.integers(0, ndim - 1))] = draw(st.integers(33000, 40000))
        shape = [s if s == max(shape) else min(s, 2) for s in shape]
    return tuple(shape)


@st.composite
def specs(draw, shape, dtype=None, bad_dtype=0.05, layout=None, scale=None, specials=None,
          huge=True):
    if dtype is None:
        bad = draw(st.floats(0, 1)) < bad_dtype
        dtype = draw(st.sampled_from(BAD_DTYPES if bad else GOOD_DTYPES))
    return Spec(
        tuple(shape), dtype,
        layout if layout is not None else draw(st.sampled_from(LAYOUTS)),
        draw(st.integers(0, 2**32 - 1)),
        scale if scale is not None else draw(st.sampled_from([1.0, 1.0, 30.0, 1e-3])),
        specials if specials is not None else draw(st.sampled_from([0.0, 0.0, 0.0, 0.05, 0.3])),
        huge,
    )


def mostly(good: list, bad: list, p_bad: float = 0.15):
    """One of ``good``, or with probability about ``p_bad`` one of ``bad``: hostile options stay
    rare enough that most calls get far enough to exercise the kernels."""
    return st.integers(0, 99).flatmap(
        lambda r: st.sampled_from(bad if r < 100 * p_bad else good))


def axes(ndim: int):
    good = list(range(-ndim, ndim)) if ndim else [0]
    return mostly(good, [ndim, -ndim - 1, 2**63, 1.0, "0", None], 0.1)


# ---- running one call on every backend ---------------------------------------------------------


@dataclass
class Outcome:
    error: tuple[type, str] | None
    result: object
    written: dict[str, np.ndarray]  # arrays the call may write, after the call
    untouched: list[str]  # names of arrays that changed but must not have


def _snapshot(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: a.tobytes() for k, a in arrays.items()
            if isinstance(a, np.ndarray) and a.dtype != object}


def run_everywhere(make: Callable[[], tuple[Callable, dict, set]]) -> dict[str, Outcome]:
    """Call on each backend. ``make()`` returns ``(call, arrays, writable)``: a function of no
    arguments, every array it was given by name, and the names it may write when it succeeds."""
    outcomes = {}
    previous = normax.get_backend()
    try:
        for name in BACKENDS:
            normax.set_backend(name)
            call, arrays, writable = make()
            before = _snapshot(arrays)
            try:
                result, error = call(), None
            except (TypeError, ValueError) as exc:
                result, error = None, (type(exc), str(exc))
            after = _snapshot(arrays)
            may = set() if error else writable
            # An array that is a view of one the call may write changes with it (beta as a view
            # of the out of a backward pass, which does not read beta): that is the caller's
            # aliasing, not a write of the kernel.
            aliased = {k for k in before for w in may if w in arrays
                       and np.shares_memory(arrays[k], arrays[w])}
            changed = [k for k in before
                       if k not in may and k not in aliased and after[k] != before[k]]
            outcomes[name] = Outcome(error, result,
                                     {k: np.array(arrays[k]) for k in writable if k in arrays},
                                     changed)
    finally:
        normax.set_backend(previous)
    return outcomes


def _tol(dtype) -> dict:
    if np.dtype(dtype) == np.float16:  # kernels that store in half: one float16 ulp
        return {"rtol": 2.0**-10, "atol": 2.0**-10}
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-4, "atol": 2e-5}
    return {"rtol": 1e-9, "atol": 1e-11}


def _same(got, want, tol, where: str, nonfinite_alike: bool = False) -> None:
    if want is None or isinstance(want, (bool, int, str)):
        assert got == want, where
    elif isinstance(want, np.generic):  # the reduced loss of half-precision logits
        assert type(got) is type(want), f"{where}: {type(got).__name__} vs {type(want).__name__}"
        np.testing.assert_allclose(np.float64(got), np.float64(want), **tol, equal_nan=True,
                                   err_msg=where)
    elif isinstance(want, float):
        assert isinstance(got, float), f"{where}: {type(got).__name__} instead of float"
        np.testing.assert_allclose(got, want, **tol, err_msg=where)
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__} instead of ndarray"
        assert got.shape == want.shape and got.dtype == want.dtype, \
            f"{where}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
        if nonfinite_alike and got.dtype.kind == "f":
            # Batch statistics of a channel holding inf: the reference gives mean -inf where
            # the C kernel's pivot-shifted sums give NaN (inf - inf). Either marks the channel
            # as broken, and y is NaN there on every backend, so only "non-finite" is compared.
            got, want = (np.where(np.isfinite(a), a, np.nan) for a in (got, want))
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(got, want, **tol, equal_nan=True, err_msg=where)
    elif isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, tol, f"{where}[{i}]", nonfinite_alike)
    else:
        raise AssertionError(f"{where}: cannot compare {type(want).__name__}")


def check(kernel: str, make, dtype, nonfinite_alike: bool = False, scale: float = 1.0) -> None:
    """Every backend agrees with the NumPy reference backend: same error or same result.

    ``scale`` multiplies the absolute tolerance, for results that are differences of terms of
    that size (rounding error is relative to the terms, not to the difference)."""
    TRIED[kernel] += 1
    outcomes = run_everywhere(make)
    ref = outcomes["numpy"]
    tol = _tol(dtype)
    tol["atol"] *= scale
    for name, got in outcomes.items():
        assert not got.untouched, f"{kernel} [{name}] wrote {got.untouched}"
        if ref.error or got.error:
            assert got.error == ref.error, \
                f"{kernel}: {name} gave {got.error}, numpy gave {ref.error}"
            continue
        _same(got.result, ref.result, tol, f"{kernel} [{name}] result", nonfinite_alike)
        for k, arr in ref.written.items():
            _same(got.written[k], arr, tol, f"{kernel} [{name}] {k}", nonfinite_alike)


# ---- out buffers -------------------------------------------------------------------------------

OUT_KINDS = mostly([None, "ok"], ["shape", "dtype", "readonly", "fortran", "overlap"], 0.2)


def make_out(kind, like: np.ndarray, arrays: dict):
    """An ``out`` argument of the given kind for a result shaped like ``like``; registered in
    ``arrays`` so that writes to it are checked. "overlap" makes ``like`` and ``out`` two views
    of one buffer, one element apart (``like`` is replaced in ``arrays`` by its view)."""
    if kind is None:
        return None
    dt = like.dtype if like.dtype.kind == "f" and like.dtype.isnative else np.dtype(np.float64)
    if kind == "overlap" and like.dtype.kind == "f" and like.size:
        base = np.zeros(like.size + 1, like.dtype.newbyteorder("="))
        out = base[1:].reshape(like.shape)
        arrays["out"] = out
        return out, base[:-1].reshape(like.shape)
    shape = (*like.shape[:-1], like.shape[-1] + 1) if kind == "shape" and like.ndim else like.shape
    out = np.full(shape, -7.0, np.float16 if kind == "dtype" else dt)
    if kind == "readonly":
        out.flags.writeable = False
    if kind == "fortran":
        out = np.asfortranarray(out)
    arrays["out"] = out
    return out


def with_out(kind, name: str, arrays: dict):
    """``out`` for ``arrays[name]``; with "overlap", ``arrays[name]`` becomes a view sharing the
    out buffer, holding the same values."""
    res = make_out(kind, arrays[name], arrays)
    if isinstance(res, tuple):
        out, alias = res
        alias[...] = arrays[name]
        arrays[name] = alias
        return out
    return res


# ---- softmax family ----------------------------------------------------------------------------

LOGIT_SCALES = [1.0, 5.0, 1e-3, 1e25, 1e290]


@FUZZ
@given(data=st.data())
def test_fuzz_softmax(data):
    fn = data.draw(st.sampled_from(["softmax", "log_softmax"]))
    shape = data.draw(shapes())
    zs = data.draw(specs(shape, scale=data.draw(st.sampled_from(LOGIT_SCALES))))
    axis = data.draw(axes(len(shape)))
    out_kind = data.draw(OUT_KINDS)

    def make():
        arrays = {"z": zs.build()}
        out = with_out(out_kind, "z", arrays)
        z = arrays["z"]
        return lambda: getattr(normax, fn)(z, axis=axis, out=out), arrays, {"out"}

    check(fn, make, zs.dtype)


@FUZZ
@given(data=st.data())
def test_fuzz_softmax_backward(data):
    log = data.draw(st.booleans())
    shape = data.draw(shapes())
    ys = data.draw(specs(shape))
    gshape = shape if data.draw(st.integers(0, 9)) else data.draw(shapes())
    # The gradient g - p * sum(g) cancels: its rounding error is relative to sum(|g|), so g has
    # no inf/huge entries and the tolerance scales with sum(|g|) over a row.
    gs = data.draw(specs(gshape, dtype=ys.dtype if data.draw(st.integers(0, 9)) else None,
                         specials=0.0))
    axis = data.draw(axes(len(shape)))
    out_kind = data.draw(OUT_KINDS)
    forward = normax.log_softmax if log else normax.softmax
    backward = normax.log_softmax_backward if log else normax.softmax_backward

    def make():
        y = ys.build()
        if y.dtype.name in GOOD_DTYPES and y.size and -y.ndim <= _int_or(axis, 99) < y.ndim:
            y = forward(np.ascontiguousarray(y, y.dtype.newbyteorder("=")), axis=axis)
        arrays = {"g": gs.build(), "y": y}
        out = with_out(out_kind, "g", arrays)
        g = arrays["g"]
        return lambda: backward(g, y, axis, out=out), arrays, {"out"}

    g = gs.values()
    row = float(np.abs(g).max()) * max(shape) if g.size and g.dtype.kind == "f" else 1.0
    check("softmax_backward" if not log else "log_softmax_backward", make, ys.dtype,
          scale=max(1.0, row))


def _int_or(value, default):
    return value if isinstance(value, int) else default


LABEL_DTYPES = ["int64", "int64", "int32", "int8", "int16", "uint8", "uint16", "uint32", "uint64"]
IGNORES = mostly([None, None, -100, -1, 0, 2, 7, np.int8(-1)], [2**63, -(2**63) - 1, 1.5, "x"])
SMOOTHING = mostly([0.0, 0.0, 0.1, 1.0, 0.5],
                   [-0.1, 1.5, float("nan"), float("inf"), 10**400, "a"])
REDUCTIONS = mostly(["mean", "sum", "none"], ["avg", None, "MEAN"], 0.1)


@st.composite
def label_targets(draw, zshape, axis):
    """Integer labels of z's shape without the class axis: in range, off by a little, huge."""
    ax = _int_or(axis, 0) % len(zshape) if zshape else 0
    c = zshape[ax] if zshape else 1
    lshape = zshape[:ax] + zshape[ax + 1:]
    if draw(st.integers(0, 12)) == 0:
        lshape = (*lshape, 1)
    dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES)))
    info = np.iinfo(dtype)
    seed = draw(st.integers(0, 2**32 - 1))
    hostile = draw(st.sampled_from([(), (), (), (-1,), (c,), (-100,), (int(info.max),),
                                    (int(info.min),), (-100, c + 3)]))
    layout = draw(st.sampled_from(["c", "c", "fortran", "readonly", "broadcast", "swapped"]))
    return LabelSpec(lshape, dtype.str, seed, max(c, 1), hostile, layout)


@dataclass(frozen=True)
class LabelSpec:
    shape: tuple[int, ...]
    dtype: str
    seed: int
    classes: int
    hostile: tuple[int, ...]
    layout: str

    def build(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        dt = np.dtype(self.dtype)
        a = rng.integers(0, self.classes, size=self.shape).astype(dt)
        info = np.iinfo(dt)
        for i, v in enumerate(self.hostile):
            if a.size and info.min <= v <= info.max:
                a.flat[(i * 7919) % a.size] = v
        return lay_out(a, self.layout)


@FUZZ
@given(data=st.data())
def test_fuzz_cross_entropy(data):
    shape = data.draw(shapes())
    zs = data.draw(specs(shape, scale=data.draw(st.sampled_from(LOGIT_SCALES))))
    axis = data.draw(axes(len(shape)))
    if data.draw(st.integers(0, 3)):
        target = data.draw(label_targets(shape, axis))
    else:
        tshape = shape if data.draw(st.integers(0, 9)) else data.draw(shapes())
        target = data.draw(specs(tshape, dtype=zs.dtype if data.draw(st.integers(0, 5)) else None))
    c = shape[_int_or(axis, 0) % len(shape)] if shape else 0
    wkind = data.draw(mostly([None, "ok", "list"], ["len", "neg", "nan"]))
    wspec = data.draw(specs((c + (wkind == "len"),), dtype=data.draw(st.sampled_from(
        ["float64", "float32", "int64", "bool"]))))
    opts = {
        "reduction": data.draw(REDUCTIONS),
        "ignore_index": data.draw(IGNORES),
        "label_smoothing": data.draw(SMOOTHING),
    }
    out_kind = data.draw(OUT_KINDS)

    def make():
        arrays = {"z": zs.build(), "target": target.build()}
        weight = None
        if wkind is not None:
            w = np.abs(wspec.values()) if wspec.dtype != "bool" else wspec.values()
            if wkind == "neg" and w.size:
                w.flat[-1] = -1
            if wkind == "nan" and w.size and w.dtype.kind == "f":
                w.flat[0] = np.nan
            weight = w.tolist() if wkind == "list" else w
            if isinstance(weight, np.ndarray):
                arrays["weight"] = weight
        out = with_out(out_kind, "z", arrays)
        z, t = arrays["z"], arrays["target"]
        return (lambda: normax.softmax_cross_entropy(z, t, axis=axis, weight=weight, out=out,
                                                     **opts)), arrays, {"out"}

    check("softmax_cross_entropy", make, zs.dtype)


# ---- batch norm ------------------------------------------------------------------------------

MOMENTA = mostly([0.1, 0.0, 1.0, 0.5], [-0.1, 1.5, float("nan"), 10**400, "0.1", None], 0.1)
EPSILONS = mostly([1e-5, 0.0, 1e-3], [-1e-5, float("inf"), float("nan"), 10**400, None], 0.1)
PARAM_KINDS = mostly([None, "ok", "ok", "layout", "other-dtype"], ["len", "int", "overlap-out"],
                     0.1)


def _channels(shape, axis) -> int:
    ax = _int_or(axis, 0)
    return shape[ax] if shape and -len(shape) <= ax < len(shape) else 3


@st.composite
def bn_params(draw, c: int, dtype: str, n: int):
    """``n`` per-channel arrays (gamma, beta or running stats) as (kind, Spec)."""
    out = []
    for _ in range(n):
        kind = draw(PARAM_KINDS)
        dt = dtype if dtype in GOOD_DTYPES else "float64"
        if kind == "other-dtype":
            dt = "float32" if dt == "float64" else "float64"
        layout = draw(st.sampled_from(LAYOUTS)) if kind == "layout" else "c"
        spec = Spec((c + (kind == "len"),), "int64" if kind == "int" else dt, layout,
                    draw(st.integers(0, 2**32 - 1)), 1.0, 0.0)
        out.append((kind, spec))
    return out


def _param_value(kind, spec: Spec, arrays: dict, name: str, positive: bool = False):
    if kind is None:
        return None
    out = arrays.get("out")
    if kind == "overlap-out" and out is not None and out.size >= spec.shape[0] \
            and out.dtype == np.dtype(spec.dtype) and out.flags.writeable:
        a = arrays["out"].reshape(-1)[: spec.shape[0]]  # a view into out
        a[...] = np.abs(spec.values()) + 0.5 if positive else spec.values()
    else:
        a = spec.values()
        if positive:
            a = np.abs(a) + 0.5
        a = lay_out(a, spec.layout)
    arrays[name] = a
    return a


@FUZZ
@given(data=st.data())
def test_fuzz_batch_norm(data):
    mode = data.draw(st.sampled_from(["train", "train", "infer", "backward"]))
    shape = data.draw(shapes(min_ndim=1))
    # No values near the largest double: their squares overflow the variance, and the
    # backends then disagree (0 on C/NumPy, NaN on Numba; the exact y is finite).
    xs = data.draw(specs(shape, scale=data.draw(st.sampled_from([1.0, 1e-3, 1e4, 1e15])),
                         huge=False))
    axis = data.draw(axes(len(shape)))
    c = _channels(shape, axis)
    params = data.draw(bn_params(c, xs.dtype, 4))
    running = data.draw(st.sampled_from(["none", "both", "both", "one"]))
    opts = {"eps": data.draw(EPSILONS)}
    if mode != "infer":
        opts["momentum"] = data.draw(MOMENTA)
    out_kind = data.draw(OUT_KINDS)
    dys = data.draw(specs(shape if data.draw(st.integers(0, 9)) else data.draw(shapes()),
                          dtype=xs.dtype if data.draw(st.integers(0, 9)) else None))

    def make():
        arrays = {"x": xs.build()}
        out = with_out(out_kind, "x", arrays)
        x = arrays["x"]
        gamma = _param_value(*params[0], arrays, "gamma")
        beta = _param_value(*params[1], arrays, "beta")
        rm = _param_value(*params[2], arrays, "running_mean")
        rv = _param_value(*params[3], arrays, "running_var", positive=True)
        if mode == "infer":
            return (lambda: normax.batch_norm_infer(x, gamma, beta, rm, rv, axis=axis, out=out,
                                                    **opts)), arrays, {"out"}
        if running == "none" or (running == "one" and rm is not None):
            rv = None
        if running == "none":
            rm = None
        writable = {"out", "running_mean", "running_var"}
        if mode == "train":
            return (lambda: normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis, out=out,
                                                    **opts)), arrays, writable
        arrays["dy"] = dys.build()
        # The forward pass is setup: it may legitimately update running statistics that alias
        # the backward's out, and those writes are not the backward's even when it then fails.
        try:
            _, cache = normax.batch_norm_train(x, gamma, beta, rm, rv, axis=axis, **opts)
        except (TypeError, ValueError) as exc:
            error = exc

            def fail():
                raise error

            return fail, arrays, writable
        return (lambda: normax.batch_norm_backward(arrays["dy"], cache, out=out)), arrays, {"out"}

    check(f"batch_norm_{mode}", make, xs.dtype, nonfinite_alike=True)


# ---- optimizers --------------------------------------------------------------------------------

HYPER = {
    "lr": mostly([1e-3, 0.1, 0.0, 1.0], [-0.1, float("nan"), float("inf"), 10**400, "0.1"]),
    "momentum": mostly([0.0, 0.9, 0.5], [-0.5, float("nan")]),
    "weight_decay": mostly([0.0, 1e-2], [-1e-2, float("inf")]),
    "betas": mostly([(0.9, 0.999), (0.0, 0.0), (0.5, 0.9)],
                    [(1.0, 0.9), (0.9,), "ab", (-0.1, 0.9)]),
    "eps": mostly([1e-8, 0.0, 1e-3], [-1e-8, float("nan")]),
    "alpha": mostly([0.99, 0.0, 0.5], [1.5, -0.1]),
    "beta": mostly([0.9, 0.0, 0.5], [1.0, 2.0]),
}
OPTIMIZERS = {
    "SGD": ["lr", "momentum", "weight_decay", ("nesterov", st.booleans()),
            ("dampening", mostly([0.0, 0.1], [-1.0]))],
    "Momentum": ["lr", "beta", ("bias_correction", st.booleans())],
    "RMSprop": ["lr", "alpha", "eps", "momentum", "weight_decay", ("centered", st.booleans())],
    "Adam": ["lr", "betas", "eps", "weight_decay", ("amsgrad", st.booleans())],
    "AdamW": ["lr", "betas", "eps", "weight_decay", ("amsgrad", st.booleans())],
}


@FUZZ
@given(data=st.data())
def test_fuzz_optimizers(data):
    optim = importlib.import_module("normax.optim")
    name = data.draw(st.sampled_from(sorted(OPTIMIZERS)))
    opts = {}
    for item in OPTIMIZERS[name]:
        key, strategy = item if isinstance(item, tuple) else (item, HYPER[item])
        if data.draw(st.booleans()):
            opts[key] = data.draw(strategy)
    nparams = data.draw(st.integers(1, 3))
    pspecs = [data.draw(specs(data.draw(shapes(max_ndim=3)), bad_dtype=0.03,
                              layout=data.draw(mostly(["c"], LAYOUTS[3:], 0.1)),
                              specials=0.0)) for _ in range(nparams)]
    steps = data.draw(st.integers(1, 3))
    gkind = data.draw(mostly(["ok"], ["shape", "dtype", "missing", "layout"], 0.15))
    gspecs = [[data.draw(specs(p.shape, dtype=p.dtype, specials=data.draw(
        st.sampled_from([0.0, 0.0, 0.0, 0.2])))) for p in pspecs] for _ in range(steps)]

    def grad(spec: Spec, param: np.ndarray):
        if gkind == "shape" and param.ndim:
            return np.zeros((*param.shape[:-1], param.shape[-1] + 1), param.dtype)
        if gkind == "dtype":
            with np.errstate(over="ignore"):
                return spec.values().astype(np.float16)
        return spec.build()

    def make():
        params = [p.build() for p in pspecs]
        arrays = {f"p{i}": p for i, p in enumerate(params)}

        def step(opt, gs):
            grads = [grad(g, p) for g, p in zip(gs, params, strict=True)]
            opt.step(grads[:-1] if gkind == "missing" else grads)

        # The constructor and all steps but the last run here, before the arrays are
        # snapshotted: the checked call is the last step, which must write nothing if it fails.
        try:
            opt = getattr(optim, name)(params, **opts)
            for gs in gspecs[:-1]:
                step(opt, gs)
        except (TypeError, ValueError) as exc:
            err = exc

            def fail():
                raise err

            return fail, arrays, set(arrays)
        return (lambda: step(opt, gspecs[-1])), arrays, set(arrays)

    check(f"optim.{name}", make, pspecs[0].dtype)


# ---- regressions found by the fuzzer, as plain examples ---------------------------------------


def test_contiguous_copies_unaligned_arrays():
    """np.ascontiguousarray returns an unaligned C-contiguous array as is; the C binding then
    refused it while the NumPy backend accepted it."""
    from normax import _checks

    raw = np.zeros(8 * 5 + 1, np.uint8)
    u = raw[1:].view(np.float64)
    u[...] = np.arange(5.0)
    assert not u.flags.aligned
    c = _checks.contiguous(u)
    assert c.flags.aligned and c.flags.c_contiguous and c.dtype.isnative
    np.testing.assert_array_equal(c, np.arange(5.0))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_read_only_inputs(backend_name):
    """Read-only C-contiguous inputs are accepted by every backend (the Numba kernels' explicit
    signatures matched mutable arrays only: TypeError 'No matching definition')."""
    rng = np.random.default_rng(11)
    x = _frozen(rng.normal(size=(6, 5)))
    ones = _frozen(np.ones(5))
    labels = _frozen(np.arange(6) % 5)
    probs = _frozen(np.full((6, 5), 0.2))

    def calls():
        y, cache = normax.batch_norm_train(x, ones, ones)
        res = [y, normax.batch_norm_infer(x, ones, ones, ones, ones)]
        res += list(normax.batch_norm_backward(x, cache))
        res += [normax.softmax(x), normax.log_softmax(x)]
        res += [normax.softmax_backward(x, _frozen(normax.softmax(x)))]
        res += [normax.log_softmax_backward(x, _frozen(normax.log_softmax(x)))]
        for target in (labels, probs):
            loss, dz = normax.softmax_cross_entropy(x, target, weight=ones)
            res += [np.float64(loss), dz]
        return res

    previous = normax.get_backend()
    try:
        normax.set_backend("numpy")
        want = calls()
        normax.set_backend(backend_name)
        got = calls()
    finally:
        normax.set_backend(previous)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("victim", ["gamma", "beta", "running_mean", "running_var"])
def test_batch_norm_out_overlapping_parameters_is_refused(backend_name, victim):
    """``out`` sharing memory with gamma/beta (or, for inference, the running statistics) was
    accepted: the C kernel then read parameters it had already overwritten with y."""
    x = np.random.default_rng(12).normal(size=(8, 3))
    out = np.zeros_like(x)
    args = {k: np.ones(3) for k in ("gamma", "beta", "running_mean", "running_var")}
    args[victim] = out.reshape(-1)[:3]  # a view into out
    args[victim][...] = 1.0
    previous = normax.get_backend()
    normax.set_backend(backend_name)
    try:
        with pytest.raises(ValueError, match=rf"^out overlaps {victim}; pass a separate array$"):
            normax.batch_norm_infer(x, **args, out=out)
        if victim in ("gamma", "beta"):
            with pytest.raises(ValueError, match=rf"^out overlaps {victim}; pass a separate"):
                normax.batch_norm_train(x, args["gamma"], args["beta"], out=out)
        if victim == "gamma":
            _, cache = normax.batch_norm_train(x, args["gamma"], None)
            with pytest.raises(ValueError, match=r"^out overlaps gamma; pass a separate array$"):
                normax.batch_norm_backward(x, cache, out=out)
    finally:
        normax.set_backend(previous)
    np.testing.assert_array_equal(out.reshape(-1)[3:], 0.0)  # nothing written


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_batch_norm_unaligned_parameters(backend_name):
    """An unaligned C-contiguous gamma took the fast path to the C binding, which refused it."""
    x = np.random.default_rng(13).normal(size=(8, 3))
    raw = np.zeros(3 * 8 + 1, np.uint8)
    gamma = raw[1:].view(np.float64)
    gamma[...] = [1.0, 2.0, 3.0]
    previous = normax.get_backend()
    normax.set_backend(backend_name)
    try:
        y, _ = normax.batch_norm_train(x, gamma, None)
        y_infer = normax.batch_norm_infer(x, gamma, None, gamma, gamma)
    finally:
        normax.set_backend(previous)
    want, _ = normax.batch_norm_train(x, np.array([1.0, 2.0, 3.0]), None)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert np.isfinite(y_infer).all()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_cross_entropy_loss_sum_overflow_is_silent(backend_name):
    """Per-example losses near the double limit sum to inf: the C backend returned inf while the
    NumPy and Numba backends also emitted a RuntimeWarning (an error under -W error)."""
    z = np.array([[1e308, -5e307], [1e308, -5e307]])  # each loss 1.5e308, the sum 3e308
    labels = np.array([1, 1])
    previous = normax.get_backend()
    normax.set_backend(backend_name)
    try:
        loss, dz = normax.softmax_cross_entropy(z, labels, reduction="sum")
    finally:
        normax.set_backend(previous)
    assert loss == np.inf
    np.testing.assert_allclose(dz, [[1.0, -1.0], [1.0, -1.0]])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_cross_entropy_out_overlapping_weight_is_refused(backend_name):
    """A float64 weight that is a view into ``out`` reached the kernels as is: the C kernel read
    weights it had already overwritten with the gradient (loss 0.067 instead of 1.367)."""
    z = np.random.default_rng(14).normal(size=(6, 4))
    labels = np.array([0, 1, 2, 3, 0, 1])
    out = np.zeros_like(z)
    weight = out.reshape(-1)[:4]
    weight[...] = [1.0, 2.0, 3.0, 4.0]
    previous = normax.get_backend()
    normax.set_backend(backend_name)
    try:
        with pytest.raises(ValueError, match=r"^out overlaps weight; pass a separate array$"):
            normax.softmax_cross_entropy(z, labels, weight=weight, out=out)
    finally:
        normax.set_backend(previous)
    np.testing.assert_array_equal(out.reshape(-1)[4:], 0.0)  # nothing written


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_batch_norm_non_finite_is_silent(backend_name):
    """inf in x (backward) and a negative running_var (inference) give NaN on every backend
    without a RuntimeWarning (an error under -W error); the Numba backend warned."""
    x = np.array([[1.0, np.inf, 2.0], [0.5, 3.0, 1.0]], np.float32)
    previous = normax.get_backend()
    normax.set_backend(backend_name)
    try:
        _, cache = normax.batch_norm_train(x, None, None, axis=0)
        dx, _, _ = normax.batch_norm_backward(np.ones_like(x), cache)
        y = normax.batch_norm_infer(x, None, None, np.zeros(2, np.float32),
                                    np.array([-4.0, 1.0], np.float32), axis=0)
    finally:
        normax.set_backend(previous)
    assert np.isnan(dx[0]).all() and np.isfinite(dx[1]).all()
    assert np.isnan(y[0]).all() and np.isfinite(y[1, [0, 2]]).all()
