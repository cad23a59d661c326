"""What the benchmark runs on: machine facts, library versions, threads, memory bandwidth.

The bandwidth probe measures, in the same run and with the same thread count as the kernels,

* copy: ``dst[:] = src`` over arrays four times the usable last-level cache
  (:func:`last_level_cache_bytes`, capped), at least 64 MiB, counted as
  2 x bytes(src) moved (one read, one write; the STREAM convention);
* read: a sum over the same array, counted as 1 x bytes(src).

Each is the best of several repetitions (a roofline is an upper limit, so the fastest pass is the
right estimate), taking the better of a parallel Numba loop and NumPy's single-threaded copy.
The same copies (:class:`CopyProbe`) are also timed in turn with the contenders of every case
larger than the cache, so that such a case's roofline is the bandwidth of its own minutes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import normax

# The largest last-level cache the bench counts on, in bytes. The compiled kernels cap the cache
# they count on at the same figure and report theirs (build_info()["llc_cap_bytes"]), which
# :func:`llc_cap_bytes` prefers; this one serves an installation without them. Servers and
# virtual machines report the whole socket's cache (480 MiB on a 2-core VM), shared with every
# other core and tenant: there a 64 MiB array does not stay cached, and the copy bandwidth of
# 32 MiB arrays is already memory speed.
LLC_CAP = 32 << 20
DEFAULT_LLC = LLC_CAP  # used when the cache size cannot be read from the system


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def reported_cache_bytes() -> int:
    """Size of the largest CPU cache in bytes as the system reports it (Linux sysfs), or 0 when
    unknown."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = 0
    try:
        for entry in os.listdir(base):
            path = os.path.join(base, entry, "size")
            if entry.startswith("index") and os.path.exists(path):
                with open(path) as fh:
                    best = max(best, _parse_size(fh.read().strip()))
    except OSError:
        pass
    return best


def llc_cap_bytes() -> int:
    """The largest last-level cache counted on: the compiled kernels' cap when they are loaded
    (so the bench judges the cache as they do), else :data:`LLC_CAP`."""
    from normax import _backend

    core = _backend._core
    if core is not None:
        return int(core.build_info()["llc_cap_bytes"])
    return LLC_CAP


def last_level_cache_bytes(reported: int | None = None) -> int:
    """The last-level cache a case can count on, in bytes: what the system reports (or
    ``reported``), at most :func:`llc_cap_bytes`; that cap when the system reports nothing."""
    reported = reported_cache_bytes() if reported is None else reported
    cap = llc_cap_bytes()
    return min(reported, cap) if reported > 0 else DEFAULT_LLC


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text) if text.isdigit() else 0


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")
    return model, [f for f in wanted if f in flags]


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """CPU, caches, memory, OS and interpreter of this machine."""
    model, flags = _cpu_model_and_flags()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "llc_bytes": last_level_cache_bytes(),
        "llc_reported_bytes": reported_cache_bytes() or None,
        "memory_bytes": _memory_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS does not report them)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return None


def versions(torch) -> dict:
    """Versions of normax and of every library it is compared with (None when absent)."""
    out = {
        "normax": normax.__version__,
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": getattr(torch, "__version__", None) if torch is not None else None,
        "threadpoolctl": _version("threadpoolctl"),
    }
    out["blas"] = _blas_info()
    return out


def _blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "architecture")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def environment_notes() -> dict:
    """Environment variables that change the speed of NumPy or of the thread pools."""
    names = (
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "OMP_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "NORMAX_BACKEND",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    )
    return {name: os.environ[name] for name in names if name in os.environ}


def reserve_numba_threads(n: int) -> None:
    """Let Numba's thread pool grow to ``n`` threads, if Numba is not imported yet.

    Numba fixes the size of its pool (``NUMBA_NUM_THREADS``, by default the number of CPUs) when
    it is imported; :func:`numba.set_num_threads` can only go below it. Setting the variable
    before the import is the only way to honour ``--threads`` above the core count, and it also
    reaches the processes that time contenders in isolation.
    """
    if "numba" in sys.modules or importlib.util.find_spec("numba") is None:
        return
    current = os.environ.get("NUMBA_NUM_THREADS", "")
    default = int(current) if current.isdigit() else os.cpu_count() or 1
    if n > default:
        os.environ["NUMBA_NUM_THREADS"] = str(n)


@contextlib.contextmanager
def held_threads(n: int, torch, numba: bool = True):
    """Hold normax, Numba, PyTorch and NumPy's BLAS/OpenMP pools to ``n`` threads, then restore.

    ``numba=False``: Numba is not a contender, so its pool may stay smaller (it then only runs
    the bandwidth probe).

    Raises
    ------
    ValueError
        When a pool cannot take ``n`` threads (Numba's was sized when it was imported), rather
        than timing one contender with fewer threads than the others.
    """
    from normax import _backend

    previous = getattr(_backend, "_num_threads", 0)
    previous_torch = torch.get_num_threads() if torch is not None else None
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=n))
        try:
            normax.set_num_threads(n)
            _numba_threads(n)
            _torch_threads(torch, n)
            _check_threads(n, torch, numba)
            yield
        finally:
            normax.set_num_threads(previous)
            _torch_threads(torch, previous_torch)


