"""Softmax cross-entropy benchmarks: C, Numba and NumPy side by side, each checking its answer.

    pytest bench/test_bench_softmax.py --benchmark-only          # pytest-benchmark groups
    python bench/test_bench_softmax.py [--threads 2] [--rounds 9] # the target table

(The ``backend`` fixture comes from bench/conftest.py.)

The script form measures, in one process and with interleaved rounds (the best batch of each
contender per round, then the best round), the fused loss + gradient against PyTorch CPU doing
``log_softmax`` + ``nll_loss`` and their backward, softmax alone against ``torch.softmax``, every
large case against the NumPy reference, and the memory roofline: 3 x bytes(logits) over the best
copy bandwidth measured in the same run (NumPy copy and, if present, torch's threaded copy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

import normax

# name -> (shape, class axis)
XENT_CASES = {
    "xent-512x32000": ((512, 32000), -1),
    "xent-4096x1000": ((4096, 1000), -1),
    "xent-1000x4096-axis0": ((1000, 4096), 0),
    "xent-32x10": ((32, 10), -1),
}
SOFTMAX_CASE = ((4096, 1000), -1)


def make_case(shape, axis, seed=0):
    """float32 logits and int64 labels for a (shape, axis) case."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(shape) * 2).astype(np.float32)
    rest = tuple(s for k, s in enumerate(shape) if k != axis % len(shape))
    return z, rng.integers(0, shape[axis], size=rest)


_EXPECTED: dict = {}


def expected_xent(name):
    """Loss and gradient of the float64 NumPy reference for a case (computed once)."""
    if name not in _EXPECTED:
        shape, axis = XENT_CASES[name]
        z, y = make_case(shape, axis)
        previous = normax.get_backend()
        normax.set_backend("numpy")
        try:
            _EXPECTED[name] = normax.softmax_cross_entropy(z.astype(np.float64), y, axis=axis)
        finally:
            normax.set_backend(previous)
    return _EXPECTED[name]


@pytest.mark.parametrize("name", XENT_CASES)
def test_xent(benchmark, backend, name):
    shape, axis = XENT_CASES[name]
    z, y = make_case(shape, axis)
    out = np.empty_like(z)
    benchmark.group = name
    normax.softmax_cross_entropy(z, y, axis=axis, out=out)  # warm-up (Numba compiles)
    if backend == "numpy" and z.size > 1_000_000:
        loss, dz = benchmark.pedantic(
            normax.softmax_cross_entropy, (z, y), {"axis": axis, "out": out}, rounds=3
        )
    else:
        loss, dz = benchmark(normax.softmax_cross_entropy, z, y, axis=axis, out=out)
    ref_loss, ref_dz = expected_xent(name)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-4, atol=1e-8)


def test_softmax(benchmark, backend):
    shape, axis = SOFTMAX_CASE
    z, _ = make_case(shape, axis)
    out = np.empty_like(z)
    benchmark.group = "softmax-4096x1000"
    p = benchmark(normax.softmax, z, axis, out=out)
    ref = np.exp(z - z.max(axis=axis, keepdims=True).astype(np.float64))
    np.testing.assert_allclose(p, ref / ref.sum(axis=axis, keepdims=True), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ the target table


def _batch_time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def race(contenders: dict, rounds: int, budget: float = 0.04) -> dict:
    """Best per-call time of each contender; rounds interleave the contenders so that load
    changes on a shared machine hit all of them alike."""
    calls = {}
    for name, fn in contenders.items():
        fn()
        calls[name] = max(1, int(budget / max(_batch_time(fn, 1), 1e-7)))
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(rounds):
        for name, fn in contenders.items():
            best[name] = min(best[name], _batch_time(fn, calls[name]))
    return best


def _torch_xent(torch, z, y, axis):
    zt = torch.from_numpy(np.moveaxis(z, axis, 1) if axis % z.ndim != 1 else z).clone()
    zt.requires_grad_(True)
    yt = torch.from_numpy(y)

    def run():
        zt.grad = None
        loss = torch.nn.functional.nll_loss(torch.log_softmax(zt, 1), yt)
        loss.backward()

    return run


def _copy_bandwidth(torch, z, rounds):
    dst = np.empty_like(z)
    contenders = {"numpy": lambda: np.copyto(dst, z)}
    if torch is not None:
        src_t, dst_t = torch.from_numpy(z), torch.from_numpy(dst)
        contenders["torch"] = lambda: dst_t.copy_(src_t)
    return 2 * z.nbytes / min(race(contenders, rounds).values())


def measure_xent(torch, name, rounds):
    shape, axis = XENT_CASES[name]
    z, y = make_case(shape, axis)
    out = np.empty_like(z)
    contenders = {"normax": lambda: normax.softmax_cross_entropy(z, y, axis=axis, out=out)}
    if name == "xent-32x10":  # the whole call, allocating its gradient
        contenders["normax"] = lambda: normax.softmax_cross_entropy(z, y, axis=axis)
    if torch is not None:
        contenders["torch"] = _torch_xent(torch, z, y, axis)
    times = race(contenders, rounds)
    ref = {"numpy": normax.softmax_cross_entropy}
    if z.size > 100_000:
        normax.set_backend("numpy")
        try:
            times["numpy"] = race({"numpy": lambda: ref["numpy"](z, y, axis=axis)}, 2)["numpy"]
        finally:
            normax.set_backend("c")
        times["roofline"] = 3 * z.nbytes / _copy_bandwidth(torch, z, rounds)
    loss, dz = normax.softmax_cross_entropy(z, y, axis=axis)
    ref_loss, ref_dz = expected_xent(name)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    np.testing.assert_allclose(dz, ref_dz, rtol=1e-4, atol=1e-8)
    return times


def report(args) -> None:
    try:
        import torch
    except ImportError:
        torch = None
    normax.set_backend("c")
    normax.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"threads={args.threads} rounds={args.rounds} torch={getattr(torch, '__version__', '-')}")
    results = {name: measure_xent(torch, name, args.rounds) for name in XENT_CASES}
    for name, t in results.items():
        line = f"{name:22s} normax {t['normax'] * 1e3:9.4f} ms"
        if "torch" in t:
            line += f" | torch {t['torch'] * 1e3:9.4f} ms  x{t['torch'] / t['normax']:6.2f}"
        if "numpy" in t:
            line += f" | numpy x{t['numpy'] / t['normax']:6.1f}"
            line += f" | roofline {t['roofline'] / t['normax']:5.0%}"
        print(line)
    ratio = results["xent-1000x4096-axis0"]["normax"] / results["xent-4096x1000"]["normax"]
    print(f"axis=0 (1000, 4096) / axis=-1 (4096, 1000) time: {ratio:.2f}")
    z, _ = make_case(*SOFTMAX_CASE)
    out = np.empty_like(z)
    contenders = {"normax": lambda: normax.softmax(z, out=out)}
    if torch is not None:
        zt = torch.from_numpy(z)
        contenders["torch"] = lambda: torch.softmax(zt, -1)
    t = race(contenders, args.rounds)
    if torch is not None:
        print(f"softmax (4096, 1000): torch / normax = x{t['torch'] / t['normax']:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    report(parser.parse_args(argv))


if __name__ == "__main__":
    main()
