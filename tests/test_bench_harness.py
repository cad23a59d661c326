"""The benchmark harness itself: arithmetic, timing procedure, results file, torch-less and
Numba-only runs. Only tiny shapes and millisecond budgets, and never an assertion on speed."""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import normax
from normax import bench
from normax.bench import cases_batchnorm, cases_optim, cases_softmax, harness, report
from normax.bench.cases import Case, Contender, as_arrays, missing_requirements, relative_error
from normax.bench.machine import Bandwidth
from normax.bench.timing import TimingPolicy, measure, summarize

FAST = TimingPolicy(min_time=0.002, sample_time=0.0005, min_samples=3, max_time=0.01)
FAST_ARGS = ["--min-time", "0.002", "--probe-mib", "2", "--no-progress"]


def _synthetic(requires=(), wrong=False, n=1000, footprint=None):
    """A case on plain NumPy: every contender doubles x; ``wrong`` makes "c" add one.

    ``footprint`` (default: the bytes it touches) above the last-level cache makes the bench
    treat it as a case larger than the cache.
    """

    def build(ctx):
        x = np.arange(float(n))
        contenders = [
            Contender("numpy", lambda: lambda: x * 2),
            Contender("c", lambda: lambda: x * 2 + (1.0 if wrong else 0.0)),
        ]
        if ctx.torch is not None:
            t = ctx.torch.from_numpy(x)
            contenders.append(Contender("torch", lambda: lambda: t * 2))
        return contenders

    return Case(
        family="synthetic",
        kernel="double",
        layout="1-D",
        shape=(n,),
        dtype="float64",
        size="tiny",
        requires=requires,
        build=build,
        min_bytes=16 * n,
        footprint=16 * n if footprint is None else footprint,
    )


def _run(cases, **config):
    config.setdefault("policy", FAST)
    config.setdefault("probe_bytes", 2 << 20)
    config.setdefault("progress", False)
    config.setdefault("backends", ("numpy",))  # the synthetic contenders do not switch backends
    return harness.run_benchmarks(harness.Config(**config), cases)


# --- arithmetic -------------------------------------------------------------------------------


_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@pytest.mark.parametrize(
    ("module", "kernel", "factor"),
    [
        (cases_batchnorm, "train", 3),
        (cases_batchnorm, "infer", 2),
        (cases_batchnorm, "backward", 5),
        (cases_softmax, "softmax", 2),
        (cases_softmax, "log_softmax", 2),
        (cases_softmax, "softmax_backward", 3),
        (cases_softmax, "log_softmax_backward", 3),
        (cases_softmax, "cross_entropy", 3),
        (cases_optim, "adam", 7),
        (cases_optim, "sgd_momentum", 5),
    ],
)
def test_minimum_bytes_per_kernel(module, kernel, factor):
    selected = [c for c in module.cases() if c.kernel == kernel]
    assert selected
    for case in selected:
        # mixed-precision optimizer steps count in the float32 master weights' bytes
        half_optim = case.family == "optim" and case.dtype in ("float16", "bfloat16")
        main_bytes = math.prod(case.shape) * _ITEMSIZE["float32" if half_optim else case.dtype]
        assert case.min_bytes == factor * main_bytes, case.id


def test_roofline_and_speedup_arithmetic():
    case = _synthetic()
    entries = [
        {"name": "numpy", "median_s": 0.4},
        {"name": "c", "median_s": 0.1},
        {"name": "torch", "median_s": 0.2},
    ]
    case.min_bytes = 3_000_000_000
    harness._derive(case, entries)
    c = entries[1]
    assert c["speedup_vs_numpy"] == pytest.approx(4.0)
    assert c["speedup_vs_torch"] == pytest.approx(2.0)
    assert c["gbs"] == pytest.approx(30.0)  # 3 GB in 0.1 s
    records = [{"min_bytes": case.min_bytes, "contenders": entries}]
    harness.add_roofline(records, Bandwidth(copy=60e9, read=80e9, nbytes=1, threads=2, method=""))
    assert records[0]["roofline_s"] == pytest.approx(0.05)  # 3 GB at 60 GB/s
    assert c["roofline"] == pytest.approx(0.5)
    assert entries[0]["roofline"] == pytest.approx(0.125)


def test_large_shapes_exceed_last_level_cache_and_tiny_fit_in_l2():
    for module in (cases_batchnorm, cases_softmax, cases_optim):
        for case in module.cases():
            x_bytes = math.prod(case.shape) * _ITEMSIZE[case.dtype]
            if case.size == "large" and case.dtype in ("float16", "bfloat16"):
                # the float32 shape, so that the two compare: input and output exceed the cache
                assert case.footprint > 32 << 20, case.id
            elif case.size == "large":
                assert x_bytes > 32 << 20, case.id
            if case.size == "tiny":
                assert x_bytes <= 64 << 10, case.id


