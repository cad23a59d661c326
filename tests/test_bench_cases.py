"""Every contender of the benchmark's case registry agrees with the NumPy reference.

The cases are those of ``normax bench`` (normax.bench.harness.REGISTRY), on their tiny shapes and
on edge shapes (``comparison_cases``): the same inputs, contenders, reference and tolerance as
the benchmark, checked by the same code the benchmark runs before it times anything. With
PyTorch installed, it is a contender too, so every kernel and layout is also compared with it.
"""

from __future__ import annotations

import pytest

import normax
from normax.bench import harness
from normax.bench.cases import BuildContext, missing_packages
from normax.bench.machine import import_torch

CASES = harness.comparison_cases()


@pytest.fixture(scope="module")
def torch():
    return import_torch()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_contender_agrees_with_the_reference(case, torch, tmp_path):
    missing = missing_packages(case.packages)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    previous = normax.get_backend()
    ctx = BuildContext(normax.available_backends(), torch, seed=7, tmpdir=str(tmp_path))
    try:
        entries = harness.check_contenders(case, ctx)
    finally:
        normax.set_backend(previous)
    names = {e["name"] for e in entries}
    if case.family != "tune":
        assert set(normax.available_backends()) <= names
        assert (torch is not None) == ("torch" in names)
    for e in entries:
        assert e["error"] is None and e["agree"], (e["name"], e["error"])
        assert e["max_rel_error"] <= case.tol


def test_registry_covers_every_kernel_layout_and_dtype():
    def key(c):  # an optimizer's "layout" is its number of arrays, which the tests vary
        return c.family, c.kernel, None if c.family == "optim" else c.layout, c.dtype

    benched = {key(c) for f in harness.FAMILIES.values() for c in f()}
    assert {key(c) for c in CASES} == benched
