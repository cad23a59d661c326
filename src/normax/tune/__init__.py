"""Hyperparameter tuning: the right scales, random and coarse-to-fine search, panda and caviar.

* distributions sampled on their own scale: :func:`uniform`, :func:`int_uniform`,
  :func:`log_uniform`, :func:`int_log_uniform`, :func:`ewa_beta`, :func:`choice`;
* samplers: :class:`RandomSampler`, :class:`GridSampler`, :class:`SobolSampler` (SciPy),
  :class:`HaltonSampler`;
* :class:`Study`: trials in memory or in SQLite (resumable), run sequentially, on a local process
  pool, on any ``concurrent.futures.Executor`` or on a Dask cluster; ``refine`` zooms in;
  :class:`SuccessiveHalving` stops bad trials early;
* :class:`PandaRunner`: babysit one model with checkpoints and rollbacks;
* :func:`plot_study` (matplotlib).

Examples
--------
>>> from normax import tune
>>> space = {"lr": tune.log_uniform(1e-4, 1.0), "beta1": tune.ewa_beta(0.9, 0.999)}
>>> study = tune.Study(space, lambda p: abs(p["lr"] - 1e-2), sampler=tune.RandomSampler(1))
>>> best = study.optimize(20)
>>> best.state, len(study.trials)
('complete', 20)
"""

from .distributions import (
    Choice,
    Distribution,
    EwaBeta,
    IntLogUniform,
    IntUniform,
    LogUniform,
    Uniform,
    choice,
    ewa_beta,
    int_log_uniform,
    int_uniform,
    log_uniform,
    uniform,
)
from .executors import LocalPool
from .halving import SuccessiveHalving, TrialPruned
from .panda import Intervention, PandaResult, PandaRunner, halve, nn_checkpoint, npz_checkpoint
from .plots import plot_study
from .samplers import GridSampler, HaltonSampler, RandomSampler, Sampler, SobolSampler
from .storage import Round, SQLiteStorage, StorageError, Trial
from .study import Study

__all__ = [
    "Choice",
    "Distribution",
    "EwaBeta",
    "GridSampler",
    "HaltonSampler",
    "IntLogUniform",
    "IntUniform",
    "Intervention",
    "LocalPool",
    "LogUniform",
    "PandaResult",
    "PandaRunner",
    "RandomSampler",
    "Round",
    "SQLiteStorage",
    "Sampler",
    "SobolSampler",
    "StorageError",
    "Study",
    "SuccessiveHalving",
    "Trial",
    "TrialPruned",
    "Uniform",
    "choice",
    "ewa_beta",
    "halve",
    "int_log_uniform",
    "int_uniform",
    "log_uniform",
    "nn_checkpoint",
    "npz_checkpoint",
    "plot_study",
    "uniform",
]
