"""Caviar: trials on a local process pool, a thread pool and a Dask cluster give the same
parameters as a sequential run with the same seed; a dying worker fails only its trial."""

from __future__ import annotations

import importlib
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from normax import tune

HERE = Path(__file__).resolve().parent
SPACE = {"x": tune.uniform(0.0, 1.0), "lr": tune.log_uniform(1e-4, 1.0)}
SEED = 21


@pytest.fixture
def objectives(monkeypatch):
    # spawned workers inherit sys.path, so they can import the objectives by reference
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("test_tune_objectives")


def _sequential(objectives, n):
    study = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(SEED))
    study.optimize(n)
    return study.trials


def test_process_pool_matches_sequential_and_survives_a_dying_worker(tmp_path, objectives):
    ref = _sequential(objectives, 8)
    doomed = max(ref, key=lambda t: t.params["x"])  # the only trial above the threshold
    threshold = sorted(t.params["x"] for t in ref)[-2]
    objective = objectives.ExitAbove(threshold)
    with tune.Study(
        SPACE, objective, storage=tmp_path / "p.db", sampler=tune.RandomSampler(SEED)
    ) as study:
        study.optimize(8, workers=2)
        got = study.trials
    assert [t.params for t in got] == [t.params for t in ref]
    for t, r in zip(got, ref, strict=True):
        if t.number == doomed.number:
            assert t.state == "failed" and "worker process died (exit code 3)" in t.error
        else:
            assert t.state == "complete" and t.value == r.value


def test_pool_refuses_an_objective_it_cannot_send():
    study = tune.Study(SPACE, lambda p: p["x"], sampler=tune.RandomSampler(0))
    with pytest.raises(RuntimeError, match="importable"):
        study.optimize(2, workers=1)
    assert study.trials[0].state == "failed"


def test_thread_pool_executor_matches_sequential(objectives):
    ref = _sequential(objectives, 12)
    study = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(SEED))
    with ThreadPoolExecutor(max_workers=3) as ex:
        study.optimize(12, executor=ex)
    assert [(t.params, t.value) for t in study.trials] == [(t.params, t.value) for t in ref]


def test_halving_snapshot_travels_to_workers(objectives):
    space = {"x": tune.uniform(0.0, 1.0)}
    sh = tune.SuccessiveHalving(min_resource=1, reduction_factor=3)
    study = tune.Study(space, objectives.curve, sampler=tune.RandomSampler(4), halving=sh)
    with ThreadPoolExecutor(max_workers=2) as ex:
        study.optimize(20, executor=ex)
    assert any(t.state == "pruned" for t in study.trials)
    assert study.best_trial.state == "complete"


def test_dask_local_cluster_matches_sequential(objectives):
    distributed = pytest.importorskip("distributed")
    ref = _sequential(objectives, 10)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            study = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(SEED))
            study.optimize(10, executor=client)
    assert [(t.params, t.value) for t in study.trials] == [(t.params, t.value) for t in ref]


def test_executor_argument_errors():
    study = tune.Study(SPACE, abs)
    with pytest.raises(TypeError, match="executor must be"):
        study.optimize(1, executor=object())
    with pytest.raises(ValueError, match="either executor or workers"):
        study.optimize(1, executor=ThreadPoolExecutor(1), workers=2)
    with pytest.raises(ValueError, match="workers"):
        study.optimize(1, workers=0)


def test_a_local_pool_is_reused_across_rounds_and_closed_by_its_owner(objectives):
    ref = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(SEED))
    ref.optimize(4)
    ref.refine(top_k=2, n_trials=4)
    study = tune.Study(SPACE, objectives.quadratic, sampler=tune.RandomSampler(SEED))
    with tune.LocalPool(2) as pool:
        study.optimize(4, executor=pool)
        study.refine(top_k=2, n_trials=4, executor=pool)
        procs = [p for p, _ in pool._idle]
        assert all(p.is_alive() for p in procs)
    assert not any(p.is_alive() for p in procs)
    assert [(t.params, t.value) for t in study.trials] == [(t.params, t.value) for t in ref.trials]


def test_interrupted_optimize_leaves_no_running_trial(objectives):
    class Stop(ThreadPoolExecutor):
        def __init__(self):
            super().__init__(max_workers=2)
            self.calls = 0

        def submit(self, fn, *args, **kwargs):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().submit(fn, *args, **kwargs)

    study = tune.Study(SPACE, objectives.slow_quadratic, sampler=tune.RandomSampler(0))
    with Stop() as ex, pytest.raises(KeyboardInterrupt):
        study.optimize(6, executor=ex)
    states = [t.state for t in study.trials]
    assert len(states) == 3 and "running" not in states and states[2] == "failed"
    assert all("interrupted: KeyboardInterrupt" in t.error for t in study.trials if t.error)


def _check_timed_out(study, n):
    assert len(study.trials) == n
    hung = [t for t in study.trials if t.params["x"] > 0.5]
    assert hung and all(
        t.state == "failed" and "timed out" in t.error and "trial_timeout=0.5" in t.error
        for t in hung
    )
    assert all(t.state == "complete" for t in study.trials if t.params["x"] <= 0.5)


@pytest.mark.slow  # each timed-out trial costs a fresh worker process
def test_trial_timeout_on_a_local_pool(objectives):
    study = tune.Study(SPACE, objectives.HangAbove(600), sampler=tune.RandomSampler(SEED))
    with tune.LocalPool(2) as pool:
        study.optimize(6, executor=pool, trial_timeout=0.5)
        _check_timed_out(study, 6)
        study.optimize(4, executor=pool, trial_timeout=0.5)  # the killed workers were replaced
    _check_timed_out(study, 10)


def test_trial_timeout_on_dask(objectives):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            study = tune.Study(SPACE, objectives.HangAbove(2), sampler=tune.RandomSampler(SEED))
            study.optimize(4, executor=client, trial_timeout=0.5)
    _check_timed_out(study, 4)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "1", True])
def test_trial_timeout_argument_errors(bad):
    study = tune.Study(SPACE, abs)
    with pytest.raises(ValueError, match="trial_timeout"):
        study.optimize(1, workers=1, trial_timeout=bad)


def test_trial_timeout_needs_workers_or_an_executor():
    with pytest.raises(ValueError, match="needs workers=n or an executor"):
        tune.Study(SPACE, abs).optimize(1, trial_timeout=5)
