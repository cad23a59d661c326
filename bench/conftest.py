"""The pytest-benchmark suites: ``pytest bench/ --benchmark-only``.

bench/test_bench_kernels.py times every case of the registry behind ``normax bench``
(normax.bench.harness.REGISTRY), one ``benchmark.group`` per case with every contender in it:
the ``--quick`` selection by default, every shape with ``--bench-full``. Each contender is built
and checked against the reference by the benchmark's own code first, so a fast wrong kernel
fails instead of winning; calls per round come from the benchmark's calibration.

Fixtures
--------
threads (session, autouse)
    Every thread pool (normax, Numba, PyTorch, NumPy's BLAS) held to all usable cores, as in
    ``normax bench``.
"""

from __future__ import annotations

import pytest

from normax.bench.machine import held_threads, import_torch, usable_cores

CONTENDERS = ("c", "numba", "numpy", "torch")
TUNE_CONTENDERS = ("sqlite", "memory")


def pytest_addoption(parser):
    parser.addoption(
        "--bench-full",
        action="store_true",
        help="every shape of the registry (normax bench --full)",
    )


def pytest_generate_tests(metafunc):
    """Parametrize ``bench_case`` x ``contender`` over the registry's selected cases."""
    if "bench_case" not in metafunc.fixturenames:
        return
    from normax.bench import harness

    cases = harness.plan(harness.Config(full=metafunc.config.getoption("--bench-full")))
    pairs = [(case, name) for case in cases
             for name in (TUNE_CONTENDERS if case.family == "tune" else CONTENDERS)]  # fmt: skip
    metafunc.parametrize(("bench_case", "contender"), pairs, ids=[f"{c.id}-{n}" for c, n in pairs])


@pytest.fixture(scope="session", autouse=True)
def threads():
    n = usable_cores()
    with held_threads(n, import_torch()):
        yield n
