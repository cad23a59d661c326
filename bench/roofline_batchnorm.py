"""Batch-norm speed against PyTorch CPU, the NumPy reference and the memory roofline.

Run: python bench/roofline_batchnorm.py  (both cores; torch.set_num_threads matches normax)
Every time is the median of repeated calls in this one process; the copy bandwidth (np.copyto
into a preallocated array of the same size) is measured in the same run, and each kernel's
effective bandwidth counts its minimum traffic: 3 x bytes(x) forward, 5 x bytes(x) backward.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import normax
from normax import _batchnorm_numpy as ref

CASES = [((8192, 2048), 1), ((32, 64, 56, 56), 1), ((32, 56, 56, 64), -1), ((64, 100000), 0)]


def median_time(fn, repeat: int, min_time: float = 0.0) -> float:
    fn()
    times = []
    while len(times) < repeat or sum(times) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_case(shape, axis, threads, repeat, torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    c = shape[axis]
    g, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    nbytes = x.nbytes
    copy = median_time(lambda: np.copyto(y, x), repeat)
    bw = 2 * nbytes / copy
    res = {"copy GB/s": bw / 1e9}
    out = {}
    for backend in ("c", "numba"):
        normax.set_backend(backend)
        _, cache = normax.batch_norm_train(x, g, b, rm, rv, axis=axis, out=y)
        out[backend, "fwd"] = median_time(
            lambda: normax.batch_norm_train(x, g, b, rm, rv, axis=axis, out=y), repeat
        )
        out[backend, "bwd"] = median_time(
            lambda c=cache: normax.batch_norm_backward(dy, c, out=dx), repeat
        )
    ax = axis % x.ndim
    out["numpy", "fwd"] = median_time(lambda: ref.train(x, ax, g, b, rm, rv, 0.1, 1e-5, y), 3)
    _, mean, invstd = ref.train(x, ax, g, b, None, None, 0.1, 1e-5, None)
    out["numpy", "bwd"] = median_time(lambda: ref.backward(dy, x, ax, mean, invstd, g, dx), 3)
    if torch is not None and ax == 1:
        tx, tg, tb = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(b)
        trm, trv, tdy = torch.from_numpy(rm), torch.from_numpy(rv), torch.from_numpy(dy)
        fwd = torch.ops.aten.native_batch_norm
        out["torch", "fwd"] = median_time(
            lambda: fwd(tx, tg, tb, trm, trv, True, 0.1, 1e-5), repeat
        )
        _, sm, si = fwd(tx, tg, tb, trm, trv, True, 0.1, 1e-5)
        bwd = torch.ops.aten.native_batch_norm_backward
        out["torch", "bwd"] = median_time(
            lambda: bwd(tdy, tx, tg, trm, trv, sm, si, True, 1e-5, [True, True, True]), repeat
        )
    for k in ("fwd", "bwd"):
        t_c = out["c", k]
        res[f"{k} C ms"] = t_c * 1e3
        res[f"{k} roofline %"] = 100 * ((3 if k == "fwd" else 5) * nbytes / t_c) / bw
        res[f"{k} xNumPy"] = out["numpy", k] / t_c
        res[f"{k} numba/C"] = out["numba", k] / t_c
        if ("torch", k) in out:
            res[f"{k} xTorch"] = out["torch", k] / t_c
    return res


def small_call(repeat: int = 20000) -> float:
    """Whole-call time of a (32, 64) training forward from Python, microseconds (best of 20)."""
    normax.set_backend("c")
    x = np.random.default_rng(1).standard_normal((32, 64), dtype=np.float32)
    g, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    f = normax.batch_norm_train
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(repeat // 20):
            f(x, g, b, rm, rv)
        best = min(best, (time.perf_counter() - t0) / (repeat // 20))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    normax.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    print(f"threads={args.threads}  torch={'yes' if torch else 'no'}")
    for shape, axis in CASES:
        res = run_case(shape, axis, args.threads, args.repeat, torch)
        print(f"{shape} axis={axis}: " + "  ".join(f"{k} {v:.2f}" for k, v in res.items()))
    print(f"(32, 64) train whole call: {small_call():.2f} us")


if __name__ == "__main__":
    main()
