"""``normax tune``: tune the demo network on the handwritten digits.

Random search over the learning rate (log-uniform 1e-4..1), Adam's beta1 (``ewa_beta``
0.9..0.999), the hidden units (50..100) and the number of layers (2..4), then ``--refine`` rounds
of coarse-to-fine search around the best trials. The study lives in a SQLite file: running the
command again with the same ``--storage`` resumes it and adds ``--trials`` more trials to its
latest round (its refine rounds are not repeated), or with ``--until N`` runs it until it holds
N trials. The objective's settings (epochs, batch size, training seed, halving) are recorded in
the study; resuming with other settings is refused, so trials of different objectives never mix.
Every output path is checked before the first trial runs.
"""

from __future__ import annotations

import os
import sys

from .. import _argtypes
from .distributions import ewa_beta, int_uniform, log_uniform
from .executors import LocalPool
from .halving import SuccessiveHalving
from .progress import format_params
from .samplers import RandomSampler
from .storage import StorageError
from .study import Study

SPACE = {
    "lr": log_uniform(1e-4, 1.0),
    "beta1": ewa_beta(0.9, 0.999),
    "hidden": int_uniform(50, 100),
    "layers": int_uniform(2, 4),
}


class DigitsObjective:
    """Held-out accuracy of the demo network trained with ``params`` (a picklable trainable)."""

    def __init__(self, epochs: int = 20, seed: int = 0, batch_size: int = 64):
        self.epochs, self.seed, self.batch_size = epochs, seed, batch_size

    def __call__(self, params: dict, report=None) -> float:
        from normax.nn.demo import train_digits

        full = {**params, "batch_size": self.batch_size}
        return train_digits(full, epochs=self.epochs, seed=self.seed, report=report)


def add_arguments(parser) -> None:
    a = parser.add_argument
    count, seconds = _argtypes.integer, _argtypes.seconds
    a("--trials", type=count(1), default=25, help="trials per round (default 25)")
    a(
        "--until",
        type=count(1),
        metavar="N",
        help="instead of --trials: run until the study holds N trials (finish a planned total)",
    )
    a("--workers", type=count(1), default=1, help="local worker processes (default 1)")
    a("--scheduler", help="address of a Dask scheduler (e.g. tcp://10.0.0.5:8786) to run on")
    a(
        "--connect-timeout",
        type=seconds,
        default=10.0,
        help="seconds to wait for the Dask scheduler (default 10)",
    )
    a("--storage", default="normax-tune.db", help="SQLite study file, resumed if it exists")
    a("--refine", type=count(0), default=0, help="coarse-to-fine rounds after the first")
    a("--top-k", type=count(1), default=5, help="best trials a refine round zooms around")
    a(
        "--shrink",
        type=_argtypes.fraction,
        default=0.5,
        help="width of a refine round's box relative to the previous one, in (0, 1]",
    )
    a("--epochs", type=count(1), default=20, help="training epochs per trial (default 20)")
    a("--batch-size", type=count(1), default=64, help="minibatch size (default 64)")
    a("--seed", type=count(0), default=0, help="sampler and training seed (default 0)")
    a("--trial-timeout", type=seconds, help="fail a trial that runs longer (seconds)")
    a("--halving", action="store_true", help="stop clearly bad trials early (successive halving)")
    a("--requeue", action="store_true", help="on resume, rerun trials that were interrupted")
    a("--plot", help="PNG path (default: the storage path with .png); 'none' to skip")
    a("--no-progress", action="store_true", help="no progress bar")


class UsageError(Exception):
    """A mistake in the command line found before any trial runs (exit status 2)."""


def _executor(args):
    """A Dask client, a local pool shared by every round, or None (sequential)."""
    if args.scheduler:
        try:
            from distributed import Client  # the optional `dask` extra
        except ImportError as exc:
            need = "--scheduler needs dask.distributed: pip install 'normax[dask]'"
            raise UsageError(f"{need} ({exc})") from None
        try:
            return Client(args.scheduler, timeout=args.connect_timeout)
        except Exception as exc:  # a bad address, nothing listening, a timeout: all the user's
            raise UsageError(
                f"cannot connect to the Dask scheduler {args.scheduler!r}: {type(exc).__name__}: "
                f"{exc}"
            ) from None
    if args.workers > 1 or args.trial_timeout is not None:  # a timeout needs a killable worker
        return LocalPool(args.workers)
    return None


def _plot_path(args) -> str | None:
    """The plot's path, checked before any trial runs; None for no plot."""
    plot = args.plot or os.path.splitext(args.storage)[0] + ".png"
    if plot.lower() == "none":
        return None
    study_files = {os.path.abspath(args.storage + s) for s in ("", "-wal", "-shm", ".lock")}
    same = os.path.exists(plot) and os.path.exists(args.storage)
    if os.path.abspath(plot) in study_files or (same and os.path.samefile(plot, args.storage)):
        given = "--plot" if args.plot else "the default plot path (--storage with .png)"
        raise UsageError(f"{given} {plot!r} is the study file; choose another --plot or 'none'")
    folder = os.path.dirname(os.path.abspath(plot))
    if os.path.isdir(plot):
        raise UsageError(f"--plot {plot!r} is a directory")
    if not os.path.isdir(folder):
        raise UsageError(f"--plot {plot!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--plot {plot!r}: the folder {folder!r} is not writable")
    return plot


