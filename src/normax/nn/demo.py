"""``normax demo``: train a batch-normalized MLP with Adam on scikit-learn's handwritten digits.

The network is ``[Linear(bias=False) -> BatchNorm -> ReLU] * layers -> Linear`` on the 8x8
digit images (1797 images, 10 classes); a fixed stratified 20 % of them is held out. The
command prints per-epoch loss, training and held-out accuracy and time, shows a progress bar on
standard error, and ends with ``held-out accuracy: NN.N%``. :func:`train_digits` is the same
training as a function, for hyperparameter tuning.

Needs scikit-learn (and tqdm for the progress bar): ``pip install "normax[examples]"``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import sys
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from .._backend import BACKENDS

DEFAULTS = {"lr": 0.01, "beta1": 0.9, "hidden": 128, "layers": 2, "batch_size": 64}
HELD_OUT = 0.2
SPLIT_SEED = 0  # the held-out set is the same for every training seed


class Digits(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Epoch(NamedTuple):
    epoch: int
    loss: float
    train_accuracy: float
    held_out_accuracy: float
    seconds: float


@functools.lru_cache(maxsize=1)
def load_digits_split() -> Digits:
    """Standardized float32 digits, split 80/20 (stratified, fixed), as read-only arrays."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: round(HELD_OUT * len(idx))]] = True
    mean, std = x[~test].mean(axis=0), x[~test].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    parts = Digits(x[~test], y[~test].astype(np.int64), x[test], y[test].astype(np.int64))
    for a in parts:
        a.flags.writeable = False
    return parts


def _positive_int(params: dict, key: str) -> int:
    value = params[key]
    try:
        n = operator.index(value)
    except TypeError:
        if not (isinstance(value, float) and value.is_integer()):
            raise TypeError(f"params[{key!r}] must be an int, got {value!r}") from None
        n = int(value)
    if n < 1:
        raise ValueError(f"params[{key!r}] must be >= 1, got {value!r}")
    return n


def config(params: dict | None) -> dict:
    """``params`` merged over :data:`DEFAULTS`, checked (unknown keys are an error)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown params {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **params}
    for key in ("hidden", "layers", "batch_size"):
        cfg[key] = _positive_int(cfg, key)
    lr, beta1 = float(cfg["lr"]), float(cfg["beta1"])
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"params['lr'] must be a finite number > 0, got {cfg['lr']!r}")
    if not 0 <= beta1 < 1:
        raise ValueError(f"params['beta1'] must be in [0, 1), got {cfg['beta1']!r}")
    cfg["lr"], cfg["beta1"] = lr, beta1
    return cfg


def build_model(n_in: int, n_out: int, hidden: int, layers: int, rng: np.random.Generator):
    """``[Linear(bias=False) -> BatchNorm -> ReLU] * layers -> Linear``, float32."""
    from . import BatchNorm, Linear, ReLU, Sequential

    blocks = []
    width = n_in
    for _ in range(layers):
        blocks += [Linear(width, hidden, bias=False, rng=rng), BatchNorm(hidden), ReLU()]
        width = hidden
    return Sequential(*blocks, Linear(width, n_out, rng=rng))


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` classified as ``y`` in evaluation mode (the model is left in it)."""
    model.eval()
    return float(np.mean(np.argmax(model(x), axis=1) == y))


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n, size):
        idx = order[start : start + size]
        if len(idx) >= 2:  # batch statistics need two examples
            yield idx


def train_epoch(model, opt, loss_fn, x, y, batch_size: int, rng) -> float:
    """One pass over ``(x, y)`` in shuffled mini-batches; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for idx in _batches(len(y), batch_size, rng):
        loss = loss_fn(model(x[idx]), y[idx])
        model.backward(loss_fn.backward(), need_dx=False)
        opt.step(model.grads())
        total, count = total + loss * len(idx), count + len(idx)
    return total / max(count, 1)


def train(params: dict | None = None, *, epochs: int = 20, seed: int = 0) -> Iterator[Epoch]:
    """Train the demo network, yielding one :class:`Epoch` record per epoch.

    Stops early, after yielding the diverged epoch (NaN or infinite loss), if training diverges.
    """
    from .. import optim
    from . import SoftmaxCrossEntropy

    cfg = config(params)
    data = load_digits_split()
    rng = np.random.default_rng(seed)
    model = build_model(data.x_train.shape[1], 10, cfg["hidden"], cfg["layers"], rng)
    opt = optim.Adam(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], 0.999))
    # cosine decay to zero over the run: the last epochs fine-tune instead of jumping around
    schedule = optim.cosine(cfg["lr"], period=max(epochs, 1))
    loss_fn = SoftmaxCrossEntropy()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        opt.set_lr(schedule(epoch - 1))
        with np.errstate(all="ignore"):  # a diverging run yields NaN, reported below
            mean_loss = train_epoch(
                model, opt, loss_fn, data.x_train, data.y_train, cfg["batch_size"], rng
            )
            finite = math.isfinite(mean_loss)
            if finite:
                train_acc = accuracy(model, data.x_train, data.y_train)
                test_acc = accuracy(model, data.x_test, data.y_test)
        if not finite:
            yield Epoch(epoch, mean_loss, math.nan, math.nan, time.perf_counter() - t0)
            return
        yield Epoch(epoch, mean_loss, train_acc, test_acc, time.perf_counter() - t0)


def train_digits(
    params: dict,
    *,
    epochs: int = 20,
    seed: int = 0,
    report: Callable[[int, float], object] | None = None,
) -> float:
    """Train the demo MLP on the digits and return its held-out accuracy in [0, 1].

    Parameters
    ----------
    params : dict
        Any of ``"lr"`` (Adam learning rate, default 0.01), ``"beta1"`` (Adam beta1, 0.9),
        ``"hidden"`` (units per hidden layer, 128), ``"layers"`` (hidden layers, 2) and
        ``"batch_size"`` (64). Unknown keys raise ValueError.
    epochs : int
        Passes over the training set.
    seed : int
        Seeds the initial weights and the batch order; the result is deterministic for a seed.
    report : callable, optional
        Called as ``report(epoch, held_out_accuracy)`` after each epoch (epochs count from 1);
        an exception it raises stops training and propagates.

    Returns
    -------
    float
        Held-out accuracy after the last epoch. If the loss becomes NaN or infinite, training
        stops and the accuracy of the last finite epoch is returned (0.0 if the first epoch
        already diverged); ``report`` is not called for the diverged epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    last = 0.0
    with single_threaded_blas():
        for rec in train(params, epochs=epochs, seed=seed):
            if not math.isfinite(rec.loss):
                break
            last = rec.held_out_accuracy
            if report is not None:
                report(rec.epoch, last)
    return last


