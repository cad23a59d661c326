"""Benchmarks of the fused optimizer update and of one demo training epoch.

Groups (pytest-benchmark):
  * Adam step on 10 million float32 parameters in 100 arrays: normax C / Numba / NumPy
    reference (in place), a straightforward NumPy Adam, and torch.optim.Adam(foreach=True) CPU.
  * One training epoch of the demo network on the digits: normax vs the same network in PyTorch.

Every benchmarked implementation is first checked against the straightforward NumPy Adam.

    pytest bench/test_bench_optim.py              # pytest-benchmark tables
    python bench/test_bench_optim.py              # ratios from one run, in one process

Benchmarking NumPy: unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for that command only.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np
import pytest

import normax

N_ARRAYS, SIZE = 100, 100_000  # 10 million parameters
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TORCH_THREADS = 2


def make_problem(n_arrays=N_ARRAYS, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(size, dtype=np.float32) for _ in range(n_arrays)]
    grads = [rng.standard_normal(size, dtype=np.float32) for _ in range(n_arrays)]
    return params, grads


class NumpyAdam:
    """Adam written the straightforward way, one array at a time, as in the course notes."""

    def __init__(self, params, lr=LR, betas=BETAS, eps=EPS):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m[:] = b1 * m + (1 - b1) * g
            v[:] = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1**self.t)
            v_hat = v / (1 - b2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def make_step(impl: str, params, grads):
    """A no-argument function doing one Adam step of ``impl`` on ``params`` (in place)."""
    if impl.startswith("normax-"):
        backend = impl.split("-", 1)[1]
        opt = normax.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS)

        def step():
            normax.set_backend(backend)
            opt.step(grads)

        return step, lambda: params
    if impl == "numpy-straightforward":
        opt = NumpyAdam(params)
        return lambda: opt.step(grads), lambda: params
    torch = pytest.importorskip("torch")
    torch.set_num_threads(TORCH_THREADS)
    tparams = [torch.from_numpy(p) for p in params]  # shares memory with params
    for t, g in zip(tparams, grads, strict=True):
        t.grad = torch.from_numpy(g)
    fused = impl == "torch-fused"
    topt = torch.optim.Adam(
        tparams, lr=LR, betas=BETAS, eps=EPS, foreach=not fused, fused=fused or None
    )
    return topt.step, lambda: params


IMPLS = ["normax-c", "normax-numba", "normax-numpy", "numpy-straightforward", "torch-foreach"]


def check(impl: str) -> None:
    """Three steps of ``impl`` on a small problem agree with the straightforward NumPy Adam."""
    params, grads = make_problem(3, 1000, seed=1)
    ref = [p.copy() for p in params]
    step, result = make_step(impl, params, grads)
    ref_opt = NumpyAdam(ref)
    for _ in range(3):
        step()
        ref_opt.step(grads)
    for a, b in zip(result(), ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture
def restore_backend():
    previous = normax.get_backend()
    yield
    normax.set_backend(previous)


@pytest.mark.benchmark(group="optim: Adam step, 10M float32 params in 100 arrays")
@pytest.mark.parametrize("impl", IMPLS)
def test_adam_step_10m(benchmark, impl, restore_backend):
    if impl == "normax-c" and "c" not in normax.available_backends():
        pytest.skip("no C extension")
    check(impl)
    params, grads = make_problem()
    step, _ = make_step(impl, params, grads)
    benchmark.pedantic(step, rounds=10, warmup_rounds=1)


# ---- one demo epoch ------------------------------------------------------------------------
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


# ---- ratios from one run -------------------------------------------------------------------
def best_time(fn, repeat=10) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a large single-threaded np.copyto (read + write)."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    return 2 * a.nbytes / best_time(lambda: np.copyto(b, a))


def interleaved_best(fns: dict, rounds: int, clock=time.perf_counter) -> dict:
    """Best time of each function over ``rounds`` rounds that run every function once.

    Interleaving spreads the load of a shared machine evenly over the implementations.
    ``clock=time.thread_time`` counts only the CPU time of the calling thread, which a
    preempted run does not accumulate (meaningful for single-threaded runs only).
    """
    for fn in fns.values():
        fn()  # warm up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    return best


def single_thread_cpu_times(steps: dict) -> dict:
    """CPU time of one thread per step: normax C on 1 thread, NumPy, torch on 1 thread."""
    chosen = {k: v for k, v in steps.items() if k != "normax-numba"}
    torch = sys.modules.get("torch")
    normax.set_num_threads(1)
    if torch is not None:
        torch.set_num_threads(1)
    try:
        return interleaved_best(chosen, rounds=10, clock=time.thread_time)
    finally:
        normax.set_num_threads(0)
        if torch is not None:
            torch.set_num_threads(TORCH_THREADS)


def print_table(title: str, times: dict, moved: int) -> None:
    print(title)
    for impl, t in times.items():
        print(
            f"  {impl:22s} {1e3 * t:8.2f} ms  {moved / t / 1e9:6.1f} GB/s  "
            f"normax-c is {t / times['normax-c']:.2f}x faster"
        )


def main() -> None:
    import os

    from normax.nn.demo import single_threaded_blas

    previous = normax.get_backend()
    print(
        f"normax threads {normax.get_num_threads()}, torch threads {TORCH_THREADS}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    has_torch = importlib.util.find_spec("torch") is not None
    impls = [i for i in [*IMPLS, "torch-fused"] if has_torch or not i.startswith("torch")]
    for impl in impls:
        check(impl)
    steps = {impl: make_step(impl, *make_problem())[0] for impl in impls}
    times = interleaved_best(steps, rounds=10)
    normax.set_backend(previous)
    moved = 7 * 4 * N_ARRAYS * SIZE  # Adam reads p, g, m, v and writes p, m, v
    limit = copy_bandwidth(moved)
    print_table(
        "Adam step, 10M float32 parameters in 100 arrays (wall time, best of 10, interleaved):",
        times,
        moved,
    )
    print(
        f"  np.copyto bandwidth {limit / 1e9:.1f} GB/s (one thread); normax-c moves "
        f"{moved / times['normax-c'] / limit:.0%} of that"
    )
    cpu = single_thread_cpu_times(steps)
    normax.set_backend(previous)
    print_table(
        "same, every implementation on one thread, CPU time of that thread (not "
        "inflated by preemption on a busy machine):",
        cpu,
        moved,
    )
    if not has_torch or importlib.util.find_spec("sklearn") is None:
        return
    with single_threaded_blas():
        epochs = {"normax": normax_epoch(), **{f"torch-{n}": torch_epoch(n) for n in (2, 1)}}
        times = interleaved_best(epochs, rounds=20)
    print("one demo epoch (best of 20, interleaved):")
    for name, t in times.items():
        print(f"  {name:10s} {1e3 * t:7.2f} ms  normax is {t / times['normax']:.2f}x faster")


if __name__ == "__main__":
    main()
