import os
import subprocess
import sys

import pytest

import normax


def test_default_backend_is_c_when_built():
    if "c" in normax.available_backends() and not os.environ.get("NORMAX_BACKEND"):
        assert normax.get_backend() == "c"


@pytest.mark.parametrize("name", ["C", "numba", "numpy"])
def test_set_backend_roundtrip(name):
    previous = normax.get_backend()
    if name.lower() not in normax.available_backends():
        pytest.skip(f"{name} backend not available here")
    try:
        normax.set_backend(name)
        assert normax.get_backend() == name.lower()
    finally:
        normax.set_backend(previous)


@pytest.mark.parametrize("bad", ["cuda", "", None, 3])
def test_set_backend_rejects_unknown(bad):
    with pytest.raises(ValueError, match="backend must be one of"):
        normax.set_backend(bad)


def test_env_var_selects_backend():
    code = "import normax; print(normax.get_backend())"
    env = dict(os.environ, NORMAX_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy"


def test_env_var_rejects_unknown():
    env = dict(os.environ, NORMAX_BACKEND="fortran")
    out = subprocess.run(
        [sys.executable, "-c", "import normax"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "backend must be one of" in out.stderr


def test_num_threads_roundtrip():
    before = normax.get_num_threads()
    try:
        normax.set_num_threads(1)
        assert normax.get_num_threads() == 1
    finally:
        normax.set_num_threads(0)
    assert normax.get_num_threads() == before


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_num_threads_rejects_bad(bad):
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        normax.set_num_threads(bad)


def test_threadpoolctl_limits_c_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if "c" not in normax.available_backends():
        pytest.skip("no C extension")
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert normax.get_num_threads() == 1
