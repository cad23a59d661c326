"""The backend module under misuse: a fresh interpreter, a missing extension, absurd threads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import normax


def _clean_python(code: str, package_root: Path) -> subprocess.CompletedProcess:
    """``code`` in an interpreter without site hooks: nothing imported but what normax imports."""
    roots = {str(package_root)}
    roots |= {str(Path(m.__file__).resolve().parent.parent) for m in (np, numba)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sorted(roots)))
    env.pop("NORMAX_BACKEND", None)  # the default choice is under test, not a pinned backend
    return subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_available_backends_in_a_fresh_interpreter():
    root = Path(normax.__file__).resolve().parent.parent
    out = _clean_python("import normax; print(normax.available_backends())", root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("'numba', 'numpy')")


def test_missing_extension_warning_says_so(tmp_path):
    src = Path(normax.__file__).resolve().parent
    shutil.copytree(src, tmp_path / "normax", ignore=shutil.ignore_patterns("*.so", "*.pyd"))
    code = "import normax; print(normax.get_backend(), normax.available_backends())"
    out = _clean_python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "numba"
    assert "RuntimeWarning" in out.stderr and "compiled extension" in out.stderr
    assert "missing" in out.stderr and "circular" not in out.stderr


@pytest.mark.parametrize("n", [10**6, 2**31, 10**30])
def test_absurd_thread_counts_are_refused(n):
    before = normax.get_num_threads()
    with pytest.raises(ValueError, match=rf"n must be at most \d+ .*got {n}"):
        normax.set_num_threads(n)
    assert normax.get_num_threads() == before


def test_the_largest_accepted_thread_count_runs():
    n = 4 * (os.cpu_count() or 1)
    x = np.random.default_rng(0).standard_normal((256, 300))
    try:
        normax.set_num_threads(n)
        assert normax.get_num_threads() == n or "c" not in normax.available_backends()
        got = normax.softmax(x, axis=1)
    finally:
        normax.set_num_threads(0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="at most"):
        normax.set_num_threads(n + 1)


def test_a_closed_pipe_ends_the_command_quietly():
    # `normax info | head -1`: the reader leaves after one line; no traceback, exit 141.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, normax.cli as c; sys.exit(c.main(['info']))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # nobody reads: the first write (or the flush at exit) hits EPIPE
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 141, proc.returncode
