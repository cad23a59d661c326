"""What this installation of normax is: :func:`show_config` and ``normax info``.

Like ``numpy.show_config()`` and ``torch.__config__.show()``: the versions, which backend runs,
whether the compiled extension loaded and which SIMD version of its kernels this CPU runs, which
OpenMP runtime(s) the process has loaded, and the thread counts of the C and Numba kernels.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Any, TextIO

from . import _backend

# _OPENMP dates of the OpenMP specifications (a compiler reports the one it implements).
_OPENMP_SPECS = {
    200505: "2.5",
    200805: "3.0",
    201107: "3.1",
    201307: "4.0",
    201511: "4.5",
    201811: "5.0",
    202011: "5.1",
    202111: "5.2",
    202411: "6.0",
}
_OPENMP_RUNTIME = re.compile(r"(^|/)lib(gomp|omp|iomp5)[^/]*\.(so[.\d]*|dylib|dll)$")


def _openmp_runtimes() -> list[str]:
    """Files of every OpenMP runtime mapped into this process (Linux; [] elsewhere).

    A wheel bundles its own libgomp under a hashed name, and Numba's OpenMP layer loads the
    system one: two runtimes mean two thread pools.
    """
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if _OPENMP_RUNTIME.search(p))


def _numba_info() -> dict[str, Any]:
    try:
        import numba
    except ImportError as exc:
        return {"version": None, "error": str(exc)}
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    started = bool(parallel is not None and getattr(parallel, "_is_initialized", False))
    return {
        "version": numba.__version__,
        # numba.get_num_threads() would start Numba's thread pool: report the setting until then
        "threads": numba.get_num_threads() if started else _backend._numba_threads(),
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": numba.threading_layer() if started else None,
        "threading_layer_setting": numba.config.THREADING_LAYER,
    }


def _ml_dtypes_version() -> str | None:
    """The installed ml_dtypes (bfloat16 support), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ml_dtypes")
    except PackageNotFoundError:
        return None


def _extension_info() -> dict[str, Any]:
    core = _backend._core
    if core is None:
        return {"loaded": False, "reason": _backend._core_reason()}
    info = {"loaded": True, "path": core.__file__}
    info.update(core.build_info())
    return info


def config() -> dict[str, Any]:
    """The facts :func:`show_config` prints, as a dict (for bug reports and tests)."""
    import numpy

    from . import __version__

    return {
        "normax": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}",
        "numpy": numpy.__version__,
        "backend": _backend.get_backend(),
        "available_backends": list(_backend.available_backends()),
        "extension": _extension_info(),
        "threads": _backend.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "numba": _numba_info(),
        "openmp_runtimes": _openmp_runtimes(),
    }


def _openmp_line(ext: dict[str, Any]) -> str:
    date = ext.get("openmp", 0)
    if not date:
        return "none: built without OpenMP, the C kernels run on one thread"
    spec = _OPENMP_SPECS.get(date, "?")
    return f"{spec} ({date}), runtime {ext.get('openmp_library') or 'unknown'}"


def _lines(c: dict[str, Any]) -> list[str]:
    ext, nb = c["extension"], c["numba"]
    rows = [
        f"normax {c['normax']}",
        f"  python            {c['python']}, {c['platform']}",
        f"  numpy             {c['numpy']}",
        f"  backend           {c['backend']} (available: {', '.join(c['available_backends'])})",
    ]
    if ext["loaded"]:
        rows += [
            f"  C extension       loaded from {os.path.dirname(ext['path'])}",
            f"  SIMD              {ext['simd']}",
            f"  half precision    float16 via {ext['float16']}; bfloat16 via {ext['bfloat16']} "
            f"({'ml_dtypes ' + _ml_dtypes_version() if _ml_dtypes_version() else 'no ml_dtypes'})",
            f"  OpenMP            {_openmp_line(ext)}",
        ]
    else:
        rows.append(f"  C extension       not available: {ext['reason']}")
    omp = c["omp_num_threads"]
    rows.append(
        f"  threads           {c['threads']} ({c['cpus']} CPUs, OMP_NUM_THREADS="
        f"{'unset' if omp is None else omp})"
    )
    if nb["version"] is None:
        rows.append(f"  numba             not available: {nb['error']}")
    else:
        setting = nb["threading_layer_setting"]
        layer = nb["threading_layer"] or f"not started yet (setting: {setting})"
        rows += [
            f"  numba             {nb['version']}, {nb['threads']} of {nb['max_threads']} threads",
            f"  numba threading   {layer}",
        ]
    runtimes = c["openmp_runtimes"]
    rows.append(f"  OpenMP runtimes   {len(runtimes)} loaded in this process")
    rows += [f"                    {p}" for p in runtimes]
    return rows


def show_config(file: TextIO | None = None) -> None:
    """Print what this installation of normax is and how it runs.

    Lists the versions, the active backend, whether the C extension loaded (and why not), the
    SIMD version of its kernels this CPU runs, the OpenMP version and runtime it calls, the thread
    counts of the C and Numba kernels, Numba's threading layer, and every OpenMP runtime loaded
    in the process. ``normax info`` prints the same.

    Examples
    --------
    >>> import normax
    >>> normax.show_config()  # doctest: +SKIP
    normax 0.1.0
      python            3.12.1 (CPython), Linux x86_64
      ...
    """
    print("\n".join(_lines(config())), file=sys.stdout if file is None else file)


def add_arguments(parser) -> None:
    """``normax info`` takes no options."""


def run(args) -> int:
    """``normax info``: print :func:`show_config`."""
    show_config()
    return 0
