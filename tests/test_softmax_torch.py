"""PyTorch as an extra oracle: the same computation in normax and torch, outputs and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import normax

torch = pytest.importorskip("torch")
F = torch.nn.functional

LAYOUTS = {"nc": ((6, 5), -1), "nchw": ((2, 5, 3, 2), 1), "cm": ((5, 7), 0)}
COMBOS = [
    (kind, weighted, ignore, smoothing)
    for kind, weighted, ignore, smoothing in itertools.product(
        ["labels", "probs"], [False, True], [None, -100, 1], [0.0, 0.25]
    )
    if not (kind == "probs" and ignore is not None)
]


def torch_xent(z, target, axis, **kw):
    """Loss and gradient from torch, with the class axis moved to 1 as torch expects."""
    zt = torch.tensor(np.moveaxis(z, axis, 1) if z.ndim > 1 else z, requires_grad=True)
    tt = torch.tensor(np.moveaxis(target, axis, 1) if target.dtype.kind == "f" else target)
    loss = F.cross_entropy(zt, tt, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), np.moveaxis(zt.grad.numpy(), 1, axis)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("kind", "weighted", "ignore", "smoothing"), COMBOS)
def test_xent_matches_torch(backend, rng, layout, reduction, kind, weighted, ignore, smoothing):
    shape, axis = LAYOUTS[layout]
    ax = axis % len(shape)
    c = shape[ax]
    z = rng.standard_normal(shape) * 2
    if kind == "probs":
        q = rng.random(shape)
        target = q / q.sum(axis=ax, keepdims=True)
    else:
        target = rng.integers(0, c, size=shape[:ax] + shape[ax + 1 :])
        if ignore is not None:
            target.reshape(-1)[::3] = ignore
    weight = rng.random(c) + 0.2 if weighted else None
    kw = {"reduction": reduction, "weight": weight, "label_smoothing": smoothing}
    loss, dz = normax.softmax_cross_entropy(z, target, axis=axis, ignore_index=ignore, **kw)
    tkw = {**kw, "weight": None if weight is None else torch.tensor(weight)}
    if ignore is not None:
        tkw["ignore_index"] = ignore
    t_loss, t_dz = torch_xent(z, target, ax, **tkw)
    np.testing.assert_allclose(loss, t_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dz, t_dz, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_and_backward_match_torch(backend, rng, layout, log):
    shape, axis = LAYOUTS[layout]
    z, g = rng.standard_normal(shape), rng.standard_normal(shape)
    zt = torch.tensor(z, requires_grad=True)
    yt = (torch.log_softmax if log else torch.softmax)(zt, axis)
    yt.backward(torch.tensor(g))
    fwd = normax.log_softmax if log else normax.softmax
    bwd = normax.log_softmax_backward if log else normax.softmax_backward
    y = fwd(z, axis)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bwd(g, y, axis), zt.grad.numpy(), rtol=1e-11, atol=1e-14)
