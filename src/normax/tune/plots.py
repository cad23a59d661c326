"""Plots of a study (matplotlib, the optional ``plot`` extra).

One panel per hyperparameter shows the value of each complete trial against that parameter on its
own scale (log axes for log-scaled ones, ``1 - beta`` on a log axis for ``ewa_beta``), coloured by
coarse-to-fine round; a last panel shows the best value so far against the trial number.
"""

from __future__ import annotations

import math

from .distributions import EwaBeta, IntUniform

__all__ = ["plot_study"]


def _axis_values(dist, values):
    if isinstance(dist, EwaBeta):
        return [1.0 - v for v in values]
    return values


def _best_so_far(study):
    xs, ys, best = [], [], None
    better = min if study.direction == "minimize" else max
    for t in study.trials:
        if t.state == "complete":
            best = t.value if best is None else better(best, t.value)
            xs.append(t.number)
            ys.append(best)
    return xs, ys


def plot_study(study, path=None, *, value_label: str = "value", dpi: int = 100):
    """Draw ``study`` and, if ``path`` is given, write it as PNG.

    Parameters
    ----------
    study : Study
    path : str or os.PathLike, optional
    value_label : str
        Name of the objective's value on the y axes.
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from normax import tune
    >>> s = tune.Study({"lr": tune.log_uniform(1e-4, 1)}, lambda p: abs(p["lr"] - 0.01),
    ...                sampler=tune.RandomSampler(0))
    >>> _ = s.optimize(10)
    >>> fig = tune.plot_study(s)
    >>> len(fig.axes)
    2
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # the optional `plot` extra
        raise ImportError("plotting needs matplotlib: pip install 'normax[plot]'") from exc
    done = [t for t in study.trials if t.state == "complete"]
    names = list(study.space)
    cols = min(3, len(names) + 1)
    rows = math.ceil((len(names) + 1) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global state, works without a display
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rounds = sorted({t.round for t in done})
    for ax, name in zip(axes, names, strict=False):
        dist = study.space[name]
        for r in rounds:
            sel = [t for t in done if t.round == r]
            x = _axis_values(dist, [t.params[name] for t in sel])
            ax.scatter(x, [t.value for t in sel], s=14, label=f"round {r}", color=f"C{r % 10}")
        if dist.log_axis:
            ax.set_xscale("log")
        elif isinstance(dist, IntUniform):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"1 - {name}" if isinstance(dist, EwaBeta) else name)
        ax.set_ylabel(value_label)
    if len(rounds) > 1:
        axes[0].legend(fontsize="small")
    hist = axes[len(names)]
    hist.step(*_best_so_far(study), where="post")
    hist.set_xlabel("trial")
    hist.set_ylabel(f"best {value_label} ({study.direction})")
    for ax in axes[len(names) + 1 :]:
        ax.set_visible(False)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
