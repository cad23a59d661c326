"""One training epoch of the demo network: normax against the same network in PyTorch CPU.

    pytest bench/test_bench_demo.py --benchmark-only

Not a kernel case (those are in bench/test_bench_kernels.py, from the case registry): a whole
epoch of ``normax demo`` (2 x 128 batch-norm MLP, Adam, digits) against the same network,
optimizer, batches and loss in PyTorch, each checked to train before it is timed.
"""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax.bench.machine import usable_cores

TORCH_THREADS = usable_cores()  # as the session fixture holds every pool (conftest.py)


def normax_epoch():
    """One epoch of the demo network (C kernels), as ``normax demo`` runs it."""
    from normax.nn import SoftmaxCrossEntropy, demo

    data = demo.load_digits_split()
    rng = np.random.default_rng(0)
    cfg = demo.DEFAULTS
    model = demo.build_model(64, 10, cfg["hidden"], cfg["layers"], rng)
    opt = normax.optim.Adam(model.parameters(), lr=cfg["lr"])
    loss_fn = SoftmaxCrossEntropy()

    def epoch():
        return demo.train_epoch(
            model, opt, loss_fn, data.x_train, data.y_train, cfg["batch_size"], rng
        )

    return epoch


def torch_epoch(threads=TORCH_THREADS):
    """The same network, optimizer, batches and loss in PyTorch CPU."""
    torch = pytest.importorskip("torch")
    from normax.nn import demo

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = demo.load_digits_split()
    h, layers = demo.DEFAULTS["hidden"], demo.DEFAULTS["layers"]
    blocks, width = [], 64
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, h, bias=False), torch.nn.BatchNorm1d(h), torch.nn.ReLU()]
        width = h
    model = torch.nn.Sequential(*blocks, torch.nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=demo.DEFAULTS["lr"])
    x, y = torch.from_numpy(data.x_train.copy()), torch.from_numpy(data.y_train.copy())
    rng = np.random.default_rng(0)
    bs = demo.DEFAULTS["batch_size"]

    def epoch():
        model.train()
        total = 0.0
        for idx in demo._batches(len(y), bs, rng):
            t = torch.from_numpy(idx)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[t]), y[t])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        return total / len(y)

    return epoch


@pytest.mark.benchmark(group="demo: one training epoch, digits, 2x128 batch-norm MLP, Adam")
@pytest.mark.parametrize("impl", ["normax", "torch"])
def test_demo_epoch(benchmark, impl):
    pytest.importorskip("sklearn")
    from normax.nn.demo import single_threaded_blas

    epoch = normax_epoch() if impl == "normax" else torch_epoch()
    with single_threaded_blas():
        losses = [epoch() for _ in range(3)]
        assert losses[-1] < losses[0]  # it trains
        benchmark.pedantic(epoch, rounds=10, warmup_rounds=1)
