"""Every case of ``normax bench`` as a pytest-benchmark group: ``pytest bench/ --benchmark-only``.

Cases, contenders, inputs, reference and tolerance are the registry's (normax.bench.harness);
``--bench-full`` takes every shape instead of the ``--quick`` selection. Before a case is timed,
every contender is called once and compared with the reference (the same check ``normax bench``
makes); a contender that disagrees fails its test. Each round times as many back-to-back calls as
the benchmark's calibration chooses, so a round lasts a few milliseconds for any call size.
"""

from __future__ import annotations

import tempfile

import pytest

import normax
from normax.bench import harness
from normax.bench.cases import BuildContext
from normax.bench.machine import import_torch
from normax.bench.timing import calibrate

POLICY = harness.QUICK_POLICY
_built: dict = {}  # the current case only: cases run one after another, and large ones are large


def _entries(case) -> dict:
    """Contender name -> checked entry of ``case`` (built once for all its contenders)."""
    if _built.get("id") != case.id:
        if "tmp" in _built:
            _built["tmp"].cleanup()
        _built.clear()
        _built["tmp"] = tempfile.TemporaryDirectory(prefix="normax-bench-")
        ctx = BuildContext(normax.available_backends(), import_torch(), tmpdir=_built["tmp"].name)
        _built.update(
            id=case.id, entries={e["name"]: e for e in harness.check_contenders(case, ctx)}
        )
    return _built["entries"]


@pytest.fixture
def restore_backend():
    previous = normax.get_backend()
    yield
    normax.set_backend(previous)


def test_case(benchmark, bench_case, contender, restore_backend):
    missing = harness.missing_requirements(bench_case.requires)
    if missing:
        pytest.skip(f"normax.{missing[0]} not available in this installation")
    packages = harness.missing_packages(bench_case.packages)
    if packages:
        pytest.skip(f"needs {', '.join(packages)}")
    entry = _entries(bench_case).get(contender)
    if entry is None:
        pytest.skip(f"{contender} not available")
    assert entry["agree"], entry["error"]
    if entry["backend"] is not None:
        normax.set_backend(entry["backend"])
    fn = entry["_fn"]
    benchmark.group = bench_case.id
    benchmark.extra_info.update(min_bytes=bench_case.min_bytes, per_call=bench_case.per_call)
    number = calibrate(fn, POLICY.sample_time)
    benchmark.pedantic(fn, iterations=number, rounds=POLICY.min_samples, warmup_rounds=1)
