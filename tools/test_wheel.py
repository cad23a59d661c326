"""Test an installed normax (a wheel) from outside the source tree.

    python tools/test_wheel.py PROJECT_DIR [--pure] [pytest args...]

Copies PROJECT_DIR/tests and the pytest configuration to a temporary directory, checks that
``import normax`` finds the installed package (not the source tree) with its C extension loaded
(or, with ``--pure``, the pure-Python install running on Numba), prints ``normax info``, and runs
a representative subset of the suite: the kernels on every backend, the error contract, threads,
fork safety and the configuration report. tools/build_wheels.sh, .ci/run and cibuildwheel all run
this same script. Needs pytest, hypothesis and threadpoolctl.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUBSET = [
    "test_batchnorm.py",
    "test_softmax.py",
    "test_optim.py",
    "test_error_parity.py",
    "test_backend.py",
    "test_hardening_threads.py",
    "test_config.py",
    "test_dtypes.py",
    "test_half_batchnorm.py",
    "test_half_softmax.py",
]


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    project, rest = Path(argv[0]).resolve(), argv[1:]
    pure = "--pure" in rest
    rest = [a for a in rest if a != "--pure"]
    with tempfile.TemporaryDirectory(prefix="normax-wheel-test-") as tmp:
        shutil.copytree(project / "tests", Path(tmp) / "tests")
        shutil.copy(project / "pyproject.toml", tmp)
        check = (
            "import normax, normax._backend as b, sys; "
            "assert 'site-packages' in normax.__file__, normax.__file__; "
            f"assert (b._core is None) == {pure}, b._core_reason() if b._core is None else 'C'; "
            "normax.show_config()"
        )
        # -W ignore: the pure install warns once at import that it runs on Numba (expected here)
        flags = ["-W", "ignore::RuntimeWarning"] if pure else []
        subprocess.run([sys.executable, *flags, "-c", check], cwd=tmp, check=True)
        if pure:
            return 0  # the suite needs the compiled backend's tests to be meaningful; smoke only
        tests = [os.path.join("tests", name) for name in SUBSET]
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "not slow"]
        return subprocess.run([*cmd, *tests, *rest], cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
