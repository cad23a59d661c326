"""Panda: babysit one model, epoch by epoch, with checkpoints and rollbacks.

When you can afford only one model at a time, you watch it: after each epoch the runner looks at
the loss; if it is NaN, far above the best so far, or a rule of yours says so, the runner rolls
the model back to the last good checkpoint, changes the hyperparameters (halve the learning rate,
say) and goes on, writing down every intervention.

The model is seen through three callables, so any framework fits:

* ``train_epoch(epoch, hparams) -> loss`` trains one epoch with the given hyperparameters;
* ``save(path)`` / ``load(path)`` write and restore everything needed to continue (parameters,
  optimizer state); :func:`npz_checkpoint` builds them from ``get_state() -> dict of arrays`` and
  ``set_state(dict)`` as an atomic ``.npz`` (temporary file, then rename; no pickle), and
  :func:`nn_checkpoint` builds them for a ``normax.nn`` model and optimizer.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Intervention", "PandaResult", "PandaRunner", "halve", "nn_checkpoint", "npz_checkpoint"]


def npz_checkpoint(get_state, set_state):
    """``(save, load)`` callables storing ``get_state()`` (a dict of arrays) in an atomic .npz.

    The file carries a SHA-256 digest of its arrays; ``load`` raises ValueError, before calling
    ``set_state``, if the file is truncated, altered or not such a checkpoint.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from normax.tune import npz_checkpoint
    >>> w = {"w": np.arange(3.0)}
    >>> save, load = npz_checkpoint(lambda: w, lambda s: w.update(s))
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.npz")
    >>> save(path); w["w"] += 1; load(path); w["w"].tolist()
    [0.0, 1.0, 2.0]
    """

    from normax.optim._state import atomic_savez, load_npz

    def save(path):
        state = {k: np.asarray(v) for k, v in get_state().items()}
        if "__digest__" in state:
            raise ValueError("get_state() must not return the reserved name '__digest__'")
        atomic_savez(path, state)  # the old checkpoint or the new one, never half

    def load(path):
        set_state(load_npz(path))  # ValueError if truncated, altered or not a checkpoint

    return save, load


def nn_checkpoint(model, optimizer=None):
    """``(save, load)`` callables in the checkpoint format of :mod:`normax.nn`.

    The model's parameters and buffers (batch-norm running statistics) and the optimizer's state
    go into one atomic .npz, checked by name, shape and dtype on load.
    """
    from normax.nn import load_checkpoint, save_checkpoint

    def save(path):
        save_checkpoint(path, model, optimizer)

    def load(path):
        load_checkpoint(path, model, optimizer)

    return save, load


def halve(name: str = "lr", factor: float = 0.5):
    """A rule that multiplies hyperparameter ``name`` by ``factor`` (default: halve it).

    Examples
    --------
    >>> from normax.tune import halve
    >>> halve("lr")({"lr": 0.1, "beta1": 0.9})
    {'lr': 0.05, 'beta1': 0.9}
    """
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor!r}")

    def adjust(hparams: dict) -> dict:
        return {**hparams, name: hparams[name] * factor}

    return adjust


@dataclass(frozen=True)
class Intervention:
    """One rollback: at ``epoch`` the loss was bad for ``reason``; the model went back to
    ``restored_epoch`` and the hyperparameters changed from ``before`` to ``after``."""

    epoch: int
    reason: str
    loss: float
    restored_epoch: int
    before: dict
    after: dict


@dataclass
class PandaResult:
    """What happened: per-epoch ``history`` rows ``(epoch, loss, hparams, accepted)``, the
    interventions, the final hyperparameters, the best loss and whether the runner gave up."""

    history: list = field(default_factory=list)
    interventions: list = field(default_factory=list)
    hparams: dict = field(default_factory=dict)
    best_loss: float = math.inf
    best_epoch: int = 0
    gave_up: bool = False


class PandaRunner:
    """Train one model epoch by epoch, rolling back and adjusting when training goes wrong.

    Parameters
    ----------
    train_epoch : callable
        ``train_epoch(epoch, hparams) -> loss`` (a non-negative training or validation loss).
    save, load : callable
        ``save(path)`` / ``load(path)``: checkpoint and restore the model and optimizer.
    hparams : dict
        Starting hyperparameters, handed to ``train_epoch``.
    checkpoint_dir : str or os.PathLike
        Where ``last_good.npz`` and ``interventions.json`` live.
    adjust : callable
        ``adjust(hparams) -> hparams`` applied at each intervention; default ``halve("lr")``.
    blowup : float
        An epoch whose loss exceeds ``blowup`` times the best loss so far is bad.
    rule : callable, optional
        ``rule(epoch, loss, result) -> str or None``: a reason string marks the epoch bad.
    max_interventions : int
        Give up (``result.gave_up``) after this many rollbacks.
    baseline : float, optional
        The loss of the untrained model; without it the first epoch is accepted whatever its
        loss (there is nothing to compare with).

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from normax import tune
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 3)); y = X @ np.array([1.0, -2.0, 0.5])
    >>> state = {"w": np.zeros(3)}
    >>> def epoch(e, hp):
    ...     g = X.T @ (X @ state["w"] - y) / len(y)
    ...     state["w"] = state["w"] - hp["lr"] * g
    ...     return float(np.mean((X @ state["w"] - y) ** 2))
    >>> save, load = tune.npz_checkpoint(lambda: state, state.update)
    >>> runner = tune.PandaRunner(epoch, save, load, {"lr": 4.0}, checkpoint_dir=tempfile.mkdtemp(),
    ...                           baseline=float(np.mean(y ** 2)))
    >>> res = runner.run(epochs=30)
    >>> len(res.interventions) > 0, res.hparams["lr"] < 4.0, res.best_loss < 1e-3
    (True, True, True)
    """

    def __init__(
        self,
        train_epoch,
        save,
        load,
        hparams: dict,
        *,
        checkpoint_dir,
        adjust=None,
        blowup: float = 3.0,
        rule=None,
        max_interventions: int = 10,
        baseline: float | None = None,
    ):
        if not blowup > 1:
            raise ValueError(f"blowup must be > 1, got {blowup!r}")
        if max_interventions < 0:
            raise ValueError(f"max_interventions must be >= 0, got {max_interventions!r}")
        self.train_epoch, self.save, self.load = train_epoch, save, load
        self.hparams = dict(hparams)
        self.adjust = adjust or halve("lr")
        self.blowup, self.rule, self.max_interventions = blowup, rule, max_interventions
        self.baseline = math.inf if baseline is None else float(baseline)
        self.dir = os.fspath(checkpoint_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.checkpoint = os.path.join(self.dir, "last_good.npz")

    def _verdict(self, epoch: int, loss: float, res: PandaResult) -> str | None:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if math.isfinite(res.best_loss) and loss > self.blowup * res.best_loss:
            return f"loss {loss:.4g} > {self.blowup:g} x best {res.best_loss:.4g}"
        return self.rule(epoch, loss, res) if self.rule is not None else None

    def _log(self, res: PandaResult) -> None:
        rows = [i.__dict__ for i in res.interventions]
        tmp = os.path.join(self.dir, "interventions.json.tmp")
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1, default=float)
        os.replace(tmp, os.path.join(self.dir, "interventions.json"))

    def run(self, epochs: int) -> PandaResult:
        """Train until ``epochs`` good epochs are done (or the runner gives up)."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        res = PandaResult(hparams=dict(self.hparams), best_loss=self.baseline)
        self.save(self.checkpoint)
        good, epoch = 0, 0  # good: epoch of the last good checkpoint
        while epoch < epochs:
            epoch += 1
            try:
                loss = float(self.train_epoch(epoch, dict(res.hparams)))
                reason = self._verdict(epoch, loss, res)
            except (ArithmeticError, ValueError) as exc:  # a diverging step that raised
                loss, reason = math.nan, f"{type(exc).__name__}: {exc}"
            res.history.append((epoch, loss, dict(res.hparams), reason is None))
            if reason is None:
                self.save(self.checkpoint)
                good = epoch
                if loss < res.best_loss:
                    res.best_loss, res.best_epoch = loss, epoch
                continue
            if len(res.interventions) >= self.max_interventions:
                res.gave_up = True
                self.load(self.checkpoint)
                break
            self.load(self.checkpoint)
            after = self.adjust(dict(res.hparams))
            res.interventions.append(Intervention(epoch, reason, loss, good, res.hparams, after))
            res.hparams, epoch = dict(after), good
            self._log(res)
        self.hparams = dict(res.hparams)
        return res
