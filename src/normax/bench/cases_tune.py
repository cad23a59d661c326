"""Tuning overhead: what a trial costs beyond its objective, in SQLite and in memory.

A study with the random sampler runs a trivial objective; the time per trial is then the
sampler, the bookkeeping and (for SQLite) committing the trial as it starts and as it finishes.
Both storages run the same seed, so they must sample the same parameters.
"""

from __future__ import annotations

import os

from .cases import Case, Contender

TRIALS_PER_CALL = 20

# layout: the search space, as (name, distribution, args); "1 param" needs only tune.uniform.
SPACES = {
    "1 param": (("x", "uniform", (-2.0, 2.0)),),
    "4 params": (
        ("lr", "log_uniform", (1e-4, 1.0)),
        ("beta1", "ewa_beta", (0.9, 0.999)),
        ("hidden", "int_uniform", (50, 100)),
        ("layers", "int_uniform", (2, 4)),
    ),
}


def cases() -> list[Case]:
    """One case per search space; the 1-parameter one is in --quick."""
    out = []
    for layout, space in SPACES.items():
        dists = sorted({f"tune.{d}" for _, d, _ in space})
        requires = ("tune.Study", "tune.RandomSampler", *dists)
        out.append(
            Case(
                family="tune",
                kernel="random search",
                layout=layout,
                shape=(TRIALS_PER_CALL,),
                dtype="float64",
                size="tiny",
                requires=requires,
                build=_builder(layout),
                quick=layout == "1 param",
                per_call=TRIALS_PER_CALL,
                unit="trial",
                reference="memory",
                tolerance=0.0,
            )
        )
    return out


def comparison_cases() -> list[Case]:
    """The comparisons of the test suite: both storages sample the same parameters."""
    return cases()


def _builder(layout):
    return lambda ctx: [
        Contender("sqlite", lambda: _study(ctx, layout, "sqlite")),
        Contender("memory", lambda: _study(ctx, layout, None)),
    ]


def _study(ctx, layout, storage):
    from normax import tune

    space = {name: getattr(tune, dist)(*args) for name, dist, args in SPACES[layout]}
    path = None
    if storage == "sqlite":
        path = os.path.join(ctx.tmpdir, f"study-{len(os.listdir(ctx.tmpdir))}.db")
    seen: list[float] = []

    def objective(params):
        value = float(sum(params.values()))
        seen.append(value)
        return value

    study = tune.Study(
        space, objective, "minimize", storage=path, sampler=tune.RandomSampler(ctx.seed)
    )
    optimize = study.optimize
    # The result compared across storages: every objective value so far (same seed, same values).
    return lambda: (optimize(TRIALS_PER_CALL), seen)[1]
