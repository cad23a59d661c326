"""Shared fixtures: every kernel test runs on every available backend."""

from __future__ import annotations

import numpy as np
import pytest

import normax

BACKENDS = normax.available_backends()

# Per-dtype tolerances against the float64-accumulating NumPy reference.
TOL = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-5},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-12},
}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test with ``normax.set_backend(param)`` and restore the previous backend after."""
    previous = normax.get_backend()
    normax.set_backend(request.param)
    yield request.param
    normax.set_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)
