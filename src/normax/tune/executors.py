"""Running trials: in the driver, in a local process pool, on any Executor, on a Dask cluster.

The driver hands each worker a :class:`Task` (the objective, the parameter values and, with
successive halving, the rung values known so far) and gets back an :class:`Outcome`. Workers
never write the storage. ``run_task`` turns every way an objective can go wrong (an exception, a
NaN, a value that is not a number) into a failed outcome with its error text.
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import numbers
import os
import signal
import time
import traceback
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait

from .halving import SuccessiveHalving, TrialPruned

__all__ = ["LocalPool", "Outcome", "Task", "accepts_report", "make_runner", "run_task"]


def accepts_report(objective) -> bool:
    """True if ``objective`` takes a ``report`` argument (a *trainable*)."""
    try:
        return "report" in inspect.signature(objective).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


@dataclass(frozen=True)
class Task:
    """What a worker needs to run one trial (picklable, except ``on_report`` in the driver)."""

    number: int
    params: dict
    objective: object
    trainable: bool
    minimize: bool
    halving: SuccessiveHalving | None = None
    rungs: dict = field(default_factory=dict)
    on_report: object = None  # only in the driver process (live intermediate values)


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back: the trial's final state, value, reports, error and times."""

    number: int
    state: str
    value: float | None
    intermediate: dict
    error: str | None
    started: float
    finished: float


class _Reporter:
    """The ``report(step, value)`` callback handed to a trainable."""

    def __init__(self, task: Task):
        self.task, self.steps = task, {}

    def __call__(self, step, value) -> None:
        step, value = int(step), float(value)
        self.steps[step] = value
        if self.task.on_report is not None:
            self.task.on_report(self.task.number, step, value)
        sh = self.task.halving
        k = None if sh is None else sh.rung_of(step)
        if k is not None and not sh.keep(
            value, self.task.rungs.get(k, []), minimize=self.task.minimize
        ):
            raise TrialPruned(f"pruned at step {step} (value {value:.6g})")


def _check_value(value) -> float:
    if getattr(value, "shape", None) == ():  # a 0-d array, e.g. np.asarray(loss)
        value = value[()]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"objective returned {value!r}, not a real number")
    v = float(value)
    if math.isnan(v):
        raise ValueError("objective returned NaN")
    return v


def run_task(task: Task) -> Outcome:
    """Evaluate one trial; never raises for a failing objective."""
    started = time.time()
    rep = _Reporter(task)
    params = dict(task.params)
    try:
        raw = task.objective(params, report=rep) if task.trainable else task.objective(params)
        value, state, error = _check_value(raw), "complete", None
    except TrialPruned as exc:
        last = rep.steps[max(rep.steps)] if rep.steps else None
        value, state, error = last, "pruned", str(exc)
    except Exception as exc:  # the study goes on; the trial records why it failed
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        value, state, error = None, "failed", "".join(tb[-3:]).strip()
    return Outcome(task.number, state, value, rep.steps, error, started, time.time())


def _failed(task: Task, error: str, started: float) -> Outcome:
    return Outcome(task.number, "failed", None, {}, error, started, time.time())


# -- runners: submit(task), wait() -> [Outcome], capacity, close() ---------------------------


class _Sequential:
    capacity, live = 1, True

    def __init__(self):
        self._tasks = []

    def submit(self, task):
        self._tasks.append(task)

    def wait(self, timeout=None):
        tasks, self._tasks = self._tasks, []
        return [run_task(t) for t in tasks]

    def close(self):
        pass


_STARTED = "started"


def _worker_main(conn) -> None:
    # Ctrl-C reaches the whole process group; the driver decides what happens to the trials
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the driver closed the pipe (pool closed or driver gone): exit quietly
            return
        if task is None:
            return
        conn.send(_STARTED)  # the trial's clock starts now, not while this process imports
        conn.send(run_task(task))


