"""SGD, RMSprop, Adam and AdamW against torch.optim, step for step, every option combination."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import normax

torch = pytest.importorskip("torch")

SHAPES = [(7, 5), (5,), (3, 2, 4)]
STEPS = 50


def _sgd_cases():
    for mom, damp, nest, wd in itertools.product([0.0, 0.9], [0.0, 0.5], [False, True], [0.0, 0.1]):
        if nest and (mom == 0 or damp != 0):
            continue
        yield "SGD", dict(lr=0.05, momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd)


def _rmsprop_cases():
    for mom, cen, wd, alpha in itertools.product(
        [0.0, 0.9], [False, True], [0.0, 0.1], [0.99, 0.3]
    ):
        yield "RMSprop", dict(lr=0.01, momentum=mom, centered=cen, weight_decay=wd, alpha=alpha)


def _adam_cases():
    for name, ams, wd, betas in itertools.product(
        ["Adam", "AdamW"], [False, True], [0.0, 0.1], [(0.9, 0.999), (0.3, 0.5)]
    ):
        yield name, dict(lr=0.02, amsgrad=ams, weight_decay=wd, betas=betas)


CASES = [*_sgd_cases(), *_rmsprop_cases(), *_adam_cases()]


def _ids(case):
    name, opts = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in opts.items() if k != "lr")


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_torch_for_50_steps(case, backend, rng):
    name, opts = case
    params = [rng.standard_normal(s) for s in SHAPES]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    ours = getattr(normax.optim, name)(params, **opts)
    theirs = getattr(torch.optim, name)(tparams, foreach=False, **opts)
    for step in range(STEPS):
        grads = [rng.standard_normal(s) for s in SHAPES]
        # gradients that depend on the parameters make differences compound, as in training
        grads = [g + 0.5 * p for g, p in zip(grads, params, strict=True)]
        for t, g in zip(tparams, grads, strict=True):
            t.grad = torch.tensor(g)
        ours.step(grads)
        theirs.step()
        for p, t in zip(params, tparams, strict=True):
            np.testing.assert_allclose(
                p, t.detach().numpy(), rtol=1e-11, atol=1e-13, err_msg=f"step {step}"
            )


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW"])
def test_defaults_match_torch(name):
    import inspect

    ours = inspect.signature(getattr(normax.optim, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for key, par in ours.items():
        if key == "params":
            continue
        assert par.default == theirs[key].default, key
