"""Successive halving on an epoch budget: stop clearly bad trials early.

Rungs sit at steps ``min_resource * reduction_factor**k``. When a trial reports its value at a
rung, it is compared with the values other trials had at that rung; if it is not among the best
``1 / reduction_factor`` of them, it is stopped (*pruned*) and its compute goes to the next trial.
The comparison uses a snapshot of finished trials taken when the trial started, so it works the
same in a worker process or on a Dask cluster as in the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SuccessiveHalving", "TrialPruned"]


class TrialPruned(Exception):
    """Raised by ``report`` to stop a trial that successive halving judged hopeless."""


@dataclass(frozen=True)
class SuccessiveHalving:
    """Asynchronous successive halving.

    Parameters
    ----------
    min_resource : int
        Step (epoch) of the first rung.
    reduction_factor : int
        Keep the best ``1 / reduction_factor`` at each rung; rung ``k`` is at
        ``min_resource * reduction_factor**k``.
    min_trials : int, optional
        Decide at a rung only when at least this many values (including the trial's own) are
        known there; default ``reduction_factor``.

    Examples
    --------
    >>> from normax.tune import SuccessiveHalving
    >>> sh = SuccessiveHalving(min_resource=1, reduction_factor=3)
    >>> sh.rungs(10)
    [1, 3, 9]
    >>> sh.keep(0.9, [0.1, 0.2, 0.3], minimize=True)   # worst of four: stop
    False
    """

    min_resource: int = 1
    reduction_factor: int = 3
    min_trials: int | None = None

    def __post_init__(self):
        for name in ("min_resource", "reduction_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor!r}")
        m = self.min_trials
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 2):
            raise ValueError(f"min_trials must be an int >= 2, got {m!r}")

    def rungs(self, max_step: int) -> list[int]:
        """Rung steps up to ``max_step``."""
        out, r = [], self.min_resource
        while r <= max_step:
            out.append(r)
            r *= self.reduction_factor
        return out

    def rung_of(self, step: int) -> int | None:
        """Index of the rung at ``step``, or None if ``step`` is not a rung."""
        if step < self.min_resource or step % self.min_resource:
            return None
        q, k = step // self.min_resource, 0
        while q % self.reduction_factor == 0:
            q, k = q // self.reduction_factor, k + 1
        return k if q == 1 else None

    def keep(self, value: float, others: list[float], *, minimize: bool) -> bool:
        """Whether ``value`` is among the best ``1 / reduction_factor`` of itself and ``others``.

        NaN counts as the worst value.
        """
        n = len(others) + 1
        if n < (self.min_trials or self.reduction_factor):
            return True
        sign = 1.0 if minimize else -1.0

        def key(v):
            return math.inf if math.isnan(v) else sign * v

        better = sum(key(o) < key(value) for o in others)
        return better < max(1, n // self.reduction_factor)

    def snapshot(self, trials, *, exclude=None) -> dict[int, list[float]]:
        """Values per rung index from finished trials (the basis of every comparison)."""
        table: dict[int, list[float]] = {}
        for t in trials:
            if t.state not in ("complete", "pruned") or t.number == exclude:
                continue
            for step, v in t.intermediate.items():
                k = self.rung_of(step)
                if k is not None:
                    table.setdefault(k, []).append(v)
        return table
