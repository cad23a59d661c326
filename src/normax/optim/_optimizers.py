"""SGD, Momentum, RMSprop, Adam and AdamW.

SGD, RMSprop, Adam and AdamW follow torch.optim's classes of the same names: the same update
rules, defaults, first-step behaviour and options, so a run matches PyTorch step for step.
Every option after ``lr`` is keyword-only.

Each takes float32 master weights with float16 or bfloat16 gradients, and can write a
half-precision copy of the updated weights in the same pass: see :meth:`Optimizer.step`.
"""

from __future__ import annotations

from ._base import Optimizer, check_bool, check_nonneg, check_unit
from ._kinds import (
    ADAM,
    AMSGRAD,
    CENTERED,
    FIRST,
    MOMENTUM,
    NESTEROV,
    RMSPROP,
    AdamHyper,
    MomentumHyper,
    RMSpropHyper,
    SGDHyper,
)
from ._kinds import SGD as _SGD

_NONE = (None, None, None)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    ``d = g + weight_decay * p``; with momentum, ``buf = momentum * buf + (1 - dampening) * d``
    (``buf = d`` on the first step) and ``d = buf``, or ``d + momentum * buf`` with
    ``nesterov``; then ``p -= lr * d``.

    Parameters
    ----------
    params : list or dict of arrays, or list of parameter groups
        float32/float64 C-contiguous arrays, updated in place. A group is a dict with a
        ``"params"`` list or dict and any option below that overrides the default.
    lr, momentum, dampening, weight_decay : float
        Learning rate and options, all >= 0; ``dampening`` in [0, 1].
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).

    Examples
    --------
    >>> import numpy as np, normax
    >>> w = np.array([0.0])
    >>> opt = normax.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(500):
    ...     opt.step([2 * w - 10])          # gradient of w**2 - 10*w + 25
    >>> round(float(w[0]), 6)
    5.0
    """

    _kind = _SGD
    _state_names = ("momentum_buffer",)

    def __init__(
        self, params, lr=1e-3, *, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
                weight_decay=weight_decay,
            ),
        )

    def _check(self, group, where):
        group["lr"] = check_nonneg(group["lr"], f"{where}lr")
        group["momentum"] = check_nonneg(group["momentum"], f"{where}momentum")
        group["dampening"] = check_unit(group["dampening"], f"{where}dampening", closed=True)
        group["weight_decay"] = check_nonneg(group["weight_decay"], f"{where}weight_decay")
        group["nesterov"] = check_bool(group["nesterov"], f"{where}nesterov")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"{where}nesterov needs momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _slots(self, group):
        return ("momentum_buffer", None, None) if group["momentum"] != 0 else _NONE

    def _hyper(self, group, step, first):
        flags = (NESTEROV if group["nesterov"] else 0) | (FIRST if first else 0)
        return flags, SGDHyper(
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            one_minus_dampening=1.0 - group["dampening"],
        )


class Momentum(Optimizer):
    """Gradient descent with momentum in exponentially weighted form.

    ``v = beta * v + (1 - beta) * g``, then ``p -= lr * v``, or with ``bias_correction``
    ``p -= lr * v / (1 - beta**t)`` at step ``t`` (counted from 1), which removes the bias
    towards zero of the first steps' averages.

    Parameters
    ----------
    params : list or dict of arrays, or list of parameter groups
        As for :class:`SGD`.
    lr : float
        Learning rate, >= 0.
    beta : float
        Averaging weight in [0, 1).
    bias_correction : bool
        Divide the average by ``1 - beta**t``.

    Examples
    --------
    >>> import numpy as np, normax
    >>> w = np.array([0.0])
    >>> opt = normax.optim.Momentum([w], lr=0.1, beta=0.9)
    >>> for _ in range(500):
    ...     opt.step([2 * w - 10])
    >>> round(float(w[0]), 6)
    5.0
    """

    _kind = MOMENTUM
    _state_names = ("velocity",)

    def __init__(self, params, lr=1e-2, *, beta=0.9, bias_correction=False):
        super().__init__(params, dict(lr=lr, beta=beta, bias_correction=bias_correction))

    def _check(self, group, where):
        group["lr"] = check_nonneg(group["lr"], f"{where}lr")
        group["beta"] = check_unit(group["beta"], f"{where}beta")
        group["bias_correction"] = check_bool(group["bias_correction"], f"{where}bias_correction")

    def _slots(self, group):
        return ("velocity", None, None)

    def _hyper(self, group, step, first):
        beta, lr = group["beta"], group["lr"]
        if group["bias_correction"]:
            lr = lr / (1.0 - beta**step)
        return 0, MomentumHyper(lr=lr, beta=beta, one_minus_beta=1.0 - beta)


class RMSprop(Optimizer):
    """RMSprop as in torch.optim.RMSprop.

    ``d = g + weight_decay * p``; ``sq = alpha * sq + (1 - alpha) * d**2``;
    ``avg = sqrt(sq - ga**2) + eps`` with ``centered`` (``ga`` the running mean of ``d``),
    else ``sqrt(sq) + eps``; ``p -= lr * d / avg``, or with momentum
    ``buf = momentum * buf + d / avg; p -= lr * buf``.

    Parameters
    ----------
    params : list or dict of arrays, or list of parameter groups
        As for :class:`SGD`.
    lr, eps, momentum, weight_decay : float
        All >= 0.
    alpha : float
        Smoothing constant in [0, 1].
    centered : bool
        Normalize by the estimated variance of the gradient instead of its second moment.

    Examples
    --------
    >>> import numpy as np, normax
    >>> w = np.array([0.0])
    >>> opt = normax.optim.RMSprop([w], lr=0.01)
    >>> for _ in range(1000):
    ...     opt.step([2 * w - 10])
    >>> abs(float(w[0]) - 5) < 0.02
    True
    """

    _kind = RMSPROP
    _state_names = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(
        self,
        params,
        lr=1e-2,
        *,
        alpha=0.99,
        eps=1e-8,
        momentum=0.0,
        centered=False,
        weight_decay=0.0,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                alpha=alpha,
                eps=eps,
                momentum=momentum,
                centered=centered,
                weight_decay=weight_decay,
            ),
        )

    def _check(self, group, where):
        for name in ("lr", "eps", "momentum", "weight_decay"):
            group[name] = check_nonneg(group[name], f"{where}{name}")
        group["alpha"] = check_unit(group["alpha"], f"{where}alpha", closed=True)
        group["centered"] = check_bool(group["centered"], f"{where}centered")

    def _slots(self, group):
        return (
            "square_avg",
            "grad_avg" if group["centered"] else None,
            "momentum_buffer" if group["momentum"] > 0 else None,
        )

    def _hyper(self, group, step, first):
        alpha = group["alpha"]
        return (CENTERED if group["centered"] else 0), RMSpropHyper(
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            alpha=alpha,
            one_minus_alpha=1.0 - alpha,
            eps=group["eps"],
            momentum=group["momentum"],
        )


class Adam(Optimizer):
    """Adam as in torch.optim.Adam (L2 weight decay added to the gradient).

    At step ``t``: ``d = g + weight_decay * p``; ``m = beta1 * m + (1 - beta1) * d``;
    ``v = beta2 * v + (1 - beta2) * d**2``; with ``amsgrad`` ``v`` is replaced by its running
    maximum; ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``.

    Parameters
    ----------
    params : list or dict of arrays, or list of parameter groups
        As for :class:`SGD`.
    lr, eps, weight_decay : float
        All >= 0.
    betas : (float, float)
        Averaging weights of the first and second moments, each in [0, 1).
    amsgrad : bool
        Use the maximum of the second-moment averages seen so far.

    Examples
    --------
    >>> import numpy as np, normax
    >>> params = {"w": np.array([0.0])}
    >>> opt = normax.optim.Adam(params, lr=0.1)
    >>> for _ in range(500):
    ...     opt.step({"w": 2 * params["w"] - 10})
    >>> round(float(params["w"][0]), 4)
    5.0
    """

    _kind = ADAM
    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(
        self, params, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False
    ):
        super().__init__(
            params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        )

    def _check(self, group, where):
        for name in ("lr", "eps", "weight_decay"):
            group[name] = check_nonneg(group[name], f"{where}{name}")
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"{where}betas must be a pair of numbers, got {betas!r}")
        group["betas"] = (
            check_unit(betas[0], f"{where}betas[0]"),
            check_unit(betas[1], f"{where}betas[1]"),
        )
        group["amsgrad"] = check_bool(group["amsgrad"], f"{where}amsgrad")

    def _slots(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if group["amsgrad"] else None)

    def _hyper(self, group, step, first):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        step_size = lr / (1.0 - beta1**step)
        bc2_sqrt = (1.0 - beta2**step) ** 0.5
        l2, decay = (0.0, 1.0 - lr * wd if wd != 0 else 1.0) if self._decoupled else (wd, 1.0)
        return (AMSGRAD if group["amsgrad"] else 0), AdamHyper(
            step_size=step_size,
            weight_decay=l2,
            decay=decay,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            eps=group["eps"],
            bias_correction2_sqrt=bc2_sqrt,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay, as in torch.optim.AdamW.

    The parameters are first scaled by ``1 - lr * weight_decay``; the Adam step then uses the
    raw gradient. Same parameters as :class:`Adam`; ``weight_decay`` defaults to 0.01.
    """

    _decoupled = True

    def __init__(
        self, params, lr=1e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False
    ):
        super().__init__(
            params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
