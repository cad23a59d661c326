"""The Numba backends say one line on stderr when they compile, and nothing when they load."""

from __future__ import annotations

import pytest

numba = pytest.importorskip("numba")

from normax._numba_notice import CompileNotice  # noqa: E402


def _fresh_kernel():
    """A jitted function that has never been compiled (no cache): calling it compiles."""

    @numba.njit
    def double(x):
        return 2 * x

    return double


def test_first_compile_says_one_line(capsys):
    notice = CompileNotice("test")
    try:
        _fresh_kernel()(1)
        _fresh_kernel()(2.0)  # a second compilation in the same module says nothing more
    finally:
        notice.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("normax: compiling the Numba test kernels")


def test_no_line_without_compilation(capsys):
    kernel = _fresh_kernel()
    kernel(1)  # compiled before the notice listens
    capsys.readouterr()
    notice = CompileNotice("test")
    try:
        kernel(3)
    finally:
        notice.close()
    assert capsys.readouterr().err == ""


def test_closed_notice_is_silent(capsys):
    CompileNotice("test").close()
    _fresh_kernel()(1)
    assert capsys.readouterr().err == ""


def test_module_filter(capsys):
    notice = CompileNotice("test", "some.other.module")
    try:
        _fresh_kernel()(1)  # defined in this test module: not counted
    finally:
        notice.close()
    assert capsys.readouterr().err == ""
    notice = CompileNotice("test", __name__)
    try:
        _fresh_kernel()(1)
    finally:
        notice.close()
    assert capsys.readouterr().err.startswith("normax: compiling the Numba test kernels")


def _fresh_driver():
    """A jitted driver calling a jitted helper, neither ever compiled."""

    @numba.njit
    def helper(x):
        return x + 1

    @numba.njit
    def driver(x):
        return helper(x)

    @numba.njit
    def other(x):
        return x - 1

    return driver, other


def test_each_driver_compilation_says_its_kernel_and_dtype(capsys):
    np = pytest.importorskip("numpy")
    driver, other = _fresh_driver()
    notice = CompileNotice("test", __name__, drivers={"driver": "doubling"})
    try:
        driver(np.zeros(3, np.float32))  # the helper compiled inside says nothing of its own
        driver(np.zeros(3, np.float32))  # compiled: silent
        driver(np.zeros(3, np.float32).view(np.uint16))  # a float16 view, as the kernels take
        driver(np.zeros(3, np.float32).view(np.int16)[::2])  # a bfloat16 view, new layout
        driver(np.zeros(3))
        other(1)  # not a driver: the family's line, once
        other(1.0)
    finally:
        notice.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "normax: compiling the Numba doubling kernels for float32",
        "normax: compiling the Numba doubling kernels for float16",
        "normax: compiling the Numba doubling kernels for bfloat16",
        "normax: compiling the Numba doubling kernels for float64",
        "normax: compiling the Numba test kernels",
    ]
    assert all(line.endswith("later runs load them from the cache)") for line in lines)


def test_driver_without_array_names_no_dtype(capsys):
    driver, _ = _fresh_driver()
    notice = CompileNotice("test", __name__, drivers={"driver": "doubling"})
    try:
        driver(1)
    finally:
        notice.close()
    assert capsys.readouterr().err.startswith("normax: compiling the Numba doubling kernels (")


def test_compile_error_leaves_the_notice_working(capsys):
    @numba.njit
    def broken(x):
        return x.no_such_attribute

    driver, _ = _fresh_driver()
    notice = CompileNotice("test", __name__, drivers={"broken": "broken", "driver": "doubling"})
    try:
        with pytest.raises(numba.core.errors.TypingError):
            broken(1)
        driver(2)  # the failed compilation's end was counted: this one is outermost again
    finally:
        notice.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "normax: compiling the Numba broken kernels",
        "normax: compiling the Numba doubling kernels",
    ]


def test_softmax_drivers_are_all_named():
    """Every kernel the softmax module's wrappers launch is a named driver, so that each of
    their compilations (tens of seconds) says its line."""
    import inspect
    import re

    mod = pytest.importorskip("normax._softmax_numba")
    launched = set(re.findall(r"(?<!def )\b_run\((\w+),", inspect.getsource(mod)))
    assert launched, "the wrappers launch their kernels through _run"
    assert launched <= set(mod._notice.drivers)
    for name in mod._notice.drivers:
        assert isinstance(getattr(mod, name), numba.core.registry.CPUDispatcher), name