class LocalPool:
    """A pool of ``workers`` processes that survives the death of any of them.

    Processes start with the ``spawn`` method (a forked copy of a process that already ran
    OpenMP kernels can deadlock). Each process runs one trial at a time; if it dies (a crash,
    ``os._exit``, SIGKILL), only that trial fails and a fresh process takes its place.
    ``concurrent.futures.ProcessPoolExecutor`` would instead break and fail every trial in
    flight.
    """

    live = False

    def __init__(self, workers: int):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.capacity = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._idle = [self._start() for _ in range(workers)]
        self._busy = {}  # conn -> (process, task, started)

    def _start(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def submit(self, task):
        if not self._idle:
            raise RuntimeError("LocalPool is closed or has no idle worker")
        proc, conn = self._idle.pop()
        if not proc.is_alive():  # died after its last answer
            conn.close()
            proc, conn = self._start()
        conn.send(task)  # pickles the objective: it must be importable in a fresh process
        self._busy[conn] = (proc, task, None)  # started: when the worker says so

    def wait(self, timeout: float | None = None):
        """Outcomes of the trials that finished; with ``timeout``, also of those that ran longer
        (their worker is killed and replaced)."""
        while True:
            sentinels = {proc.sentinel: conn for conn, (proc, _, _) in self._busy.items()}
            ready = mp_wait(list(self._busy) + list(sentinels), _remaining(self._busy, timeout))
            if ready:
                out = self._collect({sentinels.get(r, r) for r in ready})
            else:
                out = self._expire(timeout)
            if out:
                return out

    def _collect(self, done) -> list:
        out = []
        for conn in done:
            proc, task, started = self._busy.pop(conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                proc.join(timeout=5)
                error = f"worker process died (exit code {proc.exitcode})"
                out.append(_failed(task, error, time.time() if started is None else started))
                conn.close()
                self._idle.append(self._start())
                continue
            if msg == _STARTED:
                self._busy[conn] = (proc, task, time.time())
            else:
                out.append(msg)
                self._idle.append((proc, conn))
        return out

    def _expire(self, timeout: float) -> list:
        out, now = [], time.time()
        for conn, (proc, task, started) in list(self._busy.items()):
            if started is not None and now - started >= timeout:
                del self._busy[conn]
                proc.kill()  # a hung objective: only a new process gets the worker back
                proc.join()
                conn.close()
                out.append(_failed(task, _timed_out(timeout), started))
                self._idle.append(self._start())
        return out

    def abandon(self):
        """Kill the busy workers (their trials were given up) and start fresh ones."""
        for conn, (proc, _, _) in list(self._busy.items()):
            proc.kill()
            proc.join()
            conn.close()
            self._idle.append(self._start())
        self._busy = {}

    def close(self):
        """Stop idle workers cleanly and kill busy ones (their trials are abandoned)."""
        for proc, _, _ in self._busy.values():
            proc.kill()
        for _, conn in self._idle:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn in self._idle + [(p, c) for c, (p, _, _) in self._busy.items()]:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._idle, self._busy = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Futures:
    """Any ``concurrent.futures.Executor`` (a Dask client goes through its executor view)."""

    live = False

    def __init__(self, executor, capacity: int):
        self._ex, self._capacity, self._pending = executor, capacity, {}
        self._stuck = set()  # timed out but still running: they hold a worker thread

    @property
    def capacity(self) -> int:
        self._stuck = {f for f in self._stuck if not f.done()}
        return max(0, self._capacity - len(self._stuck))

    def submit(self, task):
        self._pending[self._ex.submit(run_task, task)] = (task, time.time())

    def wait(self, timeout: float | None = None):
        while True:
            if not self._pending:  # every thread held by a timed-out trial: wait for one
                futures.wait(list(self._stuck), return_when=futures.FIRST_COMPLETED)
                return []
            remaining = _remaining(self._pending, timeout)
            done, _ = futures.wait(
                list(self._pending), timeout=remaining, return_when=futures.FIRST_COMPLETED
            )
            if done:
                return [self._outcome(fut) for fut in done]
            out = self._expire(timeout)
            if out:
                return out

    def _outcome(self, fut) -> Outcome:
        task, started = self._pending.pop(fut)
        exc = fut.exception()
        if exc is None:
            return fut.result()
        # the worker (not the objective) failed: a dead process, a lost Dask worker
        return _failed(task, f"{type(exc).__name__}: {exc}", started)

    def _expire(self, timeout: float) -> list:
        out, now = [], time.time()
        for fut, (task, started) in list(self._pending.items()):
            if now - started >= timeout:
                # a thread (or a Dask task) cannot be stopped: the trial is failed and its late
                # result ignored, and its worker thread counts as busy until it returns
                del self._pending[fut]
                self._stuck.add(fut)
                out.append(_failed(task, _timed_out(timeout), started))
        return out

    def close(self):
        pass


def _timed_out(timeout: float) -> str:
    return f"timed out: the trial ran longer than trial_timeout={timeout:g} s and was stopped"


def _remaining(busy: dict, timeout: float | None) -> float | None:
    """Seconds until the oldest trial in ``busy`` (values: (..., started)) reaches ``timeout``."""
    started = [v[-1] for v in busy.values() if v[-1] is not None]
    if timeout is None or not started:
        return None
    return max(0.0, min(started) + timeout - time.time())


def _is_dask_client(executor) -> bool:
    return type(executor).__module__.startswith("distributed") and hasattr(executor, "nthreads")


def make_runner(executor=None, workers=None):
    """The runner for ``optimize(executor=..., workers=...)`` and whether the caller owns it
    (closes it when done)."""
    if executor is not None and workers is not None:
        raise ValueError("pass either executor or workers, not both")
    if workers is not None:
        return LocalPool(workers), True
    if executor is None:
        return _Sequential(), True
    if isinstance(executor, LocalPool):
        return executor, False
    if _is_dask_client(executor):
        capacity = max(1, sum(executor.nthreads().values()))
        return _Futures(executor.get_executor(pure=False), capacity), True
    if isinstance(executor, futures.Executor):
        capacity = getattr(executor, "_max_workers", None) or os.cpu_count() or 1
        return _Futures(executor, capacity), True
    raise TypeError(
        "executor must be a concurrent.futures.Executor or a dask.distributed.Client, "
        f"got {type(executor).__name__}"
    )
