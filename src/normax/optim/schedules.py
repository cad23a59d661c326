"""Learning-rate schedules: plain callables of the step or epoch number.

Each schedule maps a count ``t >= 0`` to a learning rate and holds no state, so it works with
every optimizer and needs nothing saved in a checkpoint::

    sched = normax.optim.cosine(lr0=0.01, period=20)
    for epoch in range(20):
        opt.set_lr(sched(epoch))
        ...

Examples
--------
>>> from normax.optim import step_decay, exponential, inverse_time, cosine
>>> step_decay(0.1, every=10)(25)        # 0.1 * 0.1**2
0.0010000000000000002
>>> exponential(1.0, gamma=0.5)(3)
0.125
>>> inverse_time(0.2, decay=1.0)(1)      # lr0 / (1 + decay * epoch)
0.1
>>> cosine(1.0, period=10)(5)
0.5
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from ._base import check_nonneg


def _count(t) -> int:
    try:
        t = operator.index(t)
    except TypeError:
        raise TypeError(f"a schedule takes an int step or epoch, got {t!r}") from None
    if t < 0:
        raise ValueError(f"step or epoch must be >= 0, got {t}")
    return t


@dataclass(frozen=True)
class step_decay:
    """``lr0 * gamma ** (t // every)``: multiply by ``gamma`` every ``every`` epochs."""

    lr0: float
    every: int
    gamma: float = 0.1

    def __post_init__(self):
        check_nonneg(self.lr0, "lr0")
        check_nonneg(self.gamma, "gamma")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}")

    def __call__(self, t: int) -> float:
        return self.lr0 * self.gamma ** (_count(t) // self.every)


@dataclass(frozen=True)
class exponential:
    """``lr0 * gamma ** t``."""

    lr0: float
    gamma: float

    def __post_init__(self):
        check_nonneg(self.lr0, "lr0")
        check_nonneg(self.gamma, "gamma")

    def __call__(self, t: int) -> float:
        return self.lr0 * self.gamma ** _count(t)


@dataclass(frozen=True)
class inverse_time:
    """``lr0 / (1 + decay * t)``: the course notes' learning-rate decay."""

    lr0: float
    decay: float

    def __post_init__(self):
        check_nonneg(self.lr0, "lr0")
        check_nonneg(self.decay, "decay")

    def __call__(self, t: int) -> float:
        return self.lr0 / (1.0 + self.decay * _count(t))


@dataclass(frozen=True)
class cosine:
    """``lr_min + (lr0 - lr_min) * (1 + cos(pi * t / period)) / 2``, then ``lr_min``."""

    lr0: float
    period: int
    lr_min: float = 0.0

    def __post_init__(self):
        check_nonneg(self.lr0, "lr0")
        check_nonneg(self.lr_min, "lr_min")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"period must be an int >= 1, got {self.period!r}")

    def __call__(self, t: int) -> float:
        frac = min(_count(t), self.period) / self.period
        return self.lr_min + (self.lr0 - self.lr_min) * (1.0 + math.cos(math.pi * frac)) / 2.0
