"""Two OpenMP runtimes in one process: what it costs, and that set_num_threads governs both.

    python tools/omp_pools.py [--threads N] [--reps R]

A wheel bundles its own libgomp (normax.libs/libgomp-<hash>.so); Numba's OpenMP threading layer
loads the system libgomp. Each runtime keeps its own pool of worker threads, and an idle libgomp
worker spins (GOMP_SPINCOUNT, OMP_WAIT_POLICY) before it sleeps, so a C call right after a Numba
call may share the cores with the other pool's spinning workers. This prints, in one run:

- the OpenMP runtimes mapped and the threads alive after each step;
- the median time of a C batch-norm call right after another C call, and right after a Numba
  call (the ratio is the cost of the second pool), at the default thread count and at
  normax.set_num_threads(N).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import normax
from normax import _config


def threads_alive() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def bn(x, gamma, beta):
    return normax.batch_norm_train(x, gamma, beta)


def c_after(prev_backend: str, x, gamma, beta, reps: int) -> float:
    """Median seconds of one C call made right after a call on ``prev_backend``."""
    times = []
    for _ in range(reps):
        normax.set_backend(prev_backend)
        bn(x, gamma, beta)
        normax.set_backend("c")
        t = time.perf_counter()
        bn(x, gamma, beta)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 128), dtype=np.float32)  # 64k elements: the threaded path
    gamma, beta = np.ones(128, np.float32), np.zeros(128, np.float32)
    print(f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print(f"after import: {threads_alive()} threads, runtimes {_config._openmp_runtimes()}")
    bn(x, gamma, beta)
    print(f"after a C call: {threads_alive()} threads")
    normax.set_backend("numba")
    bn(x, gamma, beta)
    normax.set_backend("c")
    import numba

    print(
        f"after a Numba call: {threads_alive()} threads, Numba layer "
        f"{numba.threading_layer()}, runtimes {_config._openmp_runtimes()}"
    )
    for n in (0, args.threads):
        normax.set_num_threads(n)
        label = "default" if n == 0 else f"set_num_threads({n})"
        t_cc = c_after("c", x, gamma, beta, args.reps)
        t_nc = c_after("numba", x, gamma, beta, args.reps)
        print(
            f"{label}: C call after C {t_cc * 1e6:.1f} us, after Numba {t_nc * 1e6:.1f} us "
            f"(ratio {t_nc / t_cc:.2f}); C {normax.get_num_threads()} threads, Numba "
            f"{numba.get_num_threads()} threads; {threads_alive()} threads alive"
        )


if __name__ == "__main__":
    main()
