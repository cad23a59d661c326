"""A study: a search space, an objective, the trials so far, and where they are stored."""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque

import numpy as np

from .distributions import check_space, distribution_from_json
from .executors import Task, accepts_report, make_runner
from .halving import SuccessiveHalving
from .progress import Progress
from .samplers import RandomSampler, Sampler
from .storage import FINISHED, Round, SQLiteStorage, StorageError, Trial

__all__ = ["Study"]

_INTERRUPTED = "interrupted: the process running the study stopped before the trial finished"


def _space_json(space: dict) -> str:
    return json.dumps({k: d.to_json() for k, d in space.items()})


def _zoom(scaled: list, current: tuple, bounds: tuple, shrink: float) -> tuple:
    """``shrink`` x the width of ``current``, centred on the median of ``scaled`` (best first),
    shifted to contain ``scaled[0]``, then to lie within ``bounds``."""
    width = shrink * (current[1] - current[0])
    lo = float(np.median(scaled)) - width / 2
    lo = min(max(lo, scaled[0] - width), scaled[0])  # the best trial stays inside
    lo = min(max(lo, bounds[0]), bounds[1] - width)  # as is the box, its width kept
    return (lo, min(lo + width, bounds[1]))


def _settings_json(settings) -> str | None:
    if settings is None:
        return None
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise TypeError(f"settings must be a dict with str keys, got {settings!r}")
    try:
        return json.dumps(settings, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"settings must be JSON-ready: {exc}") from None


def _check_timeout(timeout, executor, workers) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"trial_timeout must be a positive number of seconds, got {timeout!r}")
    if not math.isfinite(timeout):
        raise ValueError(f"trial_timeout must be finite, got {timeout!r}")
    if executor is None and workers is None:
        raise ValueError(
            "trial_timeout needs workers=n or an executor: a trial running in this process "
            "cannot be stopped"
        )