def _check_usage(args) -> None:
    if args.until is not None and args.refine:
        raise UsageError("--until finishes the latest round; it cannot be combined with --refine")
    folder = os.path.dirname(os.path.abspath(args.storage))
    if not os.path.isdir(folder):
        raise UsageError(f"--storage {args.storage!r}: the folder {folder!r} does not exist")


def _failures(study) -> list[str]:
    """``"3 x ValueError: ..."``, one line per distinct reason a trial failed."""
    reasons = {}
    for t in study.trials:
        if t.state == "failed":
            last = (t.error or "unknown error").strip().splitlines()[-1]
            reasons[last] = reasons.get(last, 0) + 1
    return [f"{n} x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])]


def _report(study, out=None) -> None:
    out = out or sys.stdout  # looked up at call time (redirections, captured output)
    best = study.best_trial
    counts = {}
    for t in study.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"study: {len(study.trials)} trials ({summary}), {len(study.rounds)} rounds", file=out)
    for line in _failures(study)[:5]:
        print(f"failed: {line}", file=out)
    if best is None:
        print("no trial completed", file=out)
        return
    print(
        f"best trial #{best.number} (round {best.round}): held-out accuracy {best.value:.4f}",
        file=out,
    )
    print(f"best parameters: {format_params(best.params)}", file=out)


def _settings(args) -> dict:
    """What the objective depends on besides the sampled parameters, recorded in the study."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "training_seed": args.seed,
        "halving": bool(args.halving),
    }


def tune_study(args, objective, executor=None) -> Study:
    """Run the command's study with ``objective``; returns the (closed) study."""
    halving = SuccessiveHalving(min_resource=2, reduction_factor=3) if args.halving else None
    study = Study(
        SPACE,
        objective,
        "maximize",
        args.storage,
        RandomSampler(args.seed),
        halving=halving,
        interrupted="requeue" if args.requeue else "fail",
        settings=_settings(args),
    )
    try:
        run = {
            "executor": executor,
            "progress": not args.no_progress and sys.stderr.isatty(),
            "trial_timeout": args.trial_timeout,
        }
        resumed = bool(study.trials)
        rnd = study.rounds[-1].round
        if args.until is not None:
            print(
                f"{args.storage}: {len(study.trials)} trials so far; running round {rnd} "
                f"until the study holds {args.until}",
                file=sys.stderr,
            )
            study.optimize(until=args.until, **run)
            return study
        if resumed:  # a rerun adds --trials more to the current round, and nothing else
            print(
                f"resuming {args.storage}: {len(study.trials)} trials so far; adding "
                f"{args.trials} to round {rnd}",
                file=sys.stderr,
            )
        study.optimize(args.trials, **run)
        for _ in range(0 if resumed else args.refine):
            study.refine(top_k=args.top_k, shrink=args.shrink, n_trials=args.trials, **run)
    finally:
        study.close()
    return study


def _default_objective(args):
    try:
        import sklearn.datasets  # noqa: F401 - the digits come from scikit-learn

        import normax.nn.demo  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"the digits objective needs scikit-learn: pip install 'normax[examples]' ({exc})"
        ) from None
    return DigitsObjective(args.epochs, args.seed, args.batch_size)


def run(args, objective=None) -> int:
    """``normax tune``: 0 if at least one trial completed, 1 if none did, 2 for usage errors."""
    executor = None
    try:
        if not 0 < args.shrink <= 1:
            raise UsageError(f"--shrink must be in (0, 1], got {args.shrink}")
        _check_usage(args)
        plot = _plot_path(args)
        objective = objective or _default_objective(args)
        executor = _executor(args)  # before the study: a bad address leaves no file behind
        study = tune_study(args, objective, executor)
    except (UsageError, StorageError) as exc:
        print(f"normax tune: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nnormax tune: interrupted; {args.storage} keeps every finished trial, "
            "run the same command to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        if executor is not None:
            executor.close()
    _report(study)
    if study.best_trial is None:
        print("normax tune: no trial completed (see the failures above)", file=sys.stderr)
        return 1
    if plot is not None:
        return _plot(study, plot)
    return 0


def _plot(study, plot: str) -> int:
    try:
        from .plots import plot_study

        plot_study(study, plot, value_label="held-out accuracy")
    except ImportError as exc:
        print(f"no plot ({exc})", file=sys.stderr)
        return 0
    except OSError as exc:
        print(f"normax tune: cannot write the plot {plot!r}: {exc}", file=sys.stderr)
        return 1
    print(f"plot: {plot}")
    return 0
