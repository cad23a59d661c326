"""Batch-norm speed against PyTorch CPU, the NumPy reference and the memory roofline.

Run: python bench/roofline_batchnorm.py [--threads 2] [--rounds 15] [--clock wall|thread]
(unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in that command when they are set).
``--clock thread`` (only with ``--threads 1``) times the calling thread's CPU time, which a busy
machine does not inflate by descheduling the process.

Every contender of a case runs once per round, interleaved, and each keeps its best time: on a
shared machine noise only ever adds time, and interleaving exposes all contenders to the same
conditions. The copy bandwidth (np.copyto into a preallocated array of the same size) is measured
in the same rounds; a kernel's share of the roofline counts its minimum traffic, 3 x bytes(x)
for the training forward and 5 x bytes(x) for the backward, at that bandwidth.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import normax
from normax import _batchnorm_numpy as ref

CASES = [((8192, 2048), 1), ((32, 64, 56, 56), 1), ((32, 56, 56, 64), -1)]


def best_times(fns: dict, rounds: int, clock=time.perf_counter) -> dict:
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    return best


def contenders(shape, axis, torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    c, ax = shape[axis], axis % len(shape)
    g, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    fns = {"copy": lambda: np.copyto(y, x)}

    def on(backend, fn):
        def run():
            normax.set_backend(backend)
            return fn()

        return run

    for be in ("c", "numba"):
        normax.set_backend(be)
        cache = normax.batch_norm_train(x, g, b, axis=axis)[1]
        fns[be, "fwd"] = on(be, lambda: normax.batch_norm_train(x, g, b, rm, rv, axis=axis, out=y))
        fns[be, "bwd"] = on(be, lambda c=cache: normax.batch_norm_backward(dy, c, out=dx))
    _, mean, invstd = ref.train_by_axis(x, ax, g, b, None, None, 0.1, 1e-5, None)
    fns["numpy", "fwd"] = lambda: ref.train_by_axis(x, ax, g, b, rm, rv, 0.1, 1e-5, y)
    fns["numpy", "bwd"] = lambda: ref.backward_by_axis(dy, x, ax, mean, invstd, g, dx)
    if torch is not None and ax == 1:
        tx, tg, tb, trm, trv, tdy = map(torch.from_numpy, (x, g, b, rm, rv, dy))
        fwd, bwd = torch.ops.aten.native_batch_norm, torch.ops.aten.native_batch_norm_backward
        _, sm, si = fwd(tx, tg, tb, trm, trv, True, 0.1, 1e-5)
        fns["torch", "fwd"] = lambda: fwd(tx, tg, tb, trm, trv, True, 0.1, 1e-5)
        fns["torch", "bwd"] = lambda: bwd(tdy, tx, tg, trm, trv, sm, si, True, 1e-5, [True] * 3)
    return x.nbytes, fns


def run_case(shape, axis, rounds, torch, clock) -> str:
    nbytes, fns = contenders(shape, axis, torch)
    best = best_times(fns, rounds, clock)
    bw = 2 * nbytes / best["copy"]
    parts = [f"copy {bw / 1e9:.1f} GB/s"]
    for k, traffic in (("fwd", 3), ("bwd", 5)):
        t = best["c", k]
        text = f"{k} C {t * 1e3:.2f} ms, {100 * traffic * nbytes / t / bw:.0f}% roofline"
        text += f", x{best['numpy', k] / t:.1f} NumPy, numba/C {best['numba', k] / t:.2f}"
        if ("torch", k) in best:
            text += f", x{best['torch', k] / t:.2f} torch"
        parts.append(text)
    normax.set_backend("c")
    return f"{shape} axis={axis}: " + " | ".join(parts)


def small_call(torch, clock, rounds: int = 200, inner: int = 200) -> str:
    """Whole-call time of a (32, 64) training forward from Python, in microseconds."""
    normax.set_backend("c")
    x = np.random.default_rng(1).standard_normal((32, 64), dtype=np.float32)
    g, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    f = normax.batch_norm_train

    def ours():
        for _ in range(inner):
            f(x, g, b, rm, rv)

    fns = {"normax": ours}
    if torch is not None:
        tx, tg, tb, trm, trv = map(torch.from_numpy, (x, g, b, rm, rv))

        def theirs():
            for _ in range(inner):
                torch.ops.aten.native_batch_norm(tx, tg, tb, trm, trv, True, 0.1, 1e-5)

        fns["torch"] = theirs
    best = best_times(fns, rounds, clock)
    return "(32, 64) train, whole call: " + ", ".join(
        f"{k} {v / inner * 1e6:.2f} us" for k, v in best.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread needs --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    normax.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    tv = torch.__version__ if torch else None
    print(f"threads={args.threads} rounds={args.rounds} clock={args.clock} torch={tv}")
    for shape, axis in CASES:
        print(run_case(shape, axis, args.rounds, torch, clock), flush=True)
    print(small_call(torch, clock))


if __name__ == "__main__":
    main()