def test_quick_plan_covers_every_kernel_and_layout():
    quick = harness.plan(harness.Config())
    full = harness.plan(harness.Config(full=True))
    assert len(quick) < len(full) / 4
    covered = {(c.family, c.kernel, c.layout) for c in quick}
    for kernel in cases_batchnorm.KERNELS:
        for layout in cases_batchnorm.LAYOUTS:
            assert ("batch_norm", kernel, layout) in covered
    for layout in cases_softmax.LAYOUTS:
        assert ("softmax", "cross_entropy", layout) in covered
    assert {c.family for c in quick} == set(harness.FAMILIES)
    assert {c.dtype for c in quick} == {"float32", "float64", "bfloat16"}
    assert {"tiny", "large"} <= {c.size for c in quick}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(dtypes=("float16",), sizes=("tiny",)),
         "no case matches --size tiny --dtype float16 (float16 cases exist for the medium and "
         "large sizes)"),
        (dict(families=("softmax",), dtypes=("float16",)),
         "no case matches --family softmax --dtype float16 in the --quick selection; add --full"),
        (dict(families=("tune",), dtypes=("float16",)),
         "no case matches --family tune --dtype float16"),
    ],
)  # fmt: skip
def test_plan_refuses_an_empty_selection(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        harness.plan(harness.Config(**config))


def test_plan_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown family 'convolution'"):
        harness.plan(harness.Config(families=("convolution",)))
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        harness.plan(harness.Config(sizes=("huge",)))
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        harness.plan(harness.Config(dtypes=("int8",)))


# --- timing and comparison --------------------------------------------------------------------


def test_summarize_median_quartiles_spread():
    st = summarize([4.0, 1.0, 3.0, 2.0, 5.0], calls_per_sample=10)
    assert (st.median, st.q1, st.q3, st.best) == (3.0, 2.0, 4.0, 1.0)
    assert st.spread == pytest.approx(2.0 / 3.0)
    assert st.total_time == pytest.approx(150.0)


def test_measure_batches_tiny_calls_and_takes_turns():
    turns = []
    fns = [list().append, list().append]  # far below the 0.5 ms sample time
    before = [lambda: turns.append(0), lambda: turns.append(1)]
    stats = measure([lambda f=f: f(0) for f in fns], FAST, before=before)
    assert all(s.calls_per_sample > 1 for s in stats)
    assert all(s.samples >= FAST.min_samples for s in stats)
    assert all(s.q1 <= s.median <= s.q3 for s in stats)
    # calibration of each in turn, then one sample each per round
    assert turns[: 2 + 2 * FAST.min_samples] == [0, 1] * (1 + FAST.min_samples)


def test_summarize_counts_faults_per_call():
    st = summarize([1.0, 2.0, 3.0], calls_per_sample=4, faults=60)
    assert st.faults_per_call == 5.0 and st.to_dict()["faults_per_call"] == 5.0
    assert summarize([1.0], calls_per_sample=1).to_dict()["faults_per_call"] is None


def _fresh_pages(pages):
    """Write one byte to each page of a new anonymous mapping, then unmap it: every call pays
    one fault per page, whatever the allocator's state."""
    size = pages * mmap.PAGESIZE

    def touch():
        with mmap.mmap(-1, size) as m:
            for offset in range(0, size, mmap.PAGESIZE):
                m[offset] = 1

    return touch


def test_measure_counts_the_page_faults_of_each_contender():
    pytest.importorskip("resource")
    kept = np.zeros(64 * mmap.PAGESIZE, np.uint8)
    fresh, reused = measure([_fresh_pages(64), lambda: kept.fill(1)], FAST)
    assert fresh.faults_per_call >= 64
    assert reused.faults_per_call < 8  # its pages were touched before the samples


def test_faults_are_listed_under_the_table_where_a_contender_pays_them():
    doc = _run([_synthetic(), _synthetic(n=2000)])
    assert all(e["faults_per_call"] is not None for e in doc["cases"][0]["contenders"])
    for case in doc["cases"]:
        for e in case["contenders"]:
            e["faults_per_call"] = 0.2
    assert "page faults per call" not in report.render(doc).split("median: time per call")[0]
    doc["cases"][1]["contenders"][0]["faults_per_call"] = 6272.4
    lines = [line for line in report.render(doc).splitlines() if line.startswith("page faults")]
    others = ", ".join(e["name"] for e in doc["cases"][1]["contenders"][1:])
    assert lines == [f"page faults per call, double 1-D 2000 float64: numpy 6272; {others} under 1"]
    markdown = report.render(doc, markdown=True, compact=True).splitlines()
    at = markdown.index("- " + lines[0])
    assert markdown[at - 1] == ""  # not taken into the table above it
    older = json.loads(json.dumps(doc))
    for case in older["cases"]:
        for e in case["contenders"]:
            del e["faults_per_call"]
    assert report.check_results(older) == []
    assert "page faults per call," not in report.render(older)


def test_faults_of_a_call_of_several_units_are_per_unit():
    st = harness._per_unit({"median_s": 2.0, "faults_per_call": 10.0, "samples": 3}, 5)
    assert st == {"median_s": 0.4, "faults_per_call": 2.0, "samples": 3}
    assert harness._per_unit({"faults_per_call": None}, 5) == {"faults_per_call": None}


def test_timing_policy_validates():
    with pytest.raises(ValueError, match="min_time must be a positive"):
        TimingPolicy(min_time=0)
    with pytest.raises(ValueError, match="min_samples must be at least 3"):
        TimingPolicy(min_samples=1)


def test_relative_error():
    a = [np.array([1.0, 2.0]), None]
    assert relative_error(a, [np.array([1.0, 2.0]), None]) == 0.0
    assert relative_error(a, [np.array([1.0, 2.5]), None]) == pytest.approx(0.2)
    assert relative_error(a, [np.array([1.0, 2.0, 3.0]), None]) == math.inf
    assert relative_error(a, [np.array([1.0, 2.0])]) == math.inf
    assert relative_error([np.array([np.nan, 1.0])], [np.array([1.0, np.nan])]) == math.inf
    assert relative_error([np.array([np.nan, 1.0])], [np.array([np.nan, 1.0])]) == 0.0
    assert relative_error([np.array([np.inf])], [np.array([-np.inf])]) == math.inf


def test_as_arrays_flattens_and_copies():
    x = np.ones(3, dtype=np.float32)
    flat = as_arrays((1.5, [x, None], [0.5, 0.25]))
    x[:] = 7
    assert [None if f is None else f.tolist() for f in flat] == [1.5, [1, 1, 1], None, [0.5, 0.25]]


def test_missing_requirements():
    assert missing_requirements(["set_backend"]) == []
    assert missing_requirements(["no_such_kernel", "nosuchmodule.f"]) == [
        "no_such_kernel",
        "nosuchmodule.f",
    ]


# --- whole runs -------------------------------------------------------------------------------


def test_synthetic_run_is_complete():
    doc = _run([_synthetic()])
    assert report.check_results(doc) == []
    (case,) = doc["cases"]
    assert case["status"] == "ok"
    names = [e["name"] for e in case["contenders"]]
    assert names[:2] == ["numpy", "c"]
    for e in case["contenders"]:
        assert e["agree"] and e["median_s"] > 0 and e["gbs"] > 0 and e["roofline"] > 0
    assert doc["bandwidth"]["copy_gbs"] > 0 and doc["threads"] >= 1


def test_a_case_larger_than_the_cache_has_a_copy_timed_in_turn():
    small, large = _synthetic(), _synthetic(footprint=1 << 40)
    large.shape = (1001,)  # another id
    doc = _run([small, large])
    assert report.check_results(doc) == []
    rec_small, rec_large = doc["cases"]
    assert rec_small["in_cache"] is not False and "copy_in_turn" not in rec_small
    for e in rec_small["contenders"]:
        assert e["roofline_copy_gbs"] == pytest.approx(doc["bandwidth"]["copy_gbs"])
    assert rec_large["in_cache"] is False
    copy = rec_large["copy_in_turn"]
    # The probe's arrays, timed by the contenders' procedure (here FAST: at least 3 samples).
    assert copy["array_bytes"] == doc["bandwidth"]["array_bytes"] == 2 << 20
    assert copy["samples"] >= 3 and copy["median_s"] > 0
    assert copy["copy_gbs"] == pytest.approx(2 * copy["array_bytes"] / copy["median_s"] / 1e9)
    assert copy["method"].startswith(("numba parallel", "numpy"))
    assert rec_large["roofline_s"] == pytest.approx(rec_large["min_bytes"] / copy["copy_gbs"] / 1e9)
    for e in rec_large["contenders"]:
        assert e["roofline_copy_gbs"] == copy["copy_gbs"]
        assert e["roofline"] == pytest.approx(e["gbs"] / copy["copy_gbs"])
    # The copy is no contender: it is neither in the table nor compared with the reference.
    assert {e["name"] for e in rec_large["contenders"]} == {
        e["name"] for e in rec_small["contenders"]
    }
    assert "copy in turn with the 1 case larger than the cache" in report.header(doc)[0]
    broken = json.loads(json.dumps(doc))
    broken["cases"][1]["copy_in_turn"]["copy_gbs"] = 0.0
    assert report.check_results(broken) == [f"{large.id}: copy_in_turn lacks a positive copy_gbs"]


def test_roofline_of_an_isolated_figure_is_the_runs_probe():
    """A figure taken alone in another process did not run in the copy's rounds."""
    records = [
        {
            "min_bytes": 3_000_000_000,
            "copy_in_turn": {"copy_gbs": 20.0},
            "contenders": [
                {"name": "c", "gbs": 15.0},
                {"name": "torch", "gbs": 15.0, "in_process": {"median_s": 1.0}},
                {"name": "numba", "gbs": None},
            ],
        }
    ]
    harness.add_roofline(records, Bandwidth(copy=60e9, read=80e9, nbytes=1, threads=2, method=""))
    c, torch, numba = records[0]["contenders"]
    assert records[0]["roofline_s"] == pytest.approx(0.15)  # 3 GB at the in-turn 20 GB/s
    assert (c["roofline"], c["roofline_copy_gbs"]) == (pytest.approx(0.75), pytest.approx(20.0))
    assert (torch["roofline"], torch["roofline_copy_gbs"]) == (
        pytest.approx(0.25),
        pytest.approx(60.0),
    )
    assert numba["roofline"] is None and numba["roofline_copy_gbs"] is None


def test_disagreeing_contender_is_reported_and_not_timed():
    doc = _run([_synthetic(wrong=True)])
    c = next(e for e in doc["cases"][0]["contenders"] if e["name"] == "c")
    assert not c["agree"] and "disagrees with numpy" in c["error"] and "median_s" not in c
    assert not doc["all_agree"]
    assert any("did not agree" in p for p in report.check_results(doc))
    assert "FAILED: disagrees" in report.render(doc)


def test_missing_kernel_is_skipped_with_a_note():
    doc = _run([_synthetic(requires=("no_such_kernel",)), _synthetic()])
    skipped = doc["cases"][0]
    assert skipped["status"] == "skipped"
    assert "normax.no_such_kernel not available" in skipped["note"]
    assert doc["skipped"] == [{"id": skipped["id"], "note": skipped["note"]}]
    assert "skipped: 1 case: normax.no_such_kernel" in report.render(doc)
    assert any("skipped" in p for p in report.check_results(doc))
    assert report.check_results(doc, allow_skipped=True) == []


def test_run_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    doc = _run([_synthetic()])
    assert doc["torch"] is False and doc["versions"]["torch"] is None
    assert [e["name"] for e in doc["cases"][0]["contenders"]] == ["numpy", "c"]
    assert all(e["speedup_vs_torch"] is None for e in doc["cases"][0]["contenders"])
    assert report.check_results(doc) == []
    assert "torch absent" in report.render(doc)


def test_threads_are_held_then_restored():
    torch = pytest.importorskip("torch")
    before = (torch.get_num_threads(), normax.get_num_threads(), normax.get_backend())
    doc = _run([_synthetic()], threads=1)
    assert doc["threads"] == 1 and doc["bandwidth"]["threads"] == 1
    assert (torch.get_num_threads(), normax.get_num_threads(), normax.get_backend()) == before


def test_render_flags_regressions_only_for_normax_backends():
    doc = _run([_synthetic()])
    entries = doc["cases"][0]["contenders"]
    for e in entries:
        e["speedup_vs_numpy"] = 0.5
    text = report.render(doc)
    c_row = next(line for line in text.splitlines() if " c " in line)
    assert "0.50x ▼" in c_row
    torch_rows = [line for line in text.splitlines() if " torch " in line]
    assert all("▼" not in line for line in torch_rows)
    assert "| kernel |" in report.render(doc, markdown=True)


def test_compact_tables_one_line_per_case(tmp_path, capsys):
    doc = _run([_synthetic(), _synthetic(n=2000)])
    text = report.render(doc, markdown=True, compact=True)
    rows = [line for line in text.splitlines() if line.startswith("| double")]
    assert len(rows) == 2 and "| numpy vs NumPy |" in text  # backends=("numpy",): numpy leads
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert bench.main(["--from-json", str(path), "--compact"]) == 0
    assert "double" in capsys.readouterr().out


def test_check_results_catches_incomplete_files():
    doc = _run([_synthetic()])
    assert report.check_results({}) != []
    broken = json.loads(json.dumps(doc))
    del broken["cases"][0]["contenders"][0]["median_s"]
    assert any("lacks median_s" in p for p in report.check_results(broken))
    broken = json.loads(json.dumps(doc))
    # Drop the numpy contender, which is always expected (the last one is torch's only when
    # torch is installed: without torch the check rightly ignored the dropped "c").
    broken["cases"][0]["contenders"].pop(0)
    assert any("no result for" in p for p in report.check_results(broken))


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    doc = _run([_synthetic()])
    path = tmp_path / "speedup.png"
    assert report.plot(doc, str(path)) == [str(path)]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_splits_a_full_run_into_files_that_fit_a_screen(tmp_path):
    pytest.importorskip("matplotlib")
    doc = _run([_synthetic(n=n) for n in range(1000, 1000 + 2 * report.MAX_CASES_PER_FILE)])
    for i, case in enumerate(doc["cases"]):
        case["family"], case["dtype"] = "synthetic", ("float32", "float64")[i % 2]
    written = report.plot(doc, str(tmp_path / "full.png"))
    assert [os.path.basename(p) for p in written] == [
        "full-synthetic-float32.png",
        "full-synthetic-float64.png",
    ]
    from matplotlib.image import imread

    for p in written:
        height, width = imread(p).shape[:2]
        assert height <= 1080 and width <= 1920, (p, width, height)


@pytest.mark.parametrize(
    ("span", "labels"),
    [((0.6, 3.0), ["0.5x", "1x", "2x"]), ((0.02, 400.0), ["0.1x", "1x", "10x", "100x"])],
)
def test_plot_axis_is_log_with_plain_labels(span, labels):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    report._log_axis(ax, list(span))
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert ax.get_xscale() == "log"
    assert [t for t in shown if t in labels] == labels and all("^" not in t for t in shown)


def test_speedup_bars_carry_the_spread_of_both_contenders():
    record = {"contenders": [
        {"name": "numpy", "median_s": 4.0, "q1_s": 3.0, "q3_s": 5.0},
        {"name": "c", "median_s": 2.0, "q1_s": 1.0, "q3_s": 2.5},
    ]}  # fmt: skip
    assert report._speedup_range(record, "c", "numpy") == (2.0, 1.2, 5.0)
    assert report._speedup_range(record, "torch", "numpy") is None


# --- the command ------------------------------------------------------------------------------


def test_command_tiny_run_writes_valid_json(tmp_path, capsys):
    path = tmp_path / "results.json"
    rc = bench.main(["--size", "tiny", "--dtype", "float32", "--json", str(path), *FAST_ARGS])
    assert rc == 0
    doc = json.loads(path.read_text())  # strict JSON: no NaN or Infinity
    assert report.check_results(doc, allow_skipped=True) == []
    assert {r["family"] for r in doc["cases"]} == {"batch_norm", "softmax", "optim"}
    assert all(r["size"] == "tiny" and r["dtype"] == "float32" for r in doc["cases"])
    assert doc["machine"]["llc_bytes"] > 0 and doc["versions"]["numpy"] == np.__version__
    out = capsys.readouterr().out
    assert "normax bench (quick)" in out and "every contender agreed" in out
    assert bench.main(["--check", str(path), "--allow-skipped"]) == 0


def test_command_check_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "normax-bench/1"}')
    assert bench.main(["--check", str(bad)]) == 1
    assert bench.main(["--check", str(tmp_path / "missing.json")]) == 1