def single_threaded_blas():
    """Limit BLAS to one thread (if threadpoolctl is installed, as it is with scikit-learn).

    The demo's matrix products are tiny (64 x 128): one thread runs them in microseconds,
    while a multi-threaded BLAS on a busy 2-core machine can spend milliseconds waiting for its
    second thread, making an epoch 10-50 times slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ---- the command ---------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Options of ``normax demo``."""
    from normax._argtypes import integer

    parser.add_argument("--epochs", type=integer(1), default=20, help="passes over the data (20)")
    parser.add_argument(
        "--seed", type=integer(0), default=0, help="weights and batch order seed (0)"
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate")
    parser.add_argument("--beta1", type=float, default=DEFAULTS["beta1"], help="Adam beta1")
    parser.add_argument(
        "--hidden", type=int, default=DEFAULTS["hidden"], help="units per hidden layer"
    )
    parser.add_argument(
        "--layers", type=int, default=DEFAULTS["layers"], help="number of hidden layers"
    )
    parser.add_argument("--batch-size", type=integer(1), default=DEFAULTS["batch_size"])
    parser.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=None,
        help="kernel backend (default: the active one)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _progress(epochs: int, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional
        return None
    return tqdm(
        total=epochs, desc="epochs", unit="epoch", file=sys.stderr, disable=disable, leave=False
    )


def run(args) -> int:
    """Train and print; the last line of standard output is ``held-out accuracy: NN.N%``."""
    import normax

    try:
        import sklearn  # noqa: F401
    except ImportError:
        print('normax demo needs scikit-learn: pip install "normax[examples]"', file=sys.stderr)
        return 2
    if args.backend:
        normax.set_backend(args.backend)
    params = {
        "lr": args.lr,
        "beta1": args.beta1,
        "hidden": args.hidden,
        "layers": args.layers,
        "batch_size": args.batch_size,
    }
    try:
        config(params)
    except (TypeError, ValueError) as exc:
        print(f"normax demo: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    load_digits_split()
    print(
        f"digits: {len(load_digits_split().y_train)} training, "
        f"{len(load_digits_split().y_test)} held-out images; backend {normax.get_backend()}; "
        f"{args.layers} x {args.hidden} hidden units, Adam lr={args.lr:g}",
        flush=True,
    )
    # a bar only on a terminal: in a log file its redraws are noise
    bar = _progress(args.epochs, args.no_progress or not sys.stderr.isatty())
    with single_threaded_blas():
        held_out = _report(train(params, epochs=args.epochs, seed=args.seed), args, bar)
    if bar is not None:
        bar.close()
    print(f"total time: {time.perf_counter() - t0:.2f} s")
    print(f"held-out accuracy: {100 * held_out:.1f}%")
    return 0


def _report(records, args, bar) -> float:
    held_out = 0.0
    for rec in records:
        line = (
            f"epoch {rec.epoch:3d}/{args.epochs}  loss {rec.loss:.4f}  "
            f"train {100 * rec.train_accuracy:5.1f}%  held-out "
            f"{100 * rec.held_out_accuracy:5.1f}%  {rec.seconds:.3f} s"
        )
        if bar is not None:
            bar.write(line, file=sys.stdout)
            bar.update()
        else:
            print(line, flush=True)
        if not math.isfinite(rec.loss):
            print("training diverged (non-finite loss); stopping", flush=True)
            break
        held_out = rec.held_out_accuracy
    return held_out
