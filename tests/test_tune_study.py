"""Studies: failures recorded, coarse-to-fine, SQLite storage, resume after SIGKILL."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from normax import tune

HERE = Path(__file__).resolve().parent
SPACE = {"x": tune.uniform(0.0, 1.0), "lr": tune.log_uniform(1e-4, 1.0)}


@pytest.fixture
def objectives(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("test_tune_objectives")


def test_failures_are_recorded_and_the_study_goes_on():
    def objective(p):
        if p["x"] < 0.3:
            raise RuntimeError(f"diverged at x={p['x']:.2f}")
        return math.nan if p["x"] > 0.7 else p["x"]

    study = tune.Study(SPACE, objective, sampler=tune.RandomSampler(1))
    best = study.optimize(30)
    states = {t.state for t in study.trials}
    assert states == {"complete", "failed"} and len(study.trials) == 30
    for t in study.trials:
        if t.params["x"] < 0.3:
            assert t.state == "failed" and "RuntimeError: diverged" in t.error
        elif t.params["x"] > 0.7:
            assert t.state == "failed" and "NaN" in t.error and t.value is None
        else:
            assert t.state == "complete" and t.value == t.params["x"]
    assert best.value == min(t.value for t in study.trials if t.state == "complete")


def test_non_numeric_result_fails_the_trial():
    study = tune.Study(SPACE, lambda p: "good", sampler=tune.RandomSampler(0))
    assert study.optimize(2) is None
    assert all("not a real number" in t.error for t in study.trials)
    for bad in (True, np.array([1.0, 2.0]), None):
        study = tune.Study(SPACE, lambda p, bad=bad: bad)
        study.optimize(1)
        assert study.trials[0].state == "failed"


@pytest.mark.parametrize("value", [np.float32(0.25), np.array(0.25), np.int64(2), math.inf])
def test_numpy_and_infinite_values_are_accepted(value):
    study = tune.Study(SPACE, lambda p: value)
    assert study.optimize(1).value == float(value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="direction"):
        tune.Study(SPACE, abs, "up")
    with pytest.raises(TypeError, match="space"):
        tune.Study({"x": (0, 1)}, abs)
    study = tune.Study(SPACE, abs)
    with pytest.raises(ValueError, match="n_trials"):
        study.optimize(-1)
    with pytest.raises(ValueError, match="exactly one"):
        study.optimize()
    with pytest.raises(ValueError, match="complete trial"):
        study.refine()
    with pytest.raises(ValueError, match="halving needs a trainable"):
        tune.Study(SPACE, abs, halving=tune.SuccessiveHalving())
    for bad in ({"reduction_factor": 1}, {"min_resource": 0}, {"min_trials": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tune.SuccessiveHalving(**bad)


def _box_contains(box, space, params):
    for name, (lo, hi) in box.items():
        s = float(space[name].to_scale(params[name]))
        assert lo - 1e-9 <= s <= hi + 1e-9, (name, s, lo, hi)


def test_refine_stays_in_bounds_and_concentrates(objectives):
    study = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(2))
    study.optimize(40)
    for r in (1, 2):
        top = sorted(t.value for t in study.trials if t.state == "complete")[:5]
        study.refine(top_k=5, shrink=0.5, n_trials=40)
        rnd = study.rounds[r]
        new = [t for t in study.trials if t.round == r]
        assert len(new) == 40 and rnd.first_number == 40 * r
        for name, (lo, hi) in rnd.box.items():
            lo0, hi0 = SPACE[name].scale_bounds
            prev = study.rounds[r - 1].box[name]
            assert lo0 <= lo < hi <= hi0 and hi - lo < prev[1] - prev[0]
        for t in new:
            _box_contains(rnd.box, SPACE, t.params)
            assert 0.0 <= t.params["x"] <= 1.0 and 1e-4 <= t.params["lr"] <= 1.0
        assert min(t.value for t in new) < 2 * top[-1]  # the best region is still sampled
    med = [np.median([t.value for t in study.trials if t.round == r]) for r in range(3)]
    assert med[2] < med[1] < med[0] / 2, med
    dist = [
        np.median([abs(t.params["x"] - 0.3) for t in study.trials if t.round == r])
        for r in range(3)
    ]
    assert dist[2] < dist[0]


def test_refine_clips_to_the_original_bounds():
    study = tune.Study(SPACE, lambda p: p["x"], sampler=tune.RandomSampler(3))
    study.optimize(20)
    study.refine(top_k=3, shrink=0.8, n_trials=20)
    lo, hi = study.rounds[1].box["x"]
    assert lo == 0.0 and hi < 1.0
    assert all(t.params["x"] >= 0.0 for t in study.trials)


def test_successive_halving_stops_bad_trials_and_keeps_the_best(objectives):
    space = {"x": tune.uniform(0.0, 1.0)}
    full = tune.Study(space, objectives.curve, sampler=tune.RandomSampler(4))
    full.optimize(30)
    sh = tune.Study(
        space,
        objectives.curve,
        sampler=tune.RandomSampler(4),
        halving=tune.SuccessiveHalving(min_resource=1, reduction_factor=3),
    )
    sh.optimize(30)
    pruned = [t for t in sh.trials if t.state == "pruned"]
    assert len(pruned) >= 10
    assert all(max(t.intermediate) < 9 and "pruned at step" in t.error for t in pruned)
    assert sh.best_trial.params == full.best_trial.params
    steps = sum(len(t.intermediate) for t in sh.trials)
    assert steps < 0.6 * sum(len(t.intermediate) for t in full.trials)


# -- storage -----------------------------------------------------------------------------------


def test_sqlite_table_has_one_row_per_trial(tmp_path, objectives):
    path = tmp_path / "s.db"
    with tune.Study(
        SPACE, objectives.quadratic, storage=path, sampler=tune.RandomSampler(0)
    ) as study:
        study.optimize(5)
        study.refine(top_k=2, n_trials=3)
    con = sqlite3.connect(path)
    rows = con.execute("SELECT number, round, state, params, value FROM trials").fetchall()
    con.close()
    assert [r[0] for r in rows] == list(range(8)) and [r[1] for r in rows] == [0] * 5 + [1] * 3
    assert all(r[2] == "complete" for r in rows)
    first = json.loads(rows[0][3])
    assert rows[0][4] == pytest.approx(objectives.quadratic(first))


def test_reopening_resumes_and_reproduces_a_single_run(tmp_path, objectives):
    path = tmp_path / "s.db"
    with tune.Study(SPACE, objectives.quadratic, storage=path) as a:  # seed picked and stored
        a.optimize(4)
        seed = a.sampler.seed
    with tune.Study(SPACE, objectives.quadratic, storage=path) as b:
        assert b.sampler.seed == seed and len(b.trials) == 4
        b.optimize(3)
        got = [t.params for t in b.trials]
    ref = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(seed))
    ref.optimize(7)
    assert got == [t.params for t in ref.trials]


def test_reopening_with_another_space_direction_or_sampler_is_refused(tmp_path):
    path = tmp_path / "s.db"
    with tune.Study(SPACE, abs, storage=path, sampler=tune.RandomSampler(0)):
        pass
    other = {"x": tune.uniform(0.0, 2.0), "lr": SPACE["lr"]}
    with pytest.raises(tune.StorageError, match="another space"):
        tune.Study(other, abs, storage=path)
    with pytest.raises(tune.StorageError, match="minimizes"):
        tune.Study(SPACE, abs, "maximize", storage=path)
    with pytest.raises(tune.StorageError, match="sampled by"):
        tune.Study(SPACE, abs, storage=path, sampler=tune.RandomSampler(1))
    with tune.Study(None, storage=path) as s:  # read-only use: the space comes from the file
        assert s.space == SPACE


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign"])
def test_corrupt_or_foreign_file_is_refused_and_left_alone(tmp_path, kind):
    path = tmp_path / "data.db"
    if kind == "garbage":
        path.write_bytes(b"not a database " * 100)
    elif kind == "truncated":
        with tune.Study(SPACE, lambda p: p["x"], storage=path, sampler=tune.RandomSampler(0)) as s:
            s.optimize(300)
        data = path.read_bytes()
        assert len(data) > 4 * 4096
        path.write_bytes(data[: len(data) // 2])
    else:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE users (name TEXT)")
        con.execute("INSERT INTO users VALUES ('ada')")
        con.commit()
        con.close()
    before = path.read_bytes()
    match = {"garbage": "not a readable", "truncated": "corrupt|not a readable"}
    match = match.get(kind, "not a normax.tune study")
    with pytest.raises(tune.StorageError, match=match):
        tune.Study(SPACE, abs, storage=path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["data.db"]


_KILLED_RUN = """
import sys, time
sys.path.insert(0, {here!r})
from normax import tune
import test_tune_objectives as o
space = {{"x": tune.uniform(0.0, 1.0), "lr": tune.log_uniform(1e-4, 1.0)}}
study = tune.Study(space, o.slow_quadratic, storage={path!r}, sampler=tune.RandomSampler(11))
study.optimize(500)
"""


def _complete(path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM trials WHERE state='complete'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        con.close()


def _run_and_kill(path) -> None:
    code = textwrap.dedent(_KILLED_RUN.format(here=str(HERE), path=str(path)))
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and _complete(path) >= 6):
            assert proc.poll() is None and time.monotonic() < deadline, "run did not start"
            time.sleep(0.02)
        time.sleep(0.01)  # most likely inside a trial
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_mid_run_then_resume(tmp_path, objectives):
    path = tmp_path / "k.db"
    _run_and_kill(path)
    copy = tmp_path / "copy.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", f"{copy}{suffix}")
    ref = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(11))
    ref.optimize(20)

    # fail mode: the interrupted trial is failed; finishing reaches the planned count
    with tune.Study(SPACE, objectives.quadratic, storage=path, sampler=tune.RandomSampler(11)) as s:
        done = [t for t in s.trials if t.state == "complete"]
        killed = [t for t in s.trials if t.state == "failed"]
        assert len(done) >= 6 and all(t.value is not None for t in done)
        assert all("interrupted" in t.error for t in killed) and len(killed) <= 1
        assert not [t for t in s.trials if t.state == "running"]
        s.optimize(until=20)
        assert len(s.trials) == 20
        assert [t.params for t in s.trials] == [t.params for t in ref.trials]

    # requeue mode: the interrupted trial runs again with its own number and parameters
    with tune.Study(
        SPACE,
        objectives.quadratic,
        storage=copy,
        sampler=tune.RandomSampler(11),
        interrupted="requeue",
    ) as s:
        s.optimize(until=20)
        assert [t.state for t in s.trials] == ["complete"] * 20
        assert [t.value for t in s.trials] == [t.value for t in ref.trials]


def test_progress_bar_and_plot(tmp_path, capsys, objectives):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    study = tune.Study(
        {**SPACE, "beta1": tune.ewa_beta(0.9, 0.999), "n": tune.int_uniform(2, 4)},
        objectives.quadratic,
        sampler=tune.RandomSampler(0),
    )
    study.optimize(12, progress=True)
    study.refine(top_k=3, n_trials=6)
    err = capsys.readouterr().err
    assert "12/12" in err and "best" in err and "lr=" in err
    png = tmp_path / "study.png"
    fig = tune.plot_study(study, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = fig.axes
    assert axes[1].get_xscale() == "log" and axes[2].get_xscale() == "log"
    assert axes[0].get_xscale() == "linear" and axes[4].get_xlabel() == "trial"


def test_a_study_file_has_one_driver_at_a_time(tmp_path):
    path = tmp_path / "s.db"
    with tune.Study(SPACE, abs, storage=path) as first:
        with pytest.raises(tune.StorageError, match="already open"):
            tune.Study(SPACE, abs, storage=path)
        first.optimize(2)
    with tune.Study(SPACE, abs, storage=path) as again:  # free once closed
        assert len(again.trials) == 2
    with pytest.raises(ValueError, match="closed"):
        again.optimize(1)
    with pytest.raises(ValueError, match="closed"):
        again.refine(n_trials=1)


def test_no_file_is_created_for_a_bad_space_or_a_new_study_without_one(tmp_path):
    with pytest.raises(TypeError, match="space"):
        tune.Study({"x": 3}, abs, storage=tmp_path / "a.db")
    with pytest.raises(ValueError, match="needs a space"):
        tune.Study(None, abs)
    with pytest.raises(ValueError, match="needs a space"):
        tune.Study(None, abs, storage=tmp_path / "b.db")
    assert os.listdir(tmp_path) == []


MIXED = {
    "x": tune.uniform(-1.0, 1.0),
    "lr": tune.log_uniform(1e-5, 1e-1),
    "beta": tune.ewa_beta(0.8, 0.9999),
    "layers": tune.int_uniform(1, 6),
    "batch": tune.int_log_uniform(8, 512),
    "act": tune.choice(["relu", "tanh", "gelu"]),
}


def test_refine_box_is_shrink_times_as_wide_around_the_best_trials():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None)
    @hypothesis.given(
        seed=st.integers(0, 2**32 - 1),
        top_k=st.integers(1, 8),
        shrink=st.floats(0.01, 1.0),
        target=st.floats(0.0, 1.0),
    )
    def check(seed, top_k, shrink, target):
        def objective(p):  # best trials sit anywhere, edges included
            return abs(MIXED["x"].to_scale(p["x"]) / 2 + 0.5 - target) + p["layers"] / 100

        study = tune.Study(MIXED, objective, sampler=tune.RandomSampler(seed))
        study.optimize(12)
        top = sorted(study.trials, key=lambda t: t.value)[:top_k]
        study.refine(top_k=top_k, shrink=shrink, n_trials=6)
        box = study.rounds[1].box
        for name, dist in MIXED.items():
            lo0, hi0 = dist.scale_bounds
            lo, hi = box[name]
            assert lo0 <= lo <= hi <= hi0
            assert hi - lo == pytest.approx(shrink * (hi0 - lo0), rel=1e-9, abs=1e-12)
            scaled = sorted(float(dist.to_scale(t.params[name])) for t in top)
            median = float(np.median(scaled))
            best = float(dist.to_scale(top[0].params[name]))
            inside = lo0 + 1e-9 < lo and hi < hi0 - 1e-9 and lo + 1e-9 < best < hi - 1e-9
            if inside:  # the box was not moved: centred on the median
                assert (lo + hi) / 2 == pytest.approx(median)
        _box_contains(box, MIXED, top[0].params)
        for t in study.trials[12:]:
            for name, dist in MIXED.items():
                v = t.params[name]
                if isinstance(dist, tune.Choice):
                    assert v in dist.options
                else:
                    assert dist.low <= v <= dist.high

    check()
