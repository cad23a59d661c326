"""How ``normax bench`` judges the last-level cache: capped like the kernels, for the probe size,
the "fits in the cache" marker and the report header."""

from __future__ import annotations

import pytest

from normax import _backend
from normax.bench import cases_batchnorm, cases_optim, cases_softmax, harness, machine, report

MIB = 1 << 20


@pytest.fixture
def reports(monkeypatch):
    """Make the system report a last-level cache of the given size (0: unknown)."""

    def set_size(nbytes: int) -> None:
        monkeypatch.setattr(machine, "reported_cache_bytes", lambda: nbytes)

    return set_size


def test_cap_is_the_compiled_kernels_cap():
    if _backend._core is None:
        pytest.skip("no compiled extension in this installation")
    assert _backend._core.build_info()["llc_cap_bytes"] == machine.LLC_CAP
    assert machine.llc_cap_bytes() == machine.LLC_CAP


def test_cap_without_the_compiled_kernels(monkeypatch):
    monkeypatch.setattr(_backend, "_core", None)
    assert machine.llc_cap_bytes() == machine.LLC_CAP == 32 * MIB


@pytest.mark.parametrize(
    ("reported", "usable"),
    [(480 * MIB, 32 * MIB), (32 * MIB, 32 * MIB), (16 * MIB, 16 * MIB), (0, 32 * MIB)],
    ids=["socket-of-a-vm", "at-cap", "small", "unknown"],
)
def test_usable_cache_is_the_reported_one_capped(reports, reported, usable):
    reports(reported)
    assert machine.last_level_cache_bytes() == usable
    assert machine.last_level_cache_bytes(reported) == usable


@pytest.mark.parametrize(
    ("reported", "probe"),
    [(480 * MIB, 480 * MIB), (32 * MIB, 128 * MIB), (8 * MIB, 64 * MIB), (0, 128 * MIB)],
    ids=["socket-of-a-vm", "at-cap", "small-cache-floor", "unknown"],
)
def test_probe_is_four_usable_caches_at_least_64_mib_and_the_reported_cache(
    reports, reported, probe
):
    reports(reported)
    assert harness.default_probe_bytes() == probe


def test_probe_size_follows_the_cache_it_is_given():
    assert harness.default_probe_bytes(24 * MIB, 24 * MIB) == 96 * MIB
    assert harness.default_probe_bytes(1 * MIB, 1 * MIB) == 64 * MIB
    # past the reported cache, where the copy uses the kernels' non-temporal stores
    assert harness.default_probe_bytes(32 * MIB, 480 * MIB) == 480 * MIB


@pytest.mark.parametrize(
    ("footprint", "llc", "fits"),
    [(None, 32 * MIB, None), (32 * MIB, 32 * MIB, True), (32 * MIB + 1, 32 * MIB, False)],
)
def test_fits_in_cache(footprint, llc, fits):
    assert harness.fits_in_cache(footprint, llc) is fits


@pytest.mark.parametrize("module", [cases_batchnorm, cases_softmax, cases_optim])
def test_large_cases_are_not_marked_in_cache_on_a_huge_reported_cache(reports, module):
    reports(480 * MIB)  # a 2-core VM that reports its socket's L3
    for case in module.cases():
        header = harness._case_header(case)
        if case.size == "large":
            assert header["in_cache"] is False, case.id
        if case.size == "tiny":
            assert header["in_cache"] is True, case.id


def test_small_reported_cache_is_honoured(reports):
    reports(4 * MIB)
    medium = [c for c in cases_softmax.cases() if c.size == "medium"]
    assert medium
    for case in medium:
        assert harness._case_header(case)["in_cache"] is (case.footprint <= 4 * MIB)


def test_machine_info_records_both_figures(reports):
    reports(480 * MIB)
    info = machine.machine_info()
    assert info["llc_bytes"] == 32 * MIB
    assert info["llc_reported_bytes"] == 480 * MIB


def _doc(llc: int, reported: int | None) -> dict:
    machine_facts = {"cpu": "test cpu", "usable_cores": 2, "llc_bytes": llc}
    if reported is not None:
        machine_facts["llc_reported_bytes"] = reported
    return {
        "mode": "quick",
        "machine": machine_facts,
        "versions": {"normax": "0", "numpy": "2", "numba": None, "torch": None},
        "bandwidth": {"copy_gbs": 40.0, "read_gbs": 50.0},
        "threads": 2,
        "backends": ["numpy"],
        "environment": {},
        "load_average": {},
    }


@pytest.mark.parametrize(
    ("llc", "reported", "text"),
    [
        (32 * MIB, 480 * MIB, "32 MiB LLC (of 480 MiB reported, taken as shared)"),
        (16 * MIB, 16 * MIB, "16 MiB LLC,"),
        (32 * MIB, None, "32 MiB LLC,"),  # a run recorded before the reported figure was kept
    ],
)
def test_header_names_the_cache_counted_on(llc, reported, text):
    line = report.header(_doc(llc, reported))[0]
    assert text in line
    if reported is None or reported == llc:
        assert "reported" not in line
