"""Search distributions, each sampled on the scale where its effect is roughly even.

Every distribution maps its values to and from a one-dimensional *scale*: the identity for
``uniform``, ``log10`` for ``log_uniform``, ``r = log10(1 - beta)`` for ``ewa_beta``. Sampling is
uniform on that scale, so samplers (random, grid, Sobol) and the coarse-to-fine zoom all work in
one place: a box ``[lo, hi]`` on the scale of each parameter. ``scale_bounds`` is the box of the
whole distribution; ``from_scale`` maps any scale value back to a legal value (rounded for integer
distributions, clipped to the bounds).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Choice",
    "Distribution",
    "EwaBeta",
    "IntLogUniform",
    "IntUniform",
    "LogUniform",
    "Uniform",
    "choice",
    "distribution_from_json",
    "ewa_beta",
    "int_log_uniform",
    "int_uniform",
    "log_uniform",
    "uniform",
]


def _finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _clip(x, low, high):
    return np.minimum(np.maximum(x, low), high)


def _ordered(low, high, kind: str) -> None:
    if not low < high:
        raise ValueError(f"{kind} needs low < high, got low={low!r}, high={high!r}")


class Distribution:
    """Base of every search distribution (see the module docstring for the scale contract)."""

    kind = "distribution"
    log_axis = False  # plots use a log axis for this parameter

    @property
    def scale_bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def to_scale(self, value):
        """Position of ``value`` on the sampling scale."""
        raise NotImplementedError

    def _values(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def from_scale(self, s):
        """The value at scale position ``s`` (scalar or array), rounded and clipped to bounds."""
        # numpy scalars, not 0-d arrays: a few microseconds less per parameter of every trial
        s = np.float64(s) if np.ndim(s) == 0 else np.asarray(s, dtype=np.float64)
        out = self._values(s)
        return out.item() if np.ndim(out) == 0 else out

    def sample(self, rng: np.random.Generator, size=None):
        """Draw from the distribution: uniform on the scale, mapped back with ``from_scale``.

        Parameters
        ----------
        rng : numpy.random.Generator
        size : int or tuple of int, optional
            ``None`` returns one Python scalar, otherwise an array of that shape.
        """
        lo, hi = self.scale_bounds
        return self.from_scale(rng.uniform(lo, hi, size))

    def _bounds(self, convert) -> None:
        # frozen dataclasses: normalize low/high in place, then require low < high
        object.__setattr__(self, "low", convert(self.low, "low"))
        object.__setattr__(self, "high", convert(self.high, "high"))
        _ordered(self.low, self.high, self.kind)

    def to_json(self) -> dict:
        """A JSON-ready description; :func:`distribution_from_json` inverts it."""
        return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform(Distribution):
    """Uniform on ``[low, high]``: dropout rate, a width, anything whose effect is linear.

    Examples
    --------
    >>> import numpy as np
    >>> from normax import tune
    >>> d = tune.uniform(0.0, 0.5)
    >>> bool(0.0 <= d.sample(np.random.default_rng(0)) <= 0.5)
    True
    """

    low: float
    high: float
    kind = "uniform"

    def __post_init__(self):
        self._bounds(_finite)

    @property
    def scale_bounds(self):
        return self.low, self.high

    def to_scale(self, value):
        return np.asarray(value, dtype=np.float64)

    def _values(self, s):
        return _clip(s, self.low, self.high)


@dataclass(frozen=True)
class LogUniform(Distribution):
    """Log-uniform on ``[low, high]``: ``r ~ U(log10 low, log10 high)``, value ``10**r``.

    Each decade gets the same mass, which is the right scale for a learning rate in [1e-4, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from normax import tune
    >>> lr = tune.log_uniform(1e-4, 1.0).sample(np.random.default_rng(0), size=10000)
    >>> bool(abs(np.mean(lr < 1e-3) - 0.25) < 0.02)   # one decade of four
    True
    """

    low: float
    high: float
    kind = "log_uniform"
    log_axis = True

    def __post_init__(self):
        self._bounds(_finite)
        if self.low <= 0:
            raise ValueError(f"{self.kind} needs positive bounds, got low={self.low!r}")

    @property
    def scale_bounds(self):
        return math.log10(self.low), math.log10(self.high)

    def to_scale(self, value):
        return np.log10(np.asarray(value, dtype=np.float64))

    def _values(self, s):
        return _clip(10.0**s, self.low, self.high)


@dataclass(frozen=True)
class EwaBeta(Distribution):
    """The averaging weight ``beta`` of an exponentially weighted average, in ``[low, high]``.

    ``r ~ U(log10(1 - high), log10(1 - low))`` and ``beta = 1 - 10**r``: the number of averaged
    steps ``1 / (1 - beta)`` is log-uniform, so ``ewa_beta(0.9, 0.999)`` puts as much mass in
    ``[0.9, 0.99]`` (10 to 100 steps) as in ``[0.99, 0.999]`` (100 to 1000 steps).

    Examples
    --------
    >>> import numpy as np
    >>> from normax import tune
    >>> b = tune.ewa_beta(0.9, 0.999).sample(np.random.default_rng(0), size=10000)
    >>> round(float(np.mean(b < 0.99)), 1)
    0.5
    """

    low: float
    high: float
    kind = "ewa_beta"
    log_axis = True  # plotted as 1 - beta on a log axis

    def __post_init__(self):
        self._bounds(_finite)
        if not (0.0 < self.low < 1.0 and 0.0 < self.high < 1.0):
            raise ValueError(
                f"{self.kind} bounds must lie in (0, 1), got low={self.low!r}, high={self.high!r}"
            )

    @property
    def scale_bounds(self):
        return math.log10(1.0 - self.high), math.log10(1.0 - self.low)

    def to_scale(self, value):
        return np.log10(1.0 - np.asarray(value, dtype=np.float64))

    def _values(self, s):
        return _clip(1.0 - 10.0**s, self.low, self.high)


@dataclass(frozen=True)
class IntUniform(Distribution):
    """Integers ``low, low + 1, ..., high`` (inclusive), each with the same probability.

    The scale is ``[low - 0.5, high + 0.5]`` and a scale value rounds to the nearest integer, so
    uniform sampling on the scale gives every integer the same mass.

    Examples
    --------
    >>> import numpy as np
    >>> from normax import tune
    >>> sorted(set(tune.int_uniform(2, 4).sample(np.random.default_rng(0), size=100).tolist()))
    [2, 3, 4]
    """

    low: int
    high: int
    kind = "int_uniform"

    def __post_init__(self):
        self._bounds(_integer)

    @property
    def scale_bounds(self):
        return self.low - 0.5, self.high + 0.5

    def to_scale(self, value):
        return np.asarray(value, dtype=np.float64)

    def _values(self, s):
        return _clip(np.floor(s + 0.5), self.low, self.high).astype(np.int64)


@dataclass(frozen=True)
class IntLogUniform(Distribution):
    """Integers in ``[low, high]`` on a log scale: batch size 16..1024, hidden units 10..1000.

    The scale is ``[log10(low - 0.5), log10(high + 0.5)]``; integer ``k`` gets the mass of
    ``[log10(k - 0.5), log10(k + 0.5)]``, so each octave of values is about equally likely.

    Examples
    --------
    >>> import numpy as np
    >>> from normax import tune
    >>> b = tune.int_log_uniform(16, 1024).sample(np.random.default_rng(0), size=10000)
    >>> round(float(np.mean(b < 128)), 1)   # three of six octaves
    0.5
    """

    low: int
    high: int
    kind = "int_log_uniform"
    log_axis = True

    def __post_init__(self):
        self._bounds(_integer)
        if self.low < 1:
            raise ValueError(f"{self.kind} needs positive bounds, got low={self.low!r}")

    @property
    def scale_bounds(self):
        return math.log10(self.low - 0.5), math.log10(self.high + 0.5)

    def to_scale(self, value):
        return np.log10(np.asarray(value, dtype=np.float64))

    def _values(self, s):
        return _clip(np.floor(10.0**s + 0.5), self.low, self.high).astype(np.int64)


@dataclass(frozen=True)
class Choice(Distribution):
    """One of ``options``, each equally likely; options are str, int, float, bool or None.

    The scale is the option index ``[0, n)``; coarse-to-fine zooms along the order of the
    options, so list ordered options (``[32, 64, 128]``) in their natural order.

    Examples
    --------
    >>> import numpy as np
    >>> from normax import tune
    >>> tune.choice(["relu", "tanh"]).sample(np.random.default_rng(0)) in ("relu", "tanh")
    True
    """

    options: tuple
    kind = "choice"

    def __post_init__(self):
        if isinstance(self.options, (str, bytes)) or not hasattr(self.options, "__iter__"):
            raise TypeError(f"options must be a sequence, got {self.options!r}")
        opts = tuple(self.options)
        if not opts:
            raise ValueError("options must not be empty")
        for o in opts:
            if not (o is None or isinstance(o, (str, int, float, bool))):
                raise TypeError(f"option {o!r} is not a str, int, float, bool or None")
        if len({json.dumps(o) for o in opts}) != len(opts):
            raise ValueError(f"options must be distinct, got {list(opts)!r}")
        object.__setattr__(self, "options", opts)

    @property
    def scale_bounds(self):
        return 0.0, float(len(self.options))

    def to_scale(self, value):
        values = np.atleast_1d(np.asarray(value, dtype=object))
        idx = [self.options.index(v) + 0.5 for v in values.ravel()]
        out = np.asarray(idx, dtype=np.float64).reshape(values.shape)
        return out[0] if np.ndim(value) == 0 else out

    def _values(self, s):
        idx = np.clip(np.floor(s), 0, len(self.options) - 1).astype(np.int64)
        out = np.empty(idx.shape, dtype=object)
        for pos, i in np.ndenumerate(idx):
            out[pos] = self.options[i]
        return out

    def to_json(self) -> dict:
        return {"kind": self.kind, "options": list(self.options)}


uniform = Uniform
int_uniform = IntUniform
log_uniform = LogUniform
int_log_uniform = IntLogUniform
ewa_beta = EwaBeta


def choice(options) -> Choice:
    """One of ``options`` (a sequence), each equally likely; see :class:`Choice`."""
    return Choice(options)


_KINDS = {c.kind: c for c in (Uniform, LogUniform, EwaBeta, IntUniform, IntLogUniform)}


def distribution_from_json(desc: dict) -> Distribution:
    """Rebuild a distribution from :meth:`Distribution.to_json` output."""
    kind = desc.get("kind")
    if kind == "choice":
        return Choice(desc["options"])
    if kind not in _KINDS:
        raise ValueError(f"unknown distribution kind {kind!r}")
    return _KINDS[kind](desc["low"], desc["high"])


def check_space(space) -> dict:
    """``space`` as a dict of name -> Distribution, with a clear error for anything else."""
    if not isinstance(space, dict) or not space:
        raise TypeError(f"space must be a non-empty dict of name -> distribution, got {space!r}")
    for name, dist in space.items():
        if not isinstance(name, str):
            raise TypeError(f"space keys must be str, got {name!r}")
        if not isinstance(dist, Distribution):
            raise TypeError(f"space[{name!r}] must be a tune distribution, got {dist!r}")
    return dict(space)
