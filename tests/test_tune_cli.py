"""``normax tune`` plumbing, with a stand-in for the digits network (same signature)."""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from normax import cli, tune
from normax.tune import cli as tune_cli

HERE = Path(__file__).resolve().parent


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("test_tune_objectives").digits_stand_in


def _args(*argv):
    argv = ["tune", *argv]
    return cli.build_parser(argv).parse_args(argv)


def test_tune_runs_refines_plots_and_resumes(tmp_path, capsys, stand_in):
    pytest.importorskip("matplotlib")
    db = tmp_path / "study.db"
    args = _args("--trials", "6", "--refine", "2", "--storage", str(db), "--no-progress")
    assert tune_cli.run(args, objective=stand_in) == 0
    out = capsys.readouterr().out
    assert "study: 18 trials (18 complete), 3 rounds" in out
    assert "best trial #" in out and "lr=" in out and "layers=" in out
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    con = sqlite3.connect(db)
    rounds = con.execute("SELECT round, count(*) FROM trials GROUP BY round").fetchall()
    con.close()
    assert rounds == [(0, 6), (1, 6), (2, 6)]

    # running again with the same storage resumes the study and adds --trials more
    again = _args("--trials", "6", "--refine", "2", "--storage", str(db), "--no-progress")
    assert tune_cli.run(again, objective=stand_in) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "adding 6 to round 2" in captured.err
    assert "study: 24 trials (24 complete), 3 rounds" in captured.out


def test_tune_with_halving_and_workers_flags_parse(tmp_path, capsys, stand_in):
    args = _args(
        "--trials",
        "9",
        "--halving",
        "--storage",
        str(tmp_path / "h.db"),
        "--no-progress",
        "--plot",
        "none",
    )
    assert args.halving and args.workers == 1 and args.scheduler is None
    assert tune_cli.run(args, objective=stand_in) == 0
    assert "study: 9 trials" in capsys.readouterr().out


def test_tune_refuses_a_foreign_storage(tmp_path, capsys, stand_in):
    db = tmp_path / "x.db"
    db.write_bytes(b"\x00" * 4096)
    before = db.read_bytes()
    assert tune_cli.run(_args("--storage", str(db), "--no-progress"), objective=stand_in) == 2
    assert "not a" in capsys.readouterr().err and db.read_bytes() == before


def test_tune_rejects_bad_shrink(capsys):
    with pytest.raises(SystemExit) as exit_:
        _args("--shrink", "1.5")
    assert exit_.value.code == 2
    assert "argument --shrink: must be in (0, 1], got '1.5'" in capsys.readouterr().err


# ---- misuse: every mistake a clear message and a non-zero status, before any trial runs ----------
class Counting:
    """The stand-in objective, counting its calls (nothing may run after a usage error)."""

    def __init__(self, objective):
        self.objective, self.calls = objective, 0

    def __call__(self, params, report=None):
        self.calls += 1
        return self.objective(params, report)


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--trials", "-5"], "--trials"),
        (["--trials", "x"], "--trials"),
        (["--workers", "0"], "--workers"),
        (["--workers", "-1"], "--workers"),
        (["--refine", "-1"], "--refine"),
        (["--seed", "-1"], "--seed"),
        (["--epochs", "0"], "--epochs"),
        (["--top-k", "0"], "--top-k"),
        (["--until", "0"], "--until"),
        (["--trial-timeout", "0"], "--trial-timeout"),
        (["--trial-timeout", "nan"], "--trial-timeout"),
        (["--connect-timeout", "-1"], "--connect-timeout"),
    ],
)
def test_bad_numbers_are_usage_errors_naming_the_option(capsys, argv, option):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {option}: must be" in err
    assert "_positive" not in err and "Traceback" not in err


def _usage_error(tmp_path, capsys, stand_in, *argv):
    objective = Counting(stand_in)
    code = tune_cli.run(_args(*argv, "--no-progress"), objective=objective)
    err = capsys.readouterr().err
    assert code == 2 and objective.calls == 0 and "Traceback" not in err
    return err


def test_the_plot_never_replaces_the_study(tmp_path, capsys, stand_in):
    png = tmp_path / "s.png"
    err = _usage_error(tmp_path, capsys, stand_in, "--storage", str(png), "--trials", "3")
    assert "is the study file" in err and not png.exists()
    db = tmp_path / "s.db"
    assert (
        tune_cli.run(_args("--storage", str(db), "--trials", "3", "--plot", "none"), stand_in) == 0
    )
    before = db.read_bytes()
    for plot in (str(db), str(db) + "-wal", str(tmp_path / "." / "s.db")):
        err = _usage_error(tmp_path, capsys, stand_in, "--storage", str(db), "--plot", plot)
        assert "is the study file" in err
    assert db.read_bytes() == before