def test_command_rejects_bad_options_before_running(capsys, tmp_path):
    assert bench.main(["--threads", "-1", *FAST_ARGS]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "dir" / "r.json"
    assert bench.main(["--json", str(missing), *FAST_ARGS]) == 2
    assert "--json: directory of" in capsys.readouterr().err


def test_numba_backend_run_in_a_subprocess(tmp_path):
    pytest.importorskip("numba")
    path = tmp_path / "numba.json"
    env = dict(os.environ, NORMAX_BACKEND="numba")
    cmd = [
        sys.executable,
        "-m",
        "normax.bench",
        "--size",
        "tiny",
        "--family",
        "batch_norm",
        "--family",
        "softmax",
        "--dtype",
        "float64",
        "--no-torch",
        "--backend",
        "numba",
        "--json",
        str(path),
        *FAST_ARGS,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(path.read_text())
    assert doc["default_backend"] == "numba" and doc["environment"]["NORMAX_BACKEND"] == "numba"
    assert "c" not in doc["backends"] and "numba" in doc["backends"]
    assert report.check_results(doc, allow_skipped=True) == []
    for case in doc["cases"]:
        assert "c" not in {e["name"] for e in case["contenders"]}


# --- misuse of the command ----------------------------------------------------------------------


@pytest.mark.parametrize("mib", ["-5", "0"])
def test_command_rejects_non_positive_probe_size(capsys, mib):
    assert bench.main(["--probe-mib", mib, "--no-progress"]) == 2
    assert f"--probe-mib must be a positive number of MiB, got {mib}" in capsys.readouterr().err


def test_unknown_option_prints_the_bench_usage(capsys):
    from normax import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: normax bench") and "unrecognized arguments: --bogus" in err


def test_threads_beyond_numba_pool_are_refused(capsys):
    numba = pytest.importorskip("numba")
    too_many = numba.config.NUMBA_NUM_THREADS + 1  # Numba is imported: its pool is fixed
    args = ["--threads", str(too_many), "--backend", "numba", "--size", "tiny", *FAST_ARGS]
    assert bench.main(args) == 2
    err = capsys.readouterr().err
    assert f"--threads {too_many}: numba runs" in err and "NUMBA_NUM_THREADS" in err


def test_threads_are_honoured_by_every_pool_or_refused():
    torch = pytest.importorskip("torch")
    doc = _run([_synthetic()], threads=1, use_torch=True)
    assert set(doc["threads_in_use"].values()) == {1}
    assert doc["threads_in_use"]["torch"] == 1 and torch.get_num_threads() >= 1


def _interrupting_case():
    case = _synthetic(n=10)

    def build(ctx):
        raise KeyboardInterrupt

    case.build, case.kernel = build, "interrupt"
    return case


def test_interrupted_run_keeps_what_finished(tmp_path, monkeypatch, capsys):
    path = tmp_path / "partial.json"
    monkeypatch.setattr(
        bench,
        "run_benchmarks",
        lambda config: _run(
            [_synthetic(), _interrupting_case(), _synthetic(n=2000)], on_case=config.on_case
        ),
    )
    assert bench.main(["--json", str(path), *FAST_ARGS]) == 130
    doc = json.loads(path.read_text())
    assert doc["interrupted"] is True and [r["kernel"] for r in doc["cases"]] == ["double"]
    assert any("interrupted" in p for p in report.check_results(doc))
    captured = capsys.readouterr()
    assert "[1/3] double" in captured.out and "double" in captured.out.split("[1/3]")[1]
    assert "interrupted; 1 cases finished" in captured.err


def test_ctrl_c_in_a_real_run_exits_130_without_traceback(tmp_path):
    import signal
    import time

    path = tmp_path / "partial.json"
    cmd = [sys.executable, "-m", "normax.bench", "--family", "batch_norm", "--size", "tiny",
           "--no-torch", "--backend", "numpy", "--isolate", "none", "--json", str(path),
           *FAST_ARGS]  # fmt: skip
    # The default disposition for the child: a test run started in the background of a
    # non-interactive shell inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt (the run would finish with status 0, as `nohup normax bench &` should).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = proc.stdout.readline()  # the first case's line: one case has finished
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert first.startswith("[ 1/"), first + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    doc = json.loads(path.read_text())
    assert doc["interrupted"] is True and 1 <= len(doc["cases"]) < 24


def test_each_case_line_is_printed_as_it_finishes(capsys):
    lines = []
    _run([_synthetic(), _synthetic(n=2000)], on_case=lambda r, i, n: lines.append((i, n, r["id"])))
    assert [(i, n) for i, n, _ in lines] == [(1, 2), (2, 2)]
    record = _run([_synthetic()])["cases"][0]
    line = report.case_line(record, 1, 2)
    assert line.startswith("[1/2] double 1-D 1000 float64: numpy ") and "c " in line


# --- comparing runs ---------------------------------------------------------------------------


def _steady(doc):
    """``doc`` with every spread set to +-2 % (measured spreads on a busy machine vary)."""
    for case in doc["cases"]:
        for e in case["contenders"]:
            e["q1_s"], e["q3_s"] = 0.98 * e["median_s"], 1.02 * e["median_s"]
    return doc


def _slowed(doc, factor, names=("c",)):
    """A copy of ``doc`` whose ``names`` contenders took ``factor`` times as long."""
    out = json.loads(json.dumps(doc))
    for case in out["cases"]:
        for e in case["contenders"]:
            if e["name"] in names:
                for key in ("median_s", "q1_s", "q3_s"):
                    e[key] *= factor
    return out


@pytest.mark.parametrize(
    ("base", "new", "expected"),
    [
        ((1.0, 0.95, 1.05), (1.3, 1.25, 1.35), "slower"),
        ((1.0, 0.95, 1.05), (0.7, 0.65, 0.75), "faster"),
        ((1.0, 0.8, 1.4), (1.3, 1.1, 1.5), "same"),  # beyond the threshold, within the noise
        ((1.0, 0.99, 1.01), (1.05, 1.04, 1.06), "same"),  # beyond the noise, below the threshold
    ],
)
def test_verdict_needs_both_threshold_and_disjoint_quartiles(base, new, expected):
    from normax.bench.compare import verdict

    figures = [dict(zip(("median_s", "q1_s", "q3_s"), v, strict=True)) for v in (base, new)]
    assert verdict(*figures, threshold=0.10) == expected


def test_compare_same_run_is_same_and_a_slowed_one_regresses():
    from normax.bench.compare import compare, render_comparison

    doc = _steady(_run([_synthetic()]))
    same = compare(doc, doc)
    assert same["counts"]["same"] == len(same["rows"]) > 0 and not same["regressions"]
    assert not same["differences"]
    slow = compare(doc, _slowed(doc, 3.0))
    (row,) = [r for r in slow["rows"] if r["contender"] == "c"]
    assert row["verdict"] == "slower" and row["ratio"] == pytest.approx(3.0)
    assert slow["regressions"] == [row]
    text = render_comparison(slow, "a.json", "b.json")
    assert "REGRESSION in 1 normax figures" in text.splitlines()[-1]
    # PyTorch getting slower is not a normax regression
    assert not compare(doc, _slowed(doc, 3.0, names=("torch",)))["regressions"]


def test_compare_flags_runs_with_different_settings():
    from normax.bench.compare import compare, render_comparison

    doc = _run([_synthetic()])
    other = json.loads(json.dumps(doc))
    other["threads"] += 1
    other["machine"]["cpu"] = "another CPU"
    result = compare(doc, other)
    assert any(d.startswith("threads:") for d in result["differences"])
    assert any(d.startswith("machine.cpu:") for d in result["differences"])
    assert "WARNING: the runs differ in machine.cpu" in render_comparison(result, "a", "b")


def test_command_compare_exit_status(tmp_path, capsys):
    doc = _steady(_run([_synthetic()]))
    base, slow = tmp_path / "base.json", tmp_path / "slow.json"
    base.write_text(json.dumps(doc))
    slow.write_text(json.dumps(_slowed(doc, 3.0)))
    assert bench.main(["--compare", str(base), str(base)]) == 0
    assert "no normax regression" in capsys.readouterr().out
    assert bench.main(["--compare", str(base), str(slow)]) == 1
    assert bench.main(["--compare", str(base), str(slow), "--threshold", "250"]) == 0
    capsys.readouterr()
    assert bench.main(["--compare", str(base), str(slow), str(slow)]) == 2
    assert bench.main(["--compare", str(base), str(slow), "--threshold", "-1"]) == 2
    assert bench.main(["--compare", str(tmp_path / "missing.json")]) == 2


# --- isolation --------------------------------------------------------------------------------


def _figures(median, spread=0.02):
    return {"median_s": median, "q1_s": median * (1 - spread), "q3_s": median * (1 + spread),
            "spread": 2 * spread, "samples_s": [median] * 3}  # fmt: skip


def test_reconcile_keeps_in_process_figure_when_they_agree():
    from normax.bench import isolate

    entry = _figures(1.0e-5)
    isolate.reconcile(entry, _figures(1.02e-5), threshold=0.10)
    assert entry["median_s"] == 1.0e-5 and entry["method"] == isolate.METHOD_IN_PROCESS
    assert entry["isolated"]["median_s"] == 1.02e-5 and "in_process" not in entry


def test_reconcile_keeps_in_process_figure_when_alone_is_slower():
    from normax.bench import isolate

    entry = _figures(1.0e-5)  # alone it cannot be disturbed: slower alone is the load changing
    isolate.reconcile(entry, _figures(1.0e-4), threshold=0.10)
    assert entry["median_s"] == 1.0e-5 and entry["method"] == isolate.METHOD_IN_PROCESS
    assert "load changed" in entry["isolation_note"] and "in_process" not in entry


def test_reconcile_takes_isolated_figure_when_disturbed():
    from normax.bench import isolate

    entry = _figures(1.0e-4)  # disturbed by the others: 10x slower than alone
    isolate.reconcile(entry, _figures(1.0e-5), threshold=0.10)
    assert entry["median_s"] == 1.0e-5 and entry["method"] == isolate.METHOD_ISOLATED
    assert entry["in_process"]["median_s"] == 1.0e-4
    assert entry["isolated_vs_in_process"] == pytest.approx(0.1)


def test_isolation_sample_is_small_and_covers_each_family():
    from normax.bench import isolate

    quick = harness.plan(harness.Config())
    chosen = isolate.sample(quick, "sample")
    families = {c.family for c in quick if c.id in chosen}
    assert families == {"batch_norm", "softmax", "optim"} and len(chosen) <= 6
    assert isolate.sample(quick, "none") == set()
    assert isolate.sample(quick, "all") == {c.id for c in quick}


def test_time_isolated_times_one_contender_in_a_fresh_process():
    from normax.bench import isolate

    case_id = "softmax/cross_entropy/classes last/32x10/float32"
    stats = isolate.time_isolated(case_id, "numpy", threads=1, policy=FAST)
    assert stats["median_s"] > 0 and len(stats["samples_s"]) >= FAST.min_samples
    with pytest.raises(RuntimeError, match="isolated run of nobody failed"):
        isolate.time_isolated(case_id, "nobody", threads=1, policy=FAST)


def test_isolated_figures_are_recorded_in_the_results(monkeypatch):
    from normax.bench import isolate

    calls = []

    def fake(case_id, name, threads, policy, seed=0):
        calls.append(name)
        return _figures(1e-12)  # far faster than in process: the figure kept

    monkeypatch.setattr(isolate, "time_isolated", fake)
    monkeypatch.setattr(isolate, "sample", lambda cases, mode: {c.id for c in cases})
    doc = _run([_synthetic()], isolate="sample")
    entries = doc["cases"][0]["contenders"]
    assert sorted(calls) == sorted(e["name"] for e in entries)
    assert all(e["isolated"]["median_s"] == e["median_s"] == 1e-12 for e in entries)
    assert all(e["method"] == isolate.METHOD_ISOLATED for e in entries)
    assert doc["timing"]["isolation"]["mode"] == "sample"


def test_command_compare_runs_now_against_a_base(tmp_path, capsys):
    base = tmp_path / "base.json"
    args = ["--size", "tiny", "--family", "optim", "--dtype", "float32", "--no-torch",
            "--isolate", "none", *FAST_ARGS]  # fmt: skip
    assert bench.main([*args, "--json", str(base)]) == 0
    capsys.readouterr()
    rc = bench.main([*args, "--compare", str(base)])
    out = capsys.readouterr().out
    assert rc in (0, 1)  # the verdicts depend on this machine's noise; the format does not
    assert f"normax bench --compare: {base} (base) -> this run (new)" in out
    assert "figures compared (threshold 10%" in out.splitlines()[-1]


def _with_torch_cases(factor_torch=1.0, factor_c=1.0, cases=4):
    """A results document of ``cases`` synthetic cases with c, numpy and torch figures."""
    doc = _steady(_run([_synthetic(n=1000 + i) for i in range(cases)]))
    for case in doc["cases"]:
        case["contenders"] = [e for e in case["contenders"] if e["name"] in ("c", "numpy")]
        case["contenders"].append({**case["contenders"][0], "name": "torch"})
    new = _slowed(doc, factor_torch, names=("torch", "numpy"))
    return doc, _slowed(new, factor_c * factor_torch, names=("c",))


def test_compare_estimates_the_machine_drift_and_can_divide_it_out():
    from normax.bench.compare import compare, drift, render_comparison

    base, new = _with_torch_cases(factor_torch=2.0)  # a busier machine: everything 2x
    factor, source = drift(base, new)
    assert factor == pytest.approx(2.0) and "PyTorch" in source
    raw = compare(base, new)
    assert raw["counts"]["slower"] == len(raw["rows"])
    assert "WARNING: machine drift: new ran 2.00x" in render_comparison(raw, "a", "b")
    normalized = compare(base, new, normalize=True)
    assert normalized["counts"]["same"] == len(normalized["rows"])
    # a real regression survives the normalization
    base, new = _with_torch_cases(factor_torch=2.0, factor_c=3.0)
    result = compare(base, new, normalize=True)
    assert {r["contender"] for r in result["regressions"]} == {"c"}
    assert "normalized by a machine drift of 2.00x" in render_comparison(result, "a", "b")


def test_compare_drift_without_torch_comes_from_the_copies_in_turn():
    from normax.bench.compare import drift

    base = _steady(_run([_synthetic(n=1000 + i, footprint=1 << 40) for i in range(4)]))
    for case in base["cases"]:
        case["contenders"] = [e for e in case["contenders"] if e["name"] != "torch"]
        case["copy_in_turn"]["copy_gbs"] = 30.0
    new = json.loads(json.dumps(base))
    for case, gbs in zip(new["cases"], (10.0, 15.0, 20.0, 40.0), strict=True):
        case["copy_in_turn"]["copy_gbs"] = gbs
    new["bandwidth"]["copy_gbs"] = base["bandwidth"]["copy_gbs"]  # the probe saw no change
    factor, source = drift(base, new)
    assert factor == pytest.approx(30.0 / 15.0)  # the median of 3, 2, 1.5 and 0.75
    assert source == "the median of 4 copies timed in turn"
    for case in new["cases"][1:]:
        del case["copy_in_turn"]  # fewer than three: the run's probe
    assert drift(base, new) == (pytest.approx(1.0), "the copy bandwidth probed in each run")


def test_compare_warns_about_a_busy_machine():
    from normax.bench.compare import compare, render_comparison

    doc = _steady(_run([_synthetic()]))
    busy = json.loads(json.dumps(doc))
    busy["load_average"] = {"start": [4.0, 4.0, 4.0], "end": [3.0, 3.0, 3.0]}
    busy["machine"]["usable_cores"] = 2
    text = render_comparison(compare(doc, busy), "a.json", "b.json")
    assert "WARNING: the machine was busy during b.json (load average up to 2.0 per core)" in text


def test_results_file_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(TypeError):
        bench._write_json({"cases": [object()]}, str(path))
    assert list(tmp_path.iterdir()) == []
    bench._write_json({"cases": []}, str(path))
    assert json.loads(path.read_text()) == {"cases": []}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(("c_factor", "expected"), [(1.5, "same"), (5.0, "slower")])
def test_compare_judges_normax_against_the_control_band(c_factor, expected):
    from normax.bench.compare import compare, render_comparison

    base, new = _with_torch_cases(cases=6)
    for i, case in enumerate(new["cases"]):  # the load moves PyTorch by 1.0x ... 2.0x
        for e in case["contenders"]:
            factor = {"torch": 1 + i / 5, "c": c_factor}.get(e["name"], 1.0)
            for key in ("median_s", "q1_s", "q3_s"):
                e[key] *= factor
    result = compare(base, new)
    assert result["control_band"] == (pytest.approx(1 / 1.1), pytest.approx(1.8))
    assert {r["verdict"] for r in result["rows"] if r["contender"] == "c"} == {expected}
    assert "control: PyTorch's figures moved 0.91x-1.80x" in render_comparison(result, "a", "b")
    plain = compare(base, new, control=False)
    assert {r["verdict"] for r in plain["rows"] if r["contender"] == "c"} == {"slower"}


@pytest.mark.parametrize(
    ("value", "text"), [(59.39, "59.39x"), (1.0, "1.00x"), (0.25, "0.25x"), (0.0051, "0.0051x")]
)
def test_a_tiny_speedup_is_not_shown_as_zero(value, text):
    from normax.bench.report import format_ratio

    assert format_ratio(value) == text


def _timed(name, median):
    return {"name": name, "median_s": median}


def test_half_table_compares_each_half_case_with_its_float32_twin():
    base = {"family": "softmax", "kernel": "softmax", "layout": "rows", "shape": [512, 32000],
            "status": "ok"}  # fmt: skip
    doc = {"backends": ["c", "numpy"], "cases": [
        {**base, "dtype": "float32", "contenders": [_timed("c", 4.0), _timed("torch", 9.0)]},
        {**base, "dtype": "bfloat16", "contenders": [_timed("c", 2.0), _timed("torch", 10.0)]},
        {**base, "dtype": "float16", "status": "skipped", "contenders": []},
    ]}  # fmt: skip
    lines = report.half_table(doc)
    assert lines[0] == "== Half precision: speed-up of normax (c) over"
    row = next(line for line in lines if "bfloat16" in line)
    # float32 4.0 / 2.0, the float32 case's (no time of the same rounds: marked); torch 10 / 2
    assert row.split()[-2:] == ["~2.00x", "5.00x"]
    assert not any("float16" in line.split() for line in lines)  # the skipped case: no row
    assert report.half_table({"backends": ["c"], "cases": [doc["cases"][0]]}) == []


def test_half_table_prefers_the_float32_time_of_the_same_rounds():
    base = {"family": "softmax", "kernel": "softmax", "layout": "rows", "shape": [512, 32000],
            "status": "ok"}  # fmt: skip
    doc = {"backends": ["c", "numpy"], "cases": [
        {**base, "dtype": "float32", "contenders": [_timed("c", 4.0)]},
        {**base, "dtype": "bfloat16", "contenders": [_timed("c", 2.0), _timed("torch", 10.0)],
         "float32_in_turn": {"name": "c", "median_s": 3.0}},
        {**base, "dtype": "float16", "contenders": [_timed("c", 2.0)],
         "float32_in_turn": {"name": "numba", "median_s": 8.0}},  # another backend's: not it
    ]}  # fmt: skip
    lines = [line.split() for line in report.half_table(doc) if "512x32000" in line]
    rows = {cells[4]: cells[5:] for cells in lines}
    assert rows["bfloat16"] == ["1.50x", "5.00x"]  # 3.0 / 2.0 in the same rounds, not 4.0 / 2.0
    assert rows["float16"] == ["~2.00x", "-"]  # the float32 case's time, marked


def _half_pair(calls):
    """A float16 synthetic case and its float32 twin, whose "numpy" contender counts its calls."""
    x = np.arange(1000.0)

    def build_half(ctx):
        contenders = [Contender("numpy", lambda: lambda: x * 2, backend="numpy")]
        if ctx.torch is not None:
            t = ctx.torch.from_numpy(x)
            contenders.append(Contender("torch", lambda: lambda: t * 2))
        return contenders

    def build_twin(ctx):
        def make():
            def fn():
                calls.append(1)
                return x * 2

            return fn

        return [Contender("numpy", make, backend="numpy")]

    def case(dtype, build):
        return Case(family="pair", kernel="double", layout="1-D", shape=(1000,), dtype=dtype,
                    size="large", requires=(), build=build, min_bytes=16000)  # fmt: skip

    return case("float16", build_half), case("float32", build_twin)


def test_a_half_case_times_its_float32_twin_in_its_own_rounds(monkeypatch):
    calls = []
    half, twin = _half_pair(calls)
    family = type("Family", (), {"cases": staticmethod(lambda: [twin])})
    registry = {**harness.REGISTRY, "pair": family}
    monkeypatch.setattr(harness, "REGISTRY", registry)
    assert harness.float32_twin(half) is twin and harness.float32_twin(twin) is None
    doc = _run([half])
    assert report.check_results(doc) == []
    (record,) = doc["cases"]
    in_turn = record["float32_in_turn"]
    assert in_turn["name"] == "numpy" and in_turn["median_s"] > 0
    assert in_turn["samples"] >= FAST.min_samples and len(calls) > in_turn["samples"]
    assert [e["name"] for e in record["contenders"]].count("numpy") == 1  # the twin: no entry
    row = next(line for line in report.half_table(doc) if "float16" in line)
    assert "~" not in row
    # A twin that fails to set up is reported, and the half case is still timed.
    monkeypatch.setattr(twin, "build", lambda ctx: [])
    doc = _run([half])
    (record,) = doc["cases"]
    assert "float32_in_turn" not in record and record["contenders"][0]["median_s"] > 0
    assert report.check_results(doc) == [
        f"{half.id}: its float32 twin failed (no numpy contender)"
    ]


def test_plot_legend_names_only_contenders_with_bars():
    def record(*names):
        return {"contenders": [{"name": n, "median_s": 1e-3} for n in names]}

    with_c = [record("numpy", "c")]
    grid = [[("vs NumPy", "numpy", with_c, True)]]
    assert report._legend_names(grid) == ["c"]  # no Numba or PyTorch bar was drawn
    everyone = [record("numpy", "c", "numba", "torch")]
    grid = [[("vs NumPy", "numpy", everyone, True), ("vs PyTorch", "torch", everyone, True)]]
    assert report._legend_names(grid) == ["c", "numba", "torch"]


def test_from_json_draws_the_saved_run_with_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_run([_synthetic()])))
    png = tmp_path / "saved.png"
    assert bench.main(["--from-json", str(path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {png}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mode", "extra", "option"),
    [
        ("--from-json", ["--family", "softmax"], "--family"),
        ("--from-json", ["--json", "again.json"], "--json"),
        ("--from-json", ["--full"], "--full"),
        ("--check", ["--plot", "x.png"], "--plot"),
        ("--check", ["--threads", "1"], "--threads"),
    ],
)
def test_modes_that_run_nothing_refuse_options_they_would_ignore(
    tmp_path, capsys, mode, extra, option
):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_run([_synthetic()])))
    assert bench.main([mode, str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert f"{option} does not apply to {mode}" in err
    assert not (tmp_path / "again.json").exists() and not (tmp_path / "x.png").exists()
