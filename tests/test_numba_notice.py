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