def threads_in_use(torch) -> dict:
    """Threads each pool will actually use: normax, Numba and PyTorch (when present)."""
    out = {"normax": normax.get_num_threads()}
    if "numba" in sys.modules:
        out["numba"] = sys.modules["numba"].get_num_threads()
    if torch is not None:
        out["torch"] = torch.get_num_threads()
    return out


def _check_threads(n: int, torch, numba: bool) -> None:
    for pool, got in threads_in_use(torch).items():
        if got == n or (pool == "numba" and not numba):
            continue
        hint = ""
        if pool == "numba":
            limit = sys.modules["numba"].config.NUMBA_NUM_THREADS
            hint = (
                f" (its pool was sized to NUMBA_NUM_THREADS={limit} when Numba was imported; "
                f"set NUMBA_NUM_THREADS={n} in the environment, or leave Numba out with "
                "--backend c)"
            )
        raise ValueError(f"--threads {n}: {pool} runs {got} threads, not {n}{hint}")


def _torch_threads(torch, n: int | None) -> None:
    # Only when it changes: torch.set_num_threads, even to the current count, rebuilds PyTorch's
    # thread pool, and its small ops then run ~1000x slower for seconds on a loaded machine.
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _numba_threads(n: int) -> None:
    if importlib.util.find_spec("numba") is None:
        return
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@dataclass
class Bandwidth:
    """Best measured copy and read bandwidth, in bytes per second."""

    copy: float
    read: float
    nbytes: int
    threads: int
    method: str

    def best_with(self, other: Bandwidth) -> Bandwidth:
        """The higher copy and read figures of two probes."""
        return Bandwidth(
            copy=max(self.copy, other.copy),
            read=max(self.read, other.read),
            nbytes=self.nbytes,
            threads=self.threads,
            method=f"{self.method}; best of a probe before and after the cases",
        )

    def to_dict(self) -> dict:
        return {
            "copy_gbs": self.copy / 1e9,
            "read_gbs": self.read / 1e9,
            "array_bytes": self.nbytes,
            "threads": self.threads,
            "method": self.method,
        }


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class CopyProbe:
    """Two float64 arrays of ``nbytes`` bytes each and the copies and reads the probe times.

    :meth:`bandwidth` is the run's probe (best of several repetitions). :attr:`copies` are the
    same copies as plain callables, which the bench also times in turn with the contenders of each
    case larger than the cache: on a shared machine the memory bandwidth drifts from minute to
    minute, and only a copy timed in the same rounds as a kernel is its roofline.
    """

    def __init__(self, nbytes: int, threads: int):
        n = max(1, nbytes // 8)
        self.src = np.random.default_rng(0).random(n)
        self.dst = np.zeros_like(self.src)  # zeros_like + the first copy touch every page
        self.threads = threads
        src, dst = self.src, self.dst
        one = "numpy (1 thread)"
        self.copies: dict[str, Callable[[], object]] = {one: lambda: np.copyto(dst, src)}
        self._reads: dict[str, Callable[[], object]] = {one: lambda: np.add.reduce(src)}
        try:
            from . import _probe_kernels as pk
        except ImportError:  # pragma: no cover - numba is a runtime dependency
            pk = None
        if pk is not None:
            pk.set_threads(threads)
            name = f"numba parallel ({sys.modules['numba'].get_num_threads()} threads)"
            self.copies[name] = lambda: pk.parallel_copy(src, dst)
            self._reads[name] = lambda: pk.parallel_read(src)
        for fn in (*self.copies.values(), *self._reads.values()):
            fn()  # compile, touch

    @property
    def nbytes(self) -> int:
        """Bytes of one array; a copy moves twice as many (one read, one write)."""
        return int(self.src.nbytes)

    def bandwidth(self, repeats: int = 10) -> Bandwidth:
        """Best copy and read bandwidth over ``repeats`` passes of each method."""
        copy_time = min(_best(fn, repeats) for fn in self.copies.values())
        read_time = min(_best(fn, repeats) for fn in self._reads.values())
        return Bandwidth(
            copy=2 * self.nbytes / copy_time,
            read=self.nbytes / read_time,
            nbytes=self.nbytes,
            threads=self.threads,
            method="best of " + " and ".join(reversed(self.copies)),
        )


def import_torch(enabled: bool = True):
    """PyTorch if it is installed and wanted, else None (never required)."""
    if not enabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch
