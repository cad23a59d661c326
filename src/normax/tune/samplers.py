"""Samplers: where in the current search box the next trial goes.

A sampler maps ``(number, index)`` to parameter values inside a *box*: one ``(lo, hi)`` interval
per parameter on that parameter's scale (see :mod:`normax.tune.distributions`). ``number`` is the
trial's number in the study, ``index`` its position in the current coarse-to-fine round. The
values depend on nothing else (not on timing, not on which worker asks), so a parallel run and a
sequential run with the same seed try the same parameters, and a resumed study goes on exactly
where it stopped.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["GridSampler", "HaltonSampler", "RandomSampler", "Sampler", "SobolSampler"]


def from_unit(space: dict, box: dict, u) -> dict:
    """Parameter values at unit-cube point ``u`` (one coordinate per parameter, in order)."""
    params = {}
    for (name, dist), ui in zip(space.items(), u, strict=True):
        lo, hi = box[name]
        params[name] = dist.from_scale(lo + float(ui) * (hi - lo))
    return params


class Sampler:
    """Base class; subclasses implement :meth:`sample` and :meth:`describe`."""

    def sample(self, space: dict, box: dict, number: int, index: int) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-ready identity, stored with a study; a resumed study must use the same one."""
        raise NotImplementedError

    def bind(self, stored: dict | None) -> Sampler:
        """This sampler, with unset seeds taken from ``stored`` (the description on disk)."""
        return self


class _Seeded(Sampler):
    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = seed

    def bind(self, stored):
        if self.seed is not None:
            return self
        if stored is not None and stored.get("kind") == self.describe()["kind"]:
            return type(self)(stored["seed"])
        return type(self)(int(np.random.SeedSequence().entropy % 2**63))

    def describe(self):
        return {"kind": self.kind, "seed": self.seed}

    def __repr__(self):
        return f"{type(self).__name__}(seed={self.seed!r})"


class RandomSampler(_Seeded):
    """Independent uniform draws on each parameter's scale.

    Trial ``n`` uses ``numpy.random.default_rng([seed, n])``, so its values depend only on the
    seed and its number.

    Parameters
    ----------
    seed : int, optional
        ``None`` picks a fresh seed, which a stored study remembers on resume.

    Examples
    --------
    >>> from normax import tune
    >>> space = {"lr": tune.log_uniform(1e-4, 1.0)}
    >>> box = {"lr": space["lr"].scale_bounds}
    >>> s = tune.RandomSampler(seed=0)
    >>> s.sample(space, box, number=3, index=3) == s.sample(space, box, number=3, index=0)
    True
    """

    kind = "random"

    def sample(self, space, box, number, index):
        u = np.random.default_rng([self.seed, number]).random(len(space))
        return from_unit(space, box, u)


class GridSampler(Sampler):
    """A regular grid: ``points_per_axis`` values per parameter, evenly spaced on its scale.

    End points included; integer and choice parameters keep only their distinct values. The
    grid is walked in row-major order; asking past its last point raises ``ValueError``.

    Examples
    --------
    >>> from normax import tune
    >>> space = {"x": tune.uniform(0, 1), "y": tune.uniform(0, 1)}
    >>> box = {k: d.scale_bounds for k, d in space.items()}
    >>> g = tune.GridSampler(points_per_axis=5)
    >>> g.sample(space, box, number=6, index=6)
    {'x': 0.25, 'y': 0.25}
    """

    kind = "grid"

    def __init__(self, points_per_axis: int = 5):
        if isinstance(points_per_axis, bool) or not isinstance(points_per_axis, int):
            raise TypeError(f"points_per_axis must be an int, got {points_per_axis!r}")
        if points_per_axis < 1:
            raise ValueError(f"points_per_axis must be >= 1, got {points_per_axis!r}")
        self.points_per_axis = points_per_axis

    def axes(self, space: dict, box: dict) -> list[list]:
        """The distinct grid values of each parameter, in space order."""
        out = []
        for name, dist in space.items():
            lo, hi = box[name]
            n = self.points_per_axis
            u = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
            values = [dist.from_scale(lo + ui * (hi - lo)) for ui in u]
            out.append(list(dict.fromkeys(values)))  # distinct, order kept
        return out

    def size(self, space: dict, box: dict) -> int:
        return math.prod(len(a) for a in self.axes(space, box))

    def sample(self, space, box, number, index):
        axes = self.axes(space, box)
        total = math.prod(len(a) for a in axes)
        if index >= total:
            raise ValueError(f"grid of {total} points exhausted at round index {index}")
        point = next(itertools.islice(itertools.product(*axes), index, None))
        return dict(zip(space, point, strict=True))

    def describe(self):
        return {"kind": self.kind, "points_per_axis": self.points_per_axis}

    def __repr__(self):
        return f"GridSampler(points_per_axis={self.points_per_axis})"


class SobolSampler(_Seeded):
    """Scrambled Sobol' points (needs SciPy): fills the box more evenly than random draws.

    Point ``index`` of the round's sequence goes to the round's ``index``-th trial. Points are
    generated in blocks of powers of two, which keeps Sobol's balance properties.

    Examples
    --------
    >>> from normax import tune
    >>> space = {"x": tune.uniform(0, 1)}
    >>> s = tune.SobolSampler(seed=0)
    >>> xs = [s.sample(space, {"x": (0, 1)}, i, i)["x"] for i in range(8)]
    >>> sorted(int(x * 8) for x in xs)   # one point in each eighth
    [0, 1, 2, 3, 4, 5, 6, 7]
    """

    kind = "sobol"

    def __init__(self, seed=None):
        super().__init__(seed)
        self._points = {}

    def _unit(self, dims: int, index: int) -> np.ndarray:
        pts = self._points.get(dims)
        if pts is None or index >= len(pts):
            try:
                from scipy.stats import qmc
            except ImportError as exc:  # scipy is optional
                raise ImportError("SobolSampler needs scipy; use HaltonSampler without it") from exc
            m = max(4, math.ceil(math.log2(index + 1)))
            pts = qmc.Sobol(dims, scramble=True, seed=self.seed).random_base2(m)
            self._points[dims] = pts
        return pts[index]

    def sample(self, space, box, number, index):
        return from_unit(space, box, self._unit(len(space), index))


_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79)


def _radical_inverse(index: int, base: int) -> float:
    inv, f = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        inv += digit * f
        f /= base
    return inv


class HaltonSampler(_Seeded):
    """Halton points with a seeded random shift (modulo 1); quasi-random without SciPy.

    Examples
    --------
    >>> from normax import tune
    >>> space = {"x": tune.uniform(0, 1)}
    >>> s = tune.HaltonSampler(seed=0)
    >>> xs = [s.sample(space, {"x": (0, 1)}, i, i)["x"] for i in range(4)]
    >>> sorted(int(x * 4) for x in xs)
    [0, 1, 2, 3]
    """

    kind = "halton"

    def sample(self, space, box, number, index):
        d = len(space)
        if d > len(_PRIMES):
            raise ValueError(f"HaltonSampler supports up to {len(_PRIMES)} parameters, got {d}")
        shift = np.random.default_rng([self.seed, 0x4A17]).random(d)
        u = [
            (_radical_inverse(index + 1, p) + s) % 1.0 for p, s in zip(_PRIMES, shift, strict=False)
        ]
        return from_unit(space, box, u)