@pytest.mark.parametrize("where", ["plot", "plot is a folder", "storage"])
def test_output_paths_are_checked_before_the_first_trial(tmp_path, capsys, stand_in, where):
    missing = str(tmp_path / "no" / "such" / "dir")
    argv = ["--storage", str(tmp_path / "s.db")]
    if where == "plot":
        argv += ["--plot", missing + "/p.png"]
    elif where == "plot is a folder":
        argv += ["--plot", str(tmp_path)]
    else:
        argv = ["--storage", missing + "/s.db"]
    err = _usage_error(tmp_path, capsys, stand_in, *argv)
    assert "folder" in err or "directory" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("address", ["notanaddress", "tcp://127.0.0.1:1"])
def test_an_unreachable_scheduler_is_a_usage_error_and_leaves_no_file(
    tmp_path, capsys, stand_in, address
):
    pytest.importorskip("distributed")
    argv = ["--scheduler", address, "--connect-timeout", "1", "--storage", str(tmp_path / "s.db")]
    err = _usage_error(tmp_path, capsys, stand_in, *argv)
    assert "cannot connect to the Dask scheduler" in err and address in err
    assert os.listdir(tmp_path) == []


def test_without_scikit_learn_the_command_fails_fast_with_the_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code = tune_cli.run(_args("--storage", str(tmp_path / "s.db"), "--no-progress"))
    err = capsys.readouterr().err
    assert code == 2 and "needs scikit-learn" in err and "normax[examples]" in err
    assert os.listdir(tmp_path) == []


def test_failed_trials_are_summarized_and_fail_the_command(tmp_path, capsys):
    def broken(params, report=None):
        raise RuntimeError("the data is gone")

    code = tune_cli.run(
        _args("--storage", str(tmp_path / "s.db"), "--trials", "4", "--no-progress"), broken
    )
    out = capsys.readouterr()
    assert code == 1 and "no trial completed" in out.err
    assert "failed: 4 x RuntimeError: the data is gone" in out.out


def test_resuming_with_other_objective_settings_is_refused(tmp_path, capsys, stand_in):
    db = str(tmp_path / "s.db")
    assert (
        tune_cli.run(
            _args(
                "--storage",
                db,
                "--trials",
                "3",
                "--epochs",
                "20",
                "--plot",
                "none",
                "--no-progress",
            ),
            stand_in,
        )
        == 0
    )
    capsys.readouterr()
    err = _usage_error(
        tmp_path, capsys, stand_in, "--storage", db, "--epochs", "1", "--plot", "none"
    )
    assert "other objective settings" in err and "epochs=20 in the study, 1 now" in err
    with tune.Study(None, direction="maximize", storage=db) as s:
        assert len(s.trials) == 3


def test_until_finishes_a_planned_total(tmp_path, capsys, stand_in):
    db = str(tmp_path / "s.db")
    common = ["--storage", db, "--plot", "none", "--no-progress"]
    assert tune_cli.run(_args(*common, "--trials", "4"), stand_in) == 0
    assert tune_cli.run(_args(*common, "--until", "10"), stand_in) == 0
    assert tune_cli.run(_args(*common, "--until", "10"), stand_in) == 0  # nothing left to do
    assert "study: 10 trials (10 complete), 1 rounds" in capsys.readouterr().out
    err = _usage_error(tmp_path, capsys, stand_in, *common, "--until", "20", "--refine", "1")
    assert "--until" in err and "--refine" in err


def test_refine_rounds_are_shrink_times_as_wide(tmp_path, capsys, stand_in):
    db = tmp_path / "s.db"
    argv = ["--storage", str(db), "--trials", "8", "--refine", "2", "--plot", "none"]
    assert tune_cli.run(_args(*argv, "--no-progress"), stand_in) == 0
    with tune.Study(None, direction="maximize", storage=db) as s:
        rounds = s.rounds
    assert len(rounds) == 3
    for name in tune_cli.SPACE:
        widths = [r.box[name][1] - r.box[name][0] for r in rounds]
        assert widths[1] == pytest.approx(0.5 * widths[0]) and widths[2] == pytest.approx(
            0.25 * widths[0]
        )


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch, stand_in, tty):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    argv = ["--storage", str(tmp_path / "s.db"), "--trials", "3", "--plot", "none"]
    assert tune_cli.run(_args(*argv), stand_in) == 0
    assert ("3/3" in capsys.readouterr().err) == tty


def test_ctrl_c_in_any_subcommand_exits_130_without_a_traceback(capsys, monkeypatch):
    def interrupted(args, objective=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_cli, "run", interrupted)
    assert cli.main(["tune", "--trials", "1"]) == 130
    err = capsys.readouterr().err
    assert "normax tune: interrupted" in err and "Traceback" not in err
