"""The digits demo: train_digits (the tuning entry point) and the `normax demo` command."""

from __future__ import annotations

import math
import re
import sys

import pytest

pytest.importorskip("sklearn")

from normax.cli import main
from normax.nn import demo


def test_default_run_reaches_97_percent():
    assert demo.train_digits({}, epochs=20, seed=0) >= 0.97


def test_deterministic_and_reports_every_epoch():
    seen = []
    acc = demo.train_digits(
        {"hidden": 32, "layers": 1}, epochs=3, seed=1, report=lambda e, a: seen.append((e, a))
    )
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == acc and 0.8 < acc <= 1.0
    assert demo.train_digits({"hidden": 32, "layers": 1}, epochs=3, seed=1) == acc


def test_report_exception_stops_training():
    class Prune(Exception):
        pass

    seen = []

    def report(epoch, acc):
        seen.append(epoch)
        if epoch == 2:
            raise Prune

    with pytest.raises(Prune):
        demo.train_digits({"hidden": 16}, epochs=10, report=report)
    assert seen == [1, 2]


def test_diverging_run_returns_instead_of_crashing():
    acc = demo.train_digits({"lr": 1e38, "hidden": 16, "layers": 1}, epochs=2)
    assert isinstance(acc, float) and (acc == 0.0 or 0.0 <= acc <= 1.0)
    assert not math.isnan(acc)


@pytest.mark.parametrize(
    ("params", "exc", "match"),
    [
        ({"lr": -1.0}, ValueError, "params\\['lr'\\] must be a finite number > 0"),
        ({"beta1": 1.0}, ValueError, "params\\['beta1'\\] must be in \\[0, 1\\)"),
        ({"hidden": 0}, ValueError, "params\\['hidden'\\] must be >= 1"),
        ({"layers": 1.5}, TypeError, "params\\['layers'\\] must be an int"),
        ({"momentum": 0.9}, ValueError, "unknown params \\['momentum'\\]"),
    ],
)
def test_bad_params(params, exc, match):
    with pytest.raises(exc, match=match):
        demo.train_digits(params, epochs=1)


def test_integral_floats_and_numpy_numbers_are_accepted():
    import numpy as np

    cfg = demo.config({"hidden": 16.0, "layers": np.int64(1), "lr": np.float32(0.01)})
    assert cfg["hidden"] == 16 and cfg["layers"] == 1 and isinstance(cfg["lr"], float)


def test_demo_command_prints_epochs_and_final_accuracy(capsys):
    assert main(["demo", "--epochs", "2", "--hidden", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("epoch") for line in out) == 2
    assert re.fullmatch(r"held-out accuracy: \d{1,3}\.\d%", out[-1])


def test_demo_command_rejects_bad_options(capsys):
    assert main(["demo", "--lr", "-1", "--no-progress"]) == 2
    assert "params['lr'] must be a finite number > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--epochs", "0"], "--epochs"),
        (["--seed", "-1"], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_demo_command_refuses_counts_out_of_range(capsys, argv, option):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}: must be an integer >=" in err


@pytest.mark.parametrize("tty", [False, True])
def test_demo_progress_bar_only_on_a_terminal(capsys, monkeypatch, tty):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert main(["demo", "--epochs", "2", "--hidden", "16"]) == 0
    assert ("epochs:" in capsys.readouterr().err) == tty
