"""Objectives for the tuning tests, importable by spawned worker processes.

Tests put this directory on ``sys.path`` and import the module by name, so that a pickled
reference to these functions resolves in a fresh process. No tests here.
"""

from __future__ import annotations

import math
import os
import time


def quadratic(params):
    """Minimum 0 at x = 0.3, lr = 1e-2; ignores other parameters."""
    return (params["x"] - 0.3) ** 2 + (math.log10(params["lr"]) + 2.0) ** 2


def slow_quadratic(params):
    time.sleep(0.02)
    return quadratic(params)


class ExitAbove:
    """Kills its own process (no exception, no cleanup) when ``x`` exceeds ``threshold``."""

    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, params):
        if params["x"] > self.threshold:
            os._exit(3)
        return quadratic(params)


def curve(params, report=None):
    """A trainable whose value at every step ranks trials the same way: x + 1 / step."""
    value = math.inf
    for step in range(1, 10):
        value = params["x"] + 1.0 / step
        if report is not None:
            report(step, value)
    return value


def digits_stand_in(params, report=None):
    """Shaped like train_digits: an 'accuracy' in [0, 1], reported each epoch."""
    acc = 1.0 / (1.0 + (math.log10(params["lr"]) + 2.5) ** 2 + (params["layers"] - 3) ** 2 / 10)
    for epoch in range(1, 4):
        if report is not None:
            report(epoch, acc * epoch / 3)
    return acc


class HangAbove:
    """Sleeps ``seconds`` (far longer than a test waits) when ``x > 0.5``: a hung objective."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, params):
        if params["x"] > 0.5:
            time.sleep(self.seconds)
        return quadratic(params)