class Study:
    """Trials of ``objective`` over ``space``, in memory or in a SQLite file that survives crashes.

    Parameters
    ----------
    space : dict of str -> Distribution
        The search space; ``None`` when opening an existing storage reads it from the file.
    objective : callable, optional
        ``objective(params) -> float``, or a *trainable* ``objective(params, report=...)`` that
        calls ``report(step, value)`` after each epoch (intermediate values, early stopping).
        With ``workers=n`` it must be importable (a module-level function or class instance).
    direction : {"minimize", "maximize"}
    storage : None, str, os.PathLike or SQLiteStorage
        ``None`` keeps trials in memory; a path opens (or creates) a SQLite study, resuming it.
    sampler : Sampler, optional
        Default ``RandomSampler()`` (a fresh seed, remembered by the storage).
    halving : SuccessiveHalving, optional
        Stop trials whose reported values fall behind (trainables only).
    interrupted : {"fail", "requeue"}
        On resume, what becomes of trials that were running when the last process stopped:
        marked failed, or run again (same number and parameters) by the next ``optimize``.
    settings : dict, optional
        The objective's own settings (epochs, batch size, ...), JSON-ready. A new study
        records them; resuming with different settings raises StorageError naming the
        differences, so trials of different objectives never mix in one study. ``None`` (to
        read a study, say) checks nothing; a study that has none recorded takes these.

    Examples
    --------
    >>> from normax import tune
    >>> space = {"x": tune.uniform(-2.0, 2.0), "lr": tune.log_uniform(1e-4, 1.0)}
    >>> study = tune.Study(space, lambda p: (p["x"] - 1) ** 2, sampler=tune.RandomSampler(0))
    >>> best = study.optimize(30)
    >>> best = study.refine(top_k=5, shrink=0.3, n_trials=30)
    >>> abs(best.params["x"] - 1) < 0.1, len(study.trials), study.trials[-1].round
    (True, 60, 1)
    """

    def __init__(
        self,
        space,
        objective=None,
        direction="minimize",
        storage=None,
        sampler: Sampler | None = None,
        *,
        halving: SuccessiveHalving | None = None,
        interrupted: str = "fail",
        settings: dict | None = None,
    ):
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
        if interrupted not in ("fail", "requeue"):
            raise ValueError(f"interrupted must be 'fail' or 'requeue', got {interrupted!r}")
        if halving is not None and not isinstance(halving, SuccessiveHalving):
            raise TypeError(f"halving must be a SuccessiveHalving, got {halving!r}")
        if sampler is not None and not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a tune sampler, got {sampler!r}")
        if objective is not None and not callable(objective):
            raise TypeError(f"objective must be callable, got {objective!r}")
        self.settings = _settings_json(settings)
        if space is not None:  # before any file is created
            check_space(space)
        elif storage is None or (
            not isinstance(storage, SQLiteStorage) and not os.path.exists(storage)
        ):
            raise ValueError("a new study needs a space")
        self.objective, self.direction, self.halving = objective, direction, halving
        self._trainable = objective is not None and accepts_report(objective)
        if halving is not None and objective is not None and not self._trainable:
            raise ValueError("halving needs a trainable objective(params, report=...)")
        self._best, self._closed = None, False
        if storage is None or isinstance(storage, SQLiteStorage):
            self._store = storage
        else:
            self._store = SQLiteStorage(storage)
        try:
            self._open(space, sampler or RandomSampler(), interrupted)
        except BaseException:
            self.close()
            raise

    # -- opening and resuming ------------------------------------------------------------------
    def _open(self, space, sampler, interrupted) -> None:
        meta = {} if self._store is None else self._store.meta()
        if "space" in meta:
            self._resume(meta, space, sampler, interrupted)
            return
        if self._store is not None and (self._store.trials() or self._store.rounds()):
            raise StorageError(f"{self._store.path!r} is a damaged study: its settings are gone")
        if space is None:
            raise ValueError("a new study needs a space")
        self.space = check_space(space)
        self.sampler = sampler.bind(None)
        self._trials, self._rounds = [], []
        if self._store is not None:
            self._store.set_meta(
                {
                    "space": _space_json(self.space),
                    "direction": self.direction,
                    "sampler": json.dumps(self.sampler.describe()),
                    **({} if self.settings is None else {"settings": self.settings}),
                }
            )
        self._add_round(Round(0, 0, {k: d.scale_bounds for k, d in self.space.items()}))

    def _resume(self, meta, space, sampler, interrupted) -> None:
        stored = self._stored_settings(meta)
        self.space = stored["space"] if space is None else check_space(space)
        if _space_json(self.space) != meta["space"]:
            raise StorageError(
                f"{self._store.path!r} holds a study over another space: {meta['space']}"
            )
        if meta["direction"] != self.direction:
            raise StorageError(f"{self._store.path!r} holds a study that {meta['direction']}s")
        self.sampler = sampler.bind(stored["sampler"])
        if json.dumps(self.sampler.describe()) != meta["sampler"]:
            raise StorageError(
                f"{self._store.path!r} was sampled by {meta['sampler']}, "
                f"not {json.dumps(self.sampler.describe())}"
            )
        self._check_settings(meta.get("settings"))
        self._trials, self._rounds = self._store.trials(), self._store.rounds()
        self._check_consistent()
        if not self._rounds:  # stopped between writing the space and its first round
            self._add_round(Round(0, 0, {k: d.scale_bounds for k, d in self.space.items()}))
        for t in self._trials:
            if t.state == "running":
                self._interrupted(t, interrupted)
            self._track(t)

    def _stored_settings(self, meta) -> dict:
        """The space and sampler recorded in ``meta``; StorageError if they are unreadable."""
        try:
            space = json.loads(meta["space"])
            sampler = json.loads(meta["sampler"])
            if not isinstance(space, dict) or not space or not isinstance(sampler, dict):
                raise ValueError("not a JSON object")
            if meta["direction"] not in ("minimize", "maximize"):
                raise ValueError(f"direction {meta['direction']!r}")
            return {
                "space": {k: distribution_from_json(v) for k, v in space.items()},
                "sampler": sampler,
            }
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise StorageError(
                f"{self._store.path!r} is a damaged study: its settings are unreadable: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _check_settings(self, stored: str | None) -> None:
        if self.settings is None:
            return
        if stored is None:  # a study from before settings were recorded: record them now
            self._store.set_meta({"settings": self.settings})
            return
        if stored == self.settings:
            return
        try:
            old = json.loads(stored)
            old = old if isinstance(old, dict) else {}
        except (ValueError, RecursionError):
            old = {}
        new = json.loads(self.settings)
        diff = [
            f"{k}={old.get(k, '(unset)')!r} in the study, {new.get(k, '(unset)')!r} now"
            for k in sorted(set(old) | set(new))
            if old.get(k, "(unset)") != new.get(k, "(unset)")
        ] or [f"recorded settings {stored!r}"]
        raise StorageError(
            f"{self._store.path!r} was made with other objective settings: " + "; ".join(diff)
        )

    def _check_consistent(self) -> None:
        """Trials and rounds that fit the space and each other, or StorageError."""
        names, problem = set(self.space), None
        for i, rnd in enumerate(self._rounds):
            if rnd.round != i or set(rnd.box) != names:
                problem = f"round {rnd.round} does not fit the study's space"
        known = len(self._rounds)
        for t in self._trials:
            if t.round >= known or set(t.params) != names:
                problem = f"trial {t.number} does not fit the study's space and rounds"
        if problem is not None:
            raise StorageError(f"{self._store.path!r} is a damaged study: {problem}")

    def _interrupted(self, t: Trial, how: str) -> None:
        if how == "fail":
            self._fail(t, _INTERRUPTED)
        else:
            t.state, t.intermediate, t.started, t.error = "queued", {}, None, None
            self._store.update_trial(t)

    def _add_round(self, rnd: Round) -> None:
        if self._store is not None:
            self._store.add_round(rnd)
        self._rounds.append(rnd)

    # -- reading ---------------------------------------------------------------------------
    @property
    def trials(self) -> list[Trial]:
        """Every trial, by number."""
        return list(self._trials)

    @property
    def rounds(self) -> list[Round]:
        """The coarse-to-fine rounds so far (round 0 is the whole space)."""
        return list(self._rounds)

    @property
    def best_trial(self) -> Trial | None:
        """The complete trial with the best value (None before the first one)."""
        return self._best

    def _better(self, t: Trial) -> bool:
        if t.state != "complete":
            return False
        if self._best is None:
            return True
        if self.direction == "minimize":
            return t.value < self._best.value
        return t.value > self._best.value

    def _track(self, t: Trial) -> None:
        if self._better(t):
            self._best = t

    def close(self) -> None:
        """Close the storage (a study in memory has nothing to close)."""
        if self._store is not None:
            self._store.close()
            self._store, self._closed = None, True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the study's storage is closed; open the study again to continue")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- running -----------------------------------------------------------------------------
    def _plan(self, n_trials, until) -> tuple[deque, int]:
        if (n_trials is None) == (until is None):
            raise ValueError("pass exactly one of n_trials and until")
        name, given = ("n_trials", n_trials) if until is None else ("until", until)
        if isinstance(given, bool) or not isinstance(given, int) or given < 0:
            raise ValueError(f"{name} must be a non-negative int, got {given!r}")
        queued = deque(t.number for t in self._trials if t.state == "queued")
        n = n_trials if until is None else max(0, until - (len(self._trials) - len(queued)))
        while len(queued) > n:
            queued.pop()
        n_new = n - len(queued)
        size = getattr(self.sampler, "size", None)
        rnd = self._rounds[-1]
        if size is not None and n_new:
            last = len(self._trials) + n_new - 1 - rnd.first_number
            total = size(self.space, rnd.box)
            if last >= total:
                raise ValueError(
                    f"the grid has {total} points; round {rnd.round} would need {last + 1}"
                )
        return queued, n_new

    def _start_trial(self, queued: deque) -> Trial:
        now = time.time()
        if queued:
            t = self._trials[queued.popleft()]
            t.state, t.started = "running", now
            self._store.update_trial(t)
            return t
        number, rnd = len(self._trials), self._rounds[-1]
        params = self.sampler.sample(self.space, rnd.box, number, number - rnd.first_number)
        t = Trial(number, rnd.round, "running", params, started=now)
        if self._store is not None:
            self._store.insert_trial(t)
        self._trials.append(t)
        return t

    def _task(self, t: Trial, live: bool) -> Task:
        rungs = {} if self.halving is None else self.halving.snapshot(self._trials)
        return Task(
            t.number,
            t.params,
            self.objective,
            self._trainable,
            self.direction == "minimize",
            self.halving,
            rungs,
            self._on_report if live else None,
        )

    def _on_report(self, number: int, step: int, value: float) -> None:
        t = self._trials[number]
        t.intermediate[step] = value
        if self._store is not None:
            self._store.update_intermediate(t)

    def _record(self, out) -> Trial:
        t = self._trials[out.number]
        t.state, t.value, t.error = out.state, out.value, out.error
        t.intermediate = dict(out.intermediate)
        t.started, t.finished = out.started, out.finished
        if self._store is not None:
            self._store.update_trial(t)
        self._track(t)
        return t

    def optimize(
        self,
        n_trials=None,
        *,
        until=None,
        executor=None,
        workers=None,
        progress=False,
        trial_timeout=None,
    ) -> Trial | None:
        """Run ``n_trials`` more trials (or run until the study has ``until`` trials).

        Parameters
        ----------
        n_trials : int, optional
            Trials to run now; trials queued by a resume run first and count toward it.
        until : int, optional
            Instead of ``n_trials``: the total the study should reach (finished trials count).
        executor : Executor, dask.distributed.Client or LocalPool, optional
            Where trials run; default: one after another in this process. A ``LocalPool``
            passed here stays open for the next call (no process start-up per round).
        workers : int, optional
            Run on a local pool of this many spawned processes (a dying worker fails only its
            trial).
        progress : bool
            Show a tqdm progress bar with the best value and parameters (if tqdm is installed).
        trial_timeout : float, optional
            Seconds a trial may run. A trial that takes longer fails with the reason, and the
            study goes on. Needs ``workers`` or an ``executor``: a local pool kills the
            worker process and starts a fresh one; other executors (Dask included) cannot stop
            a running task, so its late result is ignored and its thread gets no new trial
            until it returns.

        Returns
        -------
        Trial or None
            The best complete trial so far.
        """
        if self.objective is None:
            raise ValueError("this study has no objective to optimize")
        self._check_open()
        _check_timeout(trial_timeout, executor, workers)
        queued, n_new = self._plan(n_trials, until)
        runner, owned = make_runner(executor, workers)
        bar = Progress(len(queued) + n_new, enabled=progress)
        in_flight = set()
        try:
            while queued or n_new or in_flight:
                while (queued or n_new) and len(in_flight) < runner.capacity:
                    n_new -= 0 if queued else 1
                    t = self._start_trial(queued)
                    in_flight.add(t.number)
                    self._submit(runner, t)
                for out in runner.wait(trial_timeout):
                    in_flight.discard(out.number)
                    self._record(out)
                    bar.update(self.best_trial)
        except BaseException as exc:  # Ctrl-C, a broken executor: no trial stays "running"
            for number in sorted(in_flight):
                if self._trials[number].state == "running":
                    self._fail(self._trials[number], f"interrupted: {type(exc).__name__}: {exc}")
            if not owned and hasattr(runner, "abandon"):
                runner.abandon()  # a shared pool must not deliver these trials later
            raise
        finally:
            if owned:
                runner.close()
            bar.close()
        return self.best_trial

    def _fail(self, t: Trial, error: str) -> None:
        t.state, t.error, t.finished = "failed", error, time.time()
        if self._store is not None:
            self._store.update_trial(t)

    def _submit(self, runner, t: Trial) -> None:
        try:
            runner.submit(self._task(t, runner.live))
        except Exception as exc:  # cannot even hand the trial over: stop, keep what we have
            self._fail(t, f"{type(exc).__name__}: {exc}")
            raise RuntimeError(
                f"could not submit trial {t.number}: {exc} (with workers=n the "
                "objective must be importable by a fresh process)"
            ) from exc

    # -- coarse to fine ------------------------------------------------------------------------
    def zoom_box(self, top_k: int = 5, shrink: float = 0.5) -> dict:
        """The box of the next coarse-to-fine round (see :meth:`refine`)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if not (isinstance(shrink, (int, float)) and 0 < shrink <= 1):
            raise ValueError(f"shrink must be in (0, 1], got {shrink!r}")
        done = [t for t in self._trials if t.state == "complete"]
        if not done:
            raise ValueError("refine needs at least one complete trial")
        done.sort(key=lambda t: t.value, reverse=self.direction == "maximize")
        top, current, box = done[:top_k], self._rounds[-1].box, {}
        for name, dist in self.space.items():
            s = [float(dist.to_scale(t.params[name])) for t in top]
            box[name] = _zoom(s, current[name], dist.scale_bounds, shrink)
        return box

    def refine(self, top_k: int = 5, shrink: float = 0.5, n_trials=None, **optimize_kw):
        """Start a coarse-to-fine round around the best trials, and run it if ``n_trials``.

        On each parameter's own scale the new box is ``shrink`` times as wide as the current
        one, centred on the median of the ``top_k`` best complete trials, and moved as little
        as needed to contain the best trial and to stay within the original bounds. So every
        round narrows every range by ``shrink``, also for parameters on which the best trials
        disagree (there the median keeps the round near most of them). Repeat for several
        rounds.

        Parameters
        ----------
        top_k : int
        shrink : float in (0, 1]
        n_trials : int, optional
            Trials to run in the new round now (``optimize_kw`` go to :meth:`optimize`).

        Returns
        -------
        Trial or None
            The best complete trial so far.
        """
        self._check_open()
        box = self.zoom_box(top_k, shrink)
        self._add_round(Round(len(self._rounds), len(self._trials), box, top_k, float(shrink)))
        if n_trials is not None:
            return self.optimize(n_trials, **optimize_kw)
        return self.best_trial

    def __repr__(self):
        where = "memory" if self._store is None else self._store.path
        finished = sum(t.state in FINISHED for t in self._trials)
        return (
            f"Study({self.direction}, {finished} finished trials, "
            f"{len(self._rounds)} rounds, {where})"
        )
