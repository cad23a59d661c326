"""The examples in the normax.tune docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "normax.tune",
    "normax.tune.distributions",
    "normax.tune.samplers",
    "normax.tune.study",
    "normax.tune.halving",
    "normax.tune.panda",
    "normax.tune.plots",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.endswith("plots"):
        pytest.importorskip("matplotlib")
    if name.endswith("samplers"):
        pytest.importorskip("scipy")  # the SobolSampler example
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
