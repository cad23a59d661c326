"""``normax tune``: tune the demo network on the handwritten digits.

Random search over the learning rate (log-uniform 1e-4..1), Adam's beta1 (``ewa_beta``
0.9..0.999), the hidden units (50..100) and the number of layers (2..4), then ``--refine`` rounds
of coarse-to-fine search around the best trials. The study lives in a SQLite file: running the
command again with the same ``--storage`` resumes it and adds ``--trials`` more trials to its
latest round (its refine rounds are not repeated).
"""

from __future__ import annotations

import os
import sys

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


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise ValueError(text)
    return v


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--trials", type=_positive, default=25, help="trials per round (default 25)")
    a("--workers", type=int, default=1, help="local worker processes (default 1: sequential)")
    a("--scheduler", help="address of a Dask scheduler (e.g. tcp://10.0.0.5:8786) to run on")
    a("--storage", default="normax-tune.db", help="SQLite study file, resumed if it exists")
    a(
        "--refine",
        type=int,
        default=0,
        help="coarse-to-fine rounds after the first, for a new study",
    )
    a("--top-k", type=_positive, default=5, help="best trials a refine round zooms around")
    a("--shrink", type=float, default=0.5, help="box width factor per refine round (0, 1]")
    a("--epochs", type=_positive, default=20, help="training epochs per trial (default 20)")
    a("--batch-size", type=_positive, default=64, help="minibatch size (default 64)")
    a("--seed", type=int, default=0, help="sampler and training seed (default 0)")
    a("--halving", action="store_true", help="stop clearly bad trials early (successive halving)")
    a("--requeue", action="store_true", help="on resume, rerun trials that were interrupted")
    a("--plot", help="PNG path (default: the storage path with .png); 'none' to skip")
    a("--no-progress", action="store_true", help="no progress bar")


def _executor(args):
    """A Dask client, a local pool shared by every round, or None (sequential)."""
    if args.scheduler:
        from distributed import Client  # the optional `dask` extra

        return Client(args.scheduler)
    return LocalPool(args.workers) if args.workers > 1 else None


def _report(study, out=None) -> None:
    out = out or sys.stdout  # looked up at call time (redirections, captured output)
    best = study.best_trial
    counts = {}
    for t in study.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"study: {len(study.trials)} trials ({summary}), {len(study.rounds)} rounds", file=out)
    if best is None:
        print("no trial completed", file=out)
        return
    print(
        f"best trial #{best.number} (round {best.round}): held-out accuracy {best.value:.4f}",
        file=out,
    )
    print(f"best parameters: {format_params(best.params)}", file=out)


def tune_study(args, objective) -> Study:
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
    )
    executor = None
    try:
        executor = _executor(args)
        run = {"executor": executor, "progress": not args.no_progress}
        resumed = bool(study.trials)
        if resumed:  # a rerun adds --trials more to the current round, and nothing else
            rnd = study.rounds[-1].round
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
        if executor is not None:
            executor.close()
    return study


def run(args, objective=None) -> int:
    if not 0 < args.shrink <= 1:
        print(f"normax tune: --shrink must be in (0, 1], got {args.shrink}", file=sys.stderr)
        return 2
    if objective is None:
        try:
            import normax.nn.demo  # noqa: F401
        except ImportError as exc:
            print(f"normax tune: the demo network is unavailable ({exc})", file=sys.stderr)
            return 2
        objective = DigitsObjective(args.epochs, args.seed, args.batch_size)
    try:
        study = tune_study(args, objective)
    except StorageError as exc:
        print(f"normax tune: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nnormax tune: interrupted; {args.storage} keeps every finished trial, "
            "run the same command to resume",
            file=sys.stderr,
        )
        return 130
    _report(study)
    plot = args.plot or os.path.splitext(args.storage)[0] + ".png"
    if plot.lower() != "none" and study.best_trial is not None:
        try:
            from .plots import plot_study

            plot_study(study, plot, value_label="held-out accuracy")
            print(f"plot: {plot}")
        except ImportError as exc:
            print(f"no plot ({exc})", file=sys.stderr)
    return 0
