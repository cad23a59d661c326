"""normax.show_config(), `normax info`, `normax --version` and `python -m normax`."""

import io
import subprocess
import sys

import pytest

import normax
from normax import _backend, _config
from normax.cli import main


def test_config_reports_the_running_backend_and_version():
    c = _config.config()
    assert c["normax"] == normax.__version__
    assert c["backend"] == normax.get_backend()
    assert c["threads"] == normax.get_num_threads()
    assert c["extension"]["loaded"] == (_backend._core is not None)


@pytest.mark.skipif(_backend._core is None, reason="needs the C extension")
def test_extension_reports_simd_and_openmp():
    ext = _config.config()["extension"]
    assert ext["simd"]
    assert isinstance(ext["openmp"], int)
    if ext["openmp"]:
        # the runtime the kernels call is one of the runtimes mapped into the process
        runtimes = _config._openmp_runtimes()
        if runtimes:
            assert any(
                ext["openmp_library"].rsplit("/", 1)[-1].split(".so")[0] in p for p in runtimes
            )


def test_show_config_prints_every_section():
    buf = io.StringIO()
    normax.show_config(file=buf)
    text = buf.getvalue()
    assert text.startswith(f"normax {normax.__version__}\n")
    for key in ("backend", "C extension", "threads", "numba", "OpenMP runtimes"):
        assert key in text


@pytest.mark.parametrize("argv", [["--version"]])
def test_version_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"normax {normax.__version__}"


def test_info_subcommand(capsys):
    assert main(["info"]) == 0
    assert capsys.readouterr().out.startswith("normax ")


def test_python_dash_m_normax():
    run = subprocess.run(
        [sys.executable, "-m", "normax", "--version"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"normax {normax.__version__}"
